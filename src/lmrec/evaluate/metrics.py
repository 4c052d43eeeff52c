"""Accuracy metrics as pure numpy functions.

Ranking metrics read a *hit matrix*: ``hits[u, r]`` is True when the item at rank ``r + 1`` of
user ``u``'s top-k list is relevant, and ``n_relevant[u]`` is how many relevant items the user
has in total (at least one). Each ranking metric returns one value per user, so callers can
average, slice by user group or run a paired significance test on the same users.

Rating and click metrics (RMSE, MAE, AUC, log loss, precision-recall curve) read flat arrays of
predictions and targets and return a single number (or curve).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

FloatArray = npt.NDArray[np.float64]
RankingMetric = Callable[[npt.ArrayLike, npt.ArrayLike], FloatArray]

__all__ = [
    "RANKING_METRICS",
    "auc",
    "average_precision",
    "f1",
    "hit_rate",
    "log_loss",
    "mae",
    "mrr",
    "ndcg",
    "precision",
    "precision_recall_curve",
    "ranking_metrics",
    "recall",
    "rmse",
]


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_hits(hits: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return ``hits`` as a 2-D bool array of shape (n_users, k) with k >= 1."""
    arr = np.asarray(hits)
    if arr.ndim != 2:
        raise ValueError(f"hits must be 2-D (n_users, k), got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError("hits must have at least one column (k >= 1)")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("hits must be boolean (or 0/1), got other values")
        arr = arr.astype(bool)
    return arr


def _check_hits_and_relevant(
    hits: npt.ArrayLike, n_relevant: npt.ArrayLike
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64]]:
    """Validate a hit matrix against the per-user count of relevant items."""
    h = _check_hits(hits)
    n_rel = np.asarray(n_relevant)
    if n_rel.ndim != 1 or n_rel.shape[0] != h.shape[0]:
        raise ValueError(f"n_relevant must have shape ({h.shape[0]},) to match hits {h.shape}, got {n_rel.shape}")
    whole = np.issubdtype(n_rel.dtype, np.integer) or bool(np.all(np.mod(n_rel, 1) == 0))
    if not whole:
        raise ValueError("n_relevant must hold whole numbers")
    n_rel = n_rel.astype(np.int64)
    if n_rel.size and n_rel.min() < 1:
        bad = int(np.argmin(n_rel))
        raise ValueError(f"n_relevant must be >= 1 for every user; user row {bad} has {n_rel[bad]}")
    n_hits = h.sum(axis=1)
    if np.any(n_hits > n_rel):
        bad = int(np.argmax(n_hits > n_rel))
        raise ValueError(
            f"user row {bad} has {n_hits[bad]} hits but only {n_rel[bad]} relevant items; hits cannot exceed n_relevant"
        )
    return h, n_rel


def _check_pair(a: npt.ArrayLike, b: npt.ArrayLike, names: tuple[str, str]) -> tuple[FloatArray, FloatArray]:
    """Two non-empty, finite 1-D float arrays of the same length."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{names[0]} and {names[1]} must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} differ in length: {x.shape[0]} vs {y.shape[0]}")
    if x.size == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")
    for name, arr in zip(names, (x, y), strict=True):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return x, y


def _check_labels(labels: npt.ArrayLike, n: int) -> npt.NDArray[np.bool_]:
    """Binary labels (bool or 0/1) of length ``n``."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {y.shape}")
    if y.dtype != np.bool_:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be binary (bool or 0/1)")
        y = y.astype(bool)
    return y


def _check_scores(scores: npt.ArrayLike, name: str = "scores") -> FloatArray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


# ---------------------------------------------------------------------------------------------
# Ranking metrics (per user)


