"""The one Trainer: schedules, accumulation, early stopping, checkpoints and resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions, model_class
from lmrec.train.trainer import TrainConfig, Trainer, TrainerOptions, lr_factor, seeded, step_rounds
from tests.conftest import checkerboard


class LineTask:
    """Fit y = 3x with one weight; batches of two points."""

    def __init__(self) -> None:
        self.module = nn.Linear(1, 1, bias=False)
        self.x = torch.linspace(-1, 1, 8).unsqueeze(1)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        yield from self.x[torch.randperm(8, generator=gen)].split(2)

    def loss(self, module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return (module(x) - 3 * x).pow(2).mean()


def test_schedules() -> None:
    assert [lr_factor(s, 2, "constant", 10) for s in range(3)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, 2, "linear", 10) == 1.0 and lr_factor(6, 2, "linear", 10) == 0.5
    assert lr_factor(10, 2, "cosine", 10) == pytest.approx(0.0) and lr_factor(6, 2, "cosine", 10) == pytest.approx(0.5)
    assert step_rounds(25) == [10, 10, 5]


def test_trainer_fits_and_counts_steps() -> None:
    task = LineTask()
    log = Trainer(TrainConfig(epochs=60, lr=0.1, accumulate=2)).fit(task, torch.Generator().manual_seed(0))
    assert log["steps"] == 60 * 2  # 4 batches an epoch, 2 per step
    assert task.module.weight.item() == pytest.approx(3.0, abs=0.1)
    assert log["losses"][-1] < log["losses"][0]


def test_extra_loss_terms_are_added() -> None:
    pull = {"to_zero": lambda module, batch: 100 * module.weight.pow(2).sum()}
    task = LineTask()
    Trainer(TrainConfig(epochs=40, lr=0.05), extra_losses=pull).fit(task, torch.Generator().manual_seed(0))
    assert abs(task.module.weight.item()) < 0.5  # the extra term dominates


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_weight_decay_pulls_towards_decay_to(optimizer: str) -> None:
    task = LineTask()
    task.loss = lambda module, x, gen: 0 * module(x).sum()  # type: ignore[method-assign]  # decay alone moves it
    task.decay_to = {"weight": torch.full((1, 1), 2.0)}  # type: ignore[attr-defined]
    with torch.no_grad():
        task.module.weight.fill_(-1.0)
    config = TrainConfig(epochs=50, lr=0.05, weight_decay=1.0, optimizer=optimizer)
    Trainer(config).fit(task, torch.Generator().manual_seed(0))
    weight = task.module.weight.item()
    if optimizer == "adamw":  # decoupled: w ← w − lr·wd·(w − 2) at each of the 200 steps
        assert weight == pytest.approx(2.0 - 3.0 * (1 - 0.05) ** 200, abs=1e-5)
    assert abs(weight - 2.0) < 0.1  # towards the target, not towards 0
    task.decay_to = {"bias": torch.zeros(1)}  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="decay_to"):
        Trainer(config).fit(task, torch.Generator())


def test_a_nan_loss_stops_with_a_clear_error() -> None:
    task = LineTask()
    task.loss = lambda module, x, gen: module(x).sum() * float("nan")  # type: ignore[method-assign]
    with pytest.raises(ConfigError, match="the loss is nan at epoch 1, batch 1"):
        Trainer(TrainConfig(epochs=2)).fit(task, torch.Generator())


def test_ema_returns_and_validates_the_averaged_weights() -> None:
    """With ema the weights that come back (and that validation saw) are the moving average, which
    trails the raw weights: from 0 towards 3 on y = 3x, it is still below where training got."""
    raw, averaged = LineTask(), LineTask()
    for task in (raw, averaged):
        nn.init.zeros_(task.module.weight)
    Trainer(TrainConfig(epochs=3, lr=0.1)).fit(raw, torch.Generator().manual_seed(0))
    seen: list[float] = []

    def validate() -> float:
        seen.append(averaged.module.weight.item())
        return seen[-1]  # rising: every epoch is the best so far

    Trainer(TrainConfig(epochs=3, lr=0.1, ema=0.9)).fit(averaged, torch.Generator().manual_seed(0), validate)
    assert 0 < averaged.module.weight.item() < raw.module.weight.item()
    assert averaged.module.weight.item() == pytest.approx(seen[-1])
    with pytest.raises(ConfigError, match="ema"):
        TrainConfig(ema=1.0)


def test_seeded_restores_the_callers_random_state() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    with seeded(0):
        torch.rand(5)
    assert torch.equal(torch.rand(1), expected)


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    options = TrainerOptions(checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(TrainConfig(), options).fit(LineTask(), torch.Generator())


@pytest.mark.parametrize(
    "name, config",
    [
        ("sasrec", {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 8, "batch_size": 8, "dropout": 0.2}),
        ("bpr", {"dim": 8, "batch_size": 64}),
        ("sasrec", {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 8, "batch_size": 8, "ema": 0.9}),
    ],
)
def test_resume_continues_to_the_same_result(tmp_path: Path, name: str, config: dict) -> None:
    """A run stopped after 2 of 5 epochs and resumed ends with the same weights, log and
    validation scores as the uninterrupted run (dropout and negatives included)."""
    split = leave_one_out(checkerboard(n_users=24, n_items=20, per_user=8))
    train, valid = split.train_dataset(), split.eval_set("valid")
    klass = model_class(name)
    cfg = klass.config_class.from_dict({**config, "epochs": 5, "patience": 10})

    def fit(**options: object) -> object:
        return klass(cfg).fit(train, valid, FitOptions(seed=3, **options))  # type: ignore[arg-type]

    whole = fit()
    fit(checkpoint_dir=tmp_path, stop_after=2)
    resumed = fit(checkpoint_dir=tmp_path, resume=True)
    for key, value in whole.state().items():
        assert torch.equal(value, resumed.state()[key]), key
    assert resumed.training_log["losses"] == whole.training_log["losses"]
    assert resumed.training_log["valid"] == whole.training_log["valid"]
    assert np.isfinite(whole.training_log["losses"]).all()
