"""User-level DP-SGD (Opacus) on the Trainer: the ε spent, the refusal of what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmrec.cli import main
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions, model_class
from lmrec.train.privacy import DPSpec
from tests.conftest import checkerboard

pytest.importorskip("opacus")

BPR = {"dim": 8, "epochs": 5, "batch_size": 16, "lr": 0.05}


def fit(spec: DPSpec | None, name: str = "bpr") -> object:
    train = leave_one_out(checkerboard(n_users=80)).train_dataset()
    klass = model_class(name)
    config = BPR if name == "bpr" else {}
    return klass(klass.config_class.from_dict(config)).fit(train, None, FitOptions(seed=0, dp=spec))


def test_dp_bpr_spends_at_most_its_epsilon_and_states_it() -> None:
    model = fit(DPSpec(epsilon=4.0))
    report = model.training_log["privacy"]  # type: ignore[attr-defined]
    assert 3.5 < report["epsilon"] <= 4.0 * 1.01 and report["delta"] == pytest.approx(1 / 800)
    assert report["unit"] == "user" and report["noise_multiplier"] > 0 and report["steps"] == 5 * 5
    assert np.isfinite(model.training_log["losses"]).all()  # type: ignore[attr-defined]
    stronger = fit(DPSpec(epsilon=1.0)).training_log["privacy"]  # type: ignore[attr-defined]
    assert stronger["noise_multiplier"] > report["noise_multiplier"]


def test_models_without_dp_and_impossible_targets_are_refused() -> None:
    with pytest.raises(ConfigError, match="no differentially private training"):
        fit(DPSpec(epsilon=8.0), "ease")
    with pytest.raises(ConfigError, match="epsilon > 0"):
        DPSpec(epsilon=0.0)


def test_cli_records_the_guarantee_in_the_run(tmp_path: Path) -> None:
    from tests.test_cli import write_shop

    data = write_shop(tmp_path / "shop")
    args = ["--cache-dir", str(tmp_path / "cache"), "train", "--dataset", str(data), "--model", "bpr", "--quiet"]
    args += ["--set", "epochs=2", "--set", "dim=8", "--dp-epsilon", "8", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    privacy = json.loads((tmp_path / "run" / "run.json").read_text())["training"]["privacy"]
    assert privacy["epsilon"] <= 8.0 * 1.01 and privacy["accountant"] == "prv"
