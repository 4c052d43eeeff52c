"""User-level differentially private training: DP-SGD through Opacus, as a Trainer strategy.

A model that supports it (``bpr``, ``sasrec``, ``bert4rec``) trains on *user* batches when
:class:`DPSpec` is set: each step Poisson-samples users at rate q, and each sampled user
contributes exactly one example, so clipping every example's gradient to ``clip`` and adding
Gaussian noise bounds what any one user — all their interactions — can change. Opacus computes the
per-example gradients (``GradSampleModule``), clips and noises them (``DPOptimizer``) and its
accountant (PRV by default, or RDP) turns noise, q and the number of steps into the ε actually
spent, for a δ that defaults to 1 / (10 · users). The noise is chosen up front for the target ε; a
run that cannot meet it stops with an error. Early stopping on validation users would spend
privacy that the accountant does not count, so DP runs train for their fixed number of epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmrec.errors import ConfigError, MissingExtraError
from lmrec.train.trainer import Strategy


@dataclass
class DPSpec:
    """What the user asks for: a target ε, optionally δ, the per-user clip and the accountant."""

    epsilon: float
    delta: float | None = None  # None: 1 / (10 · number of users)
    clip: float = 1.0
    accountant: str = "prv"  # "prv" or "rdp"

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or self.clip <= 0 or (self.delta is not None and not 0 < self.delta < 1):
            raise ConfigError("differential privacy needs epsilon > 0, clip > 0 and 0 < delta < 1")
        if self.accountant not in ("prv", "rdp"):
            raise ConfigError(f"accountant must be prv or rdp, got {self.accountant!r}")


class DPStrategy(Strategy):
    """DP-SGD for ``steps`` optimizer steps at user sampling rate ``sample_rate``. The same noise
    and accountant serve DP-FedAvg (:mod:`lmrec.privacy.flower`), where the unit is a client and
    a step is a round."""

    def __init__(
        self, spec: DPSpec, n_users: int, sample_rate: float, steps: int, seed: int, unit: str = "user"
    ) -> None:
        try:
            from opacus.accountants import create_accountant
            from opacus.accountants.utils import get_noise_multiplier
        except ImportError:
            raise MissingExtraError("opacus", "privacy") from None
        self.spec, self.n_users, self.sample_rate, self.steps, self.unit = spec, n_users, sample_rate, steps, unit
        self.delta = spec.delta if spec.delta is not None else 1 / (10 * n_users)
        try:
            self.noise = get_noise_multiplier(
                target_epsilon=spec.epsilon,
                target_delta=self.delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=spec.accountant,
            )
        except ValueError as err:
            raise ConfigError(
                f"cannot reach ε = {spec.epsilon} in {steps} steps at rate {sample_rate:.4f}: {err}"
            ) from None
        self.accountant = create_accountant(spec.accountant)
        self.generator = torch.Generator().manual_seed(seed)

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise,
            max_grad_norm=self.spec.clip,
            expected_batch_size=max(1, round(self.sample_rate * self.n_users)),
            generator=self.generator,
        )
        dp_optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        return GradSampleModule(module), dp_optimizer

    def report(self) -> dict[str, Any]:
        """What run.json and every report state about the guarantee."""
        spent = self.accountant.get_epsilon(self.delta) if len(self.accountant) else 0.0
        return {
            "epsilon_target": self.spec.epsilon,
            "epsilon": round(float(spent), 4),
            "delta": self.delta,
            "accountant": self.spec.accountant,
            "clip": self.spec.clip,
            "noise_multiplier": round(float(self.noise), 4),
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "unit": self.unit,
        }
