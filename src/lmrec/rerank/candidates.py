"""What every re-ranker here shares: cleaned candidates and the block-by-block loop.

A re-ranker follows :class:`lmrec.evaluate.evaluator.Reranker`: it takes each query's candidates
(item rows best first, ``-1`` for an empty slot) with the model's scores and returns the chosen k
item rows, ``-1`` where fewer than k candidates exist. Scores are turned into relevance in [0, 1]
per query (min-max over its candidates), so one trade-off parameter means the same thing for
every model and every user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmrec.data.batch import QueryBatch

__all__ = ["BLOCK", "BlockReranker", "Candidates", "fill_in_order", "greedy_setup", "prepare", "take"]

# Queries re-ranked together: bounds the (block, N, N) similarity arrays to a few tens of MB.
BLOCK = 256


@dataclass(frozen=True)
class Candidates:
    """Cleaned candidates of a batch of queries.

    ``items`` (b, N) item rows with ``-1`` for empty, non-finite-score and repeated slots;
    ``valid`` marks the others; ``relevance`` (b, N) is each query's scores min-max scaled to
    [0, 1] over its valid candidates (1 when they all score the same), 0 elsewhere.
    """

    items: np.ndarray
    valid: np.ndarray
    relevance: np.ndarray

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def rows(self, start: int, stop: int) -> Candidates:
        return Candidates(self.items[start:stop], self.valid[start:stop], self.relevance[start:stop])


def prepare(items: np.ndarray, scores: np.ndarray, k: int) -> Candidates:
    """Check shapes and clean the candidates (see :class:`Candidates`)."""
    items = np.asarray(items)
    scores = np.asarray(scores, dtype=np.float64)
    if items.ndim != 2 or items.shape != scores.shape:
        raise ValueError(f"items and scores must both be (queries, candidates), got {items.shape} and {scores.shape}")
    if items.size and not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"items must hold integer item rows, got dtype {items.dtype}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    items = items.astype(np.int64)
    valid = (items >= 0) & np.isfinite(scores)
    # A candidate listed twice keeps its first (best) slot only.
    order = np.argsort(np.where(valid, items, -1), axis=1, kind="stable")
    ranked = np.take_along_axis(np.where(valid, items, -1), order, axis=1)
    repeat = np.zeros_like(valid)
    repeat[:, 1:] = (ranked[:, 1:] == ranked[:, :-1]) & (ranked[:, 1:] >= 0)
    np.put_along_axis(valid, order, np.take_along_axis(valid, order, axis=1) & ~repeat, axis=1)
    items = np.where(valid, items, -1)

    low = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf, keepdims=True)
    high = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf, keepdims=True)
    spread = high - low
    with np.errstate(invalid="ignore"):
        scaled = np.where(spread > 0, (scores - low) / np.where(spread > 0, spread, 1.0), 1.0)
    relevance = np.where(valid, np.clip(scaled, 0.0, 1.0), 0.0)
    return Candidates(items, valid, relevance)


def fill_in_order(
    chosen: np.ndarray,
    n_chosen: np.ndarray,
    cands: Candidates,
    available: np.ndarray,
    last: np.ndarray | None = None,
) -> np.ndarray:
    """Complete each row of ``chosen`` (its first ``n_chosen`` slots taken) with the still
    ``available`` candidates in their input order (best first), those marked ``last`` after the
    others, then ``-1``."""
    b, k = chosen.shape
    n = available.shape[1]
    if b == 0 or k == 0 or n == 0:
        return chosen
    rank = np.where(available, 0 if last is None else last.astype(np.int64), 2)
    order = np.argsort(rank, axis=1, kind="stable")  # available candidates first, in order
    slot = np.arange(k)[None, :] - n_chosen[:, None]  # index into the remaining candidates
    use = (slot >= 0) & (slot < available.sum(axis=1)[:, None])
    pick = np.take_along_axis(order, np.clip(slot, 0, n - 1), axis=1)
    return np.where(use, np.take_along_axis(cands.items, pick, axis=1), chosen)


def greedy_setup(cands: Candidates, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empty result (b, k), per-row count of chosen items, and the mask of still available ones."""
    b = len(cands)
    return np.full((b, k), -1, dtype=np.int64), np.zeros(b, dtype=np.int64), cands.valid.copy()


def take(
    cands: Candidates,
    chosen: np.ndarray,
    n_chosen: np.ndarray,
    available: np.ndarray,
    slot: int,
    r: np.ndarray,
    j: np.ndarray,
) -> None:
    """A greedy step's pick: candidate ``j[i]`` of query ``r[i]`` goes to ``slot`` and is no longer available."""
    chosen[r, slot] = cands.items[r, j]
    n_chosen[r] += 1
    available[r, j] = False


class BlockReranker:
    """Shared ``__call__`` of the similarity-based re-rankers: candidates prepared once, then
    re-ranked block by block (bounded memory for the (b, N, N) similarities)."""

    def __call__(self, batch: QueryBatch, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
        cands = prepare(items, scores, k)
        out = np.full((len(cands), k), -1, dtype=np.int64)
        for start in range(0, len(cands), BLOCK):
            block = cands.rows(start, start + BLOCK)
            out[start : start + len(block)] = self._rerank(block, k)
        return out

    def _rerank(self, cands: Candidates, k: int) -> np.ndarray:
        raise NotImplementedError
