"""Calibrated recommendations (Steck, "Calibrated Recommendations", RecSys 2018).

A user whose history is 70 % drama and 30 % comedy should get a list of about that mix, not only
drama because drama scores highest. The list is built greedily, each step adding the candidate
that maximises ``(1 − λ) · Σ_{i∈list} rel_i − λ · KL(p ‖ q̃)``:

* p — the category distribution of the user's history, each item spreading weight 1 evenly over
  its categories (``batch.history(i)``),
* q — the same distribution over the list so far plus the candidate, and
  ``q̃ = (1 − α) q + α p`` so the KL divergence stays finite,
* rel — the model's scores min-max scaled to [0, 1] per user.

This is the objective that :func:`lmrec.evaluate.beyond.miscalibration` measures. Users whose
history has no categorised item keep the model's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import DataError
from lmrec.rerank.candidates import Candidates, greedy_setup, prepare, take

__all__ = ["Calibrated"]

# Cells of the (queries, candidates, categories) array that one block may hold.
_MAX_CELLS = 1 << 20


class Calibrated:
    """Steck's calibrated re-ranking; ``categories[i]`` lists the categories of item row i."""

    def __init__(self, categories: Sequence[Sequence[str]], lam: float = 0.5, alpha: float = 0.01) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"calibration lam must be in [0, 1], got {lam}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"calibration alpha must be in (0, 1], got {alpha}")
        names = sorted({str(c) for cats in categories for c in cats})
        if not names:
            raise DataError("no item has a category, so there is nothing to calibrate")
        index = {c: j for j, c in enumerate(names)}
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for i, cats in enumerate(categories):
            if isinstance(cats, str):
                raise ValueError(f"categories of item row {i} is the string {cats!r}; give a list of names per item")
            distinct = {str(c) for c in cats}
            for c in distinct:
                rows.append(i)
                cols.append(index[c])
                vals.append(1.0 / len(distinct))
        # p(c | i): each item's row sums to 1 (0 for an item without categories).
        self.item_categories = sparse.csr_array((vals, (rows, cols)), shape=(len(categories), len(names)))
        self.categories = names
        self.lam = float(lam)
        self.alpha = float(alpha)

    @classmethod
    def from_catalog(cls, dataset: Dataset, lam: float = 0.5, alpha: float = 0.01) -> Calibrated:
        """Calibrate over ``dataset.catalog["categories"]``."""
        cats = list(dataset.catalog["categories"])
        if not any(len(c) for c in cats):
            raise DataError(f"the catalog of {dataset.name} has no item categories, so there is nothing to calibrate")
        return cls(cats, lam, alpha)

    @property
    def n_items(self) -> int:
        return int(self.item_categories.shape[0])

    def __repr__(self) -> str:
        return f"Calibrated(lam={self.lam:g}, alpha={self.alpha:g}, {len(self.categories)} categories)"

    def history_distribution(self, batch: QueryBatch) -> np.ndarray:
        """p (len(batch), n_categories): category distribution of each history (zeros if none)."""
        lengths = batch.lengths()
        rows = np.repeat(np.arange(len(batch)), lengths)
        known = (batch.items >= 0) & (batch.items < self.n_items)
        counts = sparse.csr_array(
            (np.ones(int(known.sum())), (rows[known], batch.items[known])), shape=(len(batch), self.n_items)
        )
        p = np.asarray((counts @ self.item_categories).todense(), dtype=np.float64)
        total = p.sum(axis=1, keepdims=True)
        return np.divide(p, total, out=np.zeros_like(p), where=total > 0)

    def __call__(self, batch: QueryBatch, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        cands = prepare(items, scores, k)
        if len(batch) != len(cands):
            raise ValueError(f"the batch has {len(batch)} queries but items has {len(cands)} rows")
        if cands.items.size and cands.items.max() >= self.n_items:
            raise ValueError(f"candidate item row {cands.items.max()} is outside the {self.n_items} catalog items")
        p = self.history_distribution(batch)
        out = np.full((len(cands), k), -1, dtype=np.int64)
        n = max(1, cands.items.shape[1])
        block = max(1, _MAX_CELLS // (n * len(self.categories)))
        for start in range(0, len(cands), block):
            part = cands.rows(start, start + block)
            out[start : start + len(part)] = self._rerank(part, p[start : start + len(part)], k)
        return out

    def _rerank(self, cands: Candidates, p: np.ndarray, k: int) -> np.ndarray:
        chosen, n_chosen, available = greedy_setup(cands, k)
        b, n = cands.items.shape
        if n == 0 or k == 0:
            return chosen
        weights = self.item_categories[np.maximum(cands.items, 0).ravel()].toarray().reshape(b, n, -1)
        weights[~cands.valid] = 0.0
        mass = weights.sum(axis=2)  # 1 for an item with categories, else 0
        in_p = p > 0
        log_p = np.log(np.where(in_p, p, 1.0))
        list_weights = np.zeros_like(p)  # Σ p(c | i) over the list so far
        list_mass = np.zeros(b)
        rows = np.arange(b)
        for slot in range(k):
            # q of the list plus each candidate: (b, n, C); only categories with p > 0 enter the KL.
            total = (list_mass[:, None] + mass)[:, :, None]
            q = np.divide(list_weights[:, None, :] + weights, total, out=np.zeros_like(weights), where=total > 0)
            q_tilde = (1.0 - self.alpha) * q + self.alpha * p[:, None, :]
            log_ratio = log_p[:, None, :] - np.log(np.where(in_p[:, None, :], q_tilde, 1.0))
            kl = (p[:, None, :] * log_ratio).sum(axis=2)
            objective = (1.0 - self.lam) * cands.relevance - self.lam * kl
            objective = np.where(available, objective, -np.inf)
            best = objective.argmax(axis=1)
            live = available[rows, best]
            if not live.any():
                break
            r, j = rows[live], best[live]
            take(cands, chosen, n_chosen, available, slot, r, j)
            list_weights[r] += weights[r, j]
            list_mass[r] += mass[r, j]
        return chosen
