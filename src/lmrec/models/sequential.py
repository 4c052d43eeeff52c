"""Sequential transformers: one encoder, two objectives.

* ``sasrec`` — causal self-attention trained to predict the next item at every position of a
  sequence in one pass (Kang & McAuley 2018), with full-catalog softmax cross-entropy by default
  ("SASRec+", Klenitskiy & Vasilev 2023).
* ``bert4rec`` — bidirectional self-attention trained by masked-item modelling (Sun et al. 2019);
  at inference a [MASK] is appended after the history and its prediction is the next item.

Items are represented by an ID embedding (``item_repr="id"``), by a projection of their text
embedding from a sentence encoder (``"text"``: an item never seen in training is scored as soon as
its text is known, and the weights transfer to another catalog), by a learned per-dimension
gate between the two (``"fused"``), or by its ID row where it has a trained one and by its text
mapped into the ID space otherwise (``"aligned"``: the text adaptor learns to predict trained ID
rows, so warm items score exactly as with IDs and cold ones from text), or late (``"late"``: the
sequence is read through ID rows alone, and the text enters at the output, each item's logit the
ID one plus one from its frozen text embedding through a learned adaptor that starts at zero, so
training starts from the ID model; an item without a trained ID row is scored by its text part).

Both can be pretrained by masked-item modelling and fine-tuned on their own objective
(``pretrain_epochs``), or start from a saved run (``init_from``). ``score`` returns logits over the
catalog; ``distribution`` turns them into p(next item | history).

Item rows are shifted by one inside the network: 0 is padding, 1..n the items, n+1 the mask token.
Training sequences are cut into windows from the end of each user's history (every interaction is
a target once), windows of similar length are batched together so little compute goes to padding.
"""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import length_buckets, pad_right, sequence_windows
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, ModelConfig, Queries, ReadsItemText
from lmrec.models.registry import load_model
from lmrec.models.text_fusion import TextFusion, TextFusionConfig
from lmrec.text.whiten import whiten
from lmrec.train.losses import (
    bce_one_negative,
    chunked_softmax_ce,
    distillation_loss,
    gbce_loss,
    logq_softmax_loss,
    sampled_softmax_loss,
    sequence_ce_per_example,
    softmax_ce,
)
from lmrec.train.privacy import DPSpec, DPStrategy
from lmrec.train.trainer import TrainConfig, fast_bf16

S = TypeVar("S", bound="SequentialRecommender")
E = TypeVar("E", bound="SequenceEncoder")
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
    item_repr: str = "fused"
    # Cold items are read from text alone; training some items that way too (DropoutNet, Volkovs et
    # al. 2017) keeps text-only rows on the same scale as fused ones instead of outscoring them.
    id_dropout: float = 0.2


