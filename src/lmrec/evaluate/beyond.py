"""Beyond-accuracy metrics: coverage, diversity, novelty, popularity bias and calibration.

Every function reads recommendation lists as ``recs``: an int array of shape (n_users, k) of
item rows, where ``-1`` marks an empty slot (a list shorter than k) that is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import sparse

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

__all__ = [
    "average_popularity",
    "beyond_accuracy",
    "catalog_coverage",
    "category_coverage",
    "check_recs",
    "gini_index",
    "intra_list_diversity",
    "intra_list_diversity_per_user",
    "miscalibration",
    "miscalibration_per_user",
    "novelty",
]

# Users per block when gathering item vectors, so memory stays at block × k × d.
_ILD_BLOCK = 2048


# ---------------------------------------------------------------------------------------------
# Input checks and shared helpers


def check_recs(recs: npt.ArrayLike, n_items: int) -> IntArray:
    """Return ``recs`` as a 2-D int64 array whose entries are -1 or valid item rows."""
    arr = np.asarray(recs)
    if arr.ndim != 2:
        raise ValueError(f"recs must be 2-D (n_users, k), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"recs must hold integer item rows, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < -1 or arr.max() >= n_items):
        raise ValueError(
            f"recs entries must be -1 (empty) or item rows in [0, {n_items}), "
            f"found values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def _require_items(recs: IntArray) -> None:
    if not np.any(recs >= 0):
        raise ValueError("recs contains no recommended items (every slot is -1)")


def _check_popularity(item_popularity: npt.ArrayLike) -> FloatArray:
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise ValueError(f"item_popularity must be 1-D (n_items,), got shape {pop.shape}")
    if not np.isfinite(pop).all() or np.any(pop < 0):
        raise ValueError("item_popularity must be finite and non-negative")
    return pop


def _mean_over_lists(values: FloatArray, recs: IntArray) -> float:
    """Mean over non-empty lists of each list's mean of ``values`` (one value per slot)."""
    valid = recs >= 0
    n = valid.sum(axis=1)
    per_user = np.where(valid, values, 0.0).sum(axis=1)[n > 0] / n[n > 0]
    return float(per_user.mean())


def _user_item_matrix(rows: IntArray, items: IntArray, n_users: int, n_items: int) -> sparse.csr_array:
    """Sparse (n_users, n_items) matrix counting how often each item occurs for each user."""
    data = np.ones(rows.shape[0], dtype=np.float64)
    return sparse.csr_array((data, (rows, items)), shape=(n_users, n_items))


def _recs_matrix(recs: IntArray, n_items: int) -> sparse.csr_array:
    valid = recs >= 0
    rows = np.nonzero(valid)[0].astype(np.int64)
    return _user_item_matrix(rows, recs[valid], recs.shape[0], n_items)


def _category_matrix(item_categories: Sequence[Sequence[str]], *, weighted: bool) -> tuple[sparse.csr_array, list[str]]:
    """Sparse (n_items, n_categories) item-category matrix and the category names.

    With ``weighted`` each item's row sums to 1 (weight 1/len(categories) per category, as in
    Steck 2018); otherwise entries are 1. Items without categories have an empty row.
    """
    names = sorted({c for cats in item_categories for c in cats})
    index = {c: j for j, c in enumerate(names)}
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for i, cats in enumerate(item_categories):
        distinct = set(cats)
        for c in distinct:
            rows.append(i)
            cols.append(index[c])
            vals.append(1.0 / len(distinct) if weighted else 1.0)
    matrix = sparse.csr_array((vals, (rows, cols)), shape=(len(item_categories), len(names)))
    return matrix, names


