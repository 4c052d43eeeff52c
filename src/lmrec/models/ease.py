"""EASE: embarrassingly shallow autoencoder (Steck, WWW 2019).

A closed-form item-item weight matrix B = I − P · diag(1/diag(P)) with P = (XᵀX + λI)⁻¹ and a
zero diagonal. Strong on MovieLens-sized catalogs; the dense n_items² matrix is its limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import FitOptions, ModelConfig, Recommender, interaction_matrix

MAX_ITEMS = 40_000  # a dense 40k² float32 matrix is 6.4 GB; beyond that use itemknn


@dataclass
class EASEConfig(ModelConfig):
    reg: float = 250.0  # λ, the L2 weight on B

    def validate(self) -> None:
        if self.reg <= 0:
            raise ConfigError("ease: reg must be > 0")


class EASE(Recommender):
    name = "ease"
    config_class = EASEConfig
    config: EASEConfig

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        if self.n_items > MAX_ITEMS:
            raise ConfigError(f"ease needs a dense {self.n_items}² matrix; use itemknn for catalogs this large")
        x = interaction_matrix(train)
        gram = torch.from_numpy((x.T @ x).toarray().astype(np.float64))
        gram.diagonal().add_(self.config.reg)
        p = torch.linalg.inv(gram)
        b = -p / p.diagonal()
        b.fill_diagonal_(0.0)
        self.weights = b.float()

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return torch.from_numpy(batch.matrix(self.n_items) @ self.weights.numpy())

    def state(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weights = tensors["weights"]
