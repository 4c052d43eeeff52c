"""Query batches: what every model scores.

A :class:`QueryBatch` carries user rows *and* their time-ordered item histories, so ID models,
item-to-item models, sequential models and LLM prompt builders all read the same thing. Histories
are stored CSR-style (``indptr`` + flat ``items``) so a batch of a million users is two arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class QueryBatch:
    """Users (rows, ``-1`` for a user the model never saw) and their histories, most recent last.

    History items outside ``[0, n_items)`` of a model (for example ``-1`` for an unknown raw ID)
    are ignored by every model.
    """

    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        if len(self.indptr) != len(self.users) + 1:
            raise ValueError("indptr must have one more entry than users")

    @classmethod
    def from_histories(
        cls, users: Sequence[int] | np.ndarray, histories: Sequence[Sequence[int] | np.ndarray]
    ) -> QueryBatch:
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = (
            np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
            if len(histories) and indptr[-1] > 0
            else np.zeros(0, np.int64)
        )
        return cls(np.asarray(users, dtype=np.int64), indptr, flat)

    @classmethod
    def from_interactions(cls, interactions: pd.DataFrame, users: np.ndarray) -> QueryBatch:
        """Histories of ``users`` taken from time-ordered ``interactions`` (columns user, item)."""
        users = np.asarray(users, dtype=np.int64)
        u = interactions["user"].to_numpy()
        order = np.argsort(u, kind="stable")  # stable: keeps time order within a user
        u_sorted = u[order]
        starts = np.searchsorted(u_sorted, users, side="left")
        ends = np.searchsorted(u_sorted, users, side="right")
        lengths = ends - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        idx: Any = np.concatenate([order[s:e] for s, e in zip(starts, ends, strict=True)]) if len(users) else []
        items = interactions["item"].to_numpy()[np.asarray(idx, dtype=np.int64)]
        return cls(users, indptr, items.astype(np.int64))

    def __len__(self) -> int:
        return len(self.users)

    def history(self, i: int) -> np.ndarray:
        return self.items[self.indptr[i] : self.indptr[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def slice(self, start: int, stop: int) -> QueryBatch:
        lo, hi = self.indptr[start], self.indptr[stop]
        return QueryBatch(self.users[start:stop], self.indptr[start : stop + 1] - lo, self.items[lo:hi])

    def known(self, n_items: int) -> QueryBatch:
        """The same queries with the history items outside ``[0, n_items)`` left out."""
        keep = (self.items >= 0) & (self.items < n_items)
        if keep.all():
            return self
        indptr = np.concatenate([[0], np.cumsum(keep)])[self.indptr].astype(np.int64)
        return QueryBatch(self.users, indptr, self.items[keep])

    def matrix(self, n_items: int) -> sp.csr_matrix:
        """Binary users × items matrix of the histories (duplicates and unknown items dropped)."""
        rows = np.repeat(np.arange(len(self)), self.lengths())
        valid = (self.items >= 0) & (self.items < n_items)
        m = sp.csr_matrix(
            (np.ones(int(valid.sum()), np.float32), (rows[valid], self.items[valid])),
            shape=(len(self), n_items),
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m


@dataclass(frozen=True)
class EvalSet:
    """Queries and the items each query should retrieve (its targets), for evaluation."""

    queries: QueryBatch
    target_indptr: np.ndarray
    target_items: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def targets(self, i: int) -> np.ndarray:
        return self.target_items[self.target_indptr[i] : self.target_indptr[i + 1]]

    def n_targets(self) -> np.ndarray:
        return np.diff(self.target_indptr)

    def sample(self, n: int, seed: int = 0) -> EvalSet:
        """``n`` queries drawn at random without replacement (all of them if there are no more),
        in their original order: the same ``n`` and ``seed`` give the same queries."""
        if n >= len(self):
            return self
        chosen = np.zeros(len(self), bool)
        chosen[np.random.default_rng(seed).choice(len(self), size=n, replace=False)] = True
        return self.subset(chosen)

    def subset(self, mask: np.ndarray) -> EvalSet:
        """Only the queries where ``mask`` is true."""
        keep = np.flatnonzero(mask)
        q = self.queries
        hist = [q.history(int(i)) for i in keep]
        tg = [self.targets(int(i)) for i in keep]
        tq = QueryBatch.from_histories(q.users[keep], tg)
        return EvalSet(QueryBatch.from_histories(q.users[keep], hist), tq.indptr, tq.items)


def mask_seen(scores: torch.Tensor, batch: QueryBatch) -> None:
    """Set the scores of every item in each query's history to -inf, in place.

    ``scores`` is queries × items; history items outside ``[0, n_items)`` are ignored.
    """
    import torch  # here, not at the top: loading and splitting data does not need torch

    n_items = scores.shape[1]
    rows = np.repeat(np.arange(len(batch)), batch.lengths())
    valid = (batch.items >= 0) & (batch.items < n_items)
    if valid.any():
        r = torch.from_numpy(rows[valid]).to(scores.device)
        c = torch.from_numpy(batch.items[valid]).to(scores.device)
        scores[r, c] = float("-inf")