def _normalise_rows(matrix: sparse.csr_array) -> sparse.csr_array:
    """Scale each row to sum to 1; all-zero rows stay zero."""
    out = sparse.csr_array(matrix, copy=True)
    sums = np.asarray(out.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    out.data *= np.repeat(scale, np.diff(out.indptr))
    return out


# ---------------------------------------------------------------------------------------------
# Coverage and popularity


def catalog_coverage(recs: npt.ArrayLike, n_items: int) -> float:
    """Share of the catalog's ``n_items`` items that appear in at least one list."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    r = check_recs(recs, n_items)
    return float(np.unique(r[r >= 0]).size / n_items)


def novelty(recs: npt.ArrayLike, item_popularity: npt.ArrayLike, n_users: int) -> float:
    """Mean self-information ``-log2(pop_i / n_users)`` of recommended items, in bits.

    ``item_popularity[i]`` is the number of distinct users who interacted with item i (so at most
    ``n_users``); popularity 0 is treated as 1. Averaged within each non-empty list, then over lists.
    """
    pop = _check_popularity(item_popularity)
    if n_users < 1:
        raise ValueError(f"n_users must be >= 1, got {n_users}")
    if pop.size and pop.max() > n_users:
        raise ValueError(
            f"item_popularity has a value {pop.max():g} above n_users={n_users}; "
            "popularity must count distinct users per item"
        )
    r = check_recs(recs, pop.shape[0])
    _require_items(r)
    self_info = -np.log2(np.maximum(pop, 1.0) / n_users)
    return _mean_over_lists(self_info[np.maximum(r, 0)], r)


def average_popularity(recs: npt.ArrayLike, item_popularity: npt.ArrayLike) -> float:
    """Mean popularity of recommended items, averaged within each non-empty list, then over lists."""
    pop = _check_popularity(item_popularity)
    r = check_recs(recs, pop.shape[0])
    _require_items(r)
    return _mean_over_lists(pop[np.maximum(r, 0)], r)


def gini_index(recs: npt.ArrayLike, n_items: int) -> float:
    """Gini coefficient of how often each catalog item is recommended.

    0 when every item is recommended equally often; ``(n_items - 1) / n_items`` (→ 1) when all
    recommendations go to one item. Items never recommended count as zeros.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    r = check_recs(recs, n_items)
    _require_items(r)
    counts = np.sort(np.bincount(r[r >= 0], minlength=n_items)).astype(np.float64)
    i = np.arange(1, n_items + 1)
    return float(np.sum((2 * i - n_items - 1) * counts) / (n_items * counts.sum()))


# ---------------------------------------------------------------------------------------------
# Diversity


def intra_list_diversity_per_user(recs: npt.ArrayLike, item_vectors: npt.ArrayLike) -> FloatArray:
    """Per list, the mean over distinct slot pairs of ``1 - cosine similarity``.

    Items whose vector is all zeros have similarity 0 to everything. Lists with fewer than two
    items have no pairs and get NaN.
    """
    vecs = np.asarray(item_vectors, dtype=np.float64)
    if vecs.ndim != 2:
        raise ValueError(f"item_vectors must be 2-D (n_items, d), got shape {vecs.shape}")
    if not np.isfinite(vecs).all():
        raise ValueError("item_vectors contains NaN or infinite values")
    r = check_recs(recs, vecs.shape[0])
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    unit = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0)

    n_users, k = r.shape
    out = np.full(n_users, np.nan)
    off_diagonal = ~np.eye(k, dtype=bool)
    for start in range(0, n_users, _ILD_BLOCK):
        block = r[start : start + _ILD_BLOCK]
        valid = block >= 0
        gathered = unit[np.maximum(block, 0)]  # (b, k, d)
        sims = gathered @ gathered.transpose(0, 2, 1)  # (b, k, k) cosine similarities
        pairs = valid[:, :, None] & valid[:, None, :] & off_diagonal
        # Rounding can push a self-similarity of identical vectors just above 1.
        dissim = np.clip(1.0 - sims, 0.0, 2.0)
        n_pairs = pairs.sum(axis=(1, 2))
        total = np.where(pairs, dissim, 0.0).sum(axis=(1, 2))
        has_pairs = n_pairs > 0
        out[start : start + block.shape[0]][has_pairs] = total[has_pairs] / n_pairs[has_pairs]
    return out


def intra_list_diversity(recs: npt.ArrayLike, item_vectors: npt.ArrayLike) -> float:
    """Mean intra-list diversity over lists with at least two items (NaN if there are none)."""
    per_user = intra_list_diversity_per_user(recs, item_vectors)
    defined = per_user[~np.isnan(per_user)]
    return float(defined.mean()) if defined.size else math.nan


# ---------------------------------------------------------------------------------------------
# Categories and calibration


def _check_categories(item_categories: Sequence[Sequence[str]]) -> None:
    for i, cats in enumerate(item_categories):
        if isinstance(cats, str):
            raise ValueError(f"item_categories[{i}] is the string {cats!r}; give a list of category names per item")


def category_coverage(recs: npt.ArrayLike, item_categories: Sequence[Sequence[str]]) -> float:
    """Mean over lists of (distinct categories in the list / distinct categories in the catalog).

    ``item_categories[i]`` lists the categories of item row i. An empty list covers nothing (0).
    """
    _check_categories(item_categories)
    r = check_recs(recs, len(item_categories))
    item_cat, names = _category_matrix(item_categories, weighted=False)
    if not names:
        raise ValueError("item_categories holds no categories at all")
    if r.shape[0] == 0:
        raise ValueError("recs has no users")
    user_cat = _recs_matrix(r, len(item_categories)) @ item_cat
    covered = np.asarray((user_cat > 0).sum(axis=1)).ravel()  # distinct categories per list
    return float(np.mean(covered / len(names)))


