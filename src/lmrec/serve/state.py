"""Live state of the service: one trained run plus everything the store learned since.

A user's live history is their history in the run's dataset followed by their events in the
store, in time order. The dataset part never changes while a run is served, so it is computed
once for every user; the store part is read on every request (one indexed query per user), so
several service processes sharing one database all see every event as soon as it is committed
— there is no per-process cache to invalidate. For a sequential model the new history goes
through one forward pass; for every model the item is excluded as seen.

Items added with ``PUT /items`` that the run's model has no row for are stored and shown by the
read endpoints, and feedback on them is accepted and kept for the next training, but they are not
recommended and do not change scores: the ID-based models here cannot score an item they never
saw. Text-capable models, which can, come later.

Re-rankers (MMR, DPP, calibration; :mod:`lmrec.rerank`) are built on first use from the run's
training data and kept, a bounded number of them, per (method, trade-off, similarity).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import DataError
from lmrec.evaluate.evaluator import Reranker
from lmrec.rerank import RERANKERS, SIMILARITIES, item_vectors_of, make_reranker
from lmrec.runs import RUN_FILE, Run, open_run
from lmrec.serve.store import Event, EventStore, Item

MAX_RERANKERS = 64  # built re-rankers kept per state; a λ slider has a few dozen positions


class NotFound(DataError):
    """A user or item the service knows nothing about (HTTP 404)."""


class TopK(Protocol):
    """What scores a request: the model itself, or an ANN index over its vectors."""

    def recommend(self, batch: QueryBatch, k: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class LiveHistory:
    """One user's history: model rows (``-1`` for items the model cannot score) and raw events."""

    rows: np.ndarray
    dataset_items: list[str]
    events: list[Event]


@dataclass(frozen=True)
class RerankSpec:
    """A re-ranking asked for by a request: which re-ranker, its trade-off, from how many candidates."""

    method: str
    lam: float
    similarity: str = "genre"
    candidates: int = 100

    def key(self) -> tuple[str, float, str | None]:
        # Calibration reads catalog categories and ignores the similarity: one cache entry for all.
        return (self.method, self.lam, None if self.method == "calibration" else self.similarity)


