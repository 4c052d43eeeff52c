"""Train / validation / test splits.

Every split keeps time order. The evaluation history of a user for a part is everything that user
did in the earlier parts (train for validation; train + validation for test), so a test query sees
the validation interaction just as a deployed model would.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError

Part = Literal["valid", "test"]
SPLITS = ("leave-one-out", "temporal", "ratio", "cold-items")


@dataclass(frozen=True)
class Split:
    """A dataset and the row masks of its three parts (rows of ``dataset.interactions``)."""

    dataset: Dataset
    part: np.ndarray  # per interaction: 0 train, 1 valid, 2 test
    protocol: dict[str, Any] = field(default_factory=dict)

    def frame(self, name: Literal["train", "valid", "test"]) -> pd.DataFrame:
        code = {"train": 0, "valid": 1, "test": 2}[name]
        return self.dataset.interactions[self.part == code]

    def train_dataset(self) -> Dataset:
        """The dataset restricted to training interactions (same vocabularies and catalog)."""
        return self.dataset.with_interactions(self.frame("train"))

    def eval_set(self, name: Part) -> EvalSet:
        """Queries of every user with a target in ``name``, with their earlier history."""
        code = 1 if name == "valid" else 2
        inter = self.dataset.interactions
        target_rows = inter[self.part == code]
        users = np.unique(target_rows["user"].to_numpy())
        history = inter[self.part < code]
        queries = QueryBatch.from_interactions(history, users)
        targets = QueryBatch.from_interactions(target_rows.drop_duplicates(["user", "item"]), users)
        return EvalSet(queries, targets.indptr, targets.items)

    def sizes(self) -> dict[str, int]:
        return {name: int((self.part == code).sum()) for code, name in enumerate(("train", "valid", "test"))}


def split(dataset: Dataset, method: str = "leave-one-out", **kwargs: Any) -> Split:
    """Split by name: ``leave-one-out``, ``temporal``, ``ratio`` or ``cold-items``."""
    fns = {
        "leave-one-out": leave_one_out,
        "temporal": temporal,
        "ratio": ratio,
        "cold-items": cold_items,
    }
    if method not in fns:
        raise ConfigError(f"unknown split {method!r}; choose one of {', '.join(SPLITS)}")
    accepted = list(inspect.signature(fns[method]).parameters)[1:]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"split {method!r} takes no parameter {unknown}; it takes {accepted or 'none'}")
    return fns[method](dataset, **kwargs)


def _position_from_end(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For time-ordered interactions: each row's position from the end of its user's sequence
    (0 = last) and the user's sequence length."""
    order = np.argsort(users, kind="stable")
    u = users[order]
    counts = np.bincount(u)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.empty(len(users), np.int64)
    pos[order] = np.arange(len(users)) - starts[u]
    length = counts[users]
    return length - 1 - pos, length


def leave_one_out(dataset: Dataset) -> Split:
    """Per user, time-ordered: last interaction → test, second last → validation, rest → train.

    Users with two interactions give one to train and one to test; users with one stay in train.
    """
    from_end, length = _position_from_end(dataset.interactions["user"].to_numpy())
    part = np.zeros(len(from_end), np.int8)
    part[(from_end == 0) & (length >= 2)] = 2
    part[(from_end == 1) & (length >= 3)] = 1
    return Split(dataset, part, {"split": "leave-one-out", "order": "time"})


def ratio(dataset: Dataset, valid: float = 0.1, test: float = 0.1) -> Split:
    """Per user, time-ordered: the last ``test`` share → test, the ``valid`` share before it → valid."""
    _check_shares(valid, test)
    from_end, length = _position_from_end(dataset.interactions["user"].to_numpy())
    # the epsilon keeps 100 × 0.29 = 28.999… from losing a row
    n_test = np.floor(length * test + 1e-9).astype(np.int64)
    n_valid = np.floor(length * valid + 1e-9).astype(np.int64)
    part = np.zeros(len(from_end), np.int8)
    part[from_end < n_test + n_valid] = 1
    part[from_end < n_test] = 2
    return Split(dataset, part, {"split": "ratio", "valid": valid, "test": test, "order": "time"})


def temporal(dataset: Dataset, valid: float = 0.1, test: float = 0.1) -> Split:
    """Global time cut: the latest ``test`` share of all interactions → test, the ``valid`` share
    before it → validation. Users first seen after the cut are evaluated as new users."""
    _check_shares(valid, test)
    n = len(dataset.interactions)  # interactions are time-ordered
    n_test, n_valid = round(n * test), round(n * valid)
    part = np.zeros(n, np.int8)
    part[n - n_test - n_valid : n - n_test] = 1
    part[n - n_test :] = 2
    ts = dataset.interactions["timestamp"].to_numpy()
    cut = {
        "valid_from": float(ts[n - n_test - n_valid]) if n_valid else None,
        "test_from": float(ts[n - n_test]) if n_test else None,
    }
    return Split(dataset, part, {"split": "temporal", "valid": valid, "test": test, **cut})


def cold_items(dataset: Dataset, share: float = 0.1, seed: int = 0) -> Split:
    """Hold out a random ``share`` of items with all their interactions (→ test), so no model sees
    them in training; of the remaining interactions each user's last → validation."""
    if not 0 < share < 1:
        raise ConfigError(f"cold-items share must be in (0, 1), got {share}")
    rng = np.random.default_rng(seed)
    seen_items = np.unique(dataset.interactions["item"].to_numpy())
    n_cold = max(1, round(len(seen_items) * share))
    cold = np.zeros(dataset.n_items, bool)
    cold[rng.choice(seen_items, size=n_cold, replace=False)] = True
    items = dataset.interactions["item"].to_numpy()
    is_cold = cold[items]
    part = np.where(is_cold, 2, 0).astype(np.int8)
    warm_rows = np.flatnonzero(~is_cold)
    from_end, length = _position_from_end(dataset.interactions["user"].to_numpy()[warm_rows])
    part[warm_rows[(from_end == 0) & (length >= 2)]] = 1
    return Split(
        dataset,
        part,
        {"split": "cold-items", "share": share, "seed": seed, "cold_items": int(n_cold), "order": "time"},
    )


def _check_shares(valid: float, test: float) -> None:
    if not (0 <= valid < 1 and 0 <= test < 1 and valid + test < 1):
        raise ConfigError(f"valid and test shares must be in [0, 1) and sum below 1, got {valid}, {test}")
