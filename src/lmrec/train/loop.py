"""What the Trainer (:mod:`lmrec.train.trainer`) is built from — early stopping, the training log,
shuffled index batches — and :func:`fit_epochs`, early stopping for models that iterate without
gradients (ALS's closed-form solves): one callable runs an iteration, another scores validation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class EarlyStopping:
    """Stop after ``patience`` validations without improvement; remember the best epoch."""

    patience: int = 5
    best: float = float("-inf")
    best_epoch: int = -1
    bad_rounds: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record ``value``; True when it is a new best."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_rounds = value, epoch, 0
            return True
        self.bad_rounds += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_rounds >= self.patience


@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "losses": self.losses,
            "valid": self.valid,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 3),
            "epochs": len(self.losses),
            "seconds_per_epoch": round(self.seconds / max(1, len(self.losses)), 3),  # validation included
            "train_seconds_per_epoch": round(statistics.median(self.epoch_seconds), 3) if self.epoch_seconds else 0.0,
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],  # training only, validation excluded
        }


def fit_epochs(
    run_epoch: Callable[[int], float],
    *,
    epochs: int,
    validate: Callable[[], float] | None = None,
    snapshot: Callable[[], dict[str, torch.Tensor]] | None = None,
    restore: Callable[[dict[str, torch.Tensor]], None] | None = None,
    patience: int = 5,
    eval_every: int = 1,
    progress: bool = False,
    desc: str = "train",
) -> TrainLog:
    """Run up to ``epochs`` epochs; with ``validate``, stop early and restore the best weights."""
    log, stopper, best_state = TrainLog(), EarlyStopping(patience), None
    start = time.perf_counter()
    bar = tqdm(range(epochs), disable=not progress, desc=desc, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        log.losses.append(float(run_epoch(epoch)))
        log.epoch_seconds.append(time.perf_counter() - t0)
        postfix = {"loss": f"{log.losses[-1]:.4f}"}
        if validate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            value = float(validate())
            log.valid.append(value)
            postfix["valid"] = f"{value:.4f}"
            if stopper.update(value, epoch) and snapshot is not None:
                best_state = {k: v.detach().clone() for k, v in snapshot().items()}
            if stopper.should_stop:
                bar.set_postfix(postfix)
                break
        bar.set_postfix(postfix)
    bar.close()
    if best_state is not None and restore is not None:
        restore(best_state)
    log.best_epoch = stopper.best_epoch if validate is not None else len(log.losses) - 1
    log.seconds = time.perf_counter() - start
    return log


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering ``range(n)`` once."""
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)
