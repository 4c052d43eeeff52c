"""Live state of the service: one trained run plus everything the store learned since.

A user's live history is their history in the run's dataset followed by their events in the
store, in time order. The dataset part never changes while a run is served, so it is computed
once for every user; the store part is read on every request (one indexed query per user), so
several service processes sharing one database all see every event as soon as it is committed
— there is no per-process cache to invalidate. For a sequential model the new history goes
through one forward pass; for every model the item is excluded as seen. A run made by
``lmrec retrain`` from this store holds the events it was trained on in its dataset, so the store
part of its users' histories starts after them.

Items added with ``PUT /items`` that the run's model has no row for are stored and shown by the
read endpoints, and feedback on them is accepted and kept for the next training. A model that
reads item text (``text-sasrec`` with ``item_repr`` text or fused) scores them once they are
encoded: every request asks the store for items updated since the newest one this process has read
(one indexed query) and, when there are new ones, starts a background thread that encodes their
texts (``GROW_BATCH`` at a time, cached on disk by text hash) and swaps in a copy of the model grown
by each batch (:meth:`SequentialRecommender.with_new_items`); ``PUT /items`` does the same in its own
worker thread before it returns. No request waits for an encoding. The items are then recommended,
and read as history like any other item. ID-based models cannot score an item they
never saw; for them new items wait for the next training. Re-rankers compare items by what the
training data knows, so a re-ranked list holds trained items only.

Re-rankers (MMR, DPP, calibration, fair exposure; :mod:`lmrec.rerank`) are built on first use from
the run's training data and kept, a bounded number of them, per (method, trade-off, similarity).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset, Vocab
from lmrec.errors import ConfigError, DataError, LmrecError
from lmrec.evaluate.evaluator import Reranker
from lmrec.models.base import ReadsItemText
from lmrec.rerank import RERANKERS, SIMILARITIES, item_vectors_of, make_reranker
from lmrec.runs import Run, open_run, run_version
from lmrec.serve.store import Event, EventStore, Item, brief, trained_through
from lmrec.text.encoders import TextEncoder

GROW_BATCH = 256  # serve-time items encoded, then served, at a time
GROW_RETRY_S = 30.0  # after a failed encoding of new items, wait this long before trying again
MAX_RERANKERS = 64  # built re-rankers kept per state; a λ slider has a few dozen positions
SIMILARITY_RERANKERS = ("mmr", "dpp")  # the re-rankers that compare items by a similarity
REREAD_WINDOW_S = 5.0  # items stamped this long before the newest one read are read again (late commits)
REREAD_EVERY_S = 1.0  # how often a request re-reads that window (other requests read only newer items)


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
class Served:
    """What answers requests now: the model (grown by the serve-time items it can score from their
    text), its top-k path, and the raw ID of every row it scores. Replaced whole, never changed."""

    model: Any
    topk: TopK
    items: Vocab
    added: dict[str, Item]  # serve-time items scored by ``model``, in row order after the trained ones
    newest: float = 0.0  # ``updated_at`` of the newest stored item read
    vectors: tuple[np.ndarray, ...] = ()  # the text vector of each ``added`` item, in the same order


@dataclass(frozen=True)
class RerankSpec:
    """A re-ranking asked for by a request: which re-ranker, its trade-off, from how many candidates."""

    method: str
    lam: float
    similarity: str = "genre"
    candidates: int = 100

    def key(self) -> tuple[str, float, str | None]:
        # Calibration and fair exposure ignore the similarity: one cache entry for all.
        return (self.method, self.lam, self.similarity if self.method in SIMILARITY_RERANKERS else None)


class LiveState:
    """A run, its store and what is derived from the run once. Build a new one to change the run."""

    def __init__(
        self,
        run: Run,
        store: EventStore,
        ann: bool = False,
        text_encoder: TextEncoder | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.run = run
        self.store = store
        self.ann = ann
        self._encoder = text_encoder  # loaded on first use from the model's config when None
        self._embeddings = cache_dir / "embeddings" if cache_dir is not None else None
        self.model_name: str = str(run.meta["model"])
        self.version = run_version(run.directory)
        # A run retrained from this store holds its events up to this id already: they are not added twice.
        self._trained_through = trained_through(run.meta, store)
        ds = run.dataset
        # Every user's dataset history at once: one sort instead of one per request. Immutable.
        self._dataset = QueryBatch.from_interactions(ds.interactions, np.arange(ds.n_users))
        self._lock = threading.Lock()
        self._rerankers: OrderedDict[tuple[str, float, str | None], Reranker] = OrderedDict()
        self._train: Dataset | None = None
        self._grow_lock = threading.Lock()
        self._growing = False  # a background thread is encoding new items
        self._retry_at = 0.0  # after a failed encoding, when to try again (time.monotonic())
        self._window_read_at = -math.inf  # when a request last re-read the window (time.monotonic())
        base = run.model
        self._reads_text = isinstance(base, ReadsItemText) and base.scores_new_items
        topk, self.index = self._topk_for(run.model)
        self._served = Served(run.model, topk, ds.items, {})
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
    def open(
        cls,
        run_dir: str | Path,
        cache_dir: str | Path,
        store: EventStore,
        ann: bool = False,
        text_encoder: TextEncoder | None = None,
    ) -> LiveState:
        run = open_run(Path(run_dir), Path(cache_dir))
        return cls(run, store, ann=ann, text_encoder=text_encoder, cache_dir=Path(cache_dir))

    def _topk_for(self, model: Any) -> tuple[TopK, str]:
        if self.ann:
            from lmrec.serve.ann import ANNRecommender

            fast = ANNRecommender.for_model(model)
            if fast is not None:
                return fast, fast.index.kind
        return model, "exact"

    # -- serve-time items -----------------------------------------------------------------------
    def served(self) -> Served:
        """The current model and item rows. When the store has items the model can score that it does
        not yet, they are encoded off the request path (a background thread, :meth:`grow`) and served
        once ready: a request never waits for item text to be encoded."""
        current = self._served
        if not self._reads_text or self._grow_lock.locked():  # being grown: the grower reads the news
            return current
        # Items newer than the newest read, and every REREAD_EVERY_S the window before it too (late
        # commits): not the whole window on every request, which after a bulk PUT is every new item.
        now = time.monotonic()
        if now - self._window_read_at >= REREAD_EVERY_S:
            since, self._window_read_at = current.newest - REREAD_WINDOW_S, now
        else:
            since = math.nextafter(current.newest, math.inf)
        changed = self.store.items_updated_since(since)
        if _news(changed, current, self.run.dataset) and now >= self._retry_at:
            with self._lock:
                start, self._growing = not self._growing, True
            if start:
                threading.Thread(target=self._grow_in_background, name="lmrec-item-encoder", daemon=True).start()
        return current

    def _grow_in_background(self) -> None:
        try:
            self.grow()
        except Exception as err:  # keep serving what is ready; try again a little later
            self._retry_at = time.monotonic() + GROW_RETRY_S
            logging.getLogger("uvicorn.error").warning("could not encode the items added at serve time: %s", err)
        finally:
            with self._lock:
                self._growing = False

    def grow(self) -> int:
        """Encode the stored items the model can score but does not yet, ``GROW_BATCH`` at a time, and
        swap in a model grown by each batch as soon as it is encoded; how many items were encoded.
        Called off the event loop: by ``PUT /items`` after storing, by a background thread, by :meth:`warm`."""
        base, ds = self.run.model, self.run.dataset
        if not (self._reads_text and isinstance(base, ReadsItemText)):
            return 0
        with self._grow_lock:  # one thread grows the model; the others then find nothing new
            current = self._served
            changed = self.store.items_updated_since(current.newest - REREAD_WINDOW_S)
            fresh = _news(changed, current, ds)
            newest = max([current.newest] + [it.updated_at or 0.0 for it in changed])
            columns = list(ds.catalog.columns)
            for start in range(0, len(fresh), GROW_BATCH):
                chunk = fresh[start : start + GROW_BATCH]
                vectors = base.encode_items(_catalog_of(chunk, columns), self.text_encoder(), self._embeddings)
                current = self._served
                added, table = dict(current.added), list(current.vectors)
                row_of = {item: n for n, item in enumerate(added)}
                for it, vector in zip(chunk, vectors, strict=True):
                    if it.item in row_of:  # new text for an item already served: its row, new vector
                        table[row_of[it.item]] = vector
                    else:
                        table.append(vector)
                    added[it.item] = it  # a dict keeps an updated key where it was: rows stay in order
                model = base.with_new_items(np.stack(table))
                topk, _ = self._topk_for(model)
                done = start + GROW_BATCH >= len(fresh)
                stamp = newest if done else current.newest
                self._served = Served(model, topk, ds.items.extended(added), added, stamp, tuple(table))
            return len(fresh)

    def text_encoder(self) -> TextEncoder:
        """The sentence encoder that reads items added at serve time: the one given, else the one the
        model's config names, loaded once (a path missing on this machine is an error naming it)."""
        if self._encoder is None:
            base = self.run.model
            if not isinstance(base, ReadsItemText):
                raise ConfigError(f"{self.model_name} reads no item text: it has no text encoder")
            try:
                self._encoder = base.text_encoder(str(base.device))
            except (LmrecError, OSError, ValueError) as err:
                raise ConfigError(
                    f"run {self.run.directory}: cannot load its text encoder "
                    f"{getattr(base.config, 'text_encoder', '?')!r} ({err}); install it on this machine "
                    "or serve with another encoder"
                ) from err
        return self._encoder

    def warm(self) -> None:
        """Everything a request needs, loaded now rather than on the first request: the text encoder and
        the items added at serve time (for a model that reads item text); then one request answered. A
        run that cannot serve fails here, before it replaces the one serving (load → check → warm → swap)."""
        if self._reads_text:
            self.text_encoder()
            self.grow()
        ds = self.run.dataset
        if ds.n_users:
            self.recommend(ds.users.ids[0], None, 1)
        elif ds.n_items:
            self.recommend(None, [ds.items.ids[0]], 1)

    # -- users ----------------------------------------------------------------------------------
    def known_user(self, user: str) -> bool:
        return user in self.run.dataset.users

    def history(self, user: str) -> LiveHistory:
        """Dataset history + store events of ``user``, the events read from the store now."""
        ds = self.run.dataset
        base = self._dataset.history(ds.users.row(user)) if user in ds.users else np.zeros(0, np.int64)
        events = [e for e in self.store.user_events(user) if (e.id or 0) > self._trained_through]
        rows = np.concatenate([base, self.served().items.rows([e.item for e in events])]).astype(np.int64)
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

    def titles(self, items: Sequence[str], stored: Mapping[str, Item] | None = None) -> list[str]:
        """Titles, where a title set with ``PUT /items`` wins over the dataset's catalog (``stored``:
        the store's items among ``items``, when already read)."""
        ds = self.run.dataset
        stored = self.store.get_items(items) if stored is None else stored
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
            raise NotFound(f"unknown item {brief(item)}")
        fields: dict[str, Any] = {}
        title = item
        if item in ds.items:
            row = ds.catalog.iloc[ds.items.row(item)]
            fields = {str(k): _plain(v) for k, v in row.items() if k not in ("item", "title")}
            title = str(row["title"])
        if stored is not None:
            fields.update({str(k): _plain(v) for k, v in stored.fields.items()})
            title = stored.title if stored.title is not None else title
        return {"item": item, "title": title, "fields": fields, "recommendable": item in self.served().items}

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
        query = self.query(user, history, k, exclude_seen, rerank)
        ((top, scores),) = score_together([query])
        return self.answer(query, top, scores)[0]

    def query(
        self,
        user: str | None,
        history: Sequence[str] | None,
        k: int,
        exclude_seen: bool = True,
        rerank: RerankSpec | None = None,
    ) -> Prepared:
        """A request checked and made ready to score: the first half of :meth:`recommend`."""
        extra = list(history or [])
        unknown = self.unknown_items(extra)
        if unknown:
            raise DataError(f"unknown item id(s) {', '.join(brief(i) for i in unknown[:10])} in history")
        if user is None and not extra:
            raise DataError("give a user, a history, or both")
        ds = self.run.dataset
        served = self.served()
        rows = self.history(user).rows if user is not None else np.zeros(0, np.int64)
        if user is not None and len(rows) == 0 and not self.known_user(user) and not extra:
            raise NotFound(
                f"unknown user {brief(user)} with no history: send a history, or feedback for this user first"
            )
        reranker = self.reranker(rerank) if rerank is not None else None
        rows = np.concatenate([rows, served.items.rows(extra)]).astype(np.int64)
        user_row = ds.users.row(user) if user is not None and user in ds.users else -1
        n = max(k, rerank.candidates) if rerank is not None else k
        return Prepared(user, served, rows, user_row, k, n, exclude_seen, rerank, reranker)

    def answer(self, query: Prepared, top: np.ndarray, scores: np.ndarray) -> tuple[dict[str, Any], dict[str, Item]]:
        """The response for ``query`` from its scored top (one row), the second half of :meth:`recommend`,
        and what the store holds about the recommended items (read once, for the titles and for
        :func:`lmrec.serve.describe.describe`)."""
        ds = self.run.dataset
        rerank, reranker = query.rerank, query.reranker
        if reranker is not None:  # over trained items only: the re-rankers know nothing else
            trained = top[0] < ds.n_items
            top, scores = top[:, trained], scores[:, trained]
            score_of = dict(zip(top[0].tolist(), scores[0].tolist(), strict=True))
            rows = query.rows
            known = QueryBatch.from_histories([query.user_row], [rows[rows < ds.n_items]])
            top = reranker(known, top, scores, query.k)
            scores = np.array([[score_of.get(int(i), np.nan) for i in top[0]]])
        keep = (top[0] >= 0) & np.isfinite(scores[0])
        raws = query.served.items.raw(top[0][keep])
        stored = self.store.get_items(raws)
        answer = {
            "user": query.user,
            "items": [
                {"item": raw, "score": round(float(s), 6), "title": t}
                for raw, s, t in zip(raws, scores[0][keep], self.titles(raws, stored), strict=True)
            ],
            "model": self.model_name,
            "version": self.version,
            "rerank": None
            if rerank is None
            else {
                "method": rerank.method,
                "lam": rerank.lam,
                "similarity": rerank.similarity if rerank.method in SIMILARITY_RERANKERS else None,
                "candidates": min(query.n, ds.n_items),
                "reranker": repr(reranker),
            },
        }
        return answer, stored


