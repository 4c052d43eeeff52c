"""Gated fusion of a feature table's blocks into one item vector: a projection per modality and a
learned gate per modality, so a missing block (presence 0) contributes nothing and the others are
re-weighted to fill in.

``GatedFusion(schema, dim)`` reads rows of :func:`lmrec.features.item_features` tables (the
``[blocks | presence]`` layout its schema describes) and returns ``(n, dim)``; it can stand where a
model projects its item text vectors (e.g. in front of the sequential encoder's adaptor) instead of
one linear layer over the concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from lmrec.features.tables import FeatureSchema


class GatedFusion(nn.Module):
    def __init__(self, schema: FeatureSchema, dim: int) -> None:
        super().__init__()
        self.names = schema.names
        slices = schema.slices()
        self.bounds = [(slices[n].start, slices[n].stop) for n in self.names]
        self.presence = slice(slices[f"presence:{self.names[0]}"].start, schema.dim)
        self.project = nn.ModuleList([nn.Linear(b.width, dim) for b in schema.blocks])
        # Gate logits from which blocks a row has: a row without an image leans on its text.
        self.gate = nn.Linear(len(self.names), len(self.names))

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        weights = self._weights(table)  # (n, blocks)
        parts = torch.stack(
            [proj(table[:, lo:hi]) for proj, (lo, hi) in zip(self.project, self.bounds, strict=True)], dim=1
        )  # (n, blocks, dim)
        return (weights.unsqueeze(2) * parts).sum(1)

    def block_weights(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each block's gate weight per row (what each item's vector is made of)."""
        weights = self._weights(table)
        return {name: weights[:, i] for i, name in enumerate(self.names)}

    def _weights(self, table: torch.Tensor) -> torch.Tensor:
        present = table[:, self.presence]
        logits = self.gate(present).masked_fill(present == 0, float("-inf"))
        return torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)  # a row with no block: all zeros
