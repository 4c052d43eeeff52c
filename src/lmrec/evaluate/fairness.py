"""Fairness: item exposure (tail share, provider exposure) and user-side gaps in accuracy.

Recommendation lists are ``recs`` as in :mod:`lmrec.evaluate.beyond`: an int array of shape
(n_users, k) of item rows, ``-1`` for an empty slot.

**Tail items** (one definition, used by every metric, report and re-ranker that speaks of the
tail): rank the items by training popularity, most popular first (ties by item row). The *head*
is the shortest prefix of that ranking whose items together hold at least ``head_share`` (default
50 %) of all training interactions; every other item is *tail*, including items with no training
interaction at all. lmrec counts popularity as :meth:`lmrec.data.schema.Dataset.item_popularity`
of the training part (distinct training users per item, so a repeated interaction counts once).

**Providers** are read from the first catalog column named in :data:`PROVIDER_COLUMNS` (in that
order, case-insensitive); exposure is the number of top-k slots a provider's items fill.

**User groups** split the evaluated users by their number of training interactions
(:data:`HISTORY_BUCKETS`) and by each attribute of the dataset's user table: a category (at most
:data:`MAX_CATEGORIES` distinct values) is one group per value; a number with more than
:data:`MAX_NUMERIC_VALUES` distinct values (such as age) is cut into :data:`QUANTILE_BINS`
quantile bins; users without a value form a ``(missing)`` group. A grouping's *gap* is the highest
minus the lowest group mean, over the groups of at least :data:`MIN_GROUP_USERS` users.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from lmrec.evaluate.beyond import check_recs

if TYPE_CHECKING:
    from lmrec.data.schema import Dataset
    from lmrec.evaluate.evaluator import EvalResult

BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "HEAD_SHARE",
    "HISTORY_BUCKETS",
    "MIN_GROUP_USERS",
    "PROVIDER_COLUMNS",
    "TAIL_RULE",
    "evaluation_fairness",
    "history_lengths",
    "provider_column",
    "provider_exposure",
    "tail_items",
    "tail_share",
    "user_attributes",
    "user_groups",
]

HEAD_SHARE = 0.5
TAIL_RULE = "tail: every item outside the most popular ones that hold the first 50 % of training interactions"
PROVIDER_COLUMNS = ("brand", "provider", "seller", "artist", "author", "publisher")
# [low, high) numbers of training interactions; a bucket without users is left out.
HISTORY_BUCKETS = ((0, 1), (1, 5), (5, 10), (10, 20), (20, 50), (50, math.inf))
MIN_GROUP_USERS = 20  # a group smaller than this is shown but does not count towards the gap
MAX_CATEGORIES = 30  # more distinct values than this (a zip code, say): the attribute is skipped
MAX_NUMERIC_VALUES = 10  # a number with more distinct values than this is binned
QUANTILE_BINS = 4
MISSING = "(missing)"


# ---------------------------------------------------------------------------------------------
# Item exposure


def tail_items(item_popularity: npt.ArrayLike, head_share: float = HEAD_SHARE) -> BoolArray:
    """Whether each item row is a tail item (see the module docstring): everything outside the
    most popular items that together hold the first ``head_share`` of training interactions."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise ValueError(f"item_popularity must be 1-D (n_items,), got shape {pop.shape}")
    if not np.isfinite(pop).all() or np.any(pop < 0):
        raise ValueError("item_popularity must be finite and non-negative")
    if not 0 <= head_share <= 1:
        raise ValueError(f"head_share must be in [0, 1], got {head_share}")
    total = pop.sum()
    is_tail = np.ones(pop.shape[0], dtype=bool)
    if total == 0:
        return is_tail
    order = np.argsort(-pop, kind="stable")
    before = (np.cumsum(pop[order]) - pop[order]) / total  # share held by the items ranked above
    is_tail[order[(before < head_share) & (pop[order] > 0)]] = False
    return is_tail


def tail_share(recs: npt.ArrayLike, is_tail: npt.ArrayLike) -> float:
    """Share of the filled top-k slots (all users together) that hold tail items."""
    tail = np.asarray(is_tail, dtype=bool)
    if tail.ndim != 1:
        raise ValueError(f"is_tail must be 1-D (n_items,), got shape {tail.shape}")
    r = check_recs(recs, tail.shape[0])
    filled = r[r >= 0]
    if filled.size == 0:
        raise ValueError("recs contains no recommended items (every slot is -1)")
    return float(tail[filled].mean())


def provider_column(catalog: pd.DataFrame) -> str | None:
    """The catalog column that names each item's provider: the first of :data:`PROVIDER_COLUMNS`
    present (case-insensitive), or None."""
    by_lower = {str(c).lower(): str(c) for c in reversed(list(catalog.columns))}  # first of equals wins
    return next((by_lower[name] for name in PROVIDER_COLUMNS if name in by_lower), None)


