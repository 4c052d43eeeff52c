"""A model's item and query vectors, for models that score ``query · item``.

Models that implement the vectors protocol (``item_embeddings() -> (n_items, d)`` and
``query_embeddings(batch)`` giving (B, d) vectors) are read through it. For a model without it,
:func:`_sequential_fallback` computes the same vectors from a ``SequentialRecommender``'s
encoder — the one place to delete once every model in use implements the protocol.
"""

from __future__ import annotations

from typing import Any

import torch

from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError


def item_embeddings(model: Any) -> torch.Tensor:
    """(n_items, d) float32 item vectors of ``model``, on the CPU."""
    if hasattr(model, "item_embeddings"):
        items = model.item_embeddings()
        if items is None:
            raise ConfigError(f"{type(model).__name__} does not score by a dot product of query and item vectors")
        return items.detach().float().cpu()
    return _sequential_fallback(model, None)[0]


def query_embeddings(model: Any, batch: QueryBatch) -> torch.Tensor:
    """(B, d) float32 query vectors of ``batch`` for ``model``, on the CPU.

    A model's per-query offset (a user bias) is left out: it moves every item of a query alike,
    so the top-k is the same. Queries the model does not score by the dot product (a sequential
    model's empty histories, scored by popularity) still get a vector: its output over padding.
    """
    if hasattr(model, "query_embeddings"):
        queries = model.query_embeddings(batch)
        vectors = queries.vectors if hasattr(queries, "vectors") else queries  # Queries or a bare tensor
        return vectors.detach().float().cpu()
    out = _sequential_fallback(model, batch)[1]
    assert out is not None
    return out


def encode_histories(model: Any, batch: QueryBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequential model's encoder inputs for ``batch``: right-padded shifted item ids (B, L)
    (0 pad, a [MASK] appended for the masked objective) and their lengths (B,)."""
    from lmrec.models.sequential import SequentialRecommender, histories_to_inputs

    if not isinstance(model, SequentialRecommender):
        raise ConfigError(f"{type(model).__name__} is not a sequential model")
    masked = model.config.objective == "masked"
    return histories_to_inputs(batch, model.n_items, model.config.max_len, append_mask=masked)


def _sequential_fallback(model: Any, batch: QueryBatch | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Item vectors and (when ``batch`` is given) query vectors of a SequentialRecommender: rows
    1..n of the tied item table, and the last position's hidden state — as in its ``score``."""
    from lmrec.models.sequential import SequentialRecommender

    if not isinstance(model, SequentialRecommender):
        raise ConfigError(f"{type(model).__name__} offers no item_embeddings()/query_embeddings()")
    net = model.net
    if net.training:
        net.eval()
    with torch.no_grad():
        table = net.item_table()
        items = table[1 : model.n_items + 1].float().cpu()
        if batch is None:
            return items, None
        seq, lengths = encode_histories(model, batch)
        causal = model.config.objective != "masked"
        out = torch.empty(len(batch), items.shape[1])
        for s in range(0, len(batch), 512):
            part, n = seq[s : s + 512].to(model.device), lengths[s : s + 512]
            width = max(1, int(n.max())) if len(n) else 1
            hidden = net(part[:, :width], causal=causal, table=table)
            last = (n - 1).clamp(min=0).to(model.device)
            out[s : s + len(part)] = hidden[torch.arange(len(part)), last].float().cpu()
    return items, out
