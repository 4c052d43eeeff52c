"""``lmrec tune``: trials through train_run, the defaults first, the best written as YAML that
``lmrec train --config`` takes, a study that resumes, and pruning on per-epoch validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmrec.cli import main
from lmrec.errors import ConfigError
from lmrec.models import FitOptions
from lmrec.runs import DataRecipe
from lmrec.tune import SPACES, TuneOptions, search_space, tune
from tests.test_cli import write_shop

optuna = pytest.importorskip("optuna")

# a tiny SASRec: these are fixed, so the search is over lr, dropout and weight_decay
TINY = ["dim=8", "inner=16", "layers=1", "heads=1", "max_len=6", "batch_size=64", "epochs=3"]
FIXED: dict[str, Any] = dict(item.split("=") for item in TINY)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shop(tmp_path_factory.mktemp("tune") / "shop")


def lmrec(shop: Path, *args: str) -> None:
    assert main(["--cache-dir", str(shop.parent / "cache"), *args]) == 0


def tune_cli(shop: Path, study: Path, trials: int, *extra: str) -> None:
    sets = [arg for item in TINY for arg in ("--set", item)]
    lmrec(
        shop,
        "tune",
        "--dataset",
        str(shop),
        "--model",
        "sasrec",
        "--trials",
        str(trials),
        "--study",
        str(study),
        *sets,
        *extra,
    )


def trials_of(study: Path) -> list[Any]:
    return optuna.load_study(study_name="lmrec-tune", storage=f"sqlite:///{study}").trials


def test_three_trials_and_the_best_yaml_trains_through_lmrec_train(
    shop: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = tmp_path / "best.yaml"
    tune_cli(shop, tmp_path / "study.db", 3, "--out", str(best), "--runs", str(tmp_path / "trials"))
    out, err = capsys.readouterr()
    assert "the defaults (trial 0)" in err  # best against the defaults, measured alike
    trials = trials_of(tmp_path / "study.db")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].params == {} and trials[0].user_attrs["defaults"]  # the defaults, trained as they are
    assert set(trials[1].params) == {"lr", "dropout", "weight_decay"}  # the fixed options are not searched
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and "(best)" in out  # the table: header, rule, a row per trial
    for t in trials:  # each trial went through train_run: a run directory with its validation report
        valid = json.loads((tmp_path / "trials" / f"trial-{t.number:03d}" / "valid.json").read_text())
        assert valid["metrics"]["ndcg@10"] == pytest.approx(t.value)
    chosen = max(trials, key=lambda t: t.value)
    config = yaml.safe_load(best.read_text())
    assert config["lr"] == pytest.approx(chosen.user_attrs["config"]["lr"]) and config["dim"] == 8
    assert "trial" in best.read_text().splitlines()[0]
    lmrec(
        shop,
        "train",
        "--dataset",
        str(shop),
        "--model",
        "sasrec",
        "--config",
        str(best),
        "--out",
        str(tmp_path / "run"),
    )
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["config"]["lr"] == pytest.approx(config["lr"]) and meta["config"]["dim"] == 8
    retrained = json.loads((tmp_path / "run" / "valid.json").read_text())["metrics"]["ndcg@10"]
    assert retrained == pytest.approx(chosen.value)  # the same seed: the trial's number again


def test_a_study_resumes_and_refuses_another_search(shop: Path, tmp_path: Path) -> None:
    study = tmp_path / "study.db"
    tune_cli(shop, study, 2)
    first = [(t.params, t.value) for t in trials_of(study)]
    tune_cli(shop, study, 3)  # the study grows to 3: one more trial
    trials = trials_of(study)
    assert len(trials) == 3 and [(t.params, t.value) for t in trials[:2]] == first
    assert trials[2].params and trials[2].params != trials[1].params
    tune_cli(shop, study, 3)  # already 3: nothing to run
    assert len(trials_of(study)) == 3
    with pytest.raises(ConfigError, match="another search"):
        tune("ease", DataRecipe(str(shop)), TuneOptions(trials=1, study=str(study)), shop.parent / "cache")


class PruneAfterFirst(optuna.pruners.BasePruner):
    """Prunes every trial but the first at its first report."""

    def prune(self, study: Any, trial: Any) -> bool:
        return trial.number > 0


def test_pruned_trials_stop_at_the_epoch_the_pruner_says(shop: Path, tmp_path: Path) -> None:
    options = TuneOptions(trials=3, fixed=FIXED, runs_dir=tmp_path / "trials")
    result = tune(
        "sasrec", DataRecipe(str(shop)), options, shop.parent / "cache", FitOptions(), pruner=PruneAfterFirst()
    )
    states = [r["state"] for r in result.rows]
    assert states == ["complete", "pruned", "pruned"] and result.best["trial"] == 0
    assert result.ran == 3  # the defaults' trial, enqueued before it runs, counted once
    assert [r["epochs"] for r in result.rows] == [3, 1, 1]
    assert not (tmp_path / "trials" / "trial-001" / "run.json").exists()  # stopped inside the Trainer
    # without an injected pruner: Optuna's median pruner after the warm-up epochs
    assert isinstance(result.study.pruner, PruneAfterFirst)
    default = tune("sasrec", DataRecipe(str(shop)), TuneOptions(trials=1, fixed=FIXED), shop.parent / "cache")
    assert isinstance(default.study.pruner, optuna.pruners.MedianPruner)


def test_the_time_budget_bounds_the_trial_that_runs(shop: Path) -> None:
    options = TuneOptions(trials=5, time_budget=0.0, fixed={**FIXED, "epochs": "4"})
    result = tune("sasrec", DataRecipe(str(shop)), options, shop.parent / "cache")
    assert result.ran == 1  # no trial starts once the budget is spent
    assert result.best["stopped"] == "max_time" and result.best["epochs"] == 1  # at its first epoch end


def test_every_model_the_issue_names_declares_a_search_space() -> None:
    assert {"sasrec", "bert4rec", "text-sasrec", "bpr", "als", "ease"} <= set(SPACES)
    assert search_space("ease")["reg"].log
    with pytest.raises(ConfigError, match="no search space"):
        search_space("pop")
