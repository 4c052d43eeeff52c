"""Multi-task learning over the shared sequential encoder: ``mtl-sasrec``.

One causal transformer (:class:`~lmrec.models.sequential.SequenceEncoder`, as in ``sasrec``) reads
each history; at every position its hidden state feeds several tasks about the *next* interaction:

* ``next_item`` — which item comes next: full-catalog softmax over the tied item embeddings, the
  same loss as ``sasrec``;
* ``regression`` tasks — a value of the next interaction (its ``rating``): MSE;
* ``binary`` tasks — a yes/no of the next interaction (``like``: rating >= 4): BCE.

Regression and binary heads see the history state *and* the target item's embedding
(an MLP on ``[z, e, z * e]``), so they predict "what would this user give that item".

Between the encoder and the heads sits a mixer (per position):

* ``shared`` — shared bottom: every task reads the encoder's state as it is;
* ``mmoe`` — Multi-gate Mixture-of-Experts (Ma et al. 2018): ``experts`` feed-forward experts,
  each task mixes them with its own softmax gate;
* ``ple`` — one level of Progressive Layered Extraction (Tang et al. 2020): ``experts`` shared
  experts plus ``task_experts`` experts of each task; a task's gate mixes the shared ones and its
  own.

Experts are residual (``z = h + Σ g_e · expert_e(h)``), so a task starts from the encoder's state
and learns what to add. Loss weighting is ``fixed`` (each task's weight) or ``uncertainty``
(Kendall et al. 2018: a learned log-variance ``s`` per task, ``w · (exp(-s) · L + s / 2)`` for
classification and ``w · (exp(-s) · L / 2 + s / 2)`` for regression). The Trainer gets the
weighted terms by name.

Validation (``stop_on``) and what is logged: each epoch the model measures next-item NDCG@10 on
the validation users and, when the validation set carries its targets' values
(:class:`RatedEvalSet`; a plain :class:`~lmrec.data.batch.EvalSet` carries items only), RMSE/MAE
of each regression task and AUC/log-loss of each binary one. Early stopping follows the next-item
NDCG by default (the main task: ``score`` ranks by it); ``stop_on="mean"`` follows the mean
relative improvement of every task's main metric over its first validation (NDCG, AUC up; RMSE
down), ``stop_on=<task>`` one task. ``training_log`` holds the per-task losses, validation metrics
and mean gate weights (expert utilisation) of every epoch, and those of the best epoch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import length_buckets, pad_right, sequence_windows
from lmrec.data.splits import Part, Split
from lmrec.errors import ConfigError
from lmrec.evaluate.metrics import auc, log_loss, mae, rmse
from lmrec.models.base import FitOptions, Queries, Recommender
from lmrec.models.sequential import (
    SequenceEncoder,
    SequentialConfig,
    SequentialRecommender,
    histories_to_inputs,
)
from lmrec.train.validation import validation_ndcg

TASK_KINDS = ("next_item", "regression", "binary")
MIXERS = ("shared", "mmoe", "ple")
WEIGHTINGS = ("fixed", "uncertainty")
_SPEC = re.compile(r"^(?P<name>\w+)=(?P<kind>\w+):(?P<column>\w+)(?:>=(?P<threshold>[-+.\deE]+))?$")


# -- tasks ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """One task: its name, kind, weight in the loss and where its target comes from."""

    name: str
    kind: str  # "next_item" | "regression" | "binary"
    column: str | None = None  # interaction column holding the target (regression, binary)
    threshold: float | None = None  # binary: positive when column >= threshold (None: column != 0)
    weight: float = 1.0

    @property
    def metric(self) -> str:
        """The validation metric early stopping reads for this task."""
        return {"next_item": "ndcg@10", "regression": "rmse", "binary": "auc"}[self.kind]


BUILTIN_TASKS: dict[str, TaskSpec] = {
    "next_item": TaskSpec("next_item", "next_item"),
    "rating": TaskSpec("rating", "regression", "rating"),
    "like": TaskSpec("like", "binary", "rating", 4.0),
}


def parse_task(text: str, weight: float = 1.0) -> TaskSpec:
    """A task from its config string: a built-in name (``next_item``, ``rating``, ``like``) or
    ``name=regression:column``, ``name=binary:column`` (positive when non-zero) or
    ``name=binary:column>=threshold``."""
    text = text.strip()
    if text in BUILTIN_TASKS:
        spec = BUILTIN_TASKS[text]
    else:
        match = _SPEC.match(text)
        if match is None:
            raise ConfigError(
                f"task {text!r}: use one of {', '.join(BUILTIN_TASKS)} or name=regression:column, "
                "name=binary:column, name=binary:column>=threshold"
            )
        kind, threshold = match["kind"], match["threshold"]
        if kind not in ("regression", "binary"):
            raise ConfigError(f"task {text!r}: kind must be regression or binary, got {kind!r}")
        if threshold is not None and kind != "binary":
            raise ConfigError(f"task {text!r}: only a binary task takes a threshold")
        spec = TaskSpec(match["name"], kind, match["column"], None if threshold is None else float(threshold))
    if not (weight >= 0 and math.isfinite(weight)):
        raise ConfigError(f"task {spec.name!r}: weight must be a finite number >= 0, got {weight}")
    return TaskSpec(spec.name, spec.kind, spec.column, spec.threshold, weight)


@dataclass(frozen=True)
class RatedEvalSet(EvalSet):
    """An :class:`EvalSet` whose targets carry the values of their interactions (``rating`` …),
    aligned with ``target_items``, so the rating and like heads can be validated too."""

    target_values: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_split(cls, split: Split, part: Part, columns: tuple[str, ...] = ("rating",)) -> RatedEvalSet:
        """``split.eval_set(part)`` with the values of ``columns`` for each target (the first
        interaction of a repeated (user, item) pair, as the eval set keeps it)."""
        base = split.eval_set(part)
        frame = split.frame(part).drop_duplicates(["user", "item"])
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ConfigError(f"no column {missing} in the {part} interactions; columns are {list(frame.columns)}")
        users = base.queries.users
        rows = QueryBatch.from_interactions(frame.assign(item=np.arange(len(frame))), users).items
        if not np.array_equal(frame["item"].to_numpy()[rows], base.target_items):
            raise ConfigError(f"{part} targets do not line up with their interactions")  # a bug, not bad data
        values = {c: frame[c].to_numpy(np.float64)[rows] for c in columns}
        return cls(base.queries, base.target_indptr, base.target_items, values)


# -- config -----------------------------------------------------------------------------------------
@dataclass
class MultiTaskConfig(SequentialConfig):
    tasks: tuple[str, ...] = ("next_item", "rating", "like")  # built-in names or name=kind:column[>=t]
    task_weights: tuple[float, ...] = ()  # one per task; empty: 1.0 each
    mixer: str = "mmoe"  # "shared" (shared bottom) | "mmoe" | "ple"
    experts: int = 4  # mmoe: experts; ple: shared experts
    task_experts: int = 1  # ple: experts of each task
    expert_inner: int = 128  # hidden size of an expert's feed-forward
    head_hidden: int = 64  # hidden size of a regression / binary head
    weighting: str = "fixed"  # "fixed" (task weights) | "uncertainty" (learned log-variances)
    stop_on: str = "auto"  # "auto" (next_item, else the first task) | "mean" (mean relative gain) | a task

    def validate(self) -> None:
        super().validate()
        if self.objective != "causal" or self.item_repr != "id":
            raise ConfigError("mtl-sasrec is causal (objective=causal) over ID items (item_repr=id)")
        if (
            self.teacher
            or self.pretrain_epochs
            or self.init_from
            or self.diversity_weight
            or self.fusion.on
            or self.adversarial.on
        ):
            raise ConfigError(
                "mtl-sasrec has no teacher, pretraining, init_from, diversity_weight, fusion or adversarial training"
            )
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        for key in ("experts", "expert_inner", "head_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")
        if self.task_experts < 0 or (self.mixer == "ple" and self.task_experts < 1):
            raise ConfigError("task_experts must be >= 1 for mixer=ple")
        specs = self.task_specs()
        names = [s.name for s in specs]
        if self.stop_on not in ("auto", "mean", *names):
            raise ConfigError(f"stop_on must be auto, mean or one of the tasks {names}, got {self.stop_on!r}")

    def task_specs(self) -> list[TaskSpec]:
        """The tasks, parsed, with their weights."""
        if not self.tasks:
            raise ConfigError("tasks: name at least one task")
        if self.task_weights and len(self.task_weights) != len(self.tasks):
            raise ConfigError(f"task_weights has {len(self.task_weights)} values for {len(self.tasks)} tasks")
        weights = self.task_weights or (1.0,) * len(self.tasks)
        specs = [parse_task(t, float(w)) for t, w in zip(self.tasks, weights, strict=True)]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: each name once, got {names}")
        if sum(s.kind == "next_item" for s in specs) > 1:
            raise ConfigError("tasks: at most one next_item task")
        return specs


# -- the network ------------------------------------------------------------------------------------
def _expert(dim: int, inner: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim))


class TaskMixer(nn.Module):
    """Per-task states from the encoder's states (..., dim): shared bottom, MMoE or PLE.

    Returns one (..., dim) tensor per task and, for MMoE/PLE, each task's gate weights
    (..., experts it reads), or None for the shared bottom."""

    def __init__(self, dim: int, n_tasks: int, cfg: MultiTaskConfig) -> None:
        super().__init__()
        self.kind, self.n_tasks = cfg.mixer, n_tasks
        n_shared = 0 if cfg.mixer == "shared" else cfg.experts
        n_own = cfg.task_experts if cfg.mixer == "ple" else 0
        self.shared = nn.ModuleList(_expert(dim, cfg.expert_inner, cfg.dropout_value) for _ in range(n_shared))
        self.n_own = n_own  # task k's own experts are own[k * n_own : (k + 1) * n_own]
        self.own = nn.ModuleList(_expert(dim, cfg.expert_inner, cfg.dropout_value) for _ in range(n_own * n_tasks))
        self.gates = nn.ModuleList(nn.Linear(dim, n_shared + n_own) for _ in range(n_tasks) if n_shared)

    def expert_names(self, task_names: list[str]) -> dict[str, list[str]]:
        """The experts each task's gate weighs, in gate order."""
        shared = [f"shared{e}" for e in range(len(self.shared))]
        return {t: shared + [f"{t}{e}" for e in range(self.n_own)] for t in task_names}

    def forward(self, h: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        if not len(self.shared):
            return [h] * self.n_tasks, [None] * self.n_tasks
        shared = torch.stack([e(h) for e in self.shared], dim=-2)  # (..., E, dim), computed once
        states: list[torch.Tensor] = []
        gates: list[torch.Tensor | None] = []
        for k, gate in enumerate(self.gates):
            own = self.own[k * self.n_own : (k + 1) * self.n_own]
            experts = torch.cat([shared, *(e(h).unsqueeze(-2) for e in own)], -2) if self.n_own else shared
            g = torch.softmax(gate(h), dim=-1)
            states.append(h + (g.unsqueeze(-1) * experts).sum(-2))
            gates.append(g)
        return states, gates


class PairHead(nn.Module):
    """A value of (history state z, target item e): an MLP on [z, e, z * e] → one number (a rating,
    or a logit). Its output bias starts at the training targets' mean (or log-odds)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z, e, z * e], dim=-1)).squeeze(-1)


class MultiTaskNet(nn.Module):
    """Encoder + mixer + one head per regression / binary task (+ log-variances for uncertainty
    weighting). The next-item head is the encoder's tied item table. ``baseline`` holds each task's
    training mean (rating) or positive rate (like), the prediction for an empty history."""

    baseline: torch.Tensor  # buffer, declared for type checkers

    def __init__(self, encoder: SequenceEncoder, specs: list[TaskSpec], cfg: MultiTaskConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.mixer = TaskMixer(cfg.dim, len(specs), cfg)
        self.heads = nn.ModuleDict(
            {s.name: PairHead(cfg.dim, cfg.head_hidden, cfg.dropout_value) for s in specs if s.kind != "next_item"}
        )
        self.register_buffer("baseline", torch.zeros(len(specs)))
        self.log_vars = nn.Parameter(torch.zeros(len(specs))) if cfg.weighting == "uncertainty" else None

    def forward(self, seq: torch.Tensor, table: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """(B, L) shifted ids → per-task states (B, L, dim) and gate weights."""
        return self.mixer(self.encoder(seq, causal=True, table=table))


# -- the model --------------------------------------------------------------------------------------
class MultiTaskSASRec(SequentialRecommender):
    """``mtl-sasrec``: next item + rating + like (or any tasks) over one sequential encoder.
    ``score`` ranks by the next-item head (by the first task's predictions when there is none);
    :meth:`predict` gives the other heads' values for (history, item) pairs."""

    name = "mtl-sasrec"
    config_class = MultiTaskConfig
    private = False  # no DP-SGD path over the mixer and heads: --dp-epsilon is refused, not ignored
    config: MultiTaskConfig
    module: MultiTaskNet

    def __init__(self, config: MultiTaskConfig | None = None) -> None:
        super().__init__(config)
        self.specs = self.config.task_specs()
        self.next_index = next((k for k, s in enumerate(self.specs) if s.kind == "next_item"), None)

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg, specs = self.config, self.specs
        values = _target_values(train, specs)
        self.module = MultiTaskNet(SequenceEncoder(self.n_items, cfg), specs, cfg).to(self.device)
        self.net = self.module.encoder  # what the inherited next-item loss and item vectors read
        self._set_baselines(values)
        self.popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
        self.unseen = (self.popularity == 0).to(self.device)
        self.category_vectors, self.teacher = None, None
        task = MultiTaskTask(self, train, values)
        rule, validate, history = self._validation(valid, options)
        gen = options.torch_generator()
        log = self._train(
            task, self._train_config(cfg.epochs, "multitask"), options, gen, validate=validate, phase="multitask"
        )
        task.end_epoch()
        best = log["best_epoch"]
        names = [s.name for s in specs]
        self.training_log = {
            **log,
            "tasks": [asdict(s) for s in specs],
            "stop_on": rule,
            "task_losses": task.epoch_losses,
            "valid_tasks": history,
            "experts": self.module.mixer.expert_names(names) if cfg.mixer != "shared" else {},
            "gates": task.epoch_gates,
            # mean gate weight of each expert per task over the training positions of the best epoch
            "expert_utilisation": task.epoch_gates[best]
            if task.epoch_gates and 0 <= best < len(task.epoch_gates)
            else {},
        }
        if self.log_vars is not None:
            self.training_log["log_vars"] = dict(zip(names, self.log_vars.detach().cpu().tolist(), strict=True))

    @property
    def log_vars(self) -> torch.Tensor | None:
        return self.module.log_vars

    def _set_baselines(self, values: dict[str, np.ndarray]) -> None:
        """Each head's output bias and the empty-history prediction: the training mean (regression)
        or log-odds of the positive rate (binary)."""
        with torch.no_grad():
            for k, spec in enumerate(self.specs):
                if spec.kind == "next_item":
                    continue
                y = _labels(spec, values[spec.name])
                y = y[np.isfinite(y)]
                mean = float(y.mean()) if len(y) else 0.0
                self.module.baseline[k] = mean
                bias = mean if spec.kind == "regression" else math.log(max(mean, 1e-4) / max(1 - mean, 1e-4))
                head = self.module.heads[spec.name]
                assert isinstance(head, PairHead) and isinstance(head.mlp[-1], nn.Linear)
                head.mlp[-1].bias.fill_(bias)

    def _validation(
        self, valid: EvalSet | None, options: FitOptions
    ) -> tuple[str, Callable[[], float] | None, list[dict[str, dict[str, float]]]]:
        """The early-stopping rule, the callable the Trainer maximises, and the per-epoch metrics it fills."""
        history: list[dict[str, dict[str, float]]] = []
        if valid is None:
            return "none (no validation set)", None, history
        rated = valid.target_values if isinstance(valid, RatedEvalSet) else {}
        checked = [s for s in self.specs if s.kind == "next_item" or s.column in rated]
        skipped = [s.name for s in self.specs if s not in checked]
        if skipped:
            options.say(f"{self.name}: validation has no target values for {skipped}; they are not validated")
        rule = self.config.stop_on
        if rule == "auto":
            rule = "next_item" if self.next_index is not None else (checked[0].name if checked else "none")
        if rule not in ("mean", "none") and rule not in [s.name for s in checked]:
            raise ConfigError(f"stop_on={rule}: the validation set has no values for that task (a RatedEvalSet has)")
        if rule == "none" or not checked:
            return "none (nothing to validate)", None, history
        first: dict[str, float] = {}

        def validate() -> float:
            metrics = self.task_metrics(valid, checked)
            history.append(metrics)
            main = {s.name: metrics[s.name][s.metric] for s in checked}
            if rule != "mean":
                return -main[rule] if self.spec(rule).kind == "regression" else main[rule]
            for name, value in main.items():
                first.setdefault(name, value)
            gains = [
                (first[n] - v) / first[n] if self.spec(n).kind == "regression" else v / first[n] - 1
                for n, v in main.items()
                if first[n] and math.isfinite(v)
            ]
            return float(np.mean(gains)) if gains else 0.0

        return rule, validate, history

    def spec(self, name: str) -> TaskSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise ConfigError(f"{self.name} has no task {name!r}; tasks are {[s.name for s in self.specs]}")

    # -- per-task evaluation ----------------------------------------------------------------------
    def task_metrics(self, eval_set: EvalSet, specs: list[TaskSpec] | None = None) -> dict[str, dict[str, float]]:
        """Each task's metrics on ``eval_set``: next item NDCG@10 (full ranking, history excluded);
        RMSE and MAE of a regression task, AUC and log-loss of a binary one, over the targets
        whose values a :class:`RatedEvalSet` carries."""
        out: dict[str, dict[str, float]] = {}
        values = eval_set.target_values if isinstance(eval_set, RatedEvalSet) else {}
        pairs = None
        for spec in specs or self.specs:
            if spec.kind == "next_item":
                out[spec.name] = {"ndcg@10": validation_ndcg(self, eval_set)}
                continue
            if spec.column not in values:
                continue
            if pairs is None:
                pairs = target_pairs(eval_set)
            y = _labels(spec, values[spec.column])
            ok = np.isfinite(y)
            pred = self.predict(pairs, eval_set.target_items, spec.name).numpy()
            if spec.kind == "regression":
                out[spec.name] = {"rmse": rmse(pred[ok], y[ok]), "mae": mae(pred[ok], y[ok])}
            else:
                labels = y[ok] > 0
                both = 0 < labels.sum() < len(labels)
                out[spec.name] = {
                    "auc": auc(pred[ok], labels) if both else float("nan"),
                    "log_loss": log_loss(pred[ok], labels),
                }
        return out

    def predict(self, batch: QueryBatch, items: np.ndarray, task: str) -> torch.Tensor:
        """The ``task`` head's value for each query and item row: ``items`` (B,) or (B, k) → a
        rating (regression) or a probability (binary) of the same shape; NaN where an item row is
        unknown; the training mean (or rate) for an empty history."""
        k = self.specs.index(self.spec(task))
        spec = self.specs[k]
        if spec.kind == "next_item":
            raise ConfigError("predict gives the rating-type heads; score ranks by the next-item head")
        items = np.asarray(items, dtype=np.int64)
        if items.shape[0] != len(batch) or items.ndim not in (1, 2):
            raise ConfigError(f"items must be (len(batch),) or (len(batch), k), got {items.shape}")
        states, has_history = self._task_states(batch)
        known = torch.from_numpy((items >= 0) & (items < self.n_items))
        rows = torch.from_numpy(np.clip(items + 1, 0, self.n_items))  # unknown rows read padding, then NaN
        with torch.no_grad():
            z = states[k].to(self.device)
            e = self.net.item_table()[rows.to(self.device)]
            if items.ndim == 2:
                z = z.unsqueeze(1).expand(-1, items.shape[1], -1)
            out = self.module.heads[spec.name](z, e).float().cpu()
        if spec.kind == "binary":
            out = torch.sigmoid(out)
        base = self.module.baseline[k].cpu()
        out = torch.where(has_history if items.ndim == 1 else has_history.unsqueeze(1), out, base)
        return torch.where(known, out, torch.tensor(float("nan")))

    def predict_rating(self, batch: QueryBatch, items: np.ndarray) -> torch.Tensor:
        """Predicted rating of each query's item(s) (the first regression task)."""
        return self.predict(batch, items, self._first("regression"))

    def predict_like(self, batch: QueryBatch, items: np.ndarray) -> torch.Tensor:
        """Predicted probability that each query likes its item(s) (the first binary task)."""
        return self.predict(batch, items, self._first("binary"))

    def rate_after(self, batch: QueryBatch, items: np.ndarray) -> np.ndarray | None:
        """The rating each query's history gives its item (``items`` (B,)): the regression task on
        the ``rating`` column, or None without one. What a run's rating metrics (RMSE, MAE) read:
        a sequence model rates after a history, where MF's ``predict(users, items)`` reads a user row."""
        task = next((s.name for s in self.specs if s.kind == "regression" and s.column == "rating"), None)
        return None if task is None else self.predict(batch, items, task).numpy()

    def _first(self, kind: str) -> str:
        name = next((s.name for s in self.specs if s.kind == kind), None)
        if name is None:
            raise ConfigError(f"{self.name} has no {kind} task; tasks are {[s.name for s in self.specs]}")
        return name

    # -- inference --------------------------------------------------------------------------------
    def _task_states(self, batch: QueryBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each task's state after each history (CPU float, (B, dim) per task) and which rows had one."""
        if self.module.training:
            self.module.eval()
        seq, lengths = histories_to_inputs(batch, self.n_items, self.config.max_len, append_mask=False)
        out = torch.empty(len(self.specs), len(batch), self.config.dim)
        with torch.no_grad():
            table = self.net.item_table()
            for s in range(0, len(batch), 512):
                part, n = seq[s : s + 512].to(self.device), lengths[s : s + 512].to(self.device)
                states, _ = self.module.mixer(self.net.encode(part, n, causal=True, table=table))
                out[:, s : s + len(part)] = torch.stack(states).float().cpu()
        return list(out), lengths > 0

    def item_embeddings(self) -> torch.Tensor | None:  # type: ignore[override]
        """The tied item table the next-item head scores with; None without a next-item task
        (then ``score`` is not a dot product)."""
        return super().item_embeddings() if self.next_index is not None else None

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """The next-item state after each history (the mixer's next-item output)."""
        if self.next_index is None:
            raise ConfigError(f"{self.name} without a next_item task does not score by a dot product")
        states, has_history = self._task_states(batch)
        return Queries(states[self.next_index], torch.zeros(len(batch)), has_history)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        """Next-item logits; without a next-item task, the first task's prediction for every item
        (empty histories by popularity)."""
        if self.next_index is not None:
            return super().score(batch)
        out = torch.empty(len(batch), self.n_items)
        every = np.arange(self.n_items)
        for s in range(0, len(batch), 64):
            part = batch.slice(s, min(s + 64, len(batch)))
            out[s : s + len(part)] = self.predict(part, np.tile(every, (len(part), 1)), self.specs[0].name)
        empty = torch.from_numpy(batch.lengths() == 0)
        if bool(empty.any()):
            out[empty] = self.fallback_scores(batch)[empty]
        return out

    def score_candidates(self, batch: QueryBatch, items: np.ndarray) -> torch.Tensor:
        if self.next_index is not None:
            return super().score_candidates(batch, items)
        return Recommender.score_candidates(self, batch, items)

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"mtl.{k}": v for k, v in self.module.state_dict().items()}, "popularity": self.popularity}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not hasattr(self, "module"):
            self.module = MultiTaskNet(SequenceEncoder(self.n_items, self.config), self.specs, self.config)
            self.net = self.module.encoder
        self.module.load_state_dict({k[4:]: v.clone() for k, v in tensors.items() if k.startswith("mtl.")})
        self.popularity = tensors["popularity"]
        self.unseen = self.popularity == 0


class MultiTaskTask:
    """The Trainer's task: the same windows as ``sasrec`` (every transition once), each position
    supervised by every task about the next interaction; loss terms by task name. Also keeps each
    epoch's mean unweighted task losses and mean gate weights for the training log."""

    def __init__(self, model: MultiTaskSASRec, train: Dataset, values: dict[str, np.ndarray]) -> None:
        self.model, self.module = model, model.module
        cfg = model.config
        inter = train.interactions
        # windows of interaction rows (time order per user), so each item comes with its values
        rows = QueryBatch.from_interactions(inter.assign(item=np.arange(len(inter))), np.arange(train.n_users))
        self.windows = sequence_windows(rows, cfg.max_len + 1, min_length=2)
        if not self.windows:
            raise ConfigError(f"{model.name}: no training sequence has a target (every history has one item?)")
        self.item_of_row = torch.from_numpy(np.concatenate([[0], inter["item"].to_numpy(np.int64) + 1]))
        columns = [values[s.name] for s in model.specs if s.kind != "next_item"]
        table = np.stack(columns, 1) if columns else np.zeros((len(inter), 0))
        self.value_of_row = torch.from_numpy(
            np.concatenate([np.full((1, table.shape[1]), np.nan), table]).astype(np.float32)
        )
        self.epoch_losses: list[dict[str, float]] = []
        self.epoch_gates: list[dict[str, list[float]]] = []
        self._losses: dict[str, list[float]] = {}
        self._gates: dict[str, list[torch.Tensor]] = {}

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.end_epoch()
        for batch in length_buckets(self.windows, self.model.config.batch_size, gen):
            rows = pad_right(batch)[0]
            yield self.item_of_row[rows], self.value_of_row[rows]

    def loss(
        self, module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], gen: torch.Generator
    ) -> dict[str, torch.Tensor]:
        model, net = self.model, self.model.module
        seq, values = batch
        inputs, targets, values = seq[:, :-1], seq[:, 1:], values[:, 1:]
        table = net.encoder.item_table()
        states, gates = module(inputs, table)
        keep = targets > 0
        terms: dict[str, torch.Tensor] = {}
        column = 0
        for k, spec in enumerate(model.specs):
            z = states[k][keep]
            if spec.kind == "next_item":
                raw = model._loss(z, targets[keep] - 1, gen, table)
            else:
                y = _labels(spec, values[..., column][keep])
                column += 1
                ok = torch.isfinite(y)
                pred = net.heads[spec.name](z[ok], table[targets[keep][ok]])
                if spec.kind == "regression":
                    raw = nn.functional.mse_loss(pred, y[ok])
                else:
                    raw = nn.functional.binary_cross_entropy_with_logits(pred, y[ok])
            terms[spec.name] = spec.weight * self._weighted(raw, k, spec)
            self._losses.setdefault(spec.name, []).append(float(raw.detach()))
            gate = gates[k]
            if gate is not None:
                self._gates.setdefault(spec.name, []).append(gate[keep].detach().float().mean(0).cpu())
        return terms

    def _weighted(self, raw: torch.Tensor, k: int, spec: TaskSpec) -> torch.Tensor:
        log_vars = self.model.log_vars
        if log_vars is None:
            return raw
        s = log_vars[k]
        scale = 0.5 if spec.kind == "regression" else 1.0  # a Gaussian's NLL has the 1/2, a softmax's not
        return scale * torch.exp(-s) * raw + 0.5 * s

    def end_epoch(self) -> None:
        """Close the epoch's running means (called as the next epoch starts and after training)."""
        if self._losses:
            self.epoch_losses.append({n: float(np.mean(v)) for n, v in self._losses.items()})
        if self._gates:
            self.epoch_gates.append({n: torch.stack(v).mean(0).tolist() for n, v in self._gates.items()})
        self._losses, self._gates = {}, {}


