"""A time budget for training: ``lmrec train --max-time 20m`` (or ``max_time`` in the YAML) stops at
the first epoch end past it, keeps the best epoch and records why training stopped. Timed by a
fake clock or a budget of 0 s (exactly one epoch), never by the wall clock."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lmrec.cli import duration, main
from lmrec.train.trainer import TrainConfig, Trainer, TrainerOptions
from tests.test_cli import write_shop

TINY = ["--set", "dim=8", "--set", "inner=16", "--set", "layers=1", "--set", "heads=1", "--set", "max_len=6"]


class StepTask:
    """One weight moved by a constant gradient: the weight after each epoch tells the epochs apart."""

    def __init__(self) -> None:
        self.module = nn.Linear(1, 1, bias=False)
        nn.init.zeros_(self.module.weight)

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        yield torch.ones(1, 1)

    def loss(self, module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return -module(x).sum()  # a constant gradient: the weight grows every step


class FakeClock:
    """Each reading is ``step`` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.readings = 0.0, step, 0

    def __call__(self) -> float:
        self.now += self.step
        self.readings += 1
        return self.now


def fit(deadline: float | None, scores: list[float], epochs: int = 10, patience: int = 5) -> tuple[dict, float]:
    task, clock = StepTask(), FakeClock(10.0)
    values = iter(scores)
    options = TrainerOptions(deadline=deadline, clock=clock)
    config = TrainConfig(epochs=epochs, lr=0.1, optimizer="adam", patience=patience)
    log = Trainer(config, options).fit(task, torch.Generator().manual_seed(0), validate=lambda: next(values))
    return log, task.module.weight.item()


def test_the_budget_stops_at_the_first_epoch_end_past_it_and_keeps_the_best_epoch() -> None:
    # the clock reads 10, 20, 30 s at the ends of epochs 1, 2, 3: 30 is the first past 25
    log, weight = fit(deadline=25.0, scores=[0.1, 0.5, 0.2, 0.9, 0.9])
    assert log["stopped"] == "max_time"
    assert log["epochs"] == 3 and log["valid"] == [0.1, 0.5, 0.2]
    assert log["best_epoch"] == 1
    _, after_two = fit(deadline=None, scores=[0.1, 0.5], epochs=2)
    assert weight == after_two  # the weights of epoch 2, the best, not those of epoch 3


def test_why_training_stopped_is_recorded_without_a_budget() -> None:
    log, _ = fit(deadline=None, scores=[0.1, 0.2, 0.3], epochs=3)
    assert log["stopped"] == "epochs" and log["epochs"] == 3
    log, _ = fit(deadline=None, scores=[0.5, 0.1, 0.1, 0.1], patience=2)
    assert log["stopped"] == "early_stopping" and log["epochs"] == 3
    log, _ = fit(deadline=1e9, scores=[0.1, 0.2, 0.3], epochs=3)  # a budget never reached
    assert log["stopped"] == "epochs" and log["epochs"] == 3


def test_a_budget_reached_at_the_last_epoch_is_the_epochs_that_stopped_it() -> None:
    log, _ = fit(deadline=5.0, scores=[0.1], epochs=1)
    assert log["stopped"] == "epochs" and log["epochs"] == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("20m", 1200), ("1h", 3600), ("1h30m", 5400), ("45", 45), ("0s", 0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "20x", "m", "1h30"])
def test_durations_that_are_not(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="90s, 20m"):
        duration(text)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shop(tmp_path_factory.mktemp("max-time") / "shop")


def train(shop: Path, out: Path, *extra: str) -> dict:
    args = ["train", "--dataset", str(shop), "--model", "sasrec", *TINY, "--quiet", "--out", str(out), *extra]
    assert main(["--cache-dir", str(shop.parent / "cache"), *args]) == 0
    return json.loads((out / "run.json").read_text())


def test_max_time_zero_trains_exactly_one_epoch(shop: Path, tmp_path: Path) -> None:
    meta = train(shop, tmp_path / "run", "--set", "epochs=5", "--max-time", "0s")
    assert meta["stopped"] == "max_time" and meta["max_time"] == 0
    assert meta["training"]["epochs"] == 1
    assert (tmp_path / "run" / "model" / "weights.safetensors").is_file()
    meta = train(shop, tmp_path / "whole", "--set", "epochs=2")
    assert meta["stopped"] == "epochs" and "max_time" not in meta and meta["training"]["epochs"] == 2


def test_max_time_in_the_yaml_config(shop: Path, tmp_path: Path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text("epochs: 4\nmax_time: 0s\n")
    meta = train(shop, tmp_path / "run", "--config", str(config))
    assert meta["stopped"] == "max_time" and meta["training"]["epochs"] == 1
    assert "max_time" not in meta["config"]  # a training budget, not a model option
    config.write_text("epochs: 2\nmax_time: 1h\n")
    meta = train(shop, tmp_path / "long", "--config", str(config))
    assert meta["max_time"] == 3600 and meta["stopped"] == "epochs" and meta["training"]["epochs"] == 2


def test_a_bad_max_time_in_the_yaml_names_the_file(shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "model.yaml"
    config.write_text("max_time: soon\n")
    args = ["train", "--dataset", str(shop), "--model", "sasrec", "--config", str(config), "--out", str(tmp_path / "r")]
    assert main(["--cache-dir", str(tmp_path / "cache"), *args]) == 2
    err = capsys.readouterr().err
    assert "max_time" in err and str(config) in err and "soon" in err
