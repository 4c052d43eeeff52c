"""Approximate nearest-neighbour top-k for models whose score is a dot product (``pip install 'lmrec[ann]'``).

Many models here score an item by ``user vector · item vector``: SASRec and BERT4Rec (the
hidden state at the last position · the item table), BPR and ALS (user factor · item factor),
SVD (the same plus biases, folded into one extra dimension). For them the top-k of a request
is a maximum-inner-product search, which an index answers without scoring every item::

    from lmrec.serve.ann import ANNRecommender, VectorIndex, recall_at_k

    fast = ANNRecommender.for_model(run.model, kind="hnsw")   # None if the model is not a dot product
    top, scores = fast.recommend(batch, k=10)                  # same contract as Recommender.recommend
    recall_at_k(fast.index, queries, k=10)                     # how close to the exact top-k

:class:`VectorIndex` wraps faiss (HNSW or IVF-Flat, inner-product metric; imported only when such
an index is built) and has an exact kind, a chunked brute force with no extra dependency, which is
both the fallback and the reference that :func:`recall_at_k` measures against.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.models.base import Recommender

IndexKind = Literal["exact", "hnsw", "ivf"]
KINDS: tuple[str, ...] = ("exact", "hnsw", "ivf")

# Query rows scored together by the exact search: bounds the (rows, n_items) block to ~64 MB.
_CELLS = 1 << 24


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingExtraError("faiss", "ann") from exc
    return faiss


# -- the index ----------------------------------------------------------------------------------------
class VectorIndex:
    """Top-k by inner product over ``vectors`` (n_items, d); rows of the result are item rows.

    ``kind="hnsw"``: a graph index (``m`` links per node, ``ef_search`` candidates kept while
    searching; higher is slower and closer to exact). ``kind="ivf"``: k-means cells (``nlist``,
    default about 4·√n) of which ``nprobe`` are scanned per query. ``kind="exact"``: brute force.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        kind: IndexKind = "hnsw",
        *,
        m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 200,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] < 1 or vecs.shape[1] < 1:
            raise ConfigError(f"vectors must be a non-empty (n_items, d) array, got shape {vecs.shape}")
        if not np.isfinite(vecs).all():
            raise ConfigError("vectors contain NaN or infinite values")
        if kind not in KINDS:
            raise ConfigError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.vectors, self.kind = vecs, kind
        self._faiss_index: Any = None
        n, d = vecs.shape
        if kind == "exact":
            return
        faiss = _faiss()
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = max(ef_search, 1)
        else:
            # ~39 training points per cell keeps k-means meaningful (faiss warns below that).
            cells = nlist if nlist is not None else max(1, min(int(4 * math.sqrt(n)), n // 39))
            if not 1 <= cells <= n:
                raise ConfigError(f"nlist must be in [1, {n}] for {n} items, got {cells}")
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, cells, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(vecs)
            index.nprobe = min(cells, nprobe if nprobe is not None else max(1, cells // 4))
            self._quantizer = quantizer  # the IVF index refers to it; keep it alive
        index.add(vecs)
        self._faiss_index = index

    def __repr__(self) -> str:
        return f"VectorIndex({self.kind}, {self.n_items} items × {self.dim})"

    @property
    def n_items(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(b, k) item rows best first and their inner products; ``-1`` / ``-inf`` pad short rows."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (b, {self.dim}), got shape {q.shape}")
        k = min(int(k), self.n_items)
        if k < 1 or len(q) == 0:
            return np.full((len(q), max(k, 0)), -1, np.int64), np.full((len(q), max(k, 0)), -np.inf, np.float32)
        if self._faiss_index is None:
            return exact_top_k(q, self.vectors, k)
        scores, ids = self._faiss_index.search(q, k)
        ids = ids.astype(np.int64)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return ids, scores


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` by inner product, in row blocks so memory stays bounded."""
    b, n = len(queries), len(vectors)
    k = min(k, n)
    ids = np.empty((b, k), np.int64)
    out = np.empty((b, k), np.float32)
    step = max(1, _CELLS // max(n, 1))
    for s in range(0, b, step):
        scores = queries[s : s + step] @ vectors.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-part_scores, axis=1, kind="stable")
        ids[s : s + step] = np.take_along_axis(part, order, axis=1)
        out[s : s + step] = np.take_along_axis(part_scores, order, axis=1)
    return ids, out


def recall_at_k(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k|: 1.0 means the index is exact."""
    approx, _ = index.search(queries, k)
    exact, _ = exact_top_k(np.ascontiguousarray(queries, dtype=np.float32), index.vectors, k)
    if len(exact) == 0:
        return 1.0
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) / len(e) for a, e in zip(approx, exact, strict=True)]
    return float(np.mean(hits))


# -- models as vectors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DotProduct:
    """A model seen as ``score(q, i) = offset(q) + query(q) · item(i)``.

    ``queries(batch)`` gives the (b, d) query vectors, the (b,) offsets, and a mask of the queries
    for which that form holds (a sequential model scores an empty history by popularity instead).
    """

    items: np.ndarray
    queries: Callable[[QueryBatch], tuple[np.ndarray, np.ndarray, np.ndarray]]

    @classmethod
    def of(cls, model: Recommender) -> DotProduct | None:
        """The dot-product form of ``model`` (its vectors protocol), or None for a model that
        does not score that way."""
        items = model.item_embeddings()
        if items is None:
            return None

        def queries(batch: QueryBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            q = model.query_embeddings(batch)
            return q.vectors.detach().float().numpy(), q.offsets.detach().float().numpy(), q.exact.numpy()

        return cls(np.ascontiguousarray(items.detach().float().numpy()), queries)


# -- a model's top-k through an index ---------------------------------------------------------------------
class ANNRecommender:
    """``recommend`` like the model's, answered by an index over its item vectors.

    Seen items are excluded by asking the index for ``k`` + the longest history and dropping them;
    queries the dot product cannot express go to the model itself.
    """

    def __init__(self, model: Any, form: DotProduct, index: VectorIndex) -> None:
        self.model, self.form, self.index = model, form, index

    @classmethod
    def for_model(cls, model: Recommender, kind: IndexKind = "hnsw", **params: Any) -> ANNRecommender | None:
        """An index over ``model``'s items, or None when the model is not a dot product."""
        form = DotProduct.of(model)
        if form is None:
            return None
        return cls(model, form, VectorIndex(form.items, kind, **params))

    def __repr__(self) -> str:
        return f"ANNRecommender({type(self.model).__name__}, {self.index!r})"

    def recommend(self, batch: QueryBatch, k: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows and scores per query (``-1`` / ``-inf`` where fewer exist)."""
        n_items = self.index.n_items
        k = min(k, n_items)
        vecs, offsets, ok = self.form.queries(batch)
        lengths = batch.lengths()
        extra = int(lengths.max()) if exclude_seen and len(batch) else 0
        ids, scores = self.index.search(vecs, min(n_items, k + extra))
        scores = scores + offsets[:, None]
        top = np.full((len(batch), k), -1, np.int64)
        values = np.full((len(batch), k), -np.inf, np.float32)
        for r in range(len(batch)):
            row_ids, row_scores = ids[r], scores[r]
            keep = row_ids >= 0
            if exclude_seen:
                keep &= ~np.isin(row_ids, batch.history(r))
            row_ids, row_scores = row_ids[keep][:k], row_scores[keep][:k]
            top[r, : len(row_ids)], values[r, : len(row_ids)] = row_ids, row_scores
        rest = np.flatnonzero(~ok)
        if len(rest):
            sub = QueryBatch.from_histories(batch.users[rest], [batch.history(int(r)) for r in rest])
            top[rest], values[rest] = self.model.recommend(sub, k, exclude_seen)
        return top, values


__all__ = ["KINDS", "ANNRecommender", "DotProduct", "VectorIndex", "exact_top_k", "recall_at_k"]