def _discounts(k: int) -> FloatArray:
    """Log2 position discounts 1/log2(r + 1) for ranks r = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ndcg(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    """NDCG@k with binary gain and log2 discount.

    The ideal DCG places ``min(n_relevant, k)`` hits at the top ranks, so a user with more
    relevant items than slots still reaches 1.0 with a list full of hits.
    """
    h, n_rel = _check_hits_and_relevant(hits, n_relevant)
    k = h.shape[1]
    disc = _discounts(k)
    dcg = h @ disc
    idcg = np.cumsum(disc)[np.minimum(n_rel, k) - 1]
    return np.asarray(dcg / idcg, dtype=np.float64)


def recall(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    """Recall@k = hits in the top k / n_relevant.

    The standard definition: it is below 1.0 whenever the user has more than k relevant items.
    """
    h, n_rel = _check_hits_and_relevant(hits, n_relevant)
    return h.sum(axis=1) / n_rel


def hit_rate(hits: npt.ArrayLike) -> FloatArray:
    """Hit rate@k: 1.0 when any of the top k is relevant, else 0.0."""
    h = _check_hits(hits)
    return np.asarray(h.any(axis=1), dtype=np.float64)


def mrr(hits: npt.ArrayLike) -> FloatArray:
    """Reciprocal rank of the first hit within the top k (0.0 when there is none)."""
    h = _check_hits(hits)
    first = np.argmax(h, axis=1)  # 0 for rows without a hit too; masked below
    return np.where(h.any(axis=1), 1.0 / (first + 1), 0.0).astype(np.float64)


def precision(hits: npt.ArrayLike) -> FloatArray:
    """Precision@k = hits in the top k / k."""
    h = _check_hits(hits)
    return h.sum(axis=1) / h.shape[1]


def average_precision(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    """AP@k: sum of precision@r at each hit rank r, divided by ``min(n_relevant, k)``.

    Normalising by ``min(n_relevant, k)`` (not ``n_relevant``) lets a list full of hits reach 1.0.
    """
    h, n_rel = _check_hits_and_relevant(hits, n_relevant)
    k = h.shape[1]
    prec_at_r = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return (prec_at_r * h).sum(axis=1) / np.minimum(n_rel, k)


def f1(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    """Harmonic mean of precision@k and recall@k; 0.0 when both are 0."""
    p = precision(hits)
    r = recall(hits, n_relevant)
    total = p + r
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 2.0 * p * r / safe, 0.0)


def _hit_rate_metric(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    return hit_rate(hits)


def _mrr_metric(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    return mrr(hits)


def _precision_metric(hits: npt.ArrayLike, n_relevant: npt.ArrayLike) -> FloatArray:
    return precision(hits)


#: Ranking metrics by name, all with the signature ``(hits, n_relevant) -> per-user array``.
RANKING_METRICS: dict[str, RankingMetric] = {
    "ndcg": ndcg,
    "recall": recall,
    "hit": _hit_rate_metric,
    "mrr": _mrr_metric,
    "precision": _precision_metric,
    "map": average_precision,
    "f1": f1,
}

DEFAULT_RANKING_METRICS = ("ndcg", "recall", "mrr", "hit", "precision", "map", "f1")


def ranking_metrics(
    hits: npt.ArrayLike,
    n_relevant: npt.ArrayLike,
    names: Sequence[str] = DEFAULT_RANKING_METRICS,
) -> dict[str, FloatArray]:
    """Per-user values of several ranking metrics, keyed ``"<name>@<k>"`` (e.g. ``"ndcg@10"``)."""
    unknown = [name for name in names if name not in RANKING_METRICS]
    if unknown:
        raise ValueError(f"unknown ranking metric(s) {unknown}; known: {sorted(RANKING_METRICS)}")
    h, n_rel = _check_hits_and_relevant(hits, n_relevant)
    k = h.shape[1]
    return {f"{name}@{k}": RANKING_METRICS[name](h, n_rel) for name in names}


# ---------------------------------------------------------------------------------------------
# Rating and click metrics


def rmse(pred: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Root mean squared error between predicted and true ratings."""
    p, t = _check_pair(pred, true, ("pred", "true"))
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mae(pred: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Mean absolute error between predicted and true ratings."""
    p, t = _check_pair(pred, true, ("pred", "true"))
    return float(np.mean(np.abs(p - t)))


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """ROC AUC: the probability that a random positive outscores a random negative.

    Computed from average ranks (Mann-Whitney U), so tied scores count one half.
    """
    s = _check_scores(scores)
    y = _check_labels(labels, s.shape[0])
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels; only one class is present")
    ranks = rankdata(s)  # average ranks, 1-based
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(probs: npt.ArrayLike, labels: npt.ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy (natural log); probabilities are clipped to [eps, 1 - eps]."""
    p = _check_scores(probs, "probs")
    y = _check_labels(labels, p.shape[0])
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probs must lie in [0, 1]")
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def precision_recall_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Precision and recall when predicting "positive" for ``score >= t``, at each distinct t.

    Returns ``(precision, recall, thresholds)`` with thresholds in descending order, one point
    per distinct score (no extra (recall 0, precision 1) point is added).
    """
    s = _check_scores(scores)
    y = _check_labels(labels, s.shape[0])
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("precision_recall_curve needs at least one positive label")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    # The last position of each run of equal scores is where that threshold's cut falls.
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tp = tp[last_of_run]
    n_predicted = np.flatnonzero(last_of_run) + 1
    return tp / n_predicted, tp / n_pos, s_sorted[last_of_run]
