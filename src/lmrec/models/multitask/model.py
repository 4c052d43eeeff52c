"""The ``mtl-sasrec`` recommender (:class:`MultiTaskSASRec`) and its Trainer task
(:class:`MultiTaskTask`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.sequences import length_buckets, pad_right, sequence_windows
from lmrec.errors import ConfigError
from lmrec.evaluate.metrics import auc, log_loss, mae, rmse
from lmrec.models.base import FitOptions, Queries, Recommender
from lmrec.models.multitask.config import MultiTaskConfig
from lmrec.models.multitask.network import MultiTaskNet, PairHead
from lmrec.models.multitask.tasks import RatedEvalSet, TaskSpec, target_labels, target_pairs, target_values
from lmrec.models.sequential import SequenceEncoder, SequentialRecommender, histories_to_inputs
from lmrec.train.validation import validation_ndcg


class MultiTaskSASRec(SequentialRecommender):
    """``mtl-sasrec``: next item + rating + like (or any tasks) over one sequential encoder.
    ``score`` ranks by the next-item head (by the first task's predictions when there is none);
    :meth:`predict` gives the other heads' values for (history, item) pairs."""

    name = "mtl-sasrec"
    config_class = MultiTaskConfig
    private = False  # no DP-SGD path over the mixer and heads: --dp-epsilon is refused, not ignored
    federated_per_user = None  # nor a federated one
    config: MultiTaskConfig
    module: MultiTaskNet

    def __init__(self, config: MultiTaskConfig | None = None) -> None:
        super().__init__(config)
        self.specs = self.config.task_specs()
        self.next_index = next((k for k, s in enumerate(self.specs) if s.kind == "next_item"), None)

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg, specs = self.config, self.specs
        values = target_values(train, specs)
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
                y = target_labels(spec, values[spec.name])
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
            y = target_labels(spec, values[spec.column])
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
                y = target_labels(spec, values[..., column][keep])
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
