"""Paired significance tests for comparing two systems on the same users."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = ["bootstrap_ci", "paired_test"]

# Cap on resamples × users held in memory at once while bootstrapping.
_BOOTSTRAP_CHUNK_CELLS = 4_000_000


def bootstrap_ci(
    diff: npt.ArrayLike, *, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``diff`` (users resampled)."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"diff must be a non-empty 1-D array, got shape {d.shape}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    n = d.size
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        means[start : start + size] = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _t_pvalue(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    """Two-sided paired t-test p-value."""
    diff = b - a
    if diff.size < 2:
        return math.nan  # no variance estimate from one user
    largest = float(np.abs(diff).max())
    if largest == 0:
        return 1.0  # no difference at all
    if np.ptp(diff) <= 1e-12 * largest:
        # The same non-zero shift for every user, up to rounding: zero variance, t → ∞, p → 0.
        # scipy would return NaN or an unreliable value with a precision-loss warning here.
        return 0.0
    # The paired t-test is the one-sample test of the differences, and t does not depend on their
    # scale: divided by the largest, differences near the smallest floats keep a variance that
    # does not underflow to 0 (which gave p = 0, or NaN, for a spread that is there).
    return float(stats.ttest_1samp(diff / largest, 0.0).pvalue)


def _wilcoxon_pvalue(diff: npt.NDArray[np.float64]) -> float:
    """Two-sided Wilcoxon signed-rank p-value; zero differences are dropped (Wilcoxon's rule)."""
    if np.all(diff == 0):
        return 1.0
    return float(stats.wilcoxon(diff).pvalue)


def paired_test(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    *,
    n_resamples: int = 10000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Compare per-user metric values of system A and system B on the same users, same order.

    Returns ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (b − a), ``relative_change``
    (mean_diff / mean_a; NaN when mean_a is 0), ``t_pvalue`` (paired t-test), ``wilcoxon_pvalue``
    (signed-rank; 1.0 when every difference is 0) and ``ci_low`` / ``ci_high``, a percentile
    bootstrap interval of the mean difference (``confidence`` level, seeded resampling of users).
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"a and b must be 1-D per-user arrays, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"a and b must cover the same users: lengths {x.size} and {y.size} differ")
    if x.size == 0:
        raise ValueError("a and b are empty; need at least one user")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a and b must not contain NaN or infinite values")

    diff = y - x
    mean_a, mean_b = float(x.mean()), float(y.mean())
    mean_diff = float(diff.mean())
    ci_low, ci_high = bootstrap_ci(diff, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {
        "n": x.size,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_diff": mean_diff,
        "relative_change": mean_diff / mean_a if mean_a != 0 else math.nan,
        "t_pvalue": _t_pvalue(x, y),
        "wilcoxon_pvalue": _wilcoxon_pvalue(diff),
        "ci_low": ci_low,
        "ci_high": ci_high,
    }
