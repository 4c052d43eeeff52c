"""Filters: hand-checked results and reports that count what was removed."""

from __future__ import annotations

import pandas as pd
import pytest

from lmrec.data.filters import FilterReport, apply_filters, dedupe, kcore, min_rating
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError, DataError


def dataset(rows: list[tuple], catalog: list[str] | None = None) -> Dataset:
    """rows of (user, item[, rating]) in time order."""
    columns = ["user", "item", "rating"][: len(rows[0])]
    frame = pd.DataFrame(rows, columns=columns)
    cat = None if catalog is None else pd.DataFrame({"item": catalog, "title": [f"t{i}" for i in catalog]})
    return Dataset.from_frame(frame, cat, name="toy")


def pairs(ds: Dataset) -> list[tuple[str, str]]:
    inter = ds.interactions
    return list(zip(ds.users.raw(inter["user"]), ds.items.raw(inter["item"]), strict=True))


# u4 has one interaction; removing it leaves i3 with one, removing that leaves u3 with one.
# A single pass would keep (u3, i2); only iterating to a fixed point removes it.
CHAIN = [
    ("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2"),
    ("u3", "i2"), ("u3", "i3"), ("u4", "i3"),
]  # fmt: skip


def test_kcore_iterates_until_stable() -> None:
    out, report = kcore(dataset(CHAIN), user_k=2, item_k=2)
    assert pairs(out) == [("u1", "i1"), ("u1", "i2"), ("u2", "i1"), ("u2", "i2")]
    assert out.users.ids == ["u1", "u2"]
    assert out.items.ids == ["i1", "i2"]
    assert list(out.catalog["item"]) == ["i1", "i2"]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (3, 2, 1)
    assert report.name == "kcore"
    assert report.params == {"user_k": 2, "item_k": 2}
    assert report.notes == ["3 removal rounds"]


def test_kcore_with_different_user_and_item_thresholds() -> None:
    # item_k=2 removes i3 and i4, seen once each; user_k=1 keeps u3 and u4, who still have i2
    rows = [("u1", "i1"), ("u2", "i1"), ("u3", "i2"), ("u3", "i3"), ("u4", "i2"), ("u4", "i4")]
    out, report = kcore(dataset(rows), user_k=1, item_k=2)
    assert pairs(out) == [("u1", "i1"), ("u2", "i1"), ("u3", "i2"), ("u4", "i2")]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (2, 0, 2)


def test_kcore_that_removes_everything_is_an_error() -> None:
    with pytest.raises(DataError, match="leaves no interactions"):
        kcore(dataset(CHAIN), user_k=5, item_k=5)
    with pytest.raises(ConfigError):
        kcore(dataset(CHAIN), user_k=0, item_k=2)


def test_kcore_counts_catalog_only_items_as_removed() -> None:
    out, report = kcore(dataset([("u1", "i1")], catalog=["i1", "cold"]), user_k=1, item_k=1)
    assert out.items.ids == ["i1"]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (0, 0, 1)


def test_min_rating() -> None:
    rows = [("u1", "a", 5), ("u1", "b", 2), ("u2", "b", 4), ("u3", "c", 1)]
    out, report = min_rating(dataset(rows), 4)
    assert pairs(out) == [("u1", "a"), ("u2", "b")]
    assert list(out.interactions["rating"]) == [5.0, 4.0]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (2, 1, 1)
    assert str(report) == "min_rating(threshold=4): removed 2 interactions, 1 users, 1 items"


def test_min_rating_needs_ratings() -> None:
    with pytest.raises(DataError, match="rating column"):
        min_rating(dataset([("u1", "a")]), 4)


def test_dedupe_keeps_last_or_first() -> None:
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u1", "a", 3), ("u2", "a", 4)]
    last, report = dedupe(dataset(rows))
    assert pairs(last) == [("u1", "b"), ("u1", "a"), ("u2", "a")]
    assert list(last.interactions["rating"]) == [2.0, 3.0, 4.0]
    assert (report.removed_interactions, report.removed_users, report.removed_items) == (1, 0, 0)
    first, _ = dedupe(dataset(rows), keep="first")
    assert list(first.interactions["rating"]) == [1.0, 2.0, 4.0]
    with pytest.raises(ConfigError):
        dedupe(dataset(rows), keep="middle")  # type: ignore[arg-type]


def test_apply_filters_runs_nothing_unless_asked() -> None:
    ds = dataset(CHAIN)
    out, reports = apply_filters(ds)
    assert out is ds
    assert reports == []


def test_apply_filters_order_min_rating_dedupe_kcore() -> None:
    rows = [
        ("u1", "a", 5), ("u1", "b", 5), ("u1", "a", 4), ("u2", "a", 5), ("u2", "b", 4),
        ("u3", "a", 1), ("u3", "b", 1), ("u4", "c", 5),
    ]  # fmt: skip
    out, reports = apply_filters(dataset(rows), kcore=2, min_rating=4, dedupe=True)
    assert [r.name for r in reports] == ["min_rating", "dedupe", "kcore"]
    assert [r.removed_interactions for r in reports] == [2, 1, 1]
    assert pairs(out) == [("u1", "b"), ("u1", "a"), ("u2", "a"), ("u2", "b")]
    assert reports[2].params == {"user_k": 2, "item_k": 2}
    _, reports = apply_filters(dataset(rows), kcore=(1, 3))
    assert reports[0].params == {"user_k": 1, "item_k": 3}


def test_report_string_reads_well() -> None:
    report = FilterReport("kcore", {"user_k": 5, "item_k": 5}, 12345, 6, 78, ["2 removal rounds"])
    assert str(report) == (
        "kcore(user_k=5, item_k=5): removed 12,345 interactions, 6 users, 78 items; 2 removal rounds"
    )
