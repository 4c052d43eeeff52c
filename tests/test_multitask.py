"""mtl-sasrec: task specs, the three mixers, loss weighting, per-task validation and heads.

Data: the checkerboard (user u likes items of u's parity) with a rating that depends on the item
alone (5 for items 0, 1 mod 4, else 1), so a head that reads the item can learn it exactly and
"like" (rating >= 4) is the same split of the catalog.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import Split, leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate.metrics import rmse
from lmrec.models import FitOptions, load_model
from lmrec.models.multitask import (
    MultiTaskConfig,
    MultiTaskSASRec,
    MultiTaskTask,
    RatedEvalSet,
    TaskSpec,
    parse_task,
    target_pairs,
)
from tests.conftest import checkerboard

TINY: dict[str, Any] = {
    "dim": 16,
    "inner": 32,
    "layers": 1,
    "max_len": 8,
    "epochs": 12,
    "batch_size": 16,
    "lr": 0.01,
    "dropout": 0.1,
    "experts": 2,
    "expert_inner": 16,
    "head_hidden": 16,
    "patience": 50,
}


def item_rating(items: np.ndarray) -> np.ndarray:
    return np.where(items % 4 < 2, 5.0, 1.0)


@pytest.fixture(scope="module")
def split() -> Split:
    board = checkerboard()
    inter = board.interactions
    rated = board.with_interactions(inter.assign(rating=item_rating(inter["item"].to_numpy())))
    return leave_one_out(rated)


def fit(split: Split, seed: int = 0, **overrides: Any) -> MultiTaskSASRec:
    cfg = MultiTaskConfig.from_dict({**TINY, **overrides})
    valid = RatedEvalSet.from_split(split, "valid")
    return MultiTaskSASRec(cfg).fit(split.train_dataset(), valid, FitOptions(seed=seed))


# -- specs and config -------------------------------------------------------------------------------
def test_task_specs_parse() -> None:
    assert parse_task("like") == TaskSpec("like", "binary", "rating", 4.0)
    assert parse_task("rating", 0.5) == TaskSpec("rating", "regression", "rating", None, 0.5)
    assert parse_task("good=binary:rating>=3.5") == TaskSpec("good", "binary", "rating", 3.5)
    assert parse_task("clicked=binary:weight") == TaskSpec("clicked", "binary", "weight", None)
    for bad in ("foo", "x=multi:rating", "x=regression:rating>=3", "x=binary:"):
        with pytest.raises(ConfigError):
            parse_task(bad)
    with pytest.raises(ConfigError, match="weight"):
        parse_task("rating", -1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"mixer": "moe"},
        {"weighting": "gradnorm"},
        {"task_weights": (1.0, 2.0)},
        {"stop_on": "clicks"},
        {"tasks": ("rating", "rating")},
        {"tasks": ()},
        {"objective": "masked"},
        {"item_repr": "text"},
        {"mixer": "ple", "task_experts": 0},
    ],
)
def test_config_rejects(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        MultiTaskConfig.from_dict(bad)


def test_config_from_command_line_strings() -> None:
    cfg = MultiTaskConfig.from_dict({"tasks": "next_item,like", "task_weights": "1,0.5", "mixer": "ple"})
    assert cfg.tasks == ("next_item", "like") and cfg.task_weights == (1.0, 0.5)
    assert [s.weight for s in cfg.task_specs()] == [1.0, 0.5]


def test_rated_eval_set_lines_up_values_with_targets(split: Split) -> None:
    test = RatedEvalSet.from_split(split, "test")
    plain = split.eval_set("test")
    assert np.array_equal(test.target_items, plain.target_items)
    assert np.array_equal(test.target_values["rating"], item_rating(test.target_items))
    with pytest.raises(ConfigError, match="event"):
        RatedEvalSet.from_split(split, "test", columns=("event",))


def test_missing_column_is_a_clear_error() -> None:
    train = leave_one_out(checkerboard()).train_dataset()  # no rating column
    with pytest.raises(ConfigError, match="'rating'"):
        MultiTaskSASRec(MultiTaskConfig.from_dict(TINY)).fit(train)


# -- training ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(split: Split) -> dict[str, MultiTaskSASRec]:
    return {mixer: fit(split, mixer=mixer) for mixer in ("shared", "mmoe", "ple")}


@pytest.mark.parametrize("mixer", ["shared", "mmoe", "ple"])
def test_heads_learn_rating_and_like(mixer: str, models: dict[str, MultiTaskSASRec], split: Split) -> None:
    model = models[mixer]
    test = RatedEvalSet.from_split(split, "test")
    truth = test.target_values["rating"]
    pairs = target_pairs(test)
    predicted = model.predict_rating(pairs, test.target_items).numpy()
    constant = np.full_like(truth, split.train_dataset().interactions["rating"].mean())
    assert rmse(predicted, truth) < 0.5 * rmse(constant, truth)
    metrics = model.task_metrics(test)
    assert set(metrics) == {"next_item", "rating", "like"}
    assert metrics["like"]["auc"] > 0.9
    assert (
        0
        <= model.predict_like(pairs, test.target_items).min()
        <= model.predict_like(pairs, test.target_items).max()
        <= 1
    )


@pytest.mark.parametrize("mixer", ["shared", "mmoe", "ple"])
def test_training_log_per_task(mixer: str, models: dict[str, MultiTaskSASRec]) -> None:
    log = models[mixer].training_log
    epochs = log["epochs"]
    assert log["stop_on"] == "next_item"
    assert len(log["task_losses"]) == epochs and set(log["task_losses"][0]) == {"next_item", "rating", "like"}
    assert len(log["valid_tasks"]) == epochs
    assert {"ndcg@10"} == set(log["valid_tasks"][0]["next_item"])
    assert {"rmse", "mae"} == set(log["valid_tasks"][0]["rating"])
    assert [v["next_item"]["ndcg@10"] for v in log["valid_tasks"]] == log["valid"]  # the rule: next-item NDCG
    if mixer == "shared":
        assert log["expert_utilisation"] == {} and log["gates"] == []
        return
    n_experts = {"mmoe": 2, "ple": 3}[mixer]  # ple: 2 shared + 1 of the task's own
    assert len(log["gates"]) == epochs
    for task, gates in log["expert_utilisation"].items():
        assert len(gates) == n_experts == len(log["experts"][task])
        assert sum(gates) == pytest.approx(1.0, abs=5e-3)  # gates run under bf16 autocast where the CPU has bf16
    if mixer == "ple":
        assert log["experts"]["rating"] == ["shared0", "shared1", "rating0"]


def test_loss_terms_are_named_and_uncertainty_learns_log_variances(split: Split) -> None:
    model = fit(split, weighting="uncertainty", epochs=3, mixer="mmoe")
    train = split.train_dataset()
    ratings = train.interactions["rating"].to_numpy(np.float64)
    task = MultiTaskTask(model, train, {"rating": ratings, "like": ratings})  # raw column values per task
    batch = next(iter(task.batches(0, torch.Generator().manual_seed(0))))
    terms = task.loss(model.module, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"next_item", "rating", "like"}
    assert all(t.ndim == 0 and torch.isfinite(t) for t in terms.values())
    assert model.log_vars is not None and bool((model.log_vars.detach() != 0).all())  # they moved
    assert set(model.training_log["log_vars"]) == {"next_item", "rating", "like"}


def test_mean_rule_and_plain_validation(split: Split) -> None:
    mean = fit(split, stop_on="mean", mixer="shared", epochs=6)
    log = mean.training_log
    assert log["stop_on"] == "mean" and log["valid"][0] == 0.0  # each task against its own first value
    assert log["best_epoch"] == int(np.argmax(log["valid"]))
    # a plain EvalSet carries items only: next item is validated, the rating heads are not
    cfg = MultiTaskConfig.from_dict({**TINY, "epochs": 2, "mixer": "shared"})
    plain = MultiTaskSASRec(cfg).fit(split.train_dataset(), split.eval_set("valid"), FitOptions(seed=0))
    assert set(plain.training_log["valid_tasks"][0]) == {"next_item"}
    with pytest.raises(ConfigError, match="stop_on=rating"):
        cfg = MultiTaskConfig.from_dict({**TINY, "epochs": 1, "stop_on": "rating"})
        MultiTaskSASRec(cfg).fit(split.train_dataset(), split.eval_set("valid"))


def test_single_task_rating_model_ranks_by_its_head(split: Split) -> None:
    model = fit(split, tasks=("rating",), mixer="shared", epochs=10)
    assert model.training_log["stop_on"] == "rating"
    assert model.item_embeddings() is None
    q = QueryBatch.from_histories([0, -1, 3], [[0, 2, 4], [1, 3], []])
    scores = model.score(q)
    assert scores.shape == (3, split.dataset.n_items) and torch.isfinite(scores).all()
    top = scores[0].topk(10).indices.numpy()
    assert (item_rating(top) == 5).mean() >= 0.8  # highly rated items first
    candidates = np.array([[3, 0, -1], [7, 1, 2], [4, 4, 4]])
    want = torch.where(
        torch.from_numpy(candidates >= 0), scores.gather(1, torch.from_numpy(candidates.clip(0))), -torch.inf
    )
    assert torch.allclose(model.score_candidates(q, candidates), want)
    with pytest.raises(ConfigError, match="binary"):
        model.predict_like(q, np.array([0, 1, 2]))


def test_predict_edges_and_save_load(models: dict[str, MultiTaskSASRec], tmp_path: Path) -> None:
    model = models["ple"]
    q = QueryBatch.from_histories([0, 1, 2], [[0, 2, 4], [], [1, 3]])
    items = np.array([[4, 10_000], [2, 6], [-1, 5]])
    got = model.predict_rating(q, items)
    assert torch.isnan(got[0, 1]) and torch.isnan(got[2, 0]) and torch.isfinite(got[1]).all()
    assert torch.allclose(got[1], model.module.baseline[1].expand(2))  # empty history: the training mean
    model.save(tmp_path / "mtl")
    loaded = load_model(tmp_path / "mtl")
    assert isinstance(loaded, MultiTaskSASRec)
    assert torch.equal(torch.nan_to_num(loaded.predict_rating(q, items)), torch.nan_to_num(got))
    assert torch.equal(loaded.score(q), model.score(q))


def test_same_seed_same_model(split: Split) -> None:
    a, b = (fit(split, seed=3, epochs=2, mixer="mmoe") for _ in range(2))
    q = QueryBatch.from_histories([0, 1], [[0, 2], [1, 3]])
    assert torch.equal(a.score(q), b.score(q))
    assert torch.equal(a.predict_rating(q, np.array([4, 5])), b.predict_rating(q, np.array([4, 5])))


# -- the user's path: train_run (what `lmrec train` calls) on a rated file --------------------------
@pytest.fixture(scope="module")
def rated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rated checkerboard as the interactions.csv ``lmrec train --data`` reads."""
    board = checkerboard()
    frame = board.interactions
    users, items = board.users.raw(frame["user"].to_numpy()), board.items.raw(frame["item"].to_numpy())
    ratings = item_rating(frame["item"].to_numpy())
    directory = tmp_path_factory.mktemp("rated")
    lines = ["user,item,timestamp,rating"]
    lines += [f"{u},{i},{t},{r:g}" for u, i, t, r in zip(users, items, frame["timestamp"], ratings, strict=True)]
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    return directory


