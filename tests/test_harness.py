"""benchmarks/harness.py: arms trained through train_run, opened with open_run, tested against the
baseline arm, written as JSON and markdown; a finished run is reused, not trained again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import checkerboard

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
BPR = {"dim": 8, "epochs": 3, "batch_size": 64, "lr": 0.02}


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))  # as `python benchmarks/x.py` has it
        import harness

    return harness


def write_board(directory: Path) -> Path:
    """The checkerboard (user u likes items of u's parity) as the CSV files `lmrec train` reads."""
    ds = checkerboard(n_users=24, n_items=20, per_user=8)
    directory.mkdir(parents=True)
    frame = ds.interactions
    lines = ["user,item,timestamp"] + [
        f"{ds.users.raw([u])[0]},{ds.items.raw([i])[0]},{t}"
        for u, i, t in zip(frame["user"], frame["item"], frame["timestamp"], strict=True)
    ]
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module", autouse=True)
def threads_restored() -> Iterator[None]:
    """The harness sets the thread count (environment and torch); other tests get theirs back."""
    import torch

    environ, count = dict(os.environ), torch.get_num_threads()
    yield
    os.environ.clear()
    os.environ.update(environ)
    torch.set_num_threads(count)


@pytest.fixture(scope="module")
def done(harness: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("harness")
    arms = [
        harness.Arm("pop", "pop"),
        harness.Arm("bpr", "bpr", BPR),
        harness.Arm("knn", "itemknn", {"k": 10}),
    ]
    report = harness.run_arms(
        arms,
        [0, 1],
        baseline="pop",
        runs_dir=root / "runs",
        out=root / "out" / "result.json",
        dataset=str(write_board(root / "board")),
        cache_dir=root / "cache",
        argv=["--tiny"],
        title="tiny",
    )
    return {"root": root, "report": report, "arms": arms}


def test_json_holds_every_arm_and_seed_with_per_user_values(done: dict[str, Any]) -> None:
    root = done["root"]
    written = json.loads((root / "out" / "result.json").read_text())
    assert written == json.loads(json.dumps(done["report"]))
    assert list(written["arms"]) == ["pop", "bpr", "knn"]
    assert written["baseline"] == "pop" and written["seeds"] == [0, 1]
    for name, arm in written["arms"].items():
        assert [s["seed"] for s in arm["seeds"]] == [0, 1]
        for s in arm["seeds"]:
            assert Path(s["run"]) == root / "runs" / f"{name}-seed{s['seed']}"
            assert (Path(s["run"]) / "run.json").is_file()  # trained by train_run
            assert len(s["per_user"]) == 24  # every test user
            assert s["metrics"]["ndcg@10"] == pytest.approx(sum(s["per_user"]) / 24, abs=1e-5)
    bpr = written["arms"]["bpr"]
    assert all(1 <= s["epochs"] <= 3 for s in bpr["seeds"])
    assert bpr["summary"]["epochs"] == pytest.approx(sum(s["epochs"] for s in bpr["seeds"]) / 2, abs=0.05)
    assert written["threads"] == written["machine"]["torch_threads"] == 1  # set explicitly, default 1
    assert written["commit"] and "--tiny" in written["command"]


def test_paired_tests_are_against_the_baseline_arm(done: dict[str, Any]) -> None:
    arms = done["report"]["arms"]
    assert "vs_baseline" not in arms["pop"]
    for name in ("bpr", "knn"):
        tests = arms[name]["vs_baseline"]
        assert set(tests) == {"seed 0", "seed 1", "mean over seeds"}
        for seed in (0, 1):
            test = tests[f"seed {seed}"]
            assert test["mean_a"] == pytest.approx(arms["pop"]["seeds"][seed]["metrics"]["ndcg@10"], abs=1e-5)
            assert test["mean_b"] == pytest.approx(arms[name]["seeds"][seed]["metrics"]["ndcg@10"], abs=1e-5)
        mean = tests["mean over seeds"]
        assert mean["mean_a"] == pytest.approx(arms["pop"]["summary"]["ndcg@10"]["mean"], abs=1e-5)
        assert mean["mean_b"] == pytest.approx(arms[name]["summary"]["ndcg@10"]["mean"], abs=1e-5)
    # item-kNN learns the checkerboard, popularity cannot: far better, and the test sees it
    assert arms["knn"]["vs_baseline"]["mean over seeds"]["t_pvalue"] < 0.01
    assert arms["knn"]["summary"]["ndcg@10"]["mean"] > 1.2 * arms["pop"]["summary"]["ndcg@10"]["mean"]


def test_markdown_table(done: dict[str, Any]) -> None:
    report = done["report"]
    text = (done["root"] / "out" / "result.md").read_text()
    assert text.startswith("## tiny")
    assert f"Commit: {report['commit']}" in text and "Command: `" in text and "--tiny" in text
    assert report["machine"]["cpu"] in text and f"torch {report['machine']['torch']}" in text
    rows = {
        line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {"arm", "pop (baseline)", "bpr", "knn"}
    knn = report["arms"]["knn"]
    cells = [c.strip() for c in rows["knn"].split("|")[1:-1]]
    mean, std = knn["summary"]["ndcg@10"]["mean"], knn["summary"]["ndcg@10"]["std"]
    assert cells[2] == f"{mean:.4f} ± {std:.4f}"
    assert cells[4] == f"{knn['vs_baseline']['mean over seeds']['relative_change'] * 100:+.1f} %"
    assert rows["pop (baseline)"].split("|")[5].strip() == "–"  # no test of the baseline against itself


def test_a_finished_run_is_reused_and_another_request_refused(harness: ModuleType, done: dict[str, Any]) -> None:
    root = done["root"]
    run_dir = root / "runs" / "bpr-seed0"
    before = (run_dir / "run.json").read_text()
    base = harness.recipe(str(root / "board"))
    run = harness.train_arm(done["arms"][1], 0, base, run_dir, root / "cache")
    assert (run_dir / "run.json").read_text() == before  # not trained again
    assert run.meta["harness"] == {"arm": "bpr", "fit": {}}
    with pytest.raises(SystemExit, match="another request"):
        harness.train_arm(harness.Arm("bpr", "bpr", {**BPR, "dim": 4}), 0, base, run_dir, root / "cache")


def test_a_killed_run_resumes_from_its_checkpoint(harness: ModuleType, tmp_path: Path) -> None:
    base = harness.recipe(str(write_board(tmp_path / "board")))
    arm = harness.Arm("bpr", "bpr", BPR)
    first = harness.train_arm(arm, 0, base, tmp_path / "a", tmp_path / "cache")
    (tmp_path / "a" / "run.json").unlink()  # as if killed after the last epoch's checkpoint
    again = harness.train_arm(arm, 0, base, tmp_path / "a", tmp_path / "cache")
    assert (tmp_path / "a" / "run.json").is_file()
    q = again.split.eval_set("test").queries
    assert (again.model.score(q) == first.model.score(q)).all()


def test_the_command(harness: ModuleType, tmp_path: Path) -> None:
    assert harness.parse_arm("knn=itemknn:k=10,shrink=2") == harness.Arm("knn", "itemknn", {"k": "10", "shrink": "2"})
    with pytest.raises(SystemExit, match="NAME=MODEL"):
        harness.parse_arm("itemknn")
    board = write_board(tmp_path / "board")
    argv = ["--arm", "pop=pop", "--arm", "knn=itemknn:k=10", "--seeds", "0", "--dataset", str(board)]
    argv += [
        "--runs",
        str(tmp_path / "runs"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(tmp_path / "r.json"),
    ]
    report = harness.main(argv)
    assert report["baseline"] == "pop" and set(report["arms"]["knn"]["vs_baseline"]) == {"seed 0", "mean over seeds"}
    assert report["arms"]["knn"]["options"] == {"k": "10"} and (tmp_path / "runs" / "knn-seed0" / "run.json").is_file()
    assert (tmp_path / "r.md").read_text().count("\n| ") == 3  # header and two arms
