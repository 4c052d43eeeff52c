"""The sequential recommender: fit (text, init, DP, pretraining, the objective, text fusion), the
losses it gives the Trainer, scoring by dot product; the named recipes ``sasrec``, ``bert4rec``,
``text-sasrec``."""

from __future__ import annotations

import copy
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, Queries, ReadsItemText
from lmrec.models.registry import load_model
from lmrec.models.sequential.config import FULL_SOFTMAX_ITEMS, BERT4RecConfig, SequentialConfig, TextSequentialConfig
from lmrec.models.sequential.encoder import PrivateSequenceEncoder, SequenceEncoder, histories_to_inputs
from lmrec.models.sequential.tasks import PrivateSequenceTask, SequenceTask
from lmrec.models.text_fusion import TextFusion
from lmrec.text.whiten import whiten
from lmrec.train.losses import (
    bce_one_negative,
    chunked_softmax_ce,
    distillation_loss,
    gbce_loss,
    logq_softmax_loss,
    sampled_softmax_loss,
    softmax_ce,
)
from lmrec.train.privacy import DPSpec, DPStrategy
from lmrec.train.trainer import TrainConfig, fast_bf16

S = TypeVar("S", bound="SequentialRecommender")


class SequentialRecommender(ReadsItemText, DotProductModel):
    """Shared fit/score glue of ``sasrec`` and ``bert4rec``."""

    config: SequentialConfig

    devices = ("cpu", "cuda", "mps")
    private = True  # user-level DP-SGD (item_repr=id): _fit_private
    federated_per_user: ClassVar[tuple[str, ...] | None] = ()  # every table is shared (state_from_module)

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
            "no adversarial training (its perturbation reads the whole batch's gradient)": not cfg.adversarial.on,
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
        if teacher.fused and self.config.objective != "causal":
            raise ConfigError(
                f"teacher {path} adds text fusion, which reads the items before a position: causal students only"
            )
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
            if self.teacher.fused:  # the teacher's scores as it serves them: text similarity added
                t_logits = t_logits + self.teacher.fusion.position_scores(inputs, keep)  # type: ignore[union-attr]
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

    def state_from_module(self, weights: dict[str, torch.Tensor], train: Dataset) -> dict[str, torch.Tensor]:
        # popularity scores only empty histories; it is counted from the training data
        popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
        return {**{f"net.{k}": v for k, v in weights.items()}, "popularity": popularity}

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
    federated_per_user = None  # federated training runs ID-only models


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
