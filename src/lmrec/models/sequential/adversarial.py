"""Adversarial training of the item representations, a part of the sequential family: each step
also minimises the loss under the small perturbation of the item table that hurts it most.

    loss(E) + weight · loss(E + Δ),   Δ_i = eps · ‖E_i‖ · g_i / ‖g_i‖,   g = ∂loss(E)/∂E

This is APR (He et al., "Adversarial Personalized Ranking", SIGIR 2018) on a sequential model: the
fast-gradient perturbation of every item row (the rows the encoder reads and the output scores; for
text representations, the adaptor's output, so the adaptor is trained against it too), scaled per
row to ``eps`` of the row's own norm so one value means the same at any embedding scale. A model
trained this way is flatter around its item embeddings: a few injected profiles that drag one item's
row towards popular items move its scores less. It costs a second forward and backward per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmrec.errors import ConfigError
from lmrec.models.base import ModelConfig

__all__ = ["AdversarialConfig", "adversarial_loss"]


@dataclass
class AdversarialConfig(ModelConfig):
    """``adversarial.*`` options of a sequential model."""

    eps: float = 0.0  # each row's perturbation as a share of the row's norm; 0: off
    weight: float = 1.0  # λ: weight of the loss under the perturbation

    def validate(self) -> None:
        if self.eps < 0 or self.weight < 0:
            raise ConfigError(f"adversarial eps and weight must be >= 0, got {self.eps} and {self.weight}")

    @property
    def on(self) -> bool:
        return self.eps > 0 and self.weight > 0


def adversarial_loss(
    loss_of: Callable[[torch.Tensor], torch.Tensor], table: torch.Tensor, config: AdversarialConfig
) -> torch.Tensor:
    """``loss_of(table)``, plus ``weight`` × the loss at the worst-case perturbation of ``table``
    (n_rows, dim) within ``eps`` of each row's norm (the fast-gradient step; the perturbation is a
    constant of the step, as in APR). Off: the clean loss alone, one forward."""
    clean = loss_of(table)
    if not config.on:
        return clean
    (grad,) = torch.autograd.grad(clean, table, retain_graph=True)
    with torch.no_grad():
        size = config.eps * table.norm(dim=1, keepdim=True)
        delta = size * grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return clean + config.weight * loss_of(table + delta)
