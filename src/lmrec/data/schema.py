"""The data containers every other part of lmrec reads.

A :class:`Dataset` is an interaction log plus an item catalog plus the two vocabularies that map
raw IDs (always strings) to dense rows. Interactions reference users and items by row, so nothing
downstream ever has to guess what an axis means.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lmrec.errors import DataError

# Columns of Dataset.interactions. user/item/timestamp are always present; the rest are optional.
REQUIRED_COLUMNS = ("user", "item", "timestamp")
OPTIONAL_COLUMNS = ("rating", "event", "weight")


class Vocab:
    """A bijection between raw IDs (strings) and dense rows ``0..n-1``."""

    def __init__(self, ids: Iterable[object]) -> None:
        self.ids: list[str] = [str(i) for i in ids]
        self._index = {raw: row for row, raw in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DataError(f"duplicate id {dup!r} in vocabulary")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.ids == other.ids

    def __repr__(self) -> str:
        return f"Vocab({len(self)} ids)"

    def row(self, raw: object) -> int:
        """The row of one raw ID; raises KeyError naming the ID if unknown."""
        try:
            return self._index[str(raw)]
        except KeyError:
            raise KeyError(f"unknown id {raw!r}") from None

    def rows(self, raws: Iterable[object], missing: int = -1) -> np.ndarray:
        """Rows for many raw IDs; unknown ones map to ``missing``. A column (a whole file's IDs) goes
        through a pandas index built once; a few IDs (a request) through the dict."""
        if not isinstance(raws, pd.Series):
            return np.array([self._index.get(str(r), missing) for r in raws], dtype=np.int64)
        rows = self._pandas_index.get_indexer(pd.Index(raws.astype(str))).astype(np.int64)
        rows[rows < 0] = missing
        return rows

    @functools.cached_property
    def _pandas_index(self) -> pd.Index:
        return pd.Index(self.ids)

    def raw(self, rows: Iterable[int]) -> list[str]:
        return [self.ids[int(r)] for r in rows]

    def extended(self, raws: Iterable[object]) -> Vocab:
        """A new vocabulary with the unseen IDs appended (existing rows keep their place)."""
        new = [str(r) for r in raws if str(r) not in self._index]
        return Vocab(self.ids + list(dict.fromkeys(new)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.ids))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class Dataset:
    """Interactions, item catalog and vocabularies.

    ``interactions`` has integer columns ``user`` and ``item`` (rows of the vocabularies), a numeric
    ``timestamp`` and optionally ``rating``, ``event`` and ``weight``. Its row order is time order
    (ties keep file order). ``catalog`` has one row per item row, in vocabulary order, with at
    least ``title`` (string) and ``categories`` (list of strings); any other columns are item text
    or features. An item without a title shows its ID as its title; text models do not read that
    as text (:func:`lmrec.text.choose_template`). ``meta`` may hold ``text_template``, how text
    models read this catalog (set by ``lmrec train --text-template``).
    """

    interactions: pd.DataFrame
    users: Vocab
    items: Vocab
    catalog: pd.DataFrame
    name: str = "dataset"
    user_features: pd.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise DataError(f"interactions lack column(s) {missing}")
        if len(self.catalog) != len(self.items):
            raise DataError(f"catalog has {len(self.catalog)} rows but there are {len(self.items)} items")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        *,
        name: str = "dataset",
        user_features: pd.DataFrame | None = None,
        source: str | None = None,
        first_line: int = 1,
    ) -> Dataset:
        """Build a dataset from raw IDs.

        ``frame`` has columns ``user``, ``item`` and optionally ``timestamp``, ``rating``, ``event``,
        ``weight`` (raw IDs of any type). Without a timestamp, file order is time order.
        ``catalog`` has a column ``item`` (raw IDs) and any text columns. Items that appear in only
        one of the two are kept: catalog-only items are cold items a text model can still rank.
        ``source`` and ``first_line`` (the file line of the frame's first row) make errors point
        at the right place in the user's file.
        """
        where = source or name
        for col in ("user", "item"):
            if col not in frame.columns:
                raise DataError(f"missing column {col!r}; columns are {list(frame.columns)}", path=where)
        if len(frame) == 0:
            raise DataError("no interactions", path=where)
        frame = frame.reset_index(drop=True)
        for col in ("user", "item"):
            bad = (frame[col].isna() | (frame[col].astype(str).str.strip() == "")).to_numpy()
            if bad.any():
                raise DataError("empty id", path=where, line=first_line + int(np.argmax(bad)), column=col)
        users = Vocab(pd.unique(frame["user"].astype(str)))
        cat_ids: list[str] = [] if catalog is None else [str(i) for i in catalog["item"]]
        items = Vocab(list(dict.fromkeys(cat_ids + list(pd.unique(frame["item"].astype(str))))))

        out = pd.DataFrame(
            {
                "user": users.rows(frame["user"].astype(str)),
                "item": items.rows(frame["item"].astype(str)),
            }
        )
        if "timestamp" in frame.columns:
            out["timestamp"] = _numeric(frame["timestamp"], "timestamp", where, first_line)
        else:
            out["timestamp"] = np.arange(len(frame), dtype=np.int64)
        for col in ("rating", "weight"):
            if col in frame.columns:
                out[col] = _numeric(frame[col], col, where, first_line).astype(np.float32)
        if "event" in frame.columns:
            out["event"] = frame["event"].astype(str)
        # Stable sort: ties in timestamp keep file order.
        out = out.sort_values("timestamp", kind="stable").reset_index(drop=True)
        return cls(
            interactions=out,
            users=users,
            items=items,
            catalog=_build_catalog(items, catalog),
            name=name,
            user_features=user_features,
        )

    def with_interactions(self, interactions: pd.DataFrame) -> Dataset:
        """Same vocabularies and catalog, other interactions (used by splits)."""
        return replace(self, interactions=interactions.reset_index(drop=True))

    def compacted(self) -> Dataset:
        """Drop users and items that no interaction references (used after filters)."""
        inter = self.interactions
        keep_users = np.unique(inter["user"].to_numpy())
        keep_items = np.unique(inter["item"].to_numpy())
        user_map = np.full(len(self.users), -1, dtype=np.int64)
        user_map[keep_users] = np.arange(len(keep_users))
        item_map = np.full(len(self.items), -1, dtype=np.int64)
        item_map[keep_items] = np.arange(len(keep_items))
        inter = inter.assign(user=user_map[inter["user"].to_numpy()], item=item_map[inter["item"].to_numpy()])
        users = Vocab(self.users.raw(keep_users))
        catalog = self.catalog.iloc[keep_items].reset_index(drop=True)
        uf = self.user_features
        if uf is not None and "user" in uf.columns:
            uf = uf[uf["user"].astype(str).isin(set(users.ids))].reset_index(drop=True)
        return replace(
            self,
            interactions=inter.reset_index(drop=True),
            users=users,
            items=Vocab(self.items.raw(keep_items)),
            catalog=catalog,
            user_features=uf,
        )

    # -- views ----------------------------------------------------------------------------------
    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.interactions.columns

    def titles(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        return [self._titles[int(r)] for r in rows]

    @functools.cached_property
    def _titles(self) -> list[str]:
        """Every title once, as a list: read on each served request, so not through pandas."""
        return [str(t) for t in self.catalog["title"]]

    def category_matrix(self) -> np.ndarray | None:
        """Multi-hot (n_items, n_categories) float32 matrix of the catalog's categories, columns in
        sorted category order; None when no item has a category."""
        cats = list(self.catalog["categories"])
        names = sorted({c for item in cats for c in item})
        if not names:
            return None
        col = {c: j for j, c in enumerate(names)}
        out = np.zeros((len(cats), len(names)), np.float32)
        for i, item in enumerate(cats):
            out[i, [col[c] for c in item]] = 1.0
        return out

    def item_popularity(self) -> np.ndarray:
        """Number of distinct users per item row."""
        pairs = self.interactions[["user", "item"]].drop_duplicates()
        return np.bincount(pairs["item"].to_numpy(), minlength=self.n_items)

    def summary(self) -> dict[str, Any]:
        n = len(self.interactions)
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n,
            "density": n / max(1, self.n_users * self.n_items),
            "columns": list(self.interactions.columns),
            "catalog_columns": list(self.catalog.columns),
        }


def _numeric(col: pd.Series, name: str, where: str, first_line: int) -> pd.Series:
    """Convert a column to numbers; a value that is not a number is an error naming its line."""
    values = col
    if not pd.api.types.is_numeric_dtype(col):
        values = pd.to_numeric(col, errors="coerce")
        if name == "timestamp" and values.isna().any():
            # Dates written as text ("2021-03-04 10:00") are fine; they become epoch seconds.
            dates = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
            if dates.notna().all():
                return (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        bad = (values.isna() & col.notna()).to_numpy()
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"value {col.iat[i]!r} is not a number", path=where, line=first_line + i, column=name)
    missing = values.isna().to_numpy()
    if name == "timestamp" and missing.any():
        raise DataError("empty timestamp", path=where, line=first_line + int(np.argmax(missing)), column=name)
    return values


def _build_catalog(items: Vocab, catalog: pd.DataFrame | None) -> pd.DataFrame:
    """One catalog row per item row, with ``title`` (the item ID where there is none: a display name,
    not text) and ``categories`` always present."""
    base = pd.DataFrame({"item": items.ids})
    if catalog is not None:
        cat = catalog.copy()
        cat["item"] = cat["item"].astype(str)
        cat = cat.drop_duplicates("item", keep="first")
        base = base.merge(cat, on="item", how="left")
    if "title" not in base.columns:
        base["title"] = base["item"]
    base["title"] = base["title"].where(base["title"].notna(), base["item"]).astype(str)
    if "categories" not in base.columns:
        base["categories"] = [[] for _ in range(len(base))]
    else:
        base["categories"] = [_as_list(v) for v in base["categories"]]
    return base


def _as_list(value: object) -> list[str]:
    if isinstance(value, list | tuple | np.ndarray):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    text = str(value)
    for sep in ("|", ","):
        if sep in text:
            return [t.strip() for t in text.split(sep) if t.strip()]
    return [text] if text else []
