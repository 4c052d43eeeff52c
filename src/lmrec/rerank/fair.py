"""Fair exposure for long-tail items: FA*IR-style re-ranking (Zehlike et al., "FA*IR: A Fair Top-k
Ranking Algorithm", CIKM 2017), over the shared candidate handling of :mod:`lmrec.rerank.candidates`.

The protected group is the catalog's long tail (:func:`lmrec.evaluate.fairness.tail_items`: every
item outside the most popular ones that together hold the first half of the training
interactions). FA*IR asks that every prefix of the list pass a one-sided binomial test: the prefix
of length i needs ``m(i) = F⁻¹(α; i, p)`` tail items, F the binomial CDF — the paper's Algorithm 1
and the authors' code, the smallest m with F(m; i, p) ≥ α, so that a list drawn at random with tail
proportion ``p`` falls short with probability below α. The list is built greedily: at slot i, when
it holds fewer than m(i) tail items and a tail candidate remains, the most relevant tail candidate
comes next; otherwise the most relevant candidate of either group. When the tail candidates run out
the list goes on with the others, so a short supply of tail items is filled as far as it goes.

``p`` is the one trade-off: 0 keeps the model's order, 1 puts every tail candidate first. α is the
significance of the test (default 0.1); the paper's correction of α for testing k prefixes at once
is not applied.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

from lmrec.data.schema import Dataset
from lmrec.evaluate.fairness import tail_items
from lmrec.rerank.candidates import BlockReranker, Candidates, greedy_setup, take

__all__ = ["FairExposure", "minimum_protected"]


def minimum_protected(k: int, p: float, alpha: float) -> np.ndarray:
    """FA*IR's table: entry i − 1 is m(i), the fewest protected items a prefix of length i may hold,
    ``F⁻¹(α; i, p)`` for i = 1..k (int64, non-decreasing, each step at most 1)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    _check(p, alpha)
    lengths = np.arange(1, k + 1)
    m = binom.ppf(alpha, lengths, p)
    return np.clip(np.nan_to_num(m, nan=0.0), 0, lengths).astype(np.int64)


def _check(p: float, alpha: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fair p (the target share of tail items) must be in [0, 1], got {p}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"fair alpha (the significance) must be in (0, 1), got {alpha}")


class FairExposure(BlockReranker):
    """FA*IR over the long tail: ``is_tail[i]`` marks item row i as protected (a tail item).

    Every prefix of length i gets at least :func:`minimum_protected` ``(k, p, alpha)[i − 1]`` tail
    items while tail candidates last; within that, the order is the model's (relevance).
    """

    def __init__(self, is_tail: np.ndarray, p: float = 0.3, alpha: float = 0.1) -> None:
        is_tail = np.asarray(is_tail)
        if is_tail.ndim != 1 or is_tail.dtype != np.bool_:
            raise ValueError(
                f"is_tail must be a 1-D bool array (one flag per item row), got {is_tail.ndim}-D {is_tail.dtype}"
            )
        _check(p, alpha)
        self.is_tail = is_tail.copy()
        self.is_tail.flags.writeable = False
        self.p = float(p)
        self.alpha = float(alpha)

    @classmethod
    def from_training(cls, dataset: Dataset, p: float = 0.3, alpha: float = 0.1) -> FairExposure:
        """The tail of ``dataset`` (pass the training part, so test interactions do not leak) by
        :func:`lmrec.evaluate.fairness.tail_items` over ``dataset.item_popularity()``."""
        return cls(tail_items(dataset.item_popularity()), p, alpha)

    @property
    def n_items(self) -> int:
        return int(self.is_tail.shape[0])

    def __repr__(self) -> str:
        tail = int(self.is_tail.sum())
        return f"FairExposure(p={self.p:g}, alpha={self.alpha:g}, {tail} of {self.n_items} items in the tail)"

    def _rerank(self, cands: Candidates, k: int) -> np.ndarray:
        chosen, n_chosen, available = greedy_setup(cands, k)
        b, n = cands.items.shape
        if n == 0 or k == 0:
            return chosen
        if cands.items.max(initial=-1) >= self.n_items:
            raise ValueError(f"candidate item row {cands.items.max()} is outside the {self.n_items} catalog items")
        protected = cands.valid & self.is_tail[np.maximum(cands.items, 0)]
        need = minimum_protected(k, self.p, self.alpha)
        n_protected = np.zeros(b, dtype=np.int64)
        rows = np.arange(b)
        for slot in range(k):
            # Below the minimum with a tail candidate left: only tail candidates may come next.
            must = (n_protected < need[slot]) & (available & protected).any(axis=1)
            pool = available & (protected | ~must[:, None])
            best = np.where(pool, cands.relevance, -np.inf).argmax(axis=1)  # ties: the earlier candidate
            live = pool[rows, best]
            if not live.any():
                break
            r, j = rows[live], best[live]
            take(cands, chosen, n_chosen, available, slot, r, j)
            n_protected[r] += protected[r, j]
        return chosen