def miscalibration_per_user(
    histories: Sequence[npt.ArrayLike],
    recs: npt.ArrayLike,
    item_categories: Sequence[Sequence[str]],
    alpha: float = 0.01,
) -> FloatArray:
    """Steck (2018) miscalibration ``KL(p || q~)`` per user, in nats.

    p is the category distribution of the user's history and q that of the list, each item
    spreading weight 1 evenly over its categories; ``q~ = (1 - alpha) q + alpha p`` keeps the KL
    finite. Users whose history has no categorised item get NaN.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    _check_categories(item_categories)
    n_items = len(item_categories)
    r = check_recs(recs, n_items)
    n_users = r.shape[0]
    if len(histories) != n_users:
        raise ValueError(f"histories has {len(histories)} users but recs has {n_users} rows")
    hist = [np.asarray(h).ravel() for h in histories]
    for u, h in enumerate(hist):
        if h.size and (not np.issubdtype(h.dtype, np.integer) or h.min() < 0 or h.max() >= n_items):
            raise ValueError(f"histories[{u}] must hold integer item rows in [0, {n_items})")
    lengths = np.array([h.size for h in hist], dtype=np.int64)
    hist_rows = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    hist_items = np.concatenate(hist).astype(np.int64) if hist else np.zeros(0, dtype=np.int64)

    item_cat, _ = _category_matrix(item_categories, weighted=True)
    p = _normalise_rows(_user_item_matrix(hist_rows, hist_items, n_users, n_items) @ item_cat)
    q = _normalise_rows(_recs_matrix(r, n_items) @ item_cat)

    # Only categories with p > 0 contribute to KL(p || q~), and there q~ >= alpha * p > 0.
    p_coo = p.tocoo()
    p_coo.eliminate_zeros()
    rows, cols, p_vals = p_coo.row, p_coo.col, p_coo.data
    q_vals = np.asarray(q[rows, cols]).ravel()
    q_tilde = (1 - alpha) * q_vals + alpha * p_vals
    kl = np.bincount(rows, weights=p_vals * np.log(p_vals / q_tilde), minlength=n_users)
    has_profile = np.bincount(rows, minlength=n_users) > 0
    return np.where(has_profile, kl, np.nan)


def miscalibration(
    histories: Sequence[npt.ArrayLike],
    recs: npt.ArrayLike,
    item_categories: Sequence[Sequence[str]],
    alpha: float = 0.01,
) -> float:
    """Mean Steck (2018) miscalibration over users with a categorised history (NaN if none)."""
    per_user = miscalibration_per_user(histories, recs, item_categories, alpha)
    defined = per_user[~np.isnan(per_user)]
    return float(defined.mean()) if defined.size else math.nan


# ---------------------------------------------------------------------------------------------
# All together


def beyond_accuracy(
    recs: npt.ArrayLike,
    *,
    n_items: int,
    item_popularity: npt.ArrayLike,
    n_users: int,
    item_vectors: npt.ArrayLike | None = None,
    item_categories: Sequence[Sequence[str]] | None = None,
    histories: Sequence[npt.ArrayLike] | None = None,
) -> dict[str, float]:
    """The beyond-accuracy metrics that the given inputs allow.

    Always: "coverage", "novelty", "avg_popularity", "gini". With ``item_vectors``: "ild" (left
    out when no list has two items). With ``item_categories``: "category_coverage", and with
    ``histories`` as well: "miscalibration". ``n_users`` is the number of users that
    ``item_popularity`` was counted over (for novelty), not necessarily ``len(recs)``.
    """
    for name, value in (("item_popularity", item_popularity), ("item_vectors", item_vectors)):
        if value is not None and np.shape(value)[:1] != (n_items,):
            raise ValueError(f"{name} has shape {np.shape(value)} but n_items={n_items}")
    if item_categories is not None and len(item_categories) != n_items:
        raise ValueError(f"item_categories has {len(item_categories)} entries but n_items={n_items}")
    out = {
        "coverage": catalog_coverage(recs, n_items),
        "novelty": novelty(recs, item_popularity, n_users),
        "avg_popularity": average_popularity(recs, item_popularity),
        "gini": gini_index(recs, n_items),
    }
    if item_vectors is not None:
        ild = intra_list_diversity(recs, item_vectors)
        if not math.isnan(ild):
            out["ild"] = ild
    if item_categories is not None:
        out["category_coverage"] = category_coverage(recs, item_categories)
        if histories is not None:
            cal = miscalibration(histories, recs, item_categories)
            if not math.isnan(cal):
                out["miscalibration"] = cal
    return out
