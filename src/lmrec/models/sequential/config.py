"""The sequential family's options (:class:`SequentialConfig` and the recipes' defaults) and the
regularisation rule that fills the ones left open from the training log's density."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import ModelConfig
from lmrec.models.sequential.adversarial import AdversarialConfig
from lmrec.models.sequential.blocks import BLOCKS
from lmrec.models.text_fusion import TextFusionConfig

OBJECTIVES = ("causal", "masked")
LOSSES = ("auto", "ce", "inbatch", "sampled", "gbce", "bce")
FULL_SOFTMAX_ITEMS = 20_000  # loss=auto: full softmax up to this many items, in-batch + log-Q beyond
ITEM_REPRS = ("id", "text", "fused", "aligned", "late")
ITEM_INITS = ("random", "text")
# Regularisation by the log's density: (training events per item, dropout, AdamW weight decay), the
# best found on validation on the sparse shared logs (amazon-beauty-2014 13 and amazon-games-2018 20
# training events per item; benchmarks/sparse.py), on ml-100k (58; 3 seeds, benchmarks/tune.py; its
# values hold from 50 to 60) and on the MovieLens-1M-shaped log (288; one seed each at a 600-s budget,
# benchmarks/speed.py). Between two points both follow log(events per item) linearly; outside them,
# the nearer point's values hold.
REGULARIZATION = ((21.0, 0.6, 0.0), (50.0, 0.4, 1.0), (60.0, 0.4, 1.0), (280.0, 0.2, 0.0))
OPEN = REGULARIZATION[2]  # what an encoder built outside ``fit`` (a profile, a test) uses: ml-100k's


def regularization(events_per_item: float) -> tuple[float, float]:
    """(dropout, weight decay) for a log with this many training events per item (REGULARIZATION)."""
    x = math.log(max(events_per_item, 1e-9))
    (e0, d0, w0), (e1, d1, w1) = next(
        ((a, b) for a, b in itertools.pairwise(REGULARIZATION) if x <= math.log(b[0])),
        REGULARIZATION[-2:],
    )
    t = min(1.0, max(0.0, (x - math.log(e0)) / math.log(e1 / e0)))
    return round(d0 + t * (d1 - d0), 3), round(w0 + t * (w1 - w0), 3)


@dataclass
class SequentialConfig(ModelConfig):
    objective: str = "causal"  # "causal" (next item, SASRec) or "masked" (masked items, BERT4Rec)
    max_len: int = 50  # most recent items the model reads (ml-100k test NDCG@10: 0.114 at 50, 0.086 at 200)
    dim: int = 64
    inner: int = 256  # feed-forward size
    layers: int = 2
    heads: int = 2
    block: str = "prenorm"  # "prenorm" (pre-norm, GELU) | "sasrec" (the original SASRec block and input)
    dropout: float | None = None  # None: from the log's size (REGULARIZATION: 0.4 on ml-100k)
    # "auto": "ce" up to FULL_SOFTMAX_ITEMS items, else "inbatch" | "ce" full softmax | "inbatch": the
    # batch's targets + uniform negatives with log-Q correction | "sampled" softmax | "gbce" | "bce"
    loss: str = "auto"
    negatives: int = 256  # uniform negatives for inbatch / sampled / gbce (bce always uses one)
    gbce_t: float = 0.75
    mask_prob: float = 0.2  # masked objective: share of positions masked
    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float | None = None  # AdamW; None: from the log's size (REGULARIZATION: 1.0 on ml-100k)
    optimizer: str = "adamw"  # "adamw" | "adam" | "sgd" (momentum 0.9; for DP-SGD, whose noise Adam scales up)
    row_decay: bool = True  # weight decay of the item table only on the rows a step touches (TrainConfig.row_decay)
    patience: int = 20  # ml-100k, 3 seeds: valid NDCG@10 0.1174 at 20, 0.1142 at 10 (it stopped improving runs)
    ema: float = 0.0  # > 0: validate and keep a moving average of the weights (decay per step)
    shift_windows: bool = False  # each epoch, histories are cut into windows at new random boundaries
    pretrain_epochs: int = 0  # > 0: masked-item pretraining first, then the objective above
    init_from: str | None = None  # a run or model directory whose weights to start from
    amp: bool | None = None  # bf16 autocast; None: where bf16 is native (lmrec.train.trainer.fast_bf16)
    compile: bool = False  # torch.compile the encoder
    # "id" | "text" (text alone) | "fused" (gated ID + text) | "aligned" (ID, else text) | "late" (ID in,
    # ID + text logits out)
    item_repr: str = "id"
    # "random" | "text": ID rows start from the item text embeddings, PCA-whitened to dim (lmrec.text.whiten)
    item_init: str = "random"
    item_init_pull: float = 0.0  # item_init=text: weight of an L2 pull of the ID rows towards their text start
    # item_init=text: what weight decay pulls the ID rows towards: "zero", or "text", their text start
    # (decoupled, L2-SP), so an item keeps what its text says unless its interactions say otherwise
    item_decay_to: str = "zero"
    item_init_scale: float = 0.02  # item_init=text: RMS of the whitened rows' entries (random init: 0.02)
    text_encoder: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2) or a local model directory
    text_template: str | None = None  # str.format over catalog columns; None: title, year, genres, text
    # the item blocks the item vectors hold, e.g. "text,genres,year,image" (lmrec.features); "text": the text alone
    item_features: str = "text"
    diversity_weight: float = 0.0  # > 0: penalise the expected category similarity of the predicted top (ce loss)
    id_dropout: float = 0.0  # fused, late: share of items read from their text alone in each training step
    teacher: str | None = None  # a sequential run or model over the same items to distil from (loss=ce)
    distill_weight: float = 0.5  # α: weight of the teacher's softened distribution against the labels
    distill_temperature: float = 2.0
    # score-level text fusion (lmrec.models.text_fusion): fusion.weight, fusion.choose, fusion.recent
    fusion: TextFusionConfig = field(default_factory=TextFusionConfig)
    # adversarial training of the item rows (APR; lmrec.models.sequential.adversarial): adversarial.eps, .weight
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)

    def validate(self) -> None:
        if self.item_init not in ITEM_INITS:
            raise ConfigError(f"item_init must be one of {ITEM_INITS}, got {self.item_init!r}")
        if self.item_repr not in ITEM_REPRS:
            raise ConfigError(f"item_repr must be one of {ITEM_REPRS}, got {self.item_repr!r}")
        if self.block not in BLOCKS:
            raise ConfigError(f"block must be one of {tuple(BLOCKS)}, got {self.block!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        for key in ("max_len", "dim", "inner", "layers", "heads", "negatives", "epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")
        if self.teacher and self.loss not in ("ce", "auto"):
            raise ConfigError("distilling from a teacher needs loss=ce (it reads the full distribution)")
        if not (0 <= self.distill_weight <= 1 and self.distill_temperature > 0):
            raise ConfigError("need 0 <= distill_weight <= 1 and distill_temperature > 0")
        if self.diversity_weight < 0 or (self.diversity_weight > 0 and self.loss not in ("ce", "auto")):
            raise ConfigError("diversity_weight must be >= 0 and needs loss=ce (it reads the full distribution)")
        if self.item_init_pull < 0 or (self.item_init_pull > 0 and self.item_init != "text"):
            raise ConfigError("item_init_pull must be >= 0 and needs item_init=text (the rows it pulls towards)")
        if self.item_decay_to not in ("zero", "text") or (self.item_decay_to == "text" and self.item_init != "text"):
            raise ConfigError(f"item_decay_to must be zero or text (needs item_init=text), got {self.item_decay_to!r}")
        if self.item_init_scale <= 0:
            raise ConfigError(f"item_init_scale must be > 0, got {self.item_init_scale}")
        dropout = 0.0 if self.dropout is None else self.dropout
        if not (0 <= dropout < 1 and 0 <= self.id_dropout < 1 and 0 < self.mask_prob < 1 and self.lr > 0):
            raise ConfigError("need 0 <= dropout < 1, 0 <= id_dropout < 1, 0 < mask_prob < 1 and lr > 0")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")

    @property
    def dropout_value(self) -> float:
        """``dropout``; while it is open (None, before :meth:`for_data`), the sparse-log value, which
        is what an encoder built outside ``fit`` (a profile, a test) uses."""
        return OPEN[1] if self.dropout is None else self.dropout

    @property
    def weight_decay_value(self) -> float:
        """``weight_decay``, the same way."""
        return OPEN[2] if self.weight_decay is None else self.weight_decay

    def for_data(self, train: Dataset) -> SequentialConfig:
        """This config, with a ``dropout`` or ``weight_decay`` left as None set from the training
        log's events per item (:func:`regularization`); values given explicitly are kept."""
        dropout, decay = regularization(len(train.interactions) / max(1, train.n_items))
        chosen = {"dropout": dropout, "weight_decay": decay}
        return self.updated({k: v for k, v in chosen.items() if getattr(self, k) is None})


