"""Item-to-item similarity for re-ranking: one small interface, three sources of similarity.

Every similarity answers one question, :meth:`ItemSimilarity.pairwise`: for each query's
candidate list (item rows, ``-1`` for an empty slot), how similar is every pair? Only the
requested pairs are computed, so no implementation ever builds a dense n_items × n_items matrix.

All three implementations are cosines of item vectors (a Gram matrix of unit vectors), which is
what the DPP re-ranker needs: positive semi-definite. Every real item has self-similarity 1, also
one whose vector is empty (no categories, no interactions): it counts as unlike everything else,
the convention of :func:`lmrec.evaluate.beyond.intra_list_diversity`. Empty slots get all-zero rows
and columns.

* :class:`EmbeddingSimilarity` — cosine of dense vectors (text embeddings, a model's learned item
  embeddings from :func:`item_vectors_of`); values in [-1, 1].
* :class:`CategorySimilarity` — cosine (or Jaccard) of multi-hot category vectors; values in [0, 1].
* :class:`CooccurrenceSimilarity` — cosine of the items' columns of the binary user × item matrix
  (two items are alike when the same users took both); values in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from scipy import sparse

from lmrec.data.schema import Dataset
from lmrec.errors import DataError

if TYPE_CHECKING:
    from lmrec.models.base import Recommender

__all__ = [
    "CategorySimilarity",
    "CooccurrenceSimilarity",
    "EmbeddingSimilarity",
    "ItemSimilarity",
    "item_vectors_of",
]

# Above this many distinct items in one request, sparse similarities go query by query instead of
# building one Gram matrix over all of them (whose size grows with the square).
_SHARED_GRAM_ITEMS = 2048
# With at most this many features per item (categories), gathering dense vectors is fastest.
_DENSE_FEATURES = 256


@runtime_checkable
class ItemSimilarity(Protocol):
    """Pairwise similarity of each query's candidates.

    ``pairwise(items)`` takes item rows of shape (b, N), ``-1`` for an empty slot, and returns
    float64 similarities of shape (b, N, N): symmetric, 1 on the diagonal for real items, 0 in the
    rows and columns of empty slots. Values lie in [-1, 1] ([0, 1] for non-negative vectors). The
    DPP re-ranker also needs each (N, N) block to be positive semi-definite, as cosines are.
    """

    def pairwise(self, items: np.ndarray) -> np.ndarray: ...


def _check_items(items: npt.ArrayLike, n_items: int) -> np.ndarray:
    arr = np.asarray(items)
    if arr.ndim != 2:
        raise ValueError(f"items must be 2-D (queries, candidates), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"items must hold integer item rows, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < -1 or arr.max() >= n_items):
        raise ValueError(
            f"items must be -1 (empty) or item rows in [0, {n_items}), found values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def _finish(sims: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Zero the empty slots, put 1 on the diagonal of real items, clip rounding to [-1, 1]."""
    pair = valid[:, :, None] & valid[:, None, :]
    sims = np.where(pair, np.clip(sims, -1.0, 1.0), 0.0)
    diag = np.arange(sims.shape[1])
    sims[:, diag, diag] = valid.astype(np.float64)
    return sims


class EmbeddingSimilarity:
    """Cosine similarity of dense item vectors, shape (n_items, d); zero vectors are unlike all."""

    def __init__(self, vectors: npt.ArrayLike, name: str = "embedding") -> None:
        vecs = np.asarray(vectors, dtype=np.float64)
        if vecs.ndim != 2:
            raise ValueError(f"vectors must be 2-D (n_items, d), got shape {vecs.shape}")
        if not np.isfinite(vecs).all():
            raise ValueError("vectors contain NaN or infinite values")
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        # float32 storage halves memory for big catalogs; products are taken in float64.
        self.unit = np.divide(vecs, norms, out=np.zeros_like(vecs), where=norms > 0).astype(np.float32)
        self.name = name

    @property
    def n_items(self) -> int:
        return int(self.unit.shape[0])

    def pairwise(self, items: np.ndarray) -> np.ndarray:
        items = _check_items(items, self.n_items)
        valid = items >= 0
        gathered = self.unit[np.maximum(items, 0)].astype(np.float64)  # (b, N, d)
        return _finish(gathered @ gathered.transpose(0, 2, 1), valid)

    def __repr__(self) -> str:
        return f"EmbeddingSimilarity({self.name}, {self.n_items} items × {self.unit.shape[1]} dims)"