@dataclass(frozen=True)
class Prepared:
    """One request ready to score: the history rows, the model that scores them, how many to ask for."""

    user: str | None
    served: Served
    rows: np.ndarray  # the history as rows of ``served``
    user_row: int  # the user's row in the run's dataset, -1 for a user it does not know
    k: int
    n: int  # how many the model is asked for (more than k when re-ranking)
    exclude_seen: bool
    rerank: RerankSpec | None
    reranker: Reranker | None


def score_together(queries: Sequence[Prepared]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's (top rows, scores), one row each: the queries that share a model, ``n`` and
    ``exclude_seen`` go through the model as one batch (one forward pass for a sequential model),
    which costs far less per query than one pass each."""
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault((id(q.served), q.n, q.exclude_seen), []).append(i)
    out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros((1, 0), np.int64), np.zeros((1, 0)))] * len(queries)
    for members in groups.values():
        first = queries[members[0]]
        batch = QueryBatch.from_histories([queries[i].user_row for i in members], [queries[i].rows for i in members])
        top, scores = first.served.topk.recommend(batch, first.n, first.exclude_seen)
        for j, i in enumerate(members):
            out[i] = (top[j : j + 1], scores[j : j + 1])
    return out


def _news(changed: list[Item], served: Served, ds: Dataset) -> list[Item]:
    """The stored items a model must (re)encode: outside the trained catalog, and new or with new text."""
    out = []
    for it in changed:
        old = served.added.get(it.item)
        if it.item not in ds.items and (old is None or (old.title, old.fields) != (it.title, it.fields)):
            out.append(it)
    return out


def _catalog_of(items: list[Item], columns: Sequence[str]) -> pd.DataFrame:
    """Serve-time items as catalog rows (the trained catalog's columns, plus their own fields), so the
    model's item-text template reads them like the items it was trained on."""
    rows = []
    for it in items:
        row: dict[str, Any] = {**it.fields, "item": it.item, "title": it.title or it.item}
        cats = it.fields.get("categories", it.fields.get("genres", []))
        names = cats.split("|") if isinstance(cats, str) else cats if isinstance(cats, list) else []
        row["categories"] = [str(c) for c in names]
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys([*columns, *frame.columns])))


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


__all__ = ["SIMILARITIES", "LiveHistory", "LiveState", "NotFound", "Prepared", "RerankSpec", "score_together"]
