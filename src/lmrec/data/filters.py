"""Dataset filters that say what they removed.

Each filter returns the filtered dataset, compacted (users and items left without interactions are
dropped from the vocabularies and the catalog), and a :class:`FilterReport` with the counts. No
filter runs unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class FilterReport:
    """What one filter removed. Items counted here include catalog-only items, which compaction
    drops along with the items the filter emptied."""

    name: str
    params: dict[str, Any]
    removed_interactions: int
    removed_users: int
    removed_items: int
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        removed = (
            f"removed {self.removed_interactions:,} interactions, "
            f"{self.removed_users:,} users, {self.removed_items:,} items"
        )
        return f"{self.name}({args}): {removed}" + "".join(f"; {n}" for n in self.notes)


def _keep(
    ds: Dataset, mask: np.ndarray, name: str, params: dict[str, Any], notes: list[str]
) -> tuple[Dataset, FilterReport]:
    """The dataset with only the interactions in ``mask``, compacted, and its report."""
    out = ds.with_interactions(ds.interactions[mask]).compacted()
    report = FilterReport(
        name=name,
        params=params,
        removed_interactions=len(ds.interactions) - len(out.interactions),
        removed_users=ds.n_users - out.n_users,
        removed_items=ds.n_items - out.n_items,
        notes=notes,
    )
    return out, report


def kcore(ds: Dataset, user_k: int, item_k: int) -> tuple[Dataset, FilterReport]:
    """Keep the largest subset in which every user has at least ``user_k`` interactions and every
    item at least ``item_k``. Removing a sparse user can push an item below its threshold and vice
    versa, so this repeats until nothing changes."""
    if user_k < 1 or item_k < 1:
        raise ConfigError(f"k-core thresholds must be at least 1, got user_k={user_k}, item_k={item_k}")
    users = ds.interactions["user"].to_numpy()
    items = ds.interactions["item"].to_numpy()
    keep = np.ones(len(users), dtype=bool)
    rounds = 0  # passes that removed something
    while True:
        user_count = np.bincount(users[keep], minlength=ds.n_users)
        item_count = np.bincount(items[keep], minlength=ds.n_items)
        still = keep & (user_count[users] >= user_k) & (item_count[items] >= item_k)
        if np.array_equal(still, keep):
            break
        keep, rounds = still, rounds + 1
    notes = [f"{rounds} removal round{'' if rounds == 1 else 's'}"]
    if not keep.any():
        raise DataError(f"k-core with user_k={user_k}, item_k={item_k} leaves no interactions", path=ds.name)
    return _keep(ds, keep, "kcore", {"user_k": user_k, "item_k": item_k}, notes)


def min_rating(ds: Dataset, threshold: float) -> tuple[Dataset, FilterReport]:
    """Keep interactions rated at least ``threshold`` (for example 4 to treat 4-5 stars as likes)."""
    if not ds.has_ratings:
        raise DataError("min_rating needs a rating column and this dataset has none", path=ds.name)
    keep = ds.interactions["rating"].to_numpy() >= threshold
    if not keep.any():
        raise DataError(f"no interaction is rated {threshold} or more", path=ds.name)
    return _keep(ds, keep, "min_rating", {"threshold": threshold}, [])


def dedupe(ds: Dataset, keep: Literal["first", "last"] = "last") -> tuple[Dataset, FilterReport]:
    """Keep one interaction per (user, item) pair: the ``last`` (latest) or the ``first``."""
    if keep not in ("first", "last"):
        raise ConfigError(f"dedupe keep must be 'first' or 'last', got {keep!r}")
    mask = ~ds.interactions.duplicated(["user", "item"], keep=keep).to_numpy()
    return _keep(ds, mask, "dedupe", {"keep": keep}, [])


# apply_filters' keyword arguments share the filters' names.
_kcore, _min_rating, _dedupe = kcore, min_rating, dedupe


def apply_filters(
    ds: Dataset,
    *,
    kcore: int | tuple[int, int] | None = None,
    min_rating: float | None = None,
    dedupe: bool = False,
) -> tuple[Dataset, list[FilterReport]]:
    """Apply the requested filters in a fixed order: min_rating, dedupe, then k-core (last, since
    the other two can only lower the counts k-core checks). ``kcore`` is one threshold for users
    and items or a ``(user_k, item_k)`` pair."""
    reports: list[FilterReport] = []
    if min_rating is not None:
        ds, report = _min_rating(ds, min_rating)
        reports.append(report)
    if dedupe:
        ds, report = _dedupe(ds)
        reports.append(report)
    if kcore is not None:
        user_k, item_k = (kcore, kcore) if isinstance(kcore, int) else kcore
        ds, report = _kcore(ds, user_k, item_k)
        reports.append(report)
    return ds, reports
