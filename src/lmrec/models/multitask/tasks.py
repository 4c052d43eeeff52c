"""Tasks of ``mtl-sasrec``: their specs (:class:`TaskSpec`, :func:`parse_task`), their targets
(:func:`target_values`, :func:`target_labels`) and a validation set that carries them
(:class:`RatedEvalSet`, :func:`target_pairs`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import Part, Split
from lmrec.errors import ConfigError

TASK_KINDS = ("next_item", "regression", "binary")
_SPEC = re.compile(r"^(?P<name>\w+)=(?P<kind>\w+):(?P<column>\w+)(?:>=(?P<threshold>[-+.\deE]+))?$")


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


def target_values(train: Dataset, specs: list[TaskSpec]) -> dict[str, np.ndarray]:
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


def target_labels(spec: TaskSpec, values: Any) -> Any:
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
