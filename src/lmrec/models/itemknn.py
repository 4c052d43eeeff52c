"""Item-based k-nearest neighbours (Sarwar et al. 2001; Deshpande & Karypis 2004).

Cosine similarity between item columns of the binary user × item matrix, with optional shrinkage,
keeping the ``k`` most similar items per item. A user's score for item j is the sum of j's
similarities to the items in the user's history, so unknown users with a history work as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import FitOptions, ModelConfig, Recommender, interaction_matrix


@dataclass
class ItemKNNConfig(ModelConfig):
    k: int = 100  # neighbours kept per item
    shrink: float = 0.0  # added to the cosine denominator; damps similarities from few co-occurrences

    def validate(self) -> None:
        if self.k < 1:
            raise ConfigError("itemknn: k must be >= 1")
        if self.shrink < 0:
            raise ConfigError("itemknn: shrink must be >= 0")


class ItemKNN(Recommender):
    name = "itemknn"
    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        x = interaction_matrix(train)
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        co = (x.T @ x).tocsc().astype(np.float32)
        co.setdiag(0)
        co.eliminate_zeros()
        # cosine: divide each entry (i, j) by |i| |j| + shrink
        coo = co.tocoo()
        coo.data = coo.data / (norms[coo.row] * norms[coo.col] + self.config.shrink + 1e-12)
        self.similarity = _top_k_per_column(coo.tocsc(), self.config.k)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return torch.from_numpy((batch.matrix(self.n_items) @ self.similarity).toarray())

    def state(self) -> dict[str, torch.Tensor]:
        s = self.similarity
        return {name: torch.from_numpy(getattr(s, name)) for name in ("indptr", "indices", "data")}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        arrays = (tensors[name].numpy() for name in ("data", "indices", "indptr"))
        self.similarity = sp.csr_matrix(tuple(arrays), shape=(self.n_items, self.n_items))


def _top_k_per_column(sim: sp.csc_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of each column (the k nearest neighbours of each item)."""
    keep = np.zeros(sim.nnz, dtype=bool)
    for j in range(sim.shape[1]):
        lo, hi = sim.indptr[j], sim.indptr[j + 1]
        if hi - lo <= k:
            keep[lo:hi] = True
        else:
            keep[lo + np.argpartition(-sim.data[lo:hi], k - 1)[:k]] = True
    coo = sim.tocoo()
    pruned = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=sim.shape)
    pruned.data = pruned.data.astype(np.float32)
    return pruned