class _SparseSimilarity:
    """Cosine or Jaccard of sparse item vectors (rows of ``matrix``), for requested pairs only."""

    metric: str

    def __init__(self, matrix: sparse.csr_array, metric: str) -> None:
        if metric not in ("cosine", "jaccard"):
            raise ValueError(f"metric must be 'cosine' or 'jaccard', got {metric!r}")
        self.matrix = sparse.csr_array(matrix, dtype=np.float64)
        self.metric = metric
        # Squared norms; for binary vectors also the set sizes that Jaccard needs.
        self.sq_norms = np.asarray(self.matrix.multiply(self.matrix).sum(axis=1)).ravel()

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[0])

    def _from_gram(self, gram: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity from raw inner products ``gram`` of the items with squared norms a and b."""
        # Jaccard of binary vectors: |A ∩ B| / (|A| + |B| − |A ∩ B|)
        denom = np.sqrt(a * b) if self.metric == "cosine" else a + b - gram
        return np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)

    def pairwise(self, items: np.ndarray) -> np.ndarray:
        items = _check_items(items, self.n_items)
        valid = items >= 0
        b, n = items.shape
        out = np.zeros((b, n, n))
        unique, inverse = np.unique(np.maximum(items, 0), return_inverse=True)
        inverse = inverse.reshape(items.shape)
        if self.matrix.shape[1] <= _DENSE_FEATURES:  # few features (genres): batched dense products
            vecs = self.matrix[unique].toarray()[inverse]  # (b, N, features)
            gram = vecs @ vecs.transpose(0, 2, 1)
            sq = self.sq_norms[unique][inverse]
            out = self._from_gram(gram, sq[:, :, None], sq[:, None, :])
        elif len(unique) <= _SHARED_GRAM_ITEMS:
            sub = self.matrix[unique]
            gram = (sub @ sub.T).toarray()
            sq = self.sq_norms[unique]
            sims = self._from_gram(gram, sq[:, None], sq[None, :])
            out = sims[inverse[:, :, None], inverse[:, None, :]]
        else:
            for row in range(b):
                rows = np.maximum(items[row], 0)
                sub = self.matrix[rows]
                gram = (sub @ sub.T).toarray()
                sq = self.sq_norms[rows]
                out[row] = self._from_gram(gram, sq[:, None], sq[None, :])
        return _finish(out, valid)


def _multi_hot(item_categories: Sequence[Sequence[str]]) -> tuple[sparse.csr_array, list[str]]:
    names = sorted({str(c) for cats in item_categories for c in cats})
    index = {c: j for j, c in enumerate(names)}
    rows: list[int] = []
    cols: list[int] = []
    for i, cats in enumerate(item_categories):
        if isinstance(cats, str):
            raise ValueError(f"categories of item row {i} is the string {cats!r}; give a list of names per item")
        for c in {str(c) for c in cats}:
            rows.append(i)
            cols.append(index[c])
    data = np.ones(len(rows))
    return sparse.csr_array((data, (rows, cols)), shape=(len(item_categories), len(names))), names


class CategorySimilarity(_SparseSimilarity):
    """Cosine (default) or Jaccard similarity of multi-hot category vectors (genres, departments).

    Both are positive semi-definite kernels (Jaccard is the Tanimoto kernel on sets).
    """

    def __init__(self, item_categories: Sequence[Sequence[str]], metric: str = "cosine") -> None:
        matrix, self.categories = _multi_hot(item_categories)
        super().__init__(matrix, metric)

    @classmethod
    def from_catalog(cls, dataset: Dataset, metric: str = "cosine") -> CategorySimilarity:
        """From ``dataset.catalog["categories"]`` (one list of names per item row)."""
        cats = list(dataset.catalog["categories"])
        if not any(len(c) for c in cats):
            raise DataError(
                f"the catalog of {dataset.name} has no item categories",
                hint="use an embedding or co-occurrence similarity instead",
            )
        return cls(cats, metric)

    def __repr__(self) -> str:
        return f"CategorySimilarity({self.metric}, {len(self.categories)} categories)"


class CooccurrenceSimilarity(_SparseSimilarity):
    """Cosine of item columns of the binary user × item matrix: the share of common users."""

    def __init__(self, user_item: Any, metric: str = "cosine") -> None:
        m = sparse.csr_array(sparse.csc_array(user_item).T)  # items × users
        m.sum_duplicates()
        m.data[:] = 1.0
        super().__init__(m, metric)

    @classmethod
    def from_interactions(cls, train: Dataset, metric: str = "cosine") -> CooccurrenceSimilarity:
        """From the (training) interactions of ``train``; repeated interactions count once."""
        inter = train.interactions
        users, items = inter["user"].to_numpy(), inter["item"].to_numpy()
        data = np.ones(len(users))
        return cls(sparse.coo_array((data, (users, items)), shape=(train.n_users, train.n_items)), metric)

    def __repr__(self) -> str:
        return f"CooccurrenceSimilarity({self.metric}, {self.n_items} items × {self.matrix.shape[1]} users)"


def item_vectors_of(model: Recommender) -> np.ndarray | None:
    """A model's learned item embeddings (its vectors protocol) as (n_items, d) float32, or None
    if it has none: sequential models' item table (ID, text or fused rows), factor models' items."""
    items = model.item_embeddings()
    return None if items is None else items.detach().float().cpu().numpy()