@dataclass
class BERT4RecConfig(SequentialConfig):
    objective: str = "masked"
    # ml-100k, 3 seeds (benchmarks/tune.py --model bert4rec): valid NDCG@10 0.0831 at dropout 0.1,
    # 0.0687 at SASRec's 0.4 (test 0.0651 against 0.0508); a one-seed screen put 0.0 and 0.2 below 0.1
    dropout: float = 0.1
    # SASRec's earlier 0.3, kept: 0 and 1.0 were no better on validation in the one-seed screen
    # (and at 1.0 a short masked-item fit learns too little: the conformance checkerboard fell to 0.13)
    weight_decay: float = 0.3


@dataclass
class TextSequentialConfig(SequentialConfig):
    """``text-sasrec``: sasrec whose ID table starts from the items' whitened text, with score-level
    text fusion whose weight is chosen on validation (0 among the choices: where text does not help,
    the model is its ID part), and items without training interactions (cold, or added later) read
    from their text mapped into the ID space. The recipe that won on both sparse shared logs
    (benchmarks/lm_sparse.py; RESULTS "Language-model items…" and "Random batches…"); the fused,
    gated table it replaces lost to sasrec there."""

    item_repr: str = "aligned"
    item_init: str = "text"
    fusion: TextFusionConfig = field(default_factory=lambda: TextFusionConfig(choose=(0.0, 2.0, 4.0, 6.0, 8.0)))
