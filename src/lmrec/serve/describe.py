"""What a recommendation response says of each item beyond its score: its year and genres, and a
grounded reason (the service's ``/recommend`` fields the demo page shows).

A reason cites only items of the user's live history: the history items most similar to the
recommended one, the rule of :meth:`lmrec.llm.explain.Explainer.evidence` (distinct history items, the
item itself left out, most similar first, ties in order) with history items not at all like the item
(similarity <= 0) left out too: sharing no user with an item is no reason for it. Similarity is the
served model's own item vectors where it has them — so an item added at serve time and scored from
its text is explained by the same vectors that ranked it — else co-occurrence in the run's training
data, as for ``lmrec recommend --explain``. A reason is a template ("Because you liked A and B."),
never an LLM call, and all of a request's items are compared with the history in one similarity
call; only the ``RECENT`` most recent distinct history items are searched, which bounds the cost for
long histories. Titles in a reason are read live (a title changed with ``PUT /items`` shows).

What is derived from a run once (years, genres, the co-occurrence similarity, the similarity for the
current set of served rows) is kept beside its :class:`LiveState`, and dropped with it on reload.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lmrec.rerank.similarity import CooccurrenceSimilarity, EmbeddingSimilarity, ItemSimilarity, item_vectors_of
from lmrec.serve.records import MAX_YEAR, MIN_YEAR, Item
from lmrec.serve.state import LiveState, Served

RECENT = 50  # distinct history items searched for a reason, most recent first
CITE = 2  # history items a reason names
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class _Explaining:
    served: Served  # the served rows ``similarity`` covers
    similarity: ItemSimilarity
    n_rows: int  # rows 0..n_rows-1 can be compared


class _PageData:
    """Per live state: catalog years and genres by item row, and the item similarity, built on first use."""

    def __init__(self, live: LiveState) -> None:
        catalog = live.run.dataset.catalog
        titles = [str(t) for t in catalog["title"]]
        years = list(catalog["year"]) if "year" in catalog.columns else [None] * len(titles)
        self.years = [_year(y, t) for y, t in zip(years, titles, strict=True)]
        self.genres = [[str(g) for g in cats] for cats in catalog["categories"]]
        self.lock = threading.Lock()
        self.explaining: _Explaining | None = None
        self.cooccurrence: ItemSimilarity | None = None

    def explaining_for(self, live: LiveState, served: Served) -> _Explaining:
        with self.lock:
            current = self.explaining
            if current is not None and current.served is served:
                return current
            vectors = item_vectors_of(served.model)
            similarity: ItemSimilarity
            if vectors is not None:
                similarity = EmbeddingSimilarity(vectors)
            else:  # an ID model without vectors has only its trained rows: co-occurrence covers them
                if self.cooccurrence is None:
                    self.cooccurrence = CooccurrenceSimilarity.from_interactions(live.run.split.train_dataset())
                similarity = self.cooccurrence
            n_rows = live.run.dataset.n_items if vectors is None else len(vectors)
            self.explaining = _Explaining(served, similarity, n_rows)
            return self.explaining


_DATA: weakref.WeakKeyDictionary[LiveState, _PageData] = weakref.WeakKeyDictionary()
_DATA_LOCK = threading.Lock()


def _data(live: LiveState) -> _PageData:
    with _DATA_LOCK:
        found = _DATA.get(live)
        if found is None:
            found = _DATA[live] = _PageData(live)
        return found


def describe(
    live: LiveState,
    answer: dict[str, Any],
    user: str | None,
    history: Sequence[str] | None,
    explain: bool = False,
    stored: Mapping[str, Item] | None = None,
) -> dict[str, Any]:
    """``answer`` (from :meth:`LiveState.recommend`) with ``year`` and ``genres`` in every item and,
    with ``explain``, ``because`` (one sentence) and ``cited`` (the history item IDs it rests on).
    ``stored``: the store's items among the answer's, when already read (:meth:`LiveState.answer`)."""
    items = answer["items"]
    if not items:
        return answer
    data = _data(live)
    ds = live.run.dataset
    raws = [str(it["item"]) for it in items]
    stored = live.store.get_items(raws) if stored is None else stored
    for entry, raw in zip(items, raws, strict=True):
        row = ds.items.row(raw) if raw in ds.items else -1
        entry["year"], entry["genres"] = _facts(data, row, entry.get("title", raw), stored.get(raw))
    if explain:
        _explain(live, data, items, raws, user, history)
    return answer


def _facts(data: _PageData, row: int, title: str, stored: Item | None) -> tuple[int | None, list[str]]:
    """Year and genres: the stored item's fields win over the catalog's (as ``GET /items`` reads them)."""
    year = data.years[row] if row >= 0 else _year(None, title)
    genres = data.genres[row] if row >= 0 else []
    if stored is not None:
        if "year" in stored.fields:
            year = _year(stored.fields["year"], title)
        cats = stored.fields.get("genres", stored.fields.get("categories"))
        if cats is not None:
            genres = _genre_list(cats)
    return year, list(genres)


def _explain(
    live: LiveState,
    data: _PageData,
    items: list[dict[str, Any]],
    raws: list[str],
    user: str | None,
    history: Sequence[str] | None,
) -> None:
    served = live.served()
    explaining = data.explaining_for(live, served)
    rows = live.history(user).rows if user is not None else np.zeros(0, np.int64)
    rows = np.concatenate([rows, served.items.rows(list(history or []))]).astype(np.int64)
    recent: list[int] = []
    for r in rows[::-1].tolist():  # most recent first, so equally similar items cite the newer one
        if 0 <= r < explaining.n_rows and r not in recent:
            recent.append(r)
            if len(recent) == RECENT:
                break
    targets = [served.items.row(raw) if raw in served.items else -1 for raw in raws]
    targets = [t if 0 <= t < explaining.n_rows else -1 for t in targets]
    cited_rows = _evidence(explaining.similarity, targets, recent)
    cited_raws = [served.items.raw(c) for c in cited_rows]
    unique = list(dict.fromkeys(r for c in cited_raws for r in c))
    names = dict(zip(unique, live.titles(unique), strict=True))  # live: a renamed item shows its new title
    for entry, cited in zip(items, cited_raws, strict=True):
        entry["cited"] = cited
        if cited:
            entry["because"] = f"Because you liked {_join([names[c] for c in cited])}."
        elif not recent:
            entry["because"] = "No history to compare it with yet."
        else:
            entry["because"] = "Nothing in your history is like it: the model's score alone."


def _evidence(similarity: ItemSimilarity, targets: list[int], history: list[int]) -> list[list[int]]:
    """For each target row (``-1``: none), the ``CITE`` distinct ``history`` rows most like it with a
    positive similarity, most similar first (ties: earlier in ``history``). One ``pairwise`` call for
    all targets: per call, a sparse similarity costs more in overhead than in arithmetic."""
    if not history:
        return [[] for _ in targets]
    sims = similarity.pairwise(np.array([[*targets, *history]], dtype=np.int64))[0]
    hist = np.array(history, dtype=np.int64)
    out: list[list[int]] = []
    for i, target in enumerate(targets):
        if target < 0:
            out.append([])
            continue
        row = sims[i, len(targets) :].copy()
        row[hist == target] = -np.inf  # an item is no reason for itself
        order = np.argsort(-row, kind="stable")[:CITE]
        out.append([int(hist[j]) for j in order if row[j] > 0])
    return out


def _year(value: Any, title: str) -> int | None:
    """A year as an int: the value when it is one (``1995``, ``"1995"``) from ``MIN_YEAR`` to ``MAX_YEAR``,
    else one in the title. Never an error: a catalog or an older store may hold anything here."""
    try:
        if value is not None and not pd.isna(value):
            year = int(float(value))
            if MIN_YEAR <= year <= MAX_YEAR:
                return year
    except (TypeError, ValueError, OverflowError):  # not a number, "inf", a 400-digit integer
        pass
    found = _YEAR_IN_TITLE.search(str(title))
    return int(found.group(1)) if found else None


def _genre_list(value: Any) -> list[str]:
    """Genres from a stored field: a list, or one string with ``|`` between names (``"Drama|War"``)."""
    if isinstance(value, str):
        return [g.strip() for g in value.split("|") if g.strip()]
    if isinstance(value, list | tuple):
        return [str(g) for g in value]
    return []


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


__all__ = ["RECENT", "describe"]
