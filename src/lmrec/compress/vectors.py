"""A model's item and query vectors, for models that score ``query · item``.

Read through the models' vectors protocol (``item_embeddings() -> (n_items, d)``,
``query_embeddings(batch) -> Queries``); these helpers return plain CPU float32 tensors, which is
what the quantized and PQ tables take.
"""

from __future__ import annotations

import torch

from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError
from lmrec.models.base import Recommender


def item_embeddings(model: Recommender) -> torch.Tensor:
    """(n_items, d) float32 item vectors of ``model``, on the CPU."""
    items = model.item_embeddings()
    if items is None:
        raise ConfigError(f"{model.name} does not score by a dot product of query and item vectors")
    return items.detach().float().cpu()


def query_embeddings(model: Recommender, batch: QueryBatch) -> torch.Tensor:
    """(B, d) float32 query vectors of ``batch`` for ``model``, on the CPU.

    A model's per-query offset (a user bias) is left out: it moves every item of a query alike,
    so the top-k is the same. Queries the model does not score by the dot product (a sequential
    model's empty histories, scored by popularity) still get a vector: its output over padding.
    """
    return model.query_embeddings(batch).vectors.detach().float().cpu()


def encode_histories(model: Recommender, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequential model's encoder inputs for ``batch``: right-padded shifted item ids (B, L)
    (0 pad, a [MASK] appended for the masked objective) and their lengths (B,)."""
    from lmrec.models.sequential import SequentialRecommender, histories_to_inputs

    if not isinstance(model, SequentialRecommender):
        raise ConfigError(f"{model.name} is not a sequential model")
    masked = model.config.objective == "masked"
    return histories_to_inputs(batch, model.n_items, model.config.max_len, append_mask=masked)
