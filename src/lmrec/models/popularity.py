"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.models.base import FitOptions, ModelConfig, Recommender


@dataclass
class PopularityConfig(ModelConfig):
    pass


class Popularity(Recommender):
    name = "pop"
    config_class = PopularityConfig

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        counts = np.bincount(train.interactions["item"].to_numpy(), minlength=self.n_items)
        self.counts = torch.from_numpy(counts.astype(np.float32))

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return self.counts.unsqueeze(0).expand(len(batch), -1).clone()

    def state(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.counts = tensors["counts"]