# -- helpers ----------------------------------------------------------------------------------------
def _target_values(train: Dataset, specs: list[TaskSpec]) -> dict[str, np.ndarray]:
    """Each regression / binary task's raw column values, one per training interaction."""
    inter: pd.DataFrame = train.interactions
    out = {}
    for spec in specs:
        if spec.kind == "next_item":
            continue
        if spec.column not in inter.columns:
            raise ConfigError(
                f"task {spec.name!r} reads the interaction column {spec.column!r}, which {train.name or 'the data'} "
                f"does not have (columns: {list(inter.columns)}); drop the task or load data with that column"
            )
        out[spec.name] = pd.to_numeric(inter[spec.column], errors="coerce").to_numpy(np.float64)
    return out


def _labels(spec: TaskSpec, values: Any) -> Any:
    """A task's training target from its column values (numpy or torch): the value itself for
    regression, 1.0 / 0.0 for binary (NaN stays NaN: no target)."""
    if spec.kind != "binary":
        return values
    lib: Any = torch if isinstance(values, torch.Tensor) else np
    positive = values >= spec.threshold if spec.threshold is not None else values != 0
    return lib.where(lib.isnan(values), values, positive * 1.0)


def target_pairs(eval_set: EvalSet) -> QueryBatch:
    """One query per (query, target) of ``eval_set``: its history repeated for each of its targets."""
    q = eval_set.queries
    rep = np.repeat(np.arange(len(q)), eval_set.n_targets())
    return QueryBatch.from_histories(q.users[rep], [q.history(int(i)) for i in rep])