class LiveState:
    """A run, its store and what is derived from the run once. Build a new one to change the run."""

    def __init__(self, run: Run, store: EventStore, ann: bool = False) -> None:
        self.run = run
        self.store = store
        self.model_name: str = str(run.meta["model"])
        self.version = hashlib.sha256((run.directory / RUN_FILE).read_bytes()).hexdigest()[:12]
        ds = run.dataset
        # Every user's dataset history at once: one sort instead of one per request. Immutable.
        self._dataset = QueryBatch.from_interactions(ds.interactions, np.arange(ds.n_users))
        self._lock = threading.Lock()
        self._rerankers: OrderedDict[tuple[str, float, str | None], Reranker] = OrderedDict()
        self._train: Dataset | None = None
        self.index = "exact"
        self._topk: TopK = run.model
        if ann:
            from lmrec.serve.ann import ANNRecommender

            fast = ANNRecommender.for_model(run.model)
            if fast is not None:
                self._topk, self.index = fast, fast.index.kind
        categories = any(len(c) for c in ds.catalog["categories"])
        self.similarities = [
            name
            for name, ok in (
                ("genre", categories),
                ("embedding", item_vectors_of(run.model) is not None),
                ("cooccurrence", True),
            )
            if ok
        ]
        self.rerankers = [m for m in RERANKERS if m != "calibration" or categories]

    @classmethod
    def open(cls, run_dir: str | Path, cache_dir: str | Path, store: EventStore, ann: bool = False) -> LiveState:
        return cls(open_run(Path(run_dir), Path(cache_dir)), store, ann=ann)

    # -- users ----------------------------------------------------------------------------------
    def known_user(self, user: str) -> bool:
        return user in self.run.dataset.users

    def history(self, user: str) -> LiveHistory:
        """Dataset history + store events of ``user``, the events read from the store now."""
        ds = self.run.dataset
        base = self._dataset.history(ds.users.row(user)) if user in ds.users else np.zeros(0, np.int64)
        events = self.store.user_events(user)
        rows = np.concatenate([base, ds.items.rows([e.item for e in events])]).astype(np.int64)
        return LiveHistory(rows, ds.items.raw(base), events)

    # -- items ----------------------------------------------------------------------------------
    def unknown_items(self, items: Sequence[str]) -> list[str]:
        """The IDs among ``items`` that neither the run nor the store knows, in input order."""
        ds = self.run.dataset
        outside = [i for i in dict.fromkeys(items) if i not in ds.items]
        if not outside:
            return []
        stored = self.store.get_items(outside)
        return [i for i in outside if i not in stored]

    def titles(self, items: Sequence[str]) -> list[str]:
        """Titles, where a title set with ``PUT /items`` wins over the dataset's catalog."""
        ds = self.run.dataset
        stored = self.store.get_items(items)
        out = []
        for raw in items:
            it = stored.get(raw)
            if it is not None and it.title is not None:
                out.append(it.title)
            elif raw in ds.items:
                out.append(ds.titles([ds.items.row(raw)])[0])
            else:
                out.append(raw)
        return out

    def item_info(self, item: str) -> dict[str, Any]:
        """Everything known about one item: catalog fields, stored fields, whether it can be recommended."""
        ds = self.run.dataset
        stored: Item | None = self.store.get_item(item)
        if item not in ds.items and stored is None:
            raise NotFound(f"unknown item {item!r}")
        fields: dict[str, Any] = {}
        title = item
        if item in ds.items:
            row = ds.catalog.iloc[ds.items.row(item)]
            fields = {str(k): _plain(v) for k, v in row.items() if k not in ("item", "title")}
            title = str(row["title"])
        if stored is not None:
            fields.update({str(k): _plain(v) for k, v in stored.fields.items()})
            title = stored.title if stored.title is not None else title
        return {"item": item, "title": title, "fields": fields, "recommendable": item in ds.items}

    # -- re-ranking -----------------------------------------------------------------------------
    def reranker(self, spec: RerankSpec) -> Reranker:
        """The re-ranker for ``spec``, built on first use (from the training data) and then reused."""
        key = spec.key()
        with self._lock:
            found = self._rerankers.get(key)
            if found is not None:
                self._rerankers.move_to_end(key)
                return found
            train = self._train
        if train is None:
            train = self.run.split.train_dataset()
        # Built outside the lock: two requests may both build one, and the second simply wins.
        built = make_reranker(spec.method, spec.lam, train, model=self.run.model, similarity_name=spec.similarity)
        with self._lock:
            self._train = train
            self._rerankers[key] = built
            while len(self._rerankers) > MAX_RERANKERS:
                self._rerankers.popitem(last=False)
        return built

    # -- recommendations ------------------------------------------------------------------------
    def recommend(
        self,
        user: str | None,
        history: Sequence[str] | None,
        k: int,
        exclude_seen: bool = True,
        rerank: RerankSpec | None = None,
    ) -> dict[str, Any]:
        """Top-``k`` for a user (known, or new with feedback) and/or an ad-hoc history of raw item IDs,
        optionally re-ranked from the model's top ``rerank.candidates``."""
        extra = list(history or [])
        unknown = self.unknown_items(extra)
        if unknown:
            raise DataError(f"unknown item id(s) {unknown[:10]} in history")
        if user is None and not extra:
            raise DataError("give a user, a history, or both")
        ds = self.run.dataset
        rows = self.history(user).rows if user is not None else np.zeros(0, np.int64)
        if user is not None and len(rows) == 0 and not self.known_user(user) and not extra:
            raise NotFound(f"unknown user {user!r} with no history: send a history, or feedback for this user first")
        reranker = self.reranker(rerank) if rerank is not None else None
        rows = np.concatenate([rows, ds.items.rows(extra)]).astype(np.int64)
        user_row = ds.users.row(user) if user is not None and user in ds.users else -1
        batch = QueryBatch.from_histories([user_row], [rows])
        n = max(k, rerank.candidates) if rerank is not None else k
        top, scores = self._topk.recommend(batch, n, exclude_seen)
        if reranker is not None:
            score_of = dict(zip(top[0].tolist(), scores[0].tolist(), strict=True))
            top = reranker(batch, top, scores, k)
            scores = np.array([[score_of.get(int(i), np.nan) for i in top[0]]])
        keep = (top[0] >= 0) & np.isfinite(scores[0])
        raws = ds.items.raw(top[0][keep])
        return {
            "user": user,
            "items": [
                {"item": raw, "score": round(float(s), 6), "title": t}
                for raw, s, t in zip(raws, scores[0][keep], self.titles(raws), strict=True)
            ],
            "model": self.model_name,
            "version": self.version,
            "rerank": None
            if rerank is None
            else {
                "method": rerank.method,
                "lam": rerank.lam,
                "similarity": None if rerank.method == "calibration" else rerank.similarity,
                "candidates": min(n, ds.n_items),
                "reranker": repr(reranker),
            },
        }


def _plain(value: Any) -> Any:
    """A cell as JSON-ready data: numpy arrays and scalars become lists and numbers, NaN and ±inf None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


__all__ = ["SIMILARITIES", "LiveHistory", "LiveState", "NotFound", "RerankSpec"]