def provider_exposure(recs: npt.ArrayLike, providers: Sequence[Any] | pd.Series | np.ndarray) -> dict[str, float]:
    """How evenly the top-k slots spread over providers.

    ``providers[i]`` is the provider of item row i (None, NaN or blank: none; such items are left
    out). Returns ``gini`` (Gini index of slots per provider over every provider in the catalog,
    0 = equal exposure; NaN when no slot holds an item with a provider), ``exposed`` (providers with
    at least one slot), ``providers`` (providers in the catalog) and ``coverage`` (exposed / providers;
    NaN, like ``gini``, when the catalog names no provider).
    """
    labels = pd.Series(list(providers), dtype=object)
    missing = labels.isna() | (labels.astype(str).str.strip() == "")
    codes, names = pd.factorize(labels.where(~missing).astype(str).where(~missing))
    n_providers = len(names)
    r = check_recs(recs, len(labels))
    slot_codes = codes[r[r >= 0]]
    exposure = np.bincount(slot_codes[slot_codes >= 0], minlength=n_providers).astype(np.float64)
    exposed = int(np.count_nonzero(exposure))
    return {
        "gini": _gini(exposure),
        "exposed": exposed,
        "providers": n_providers,
        "coverage": exposed / n_providers if n_providers else math.nan,
    }


def _gini(counts: npt.NDArray[np.float64]) -> float:
    """Gini coefficient of non-negative counts (NaN when they sum to 0)."""
    n, total = counts.shape[0], counts.sum()
    if total == 0:
        return math.nan
    x = np.sort(counts)
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))


# ---------------------------------------------------------------------------------------------
# User-side gaps