class ByteDropout(nn.Module):
    """Dropout whose mask is drawn as random bytes, 8 per 64-bit word (keep where byte ≥ 256·p, so
    p is rounded to 1/256). torch's CPU dropout draws a float per element, and that was 40 % of a
    small transformer's training step on CPU; this draws an eighth of the words, ~3× faster."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= round(self.p * 256)
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))


class _MaskedScale(torch.autograd.Function):
    """x · mask · scale, keeping only the (bool) mask for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so saved models and the pruner read it alike; attention
    probabilities dropped out with :class:`ByteDropout`."""

    def __init__(self, dim: int, heads: int, dropout: float, linear_in: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.linear_in = heads, dim // heads, linear_in
        if linear_in:  # DP-SGD: an nn.Linear (in_proj.weight / .bias), which Opacus has a per-example rule for
            self.in_proj = nn.Linear(dim, 3 * dim)
            nn.init.xavier_uniform_(self.in_proj.weight)
            nn.init.zeros_(self.in_proj.bias)
        else:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
            nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = ByteDropout(dropout)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, dim) the queries, and the keys and values unless ``kv`` (B, L, dim) gives them;
        ``mask`` (B or 1, 1, L or 1, L) True where a query may not see a key."""
        b, length, dim = x.shape
        qkv = self.in_proj(x) if self.linear_in else nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        if kv is not None:  # the query part of x, the key and value parts of kv
            kv_proj = (
                self.in_proj(kv) if self.linear_in else nn.functional.linear(kv, self.in_proj_weight, self.in_proj_bias)
            )
            qkv = torch.cat([qkv[..., :dim], kv_proj[..., dim:]], dim=-1)
        q, k, v = qkv.view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        attention = self.dropout(torch.softmax(scores, dim=-1))
        return self.out_proj((attention @ v).transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block with GELU: the computation of ``nn.TransformerEncoderLayer(
    norm_first=True, activation="gelu")`` and its parameter names, with faster dropout."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(dim, inner), nn.Linear(inner, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2 = ByteDropout(dropout), ByteDropout(dropout), ByteDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), mask))
        return x + self.dropout2(self.linear2(self.dropout(nn.functional.gelu(self.linear1(self.norm2(x))))))


class SASRecBlock(Block):
    """The block of the original SASRec (Kang & McAuley 2018, as the tuned CE-SASRec baselines
    run it): queries from the normalised input attend over the raw input, and the normalised
    queries are the residual; the sum is normalised and goes through a ReLU feed-forward with its
    own residual. The same parameters (and names) as :class:`Block`."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = self.norm2(q + self.self_attn(q, mask, kv=x))
        return x + self.dropout2(self.linear2(nn.functional.relu(self.dropout(self.linear1(x)))))


BLOCKS = {"prenorm": Block, "sasrec": SASRecBlock}


class Blocks(nn.Module):
    """The stack of blocks (``layers``, as in ``nn.TransformerEncoder``)."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float, layers: int, kind: str = "prenorm") -> None:
        super().__init__()
        self.layers = nn.ModuleList(BLOCKS[kind](dim, heads, inner, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def causal_mask(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, L, L) True above the diagonal: what a position may not see in causal attention."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)[None, None]


def transformer_blocks(dim: int, heads: int, inner: int, dropout: float, layers: int, kind: str = "prenorm") -> Blocks:
    """Transformer blocks (batch first) of ``kind`` (:data:`BLOCKS`); the caller's mask decides
    causal or not."""
    return Blocks(dim, heads, inner, dropout, layers, kind)


class SequenceEncoder(nn.Module):
    """Item embeddings + learned positions + transformer blocks; output tied to item embeddings."""

    text: torch.Tensor  # buffers, declared for type checkers
    is_item: torch.Tensor
    id_trained: torch.Tensor

    def __init__(self, n_items: int, cfg: SequentialConfig, text_dim: int = 0) -> None:
        super().__init__()
        self.n_items, self.max_len, self.item_repr = n_items, cfg.max_len, cfg.item_repr
        # block=sasrec reads item rows scaled by sqrt(dim) plus positions, not normalised
        self.input_scale = math.sqrt(cfg.dim) if cfg.block == "sasrec" else None
        self.items = nn.Embedding(n_items + 2, cfg.dim, padding_idx=0)  # 0 pad, n+1 mask
        if cfg.item_repr != "id":
            if text_dim < 1:
                raise ConfigError(f"item_repr={cfg.item_repr!r} needs item text embeddings")
            # rows aligned with the shifted ids; pad and mask rows stay zero
            self.register_buffer("text", torch.zeros(n_items + 2, text_dim))
            out = nn.Linear(cfg.dim, cfg.dim)
            self.adaptor = nn.Sequential(nn.Linear(text_dim, cfg.dim), nn.GELU(), out)
            self.gate = nn.Parameter(torch.zeros(cfg.dim))  # fused: sigmoid(gate) weighs the ID part
            is_item = torch.zeros(n_items + 2, 1, dtype=torch.bool)
            is_item[1 : n_items + 1] = True
            self.register_buffer("is_item", is_item, persistent=False)
            # fused, aligned: 1 where an item's ID row was trained; 0 reads the item from its text (cold items)
            self.register_buffer("id_trained", torch.ones(n_items + 2, 1), persistent=False)
            if cfg.item_repr == "late":  # the text logits start at zero: training starts from the ID model
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
        self.positions = nn.Embedding(cfg.max_len + 1, cfg.dim)  # +1: the appended mask slot
        self.dropout = ByteDropout(cfg.dropout_value)
        self.norm = nn.LayerNorm(cfg.dim)
        self.blocks = transformer_blocks(cfg.dim, cfg.heads, cfg.inner, cfg.dropout_value, cfg.layers, cfg.block)
        self.final_norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    training_rounds = 0  # times put in training mode (train()): a cached inference table is stale after one

    def train(self: E, mode: bool = True) -> E:
        if mode:
            self.training_rounds += 1
        return super().train(mode)

    def item_table(self, id_drop: torch.Tensor | None = None) -> torch.Tensor:
        """The (n_items + 2, dim) item representations the output scores (and, but for ``late``, the
        input reads). ``id_drop`` (bool, n_items + 2, 1): fused or late rows to read from their text
        alone (ID dropout in training)."""
        if self.item_repr == "id":
            return self.items.weight
        text = self.adaptor(self.text)
        trained = self.id_trained if id_drop is None else self.id_trained * ~id_drop
        if self.item_repr == "fused":
            g = torch.sigmoid(self.gate) * trained
            text = g * self.items.weight + (1 - g) * text
        elif self.item_repr == "late":  # h·(e + a(t)) = the ID logit + the text branch's logit
            text = trained * self.items.weight + text
        elif self.item_repr == "aligned":
            text = torch.where(self.id_trained > 0, self.items.weight, text)
        return torch.where(self.is_item, text, self.items.weight)  # pad and mask keep their own rows

    def alignment_loss(self) -> torch.Tensor:
        """Aligned items: mean squared distance of the text adaptor's rows to the trained ID rows
        (held fixed), so that an item with no ID row gets one predicted from its text."""
        trained = self.id_trained[1 : self.n_items + 1, 0] > 0
        mapped = self.adaptor(self.text[1 : self.n_items + 1][trained])
        return (mapped - self.items.weight[1 : self.n_items + 1][trained].detach()).pow(2).sum(1).mean()

    def mark_trained(self, trained: torch.Tensor) -> None:
        """Tell a fused table which items (bool, n_items) had training interactions: the others
        have an untrained ID row, so they are represented by their text alone."""
        if self.item_repr != "id":
            self.id_trained[1 : self.n_items + 1, 0] = trained.to(self.id_trained)

    def forward(self, seq: torch.Tensor, causal: bool, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) shifted item ids, right-padded with 0 → hidden states (B, L, dim)."""
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        if self.item_repr == "late":  # text only at the output: the input reads ID rows alone
            table = self.items.weight
        elif table is None:
            table = self.item_table()
        x = self.embed(nn.functional.embedding(seq, table, padding_idx=0), self.positions(pos))
        # causal: padding sits after the real items, so the causal mask alone hides it
        mask = causal_mask(length, seq.device) if causal else (seq == 0)[:, None, None, :]
        return self.final_norm(self.blocks(x, mask))

    def embed(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The blocks' input from the item rows and position rows of a sequence."""
        if self.input_scale is not None:
            return self.dropout(items * self.input_scale + positions)
        return self.dropout(self.norm(items + positions))

    def encode(
        self, seq: torch.Tensor, lengths: torch.Tensor, causal: bool = True, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tensors only (exportable): (B, L) right-padded shifted ids and their (B,) lengths → the
        (B, dim) hidden state at each sequence's last position, the query vector."""
        width = max(1, int(lengths.max())) if not torch.jit.is_tracing() and len(lengths) else seq.shape[1]
        hidden = self(seq[:, :width], causal=causal, table=table)
        return hidden[torch.arange(len(seq), device=seq.device), (lengths - 1).clamp(min=0)]

    def logits(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalog item (rows 1..n of the item table): (..., n_items)."""
        table = self.item_table() if table is None else table
        return hidden @ table[1 : self.n_items + 1].T

    def item_logits(self, hidden: torch.Tensor, shifted_items: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Scores of given items: hidden (N, d), shifted_items (N,) or (N, k)."""
        emb = table[shifted_items]
        if emb.dim() == 2:
            return (hidden * emb).sum(-1)
        return torch.einsum("nd,nkd->nk", hidden, emb)


class PrivateSequenceEncoder(SequenceEncoder):
    """The encoder as DP-SGD trains it: the same computation as :class:`SequenceEncoder` (ID items),
    but every parameter is used through the forward of a module Opacus has a per-example gradient
    rule for — the item table through ``nn.Embedding`` on the way in and a bias-free ``nn.Linear``
    head that shares its weight on the way out (tied, as in the plain model: Opacus adds up the
    two uses of each example), positions looked up per sequence, and attention whose input
    projection is an ``nn.Linear``. ``forward`` returns the logits of every table row, so each
    example's whole loss is computed inside the hooks. :meth:`plain_state` is the state of a plain
    encoder with the same weights, which is what is saved and served."""

    def __init__(self, n_items: int, cfg: SequentialConfig) -> None:
        super().__init__(n_items, cfg)
        for block in self.blocks.layers:
            block.self_attn = SelfAttention(cfg.dim, cfg.heads, cfg.dropout_value, linear_in=True)
        self.head = nn.Linear(cfg.dim, n_items + 2, bias=False)
        self.head.weight = self.items.weight

    def forward(self, seq: torch.Tensor, causal: bool, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) shifted item ids, right-padded with 0 → logits (B, L, n_items + 2) over the
        table's rows (pad and mask rows included: the loss excludes them)."""
        b, length = seq.shape
        pos = torch.arange(length, device=seq.device).expand(b, length)  # batch-first, for the hooks
        x = self.embed(self.items(seq), self.positions(pos))
        mask = causal_mask(length, seq.device) if causal else (seq == 0)[:, None, None, :]
        return self.head(self.final_norm(self.blocks(x, mask)))

    def load_plain(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a plain encoder's weights."""
        self.load_state_dict(
            {_linear_name(k): v for k, v in state.items()} | {"head.weight": state["items.weight"]}, strict=True
        )

    def plain_state(self) -> dict[str, torch.Tensor]:
        """These weights under the plain encoder's names (no head: it is the item table)."""
        return {_plain_name(k): v for k, v in self.state_dict().items() if not k.startswith("head.")}


def _linear_name(key: str) -> str:
    return key.replace("self_attn.in_proj_weight", "self_attn.in_proj.weight").replace(
        "self_attn.in_proj_bias", "self_attn.in_proj.bias"
    )


def _plain_name(key: str) -> str:
    return key.replace("self_attn.in_proj.weight", "self_attn.in_proj_weight").replace(
        "self_attn.in_proj.bias", "self_attn.in_proj_bias"
    )


class SequentialRecommender(ReadsItemText, DotProductModel):
    """Shared fit/score glue of ``sasrec`` and ``bert4rec``."""

    config: SequentialConfig

    devices = ("cpu", "cuda", "mps")
    private = True  # user-level DP-SGD (item_repr=id): _fit_private

    def fit(self: S, train: Dataset, valid: EvalSet | None = None, options: FitOptions | None = None) -> S:
        """As every model's, with the regularisation the config leaves open chosen for ``train``
        first (:meth:`SequentialConfig.for_data`); the saved config holds the numbers used."""
        self.config = self.config.for_data(train)
        return super().fit(train, valid, options)

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg = self.config
        if options.dp is not None:
            self._check_private()
        reads_text = cfg.item_repr != "id"
        needs_text = reads_text or cfg.item_init == "text" or cfg.fusion.on
        text = self._text_vectors(train, options) if needs_text else None
        self.net = SequenceEncoder(self.n_items, cfg, text.shape[1] if text is not None and reads_text else 0)
        self.net.to(self.device)
        if text is not None and reads_text:
            self.net.text[1 : self.n_items + 1] = torch.from_numpy(text)
        self.init_rows: torch.Tensor | None = None  # the text start of the ID rows, for item_init_pull
        if text is not None and cfg.item_init == "text":
            # isotropic, at item_init_scale (the random init's 0.02 by default); then trained (LLMInit, WhitenRec)
            rows = whiten(text, cfg.dim, scale=cfg.item_init_scale, seed=options.seed)
            self.init_rows = torch.from_numpy(rows).to(self.device)
            with torch.no_grad():
                self.net.items.weight[1 : self.n_items + 1] = self.init_rows
        if cfg.init_from:
            self._load_pretrained(Path(cfg.init_from))
        histories = QueryBatch.from_interactions(train.interactions, np.arange(self.n_users))
        self.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
        # Items without training interactions are never training targets: keep them out of the
        # softmax so their (text) representation is not pushed down before anyone has seen them.
        self.unseen = (self.popularity == 0).to(self.device)
        self.net.mark_trained(~self.unseen)
        self.category_vectors = _unit_category_vectors(train) if cfg.diversity_weight > 0 else None
        self.teacher = self._load_teacher(Path(cfg.teacher)) if cfg.teacher else None
        if cfg.loss == "auto":
            why = "full softmax" if self.loss_kind == "ce" else "in-batch + uniform negatives, log-Q corrected"
            options.say(f"{self.name}: loss={self.loss_kind} ({why}) for {self.n_items} items")
        gen = options.torch_generator()
        self.training_log = {}
        if options.dp is not None:
            self._fit_private(histories, options, options.dp, gen)
            return
        if cfg.pretrain_epochs > 0:
            task = SequenceTask(self, histories, "masked")
            pretrain = self._train(
                task, self._train_config(cfg.pretrain_epochs, "pretrain"), options, gen, phase="pretrain"
            )
            self.training_log["pretrain"] = pretrain
        task = SequenceTask(self, histories, cfg.objective)
        config = self._train_config(cfg.epochs, cfg.objective)
        self.training_log.update(self._train(task, config, options, gen, valid=valid, phase=cfg.objective))
        if text is not None and cfg.fusion.on:
            self._fit_fusion(torch.from_numpy(text), valid, options)

    def _fit_fusion(self, text: torch.Tensor, valid: EvalSet | None, options: FitOptions) -> None:
        """Score-level text fusion over the trained model, its weight chosen on validation."""
        from lmrec.train.validation import validation_ndcg

        self.fusion = TextFusion(self.config.fusion, text)
        if self.config.fusion.choose and valid is not None:
            scores = self.fusion.chosen(lambda: validation_ndcg(self, valid))
            self.training_log["fusion"] = {"valid_ndcg@10": scores, "weight": self.fusion.weight}
            options.say(f"{self.name}: text fusion weight {self.fusion.weight} (validation NDCG@10 {scores})")

    def _check_private(self) -> None:
        """DP-SGD trains the ID model on its own objective with the full-softmax CE, from scratch."""
        cfg = self.config
        needs = {
            "item_repr=id": cfg.item_repr == "id",
            "loss=ce (or auto)": cfg.loss in ("ce", "auto"),
            "pretrain_epochs=0": cfg.pretrain_epochs == 0,
            "no init_from": not cfg.init_from,
            "no teacher": not cfg.teacher,
            "diversity_weight=0": cfg.diversity_weight == 0,
            "item_decay_to=zero": cfg.item_decay_to == "zero",
            "compile=false": not cfg.compile,
            "no text fusion (its weight is chosen on validation users)": not cfg.fusion.on,
        }
        if not all(needs.values()):
            missing = ", ".join(k for k, ok in needs.items() if not ok)
            raise ConfigError(f"{self.name} with differential privacy needs {missing}")

    def _fit_private(self, histories: QueryBatch, options: FitOptions, spec: DPSpec, gen: torch.Generator) -> None:
        """User-level DP-SGD (:mod:`lmrec.train.privacy`): each step Poisson-samples users at rate
        batch_size / users and each sampled user gives one window of their history, its loss the
        mean CE over the window's positions; Opacus clips each user's gradient and adds noise.
        ``epochs`` of users / batch_size steps, no early stopping (validation would spend privacy
        the accountant does not count), no bf16 autocast (per-example gradients in float32). The
        :class:`PrivateSequenceEncoder` trains, and its weights become the plain encoder's."""
        cfg = self.config
        rate = min(1.0, cfg.batch_size / self.n_users)
        per_epoch = max(1, round(1 / rate))
        strategy = DPStrategy(spec, self.n_users, rate, cfg.epochs * per_epoch, seed=options.seed)
        private = PrivateSequenceEncoder(self.n_items, cfg)
        private.load_plain(self.net.state_dict())  # the plain model's initialisation
        private.to(self.device)
        task = PrivateSequenceTask(self, private, histories, rate, per_epoch)
        config = replace(self._train_config(cfg.epochs, f"{cfg.objective} (DP-SGD)"), amp=False)
        self.training_log.update(self._train(task, config, replace(options, strategy=strategy), gen, phase="dp"))
        self.training_log["privacy"] = strategy.report()
        options.say(
            f"{self.name}: user-level DP " + ", ".join(f"{k} {v}" for k, v in self.training_log["privacy"].items())
        )
        self.net.load_state_dict(private.plain_state())
        self.net.eval()

    def _train_config(self, epochs: int, desc: str) -> TrainConfig:
        cfg = self.config
        return TrainConfig(
            epochs=epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay_value,
            optimizer=cfg.optimizer,
            row_decay=cfg.row_decay,
            patience=cfg.patience,
            ema=cfg.ema,
            amp=fast_bf16(self.device) if cfg.amp is None else cfg.amp,
            compile=cfg.compile,
            desc=desc,
        )

    @property
    def scores_new_items(self) -> bool:
        """Whether items unknown at training time can be scored from their text (:meth:`with_new_items`)."""
        return self.config.item_repr != "id"

    def with_new_items(self, vectors: np.ndarray) -> SequentialRecommender:
        """A copy of this model that also scores ``len(vectors)`` new items, rows ``n_items`` onwards,
        from their text embeddings (:meth:`encode_items`) alone. This model is left untouched."""
        if not self.scores_new_items:
            raise ConfigError(f"{self.name} with item_repr={self.config.item_repr!r} cannot score items from text")
        n, extra = self.n_items, len(vectors)
        state = self.net.state_dict()
        if vectors.ndim != 2 or vectors.shape[1] != state["text"].shape[1]:
            raise ConfigError(f"new item vectors must be (n, {state['text'].shape[1]}), got {vectors.shape}")

        def grow(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # new rows go before the mask row
            return torch.cat([table[: n + 1], rows.to(table), table[n + 1 :]])

        state["items.weight"] = grow(state["items.weight"], torch.zeros(extra, self.config.dim))
        state["text"] = grow(state["text"], torch.from_numpy(np.asarray(vectors, np.float32)))
        out = copy.copy(self)
        out.n_items = n + extra
        out.net = SequenceEncoder(n + extra, self.config, state["text"].shape[1]).to(self.device)
        out.net.load_state_dict(state)
        out.net.eval()
        out.popularity = torch.cat([self.popularity, torch.zeros(extra)])
        out.fusion = self.fusion.grown(vectors) if self.fusion is not None else None
        out.unseen = out.popularity == 0
        out.net.mark_trained(~out.unseen)
        return out

    def _load_teacher(self, path: Path) -> SequentialRecommender:
        """A trained sequential model over the same items that reads at least as far back."""
        teacher = load_sequential(path, "teacher", self.n_items)
        if teacher.config.max_len < self.config.max_len:
            raise ConfigError(f"teacher {path} reads {teacher.config.max_len} items, the student {self.config.max_len}")
        teacher.net.to(self.device).eval()
        return teacher

    def _load_pretrained(self, path: Path) -> None:
        """Start from a saved sequential model. Over the same catalog every weight is loaded;
        over another catalog (transfer) a text-only model loads everything but the item rows."""
        source = load_sequential(path, "init_from")
        same_catalog = source.n_items == self.n_items
        if not same_catalog and self.config.item_repr != "text":
            raise ConfigError(
                f"init_from {path}: a model over another catalog ({source.n_items} items, here {self.n_items}) "
                "transfers only with item_repr=text; otherwise it needs the same items"
            )
        own = self.net.state_dict()
        theirs = {k: v for k, v in source.net.state_dict().items() if k in own and k != "text"}
        if not same_catalog:
            theirs.pop("items.weight", None)
        mismatched = [k for k, v in theirs.items() if v.shape != own[k].shape]
        if mismatched:
            raise ConfigError(f"init_from {path}: the saved model has other dimensions ({mismatched[:3]})")
        self.net.load_state_dict(theirs, strict=False)

    def _id_drop(self, gen: torch.Generator) -> torch.Tensor | None:
        """Which fused or late rows this training step reads from text alone (None: no ID dropout)."""
        if self.config.item_repr not in ("fused", "late") or self.config.id_dropout == 0:
            return None
        return (torch.rand(self.n_items + 2, 1, generator=gen) < self.config.id_dropout).to(self.device)

    def _mask(self, seq: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """BERT4Rec masking: each real item is masked with ``mask_prob``; in one sequence out of
        ten only the last item is masked, which is exactly the inference task."""
        real = seq > 0
        draw = torch.rand(seq.shape, generator=gen).to(seq.device) < self.config.mask_prob
        lengths = real.sum(1)
        last_only = (torch.rand(len(seq), generator=gen) < 0.1).to(seq.device)
        last = torch.zeros_like(real)
        last[torch.arange(len(seq), device=seq.device), (lengths - 1).clamp(min=0)] = True
        masked = torch.where(last_only.unsqueeze(1), last, draw) & real
        masked |= last & real & ~masked.any(1, keepdim=True)  # every sequence has a target
        inputs = seq.masked_fill(masked, self.n_items + 1)
        targets = seq.masked_fill(~masked, 0)
        return inputs, targets

    def _loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, table: torch.Tensor
    ) -> torch.Tensor:
        """hidden (N, d) at supervised positions, targets (N,) item rows."""
        cfg, net = self.config, self.net
        if self.loss_kind == "inbatch":
            return self._inbatch_loss(hidden, targets, gen, table)
        if self.loss_kind == "ce" and self.category_vectors is not None:
            logits = net.logits(hidden, table).masked_fill(self.unseen, float("-inf"))
            return softmax_ce(logits, targets) + cfg.diversity_weight * expected_similarity(
                logits, self.category_vectors
            )
        if self.loss_kind == "ce":  # over the items seen in training, never holding all the logits
            items, seen = table[1 : self.n_items + 1], ~self.unseen
            if not bool(seen.all()):  # each target's place among the seen items
                items, targets = items[seen], (torch.cumsum(seen, 0) - 1)[targets]
            return chunked_softmax_ce(hidden, items, targets)
        k = 1 if cfg.loss == "bce" else cfg.negatives
        neg = torch.randint(0, self.n_items, (len(targets), k), generator=gen).to(targets.device)
        pos_logits = net.item_logits(hidden, targets + 1, table)
        neg_logits = net.item_logits(hidden, neg + 1, table)
        if cfg.loss == "bce":
            return bce_one_negative(pos_logits, neg_logits[:, 0])
        if cfg.loss == "gbce":
            return gbce_loss(pos_logits, neg_logits, self.n_items, cfg.gbce_t)
        return sampled_softmax_loss(pos_logits, neg_logits)

    def _distill(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        keep: torch.Tensor,
        table: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor:
        """The student's full-catalog distribution pulled towards the teacher's at the same
        positions of the same inputs (softened by the temperature), and towards the labels."""
        assert self.teacher is not None
        cfg, teacher = self.config, self.teacher.net
        with torch.no_grad():
            t_table = teacher.item_table()
            t_logits = teacher.logits(teacher(inputs, causal=causal, table=t_table)[keep], t_table)
        logits = self.net.logits(hidden, table)
        unseen = self.unseen
        return distillation_loss(
            logits.masked_fill(unseen, float("-inf")),
            t_logits.masked_fill(unseen, float("-inf")),
            targets,
            cfg.distill_temperature,
            cfg.distill_weight,
        )

    def _inbatch_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, table: torch.Tensor
    ) -> torch.Tensor:
        """Softmax over the batch's target items and ``negatives`` uniform ones, shared by every
        position, with the log-Q correction: an item is a candidate about N·p(item) + k/n times
        per batch (p its training frequency), so that is subtracted from its logit."""
        uniform = torch.randint(0, self.n_items, (self.config.negatives,), generator=gen).to(targets.device)
        candidates, inverse = torch.unique(torch.cat([targets, uniform]), return_inverse=True)
        freq = self.popularity.to(targets.device) / self.popularity.sum()
        log_q = torch.log(len(targets) * freq[candidates] + self.config.negatives / self.n_items)
        logits = hidden @ table[candidates + 1].T
        return logq_softmax_loss(logits, log_q, inverse[: len(targets)])

    @property
    def loss_kind(self) -> str:
        """The loss in use: ``auto`` resolved by the catalog's size."""
        if self.config.loss != "auto":
            return self.config.loss
        return "ce" if self.n_items <= FULL_SOFTMAX_ITEMS else "inbatch"

    # -- inference --------------------------------------------------------------------------------
    _table_cache: tuple[weakref.ref[nn.Module], tuple[Any, ...], torch.Tensor] | None = None

    def inference_table(self) -> torch.Tensor:
        """The encoder's item table (:meth:`SequenceEncoder.item_table`) for scoring, without
        gradient. A text model's table runs the text adaptor over the whole catalog, which was most
        of a served request's time (twice per request); in eval mode it is computed once per model
        state and kept. The state is the encoder object, how often it was put in training mode (a
        fused optimizer step changes weights without moving their version counters) and the version
        counter and storage of each of its parameters and buffers, which every other in-place change
        moves (``load_state_dict``, an EMA swap, new item text), so a changed model recomputes it.
        Training never reads this: its loss calls ``item_table`` itself, with gradient."""
        net = self.net
        if net.item_repr == "id" or net.training:  # an ID table is the weight itself: nothing to keep
            with torch.no_grad():
                return net.item_table()
        tensors = (*net.parameters(), *net.buffers())
        state = (net.training_rounds, *((t._version, t.data_ptr()) for t in tensors))
        cached = self._table_cache
        if cached is not None and cached[0]() is net and cached[1] == state:
            return cached[2]
        with torch.no_grad():
            table = net.item_table()
        self._table_cache = (weakref.ref(net), state, table)
        return table

    fusion: TextFusion | None = None  # score-level text fusion (fusion.*), once fitted

    @property
    def fused(self) -> bool:
        """Whether scores add the text similarity (:mod:`lmrec.models.text_fusion`)."""
        return self.fusion is not None and self.fusion.weight > 0

    def item_embeddings(self) -> torch.Tensor:
        """The rows the encoder scores with (ID, text, fused or aligned), without pad and mask;
        with text fusion on, the unit text rows appended."""
        rows = self.inference_table()[1 : self.n_items + 1].detach().float().cpu()
        return self.fusion.items(rows) if self.fused else rows  # type: ignore[union-attr]

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """The encoder's last hidden state after each history (one forward pass per 128 queries of
        similar length); an empty history has none (``exact`` false: it is scored by popularity)."""
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        masked = self.config.objective == "masked"
        seq, lengths = histories_to_inputs(batch, self.n_items, self.config.max_len, append_mask=masked)
        out = torch.empty(len(batch), self.config.dim)
        # shortest histories first: each chunk is cut to its longest history (encode), so a sparse
        # log's many short histories are not padded to max_len (5x fewer positions on Amazon Games)
        order = torch.argsort(lengths, stable=True)
        with torch.no_grad():
            table = self.inference_table()
            for s in range(0, len(batch), 128):
                rows = order[s : s + 128]
                part, n = seq[rows].to(self.device), lengths[rows].to(self.device)
                out[rows] = self.net.encode(part, n, causal=not masked, table=table).float().cpu()
        queries = Queries(out, torch.zeros(len(batch)), lengths > 0)
        return self.fusion.queries(queries, batch) if self.fused else queries  # type: ignore[union-attr]

    def fallback_scores(self, batch: QueryBatch) -> torch.Tensor:
        """Nothing to read: training popularity."""
        return torch.log1p(self.popularity).unsqueeze(0).expand(len(batch), -1)

    def distribution(self, history: list[int] | np.ndarray, temperature: float = 1.0) -> torch.Tensor:
        """p(next item | history) over the catalog: a softmax of the logits at ``temperature``."""
        if temperature <= 0:
            raise ConfigError("temperature must be > 0")
        logits = self.score(QueryBatch.from_histories([-1], [np.asarray(history, dtype=np.int64)]))[0]
        return torch.softmax(logits.double() / temperature, dim=0)

    def state(self) -> dict[str, torch.Tensor]:
        fusion = {"fusion.text": self.fusion.text} if self.fusion is not None else {}
        return {**{f"net.{k}": v for k, v in self.net.state_dict().items()}, "popularity": self.popularity, **fusion}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not hasattr(self, "net"):
            text_dim = tensors["net.text"].shape[1] if "net.text" in tensors else 0
            self.net = SequenceEncoder(self.n_items, self.config, text_dim)
        self.net.load_state_dict({k[4:]: v.clone() for k, v in tensors.items() if k.startswith("net.")})
        self.popularity = tensors["popularity"]
        self.unseen = self.popularity == 0
        self.net.mark_trained(~self.unseen)
        if "fusion.text" in tensors:
            self.fusion = TextFusion(self.config.fusion, tensors["fusion.text"])


class SequenceTask:
    """One training phase of a sequential model, for the Trainer: windows of each history batched
    by length; the loss of the objective (next item at every position, or masked items) over the
    supervised positions, plus the alignment term for ``item_repr=aligned``."""

    def __init__(self, model: SequentialRecommender, histories: QueryBatch, objective: str) -> None:
        self.model, self.module, self.causal = model, model.net, objective == "causal"
        cfg = model.config
        # next-item windows hold max_len inputs and one more target; a lone item has no target
        self.histories = histories
        self.size, self.shortest = (cfg.max_len + 1, 2) if self.causal else (cfg.max_len, 1)
        self.windows = sequence_windows(histories, self.size, min_length=self.shortest)
        if not self.windows:
            raise ConfigError(f"{model.name}: no training sequence has a target (every history has one item?)")
        self.decay_to: dict[str, torch.Tensor] = {}  # the Trainer's weight decay pulls these rows here, not to 0
        if cfg.item_decay_to == "text":
            assert model.init_rows is not None
            anchor = torch.zeros_like(model.net.items.weight)  # pad and mask rows: to zero, as before
            anchor[1 : model.n_items + 1] = model.init_rows
            self.decay_to["items.weight"] = anchor

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        windows = self.windows
        if self.model.config.shift_windows and self.size > 2:  # window boundaries drawn afresh
            shifts = torch.randint(0, self.size - 1, (len(self.histories),), generator=gen).numpy()
            windows = sequence_windows(self.histories, self.size, min_length=self.shortest, shifts=shifts)
        for batch in length_buckets(windows, self.model.config.batch_size, gen):
            yield pad_right(batch)[0]

    def loss(self, module: nn.Module, seq: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        model, net = self.model, self.model.net
        table = net.item_table(model._id_drop(gen))
        if self.causal:
            inputs, targets = seq[:, :-1], seq[:, 1:]
        else:
            inputs, targets = model._mask(seq, gen)
        hidden = module(inputs, causal=self.causal, table=table)
        keep = targets > 0
        if model.teacher is not None:
            return model._distill(inputs, hidden[keep], targets[keep] - 1, keep, table, self.causal)
        loss = model._loss(hidden[keep], targets[keep] - 1, gen, table)
        if model.config.item_repr == "aligned":
            loss = loss + net.alignment_loss()
        if model.config.item_init_pull > 0:  # a prior: rows stay near their text start unless data says otherwise
            assert model.init_rows is not None
            rows = net.items.weight[1 : model.n_items + 1]
            loss = loss + model.config.item_init_pull * (rows - model.init_rows).square().sum(1).mean()
        return loss


class PrivateSequenceTask:
    """DP-SGD's batches and loss: each step every user (with a target) is drawn with probability
    ``rate`` and contributes one of their training windows, chosen at random — one example per
    user, so clipping it bounds what a user's whole history changes. The loss of an example is the
    mean cross-entropy over its supervised positions (the full softmax over the items seen in
    training), and the batch's loss their mean."""

    def __init__(
        self,
        model: SequentialRecommender,
        module: PrivateSequenceEncoder,
        histories: QueryBatch,
        rate: float,
        steps: int,
    ) -> None:
        self.model, self.module, self.rate, self.steps = model, module, rate, steps
        self.causal = model.config.objective == "causal"
        size, shortest = (model.config.max_len + 1, 2) if self.causal else (model.config.max_len, 1)
        self.windows = [
            sequence_windows(QueryBatch.from_histories([u], [histories.history(u)]), size, min_length=shortest)
            for u in range(len(histories))
        ]
        if not any(self.windows):
            raise ConfigError(f"{model.name}: no training sequence has a target (every history has one item?)")
        # never predicted: the pad row, the mask row and items without training interactions
        n = model.n_items
        self.excluded = torch.cat([torch.ones(1), model.unseen.float().cpu(), torch.ones(1)]).bool().to(model.device)
        assert len(self.excluded) == n + 2

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        has = torch.tensor([len(w) > 0 for w in self.windows])
        for _ in range(self.steps):
            users = torch.nonzero((torch.rand(len(self.windows), generator=gen) < self.rate) & has).squeeze(1)
            if len(users) == 0:  # probability (1 - q)^users: negligible at the rates used
                continue
            picks = torch.rand(len(users), generator=gen)
            pairs = zip(users.tolist(), picks.tolist(), strict=True)
            chosen = [self.windows[u][int(p * len(self.windows[u]))] for u, p in pairs]
            yield pad_right(chosen)[0]

    def loss(self, module: nn.Module, seq: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.causal:
            inputs, targets = seq[:, :-1], seq[:, 1:]
        else:
            inputs, targets = self.model._mask(seq, gen)
        logits = module(inputs, causal=self.causal)
        return sequence_ce_per_example(logits, targets.masked_fill(targets == 0, -1), self.excluded).mean()


def load_sequential(path: str | Path, what: str, n_items: int | None = None) -> SequentialRecommender:
    """The trained sequential model saved at ``path`` (a run directory or its ``model`` folder),
    over ``n_items`` items when given; ``what`` names the option that points there, for errors."""
    path = Path(path)
    model = load_model(path / "model" if (path / "model").is_dir() else path)
    if not isinstance(model, SequentialRecommender):
        raise ConfigError(f"{what} {path}: not a sequential model")
    if n_items is not None and model.n_items != n_items:
        raise ConfigError(f"{what} {path}: a model over {model.n_items} items, here {n_items}")
    return model


class SASRec(SequentialRecommender):
    name = "sasrec"
    config_class = SequentialConfig


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"
    config_class = BERT4RecConfig


class TextSASRec(SequentialRecommender):
    """SASRec whose items are read through a sentence encoder (fused with IDs by default)."""

    name = "text-sasrec"
    config_class = TextSequentialConfig


def expected_similarity(logits: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """E[cos(i, j)] for two items drawn from softmax(logits): ‖Vᵀp‖² with V the unit item vectors.

    Low when the predicted distribution spreads its mass over dissimilar items; used as a
    diversity regulariser. O(n_items · dim) per row, no n_items² similarity matrix.
    """
    p = torch.softmax(logits.float(), dim=-1)
    return (p @ vectors).pow(2).sum(-1).mean()


def _unit_category_vectors(train: Dataset) -> torch.Tensor:
    """Unit-length multi-hot category vectors of the catalog items, (n_items, n_categories)."""
    matrix = train.category_matrix()
    if matrix is None:
        raise ConfigError("diversity_weight needs item categories in the catalog")
    return torch.nn.functional.normalize(torch.from_numpy(matrix), dim=1)


# -- inference inputs ------------------------------------------------------------------------------
def histories_to_inputs(
    batch: QueryBatch, n_items: int, max_len: int, append_mask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded shifted inputs (B, max_len [+1]) with each history's last ``max_len`` known
    items, a [MASK] appended for the masked objective; and the input lengths."""
    width = max_len + 1 if append_mask else max_len
    seq = np.zeros((len(batch), width), dtype=np.int64)
    lengths = np.zeros(len(batch), dtype=np.int64)
    for i in range(len(batch)):
        h = batch.history(i)
        h = h[(h >= 0) & (h < n_items)][-max_len:] + 1
        if len(h) == 0:
            continue
        seq[i, : len(h)] = h
        lengths[i] = len(h)
        if append_mask:
            seq[i, len(h)] = n_items + 1
            lengths[i] += 1
    return torch.from_numpy(seq), torch.from_numpy(lengths)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