def test_train_run_reports_rating_metrics(rated_file: Path, tmp_path: Path) -> None:
    """Issue 30: the validation and test reports of a train_run carry the rating head's RMSE/MAE,
    each test rating predicted after its user's history before the test (what evaluate reads)."""
    from lmrec.runs import DataRecipe, open_run, train_run

    out = tmp_path / "run"
    train_run(DataRecipe(dataset=str(rated_file)), "mtl-sasrec", TINY, out, tmp_path / "cache", FitOptions(seed=0))
    valid = json.loads((out / "valid.json").read_text())["metrics"]
    assert {"ndcg@10", "rmse", "mae"} <= set(valid) and np.isfinite(valid["rmse"])
    run = open_run(out, tmp_path / "cache")
    report = run.evaluate("test")["metrics"]
    test = RatedEvalSet.from_split(run.split, "test")  # leave-one-out: one rating per test user
    model = run.model
    assert isinstance(model, MultiTaskSASRec)
    by_hand = rmse(model.predict_rating(target_pairs(test), test.target_items).numpy(), test.target_values["rating"])
    assert report["rmse"] == pytest.approx(by_hand, abs=1e-5)
    assert report["rmse"] < 1.0  # ratings are 1 or 5 by item: a constant is off by about 2

    # a model without a rating task reports no rating error (and does not fail)
    train_run(
        DataRecipe(dataset=str(rated_file)),
        "mtl-sasrec",
        {**TINY, "tasks": ("next_item", "like"), "epochs": 1},
        tmp_path / "no-rating",
        tmp_path / "cache",
        FitOptions(seed=0),
    )
    assert "rmse" not in json.loads((tmp_path / "no-rating" / "valid.json").read_text())["metrics"]


def test_dp_epsilon_is_refused(rated_file: Path, tmp_path: Path) -> None:
    """Issue 30: mtl-sasrec has no private training path, so --dp-epsilon is refused before anything
    is written, not silently trained without privacy."""
    from lmrec.runs import DataRecipe, train_run
    from lmrec.train.privacy import DPSpec

    assert not MultiTaskSASRec.private
    with pytest.raises(ConfigError, match="mtl-sasrec has no differentially private training"):
        train_run(
            DataRecipe(dataset=str(rated_file)),
            "mtl-sasrec",
            TINY,
            tmp_path / "run",
            tmp_path / "cache",
            FitOptions(seed=0, dp=DPSpec(epsilon=8.0)),
        )
    assert not (tmp_path / "run").exists()