def history_lengths(train_users: npt.ArrayLike, users: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Training interactions of each evaluated user: ``train_users`` is the user row of every
    training interaction, ``users`` the evaluated user rows (-1, an unknown user, has 0)."""
    rows = np.asarray(users, dtype=np.int64)
    train = np.asarray(train_users, dtype=np.int64)
    counts = np.bincount(train, minlength=int(rows.max(initial=-1)) + 1)
    out = np.zeros(rows.shape[0], dtype=np.int64)
    known = (rows >= 0) & (rows < counts.shape[0])
    out[known] = counts[rows[known]]
    return out


def user_attributes(user_features: pd.DataFrame | None, users: Sequence[str]) -> pd.DataFrame | None:
    """The user table's attributes (every column but ``user``) for the raw user IDs ``users``, one
    row each in that order (missing values where a user has no row); None without a user table."""
    if user_features is None or "user" not in user_features.columns or user_features.shape[1] < 2:
        return None
    table = user_features.assign(user=user_features["user"].astype(str)).drop_duplicates("user")
    return table.set_index("user").reindex([str(u) for u in users]).reset_index(drop=True)


def _history_labels(lengths: npt.NDArray[np.int64]) -> tuple[np.ndarray, list[str]]:
    labels = np.empty(lengths.shape[0], dtype=object)
    order = []
    for lo, hi in HISTORY_BUCKETS:
        name = f"{lo}+" if math.isinf(hi) else (str(lo) if hi - lo == 1 else f"{lo}–{int(hi) - 1}")
        labels[(lengths >= lo) & (lengths < hi)] = name
        order.append(name)
    return labels, order


def _attribute_labels(column: pd.Series) -> tuple[np.ndarray, list[str], str | None] | str:
    """(label per user, group order, how binned or None), or why the attribute is skipped."""
    present = (column.notna() & (column.astype(str).str.strip() != "")).to_numpy()
    values = column[present]
    if values.empty:
        return "no values"
    labels = np.full(len(column), MISSING, dtype=object)
    if not pd.api.types.is_bool_dtype(values):  # tables are often read as text: "25" is a number
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all():
            values = numbers
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    distinct = values.nunique()
    if numeric and distinct > MAX_NUMERIC_VALUES:
        numbers = values.astype(np.float64)
        bins = pd.qcut(numbers, QUANTILE_BINS, labels=False, duplicates="drop").to_numpy()
        order = []
        for b in np.unique(bins):
            inside = numbers[bins == b]
            name = f"{inside.min():g}–{inside.max():g}"
            labels[np.flatnonzero(present)[bins == b]] = name
            order.append(name)
        return labels, [*order, MISSING], f"{len(order)} quantile bins"
    if not numeric and distinct > MAX_CATEGORIES:
        return f"{distinct} distinct values (more than {MAX_CATEGORIES})"
    labels[present] = [_label(v) for v in values]
    order = [_label(v) for v in sorted(values.unique())] if numeric else sorted(set(labels[present]))
    return labels, [*order, MISSING], None


def _label(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _grouping(values: np.ndarray, labels: np.ndarray, order: list[str], metric: str, min_users: int) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for name in order:
        mask = labels == name
        if mask.any():
            groups[name] = {"users": int(mask.sum()), metric: round(float(values[mask].mean()), 6)}
    big = {name: g[metric] for name, g in groups.items() if g["users"] >= min_users}
    out: dict[str, Any] = {"groups": groups, "gap": None}
    if len(big) >= 2:
        high, low = max(big, key=big.__getitem__), min(big, key=big.__getitem__)
        out.update(gap=round(big[high] - big[low], 6), gap_between=[high, low])
    return out


def user_groups(
    values: npt.ArrayLike,
    lengths: npt.ArrayLike,
    attributes: pd.DataFrame | None = None,
    *,
    metric: str = "ndcg@10",
    min_users: int = MIN_GROUP_USERS,
) -> dict[str, Any]:
    """The mean of a per-user metric (``values``, e.g. ``EvalResult.per_user["ndcg@10"]``) per user
    group, JSON-ready (means rounded to 6 digits).

    ``lengths`` is each user's number of training interactions, ``attributes`` one row per user
    (:func:`user_attributes`). Returns ``{"metric", "min_users", "by": {grouping: {"groups":
    {label: {"users": n, metric: mean}}, "gap": max - min over groups of >= ``min_users`` users or
    None, "gap_between": [highest, lowest]}}}``; the grouping ``history`` comes first, then one per
    attribute (a binned one says how under ``"bins"``); attributes that cannot be grouped are named
    under ``"skipped"`` with the reason.
    """
    vals = np.asarray(values, dtype=np.float64)
    lens = np.asarray(lengths, dtype=np.int64)
    if vals.ndim != 1 or lens.shape != vals.shape:
        raise ValueError(f"values and lengths must be 1-D of one length, got {vals.shape} and {lens.shape}")
    if attributes is not None and len(attributes) != len(vals):
        raise ValueError(f"attributes has {len(attributes)} rows but there are {len(vals)} users")
    labels, order = _history_labels(lens)
    by = {"history": {"of": "training interactions", **_grouping(vals, labels, order, metric, min_users)}}
    skipped: dict[str, str] = {}
    columns = {} if attributes is None else {name: attributes[name] for name in attributes.columns}
    for name, column in columns.items():
        grouped = _attribute_labels(column)
        if isinstance(grouped, str):
            skipped[str(name)] = grouped
            continue
        labels, order, bins = grouped
        key = str(name) if str(name) not in by else f"{name} (attribute)"
        by[key] = {**({"bins": bins} if bins else {}), **_grouping(vals, labels, order, metric, min_users)}
    return {"metric": metric, "min_users": min_users, "by": by, **({"skipped": skipped} if skipped else {})}


def evaluation_fairness(
    result: EvalResult, dataset: Dataset, train: Dataset, ks: tuple[int, ...]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Fairness of one evaluation (:mod:`lmrec.evaluate.fairness`): metrics ``tail_share@K`` and,
    where the catalog has a provider column, ``provider_gini`` and ``provider_coverage`` (K = max(ks));
    and the JSON-ready extras ``groups`` (NDCG@10, or NDCG at the largest k without 10, per user
    group, with gaps) and ``providers`` (column, providers exposed, providers in the catalog)."""
    k = max(ks)
    recs = result.recommendations[:, :k]
    metrics = {f"tail_share@{k}": tail_share(recs, tail_items(train.item_popularity()))}
    extras: dict[str, Any] = {}
    metric = "ndcg@10" if "ndcg@10" in result.per_user else f"ndcg@{k}"
    if metric in result.per_user:
        lengths = history_lengths(train.interactions["user"].to_numpy(), result.users)
        raw = [dataset.users.ids[u] if u >= 0 else "" for u in result.users]
        attributes = user_attributes(dataset.user_features, raw)
        extras["groups"] = user_groups(result.per_user[metric], lengths, attributes, metric=metric)
    column = provider_column(dataset.catalog)
    exposure = provider_exposure(recs, dataset.catalog[column]) if column is not None else None
    if exposure is not None and exposure["providers"] > 0:
        if not np.isnan(exposure["gini"]):  # NaN: no slot holds an item with a provider
            metrics["provider_gini"] = exposure["gini"]
        metrics["provider_coverage"] = exposure["coverage"]
        extras["providers"] = {"column": column, "exposed": exposure["exposed"], "total": exposure["providers"]}
    return metrics, extras
