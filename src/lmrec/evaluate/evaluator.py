"""Full-ranking evaluation: every query against the whole catalog, in bounded chunks.

Scores are computed for a chunk of users at a time, sized so a chunk never holds more than
``max_cells`` scores; history items are excluded; only the top-k per user is kept. No dense
users × items matrix is ever built for the whole user base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from lmrec.data.batch import EvalSet, QueryBatch, mask_seen
from lmrec.evaluate.metrics import ranking_metrics

DEFAULT_METRICS = ("ndcg", "recall", "mrr", "hit", "precision", "map", "f1")
PROTOCOL = {
    "ranking": "full catalog",
    "exclude": "items in the user's history",
    "history": "all interactions before the evaluated part (train; train+valid for test)",
}


class Scorer(Protocol):
    n_items: int

    def score(self, batch: QueryBatch) -> torch.Tensor: ...


class Reranker(Protocol):
    """Reorders each query's candidates: items (b, N) item rows best first (-1 = none), scores
    (b, N) → the chosen (b, k) item rows, -1 where fewer than k candidates exist."""

    def __call__(self, batch: QueryBatch, items: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray: ...


@dataclass
class EvalResult:
    """Mean metrics, per-user metric arrays (same user order as the eval set) and top lists."""

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    recommendations: np.ndarray  # (n_users, max k) item rows, -1 for empty slots
    protocol: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)


def evaluate(
    model: Scorer,
    eval_set: EvalSet,
    *,
    ks: tuple[int, ...] = (10,),
    metrics: tuple[str, ...] = DEFAULT_METRICS,
    exclude_seen: bool = True,
    max_cells: int = 1 << 24,
    progress: bool = False,
    reranker: Reranker | None = None,
    candidates: int = 100,
) -> EvalResult:
    """Rank the whole catalog for every query of ``eval_set`` and compute metrics @ each k.

    With a ``reranker``, the model's top ``candidates`` items are re-ranked and the metrics are
    computed on the re-ranked lists.
    """
    n, n_items = len(eval_set), model.n_items
    k_max = max(ks)
    k_rank = min(k_max, n_items)  # a catalog smaller than k leaves the tail slots empty
    chunk = max(1, min(n, max_cells // max(1, n_items)))
    top = np.full((n, k_max), -1, dtype=np.int64)
    hits = np.zeros((n, k_max), dtype=bool)
    queries = eval_set.queries
    with torch.no_grad():
        for start in tqdm(range(0, n, chunk), disable=not progress, desc="evaluate", unit="chunk"):
            stop = min(n, start + chunk)
            batch = queries.slice(start, stop)
            scores = model.score(batch).float()
            if exclude_seen:
                mask_seen(scores, batch)
            width = min(n_items, max(k_rank, candidates)) if reranker is not None else k_rank
            values, idx = torch.topk(scores, width, dim=1)
            idx_np = idx.cpu().numpy()
            idx_np[~np.isfinite(values.cpu().numpy())] = -1
            if reranker is not None:
                idx_np = reranker(batch, idx_np, values.cpu().numpy(), k_rank)
            top[start:stop, :k_rank] = idx_np
            hits[start:stop, :k_rank] = _hits(idx_np, eval_set, start, stop, n_items)
    n_rel = eval_set.n_targets()
    per_user: dict[str, np.ndarray] = {}
    for k in ks:
        per_user.update(ranking_metrics(hits[:, :k], n_rel, names=metrics))
    means = {name: float(v.mean()) if len(v) else 0.0 for name, v in per_user.items()}
    protocol = {**PROTOCOL, "ks": list(ks)}
    if reranker is not None:
        protocol["rerank"] = f"{reranker!r} over the top {candidates}"
    return EvalResult(means, per_user, queries.users.copy(), top, protocol)


def _hits(top: np.ndarray, eval_set: EvalSet, start: int, stop: int, n_items: int) -> np.ndarray:
    """hits[u, r]: is the item at rank r of query u one of its targets?"""
    lo, hi = eval_set.target_indptr[start], eval_set.target_indptr[stop]
    rows = np.repeat(np.arange(stop - start), np.diff(eval_set.target_indptr[start : stop + 1]))
    # Encode (row, item) pairs as one integer so membership is a single vectorised isin.
    n = n_items + 1
    targets = rows * n + eval_set.target_items[lo:hi]
    ranked = np.arange(stop - start)[:, None] * n + top
    return np.isin(ranked, targets) & (top >= 0)
