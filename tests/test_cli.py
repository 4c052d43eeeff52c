"""The ``lmrec`` command, run in-process on tiny files written to tmp_path (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmrec.cli import main

N_USERS, N_ITEMS, PER_USER = 30, 20, 8


def write_shop(directory: Path) -> Path:
    """Even users buy only items i0..i9, odd users only i10..i19; items have titles."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines, t = ["user,item,timestamp"], 1000
    for u in range(N_USERS):
        group = np.arange(10) if u % 2 == 0 else np.arange(10, 20)
        for i in rng.choice(group, PER_USER, replace=False):
            lines.append(f"u{u},i{i},{t}")
            t += 1
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    (directory / "items.csv").write_text("item,title\n" + "".join(f"i{i},Title {i}\n" for i in range(N_ITEMS)))
    return directory


def history_in_file(directory: Path, user: str) -> list[str]:
    rows = [line.split(",") for line in (directory / "interactions.csv").read_text().splitlines()[1:]]
    return [item for u, item, _ in rows if u == user]


class Cli:
    """Runs ``lmrec`` with a private cache and returns (exit code, stdout, stderr)."""

    def __init__(self, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.cache, self.capsys = cache, capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(["--cache-dir", str(self.cache), *args])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str) -> dict[str, Any]:
        code, out, err = self(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A shop dataset and two runs trained on it: pop, and ease with ``--set reg=50``."""
    root = tmp_path_factory.mktemp("cli")
    data = write_shop(root / "shop")
    cache = root / "cache"
    for model, extra in (("pop", []), ("ease", ["--set", "reg=50"])):
        args = ["train", "--dataset", str(data), "--model", model, "--out", str(root / model), "--quiet", *extra]
        assert main(["--cache-dir", str(cache), *args]) == 0
    return {"data": data, "cache": cache, "pop": root / "pop", "ease": root / "ease"}


@pytest.fixture
def cli(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(runs["cache"], capsys)


# -- train, evaluate, recommend, compare ---------------------------------------------------------


def test_a_stopped_run_resumes_to_the_uninterrupted_result(runs: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    tiny = ["--set", "dim=8", "--set", "inner=16", "--set", "layers=1", "--set", "heads=1", "--set", "max_len=6"]
    args = ["train", "--dataset", str(runs["data"]), "--model", "sasrec", *tiny, "--set", "epochs=4", "--quiet"]
    assert cli(*args, "--out", str(tmp_path / "whole"))[0] == 0
    assert cli(*args, "--out", str(tmp_path / "part"), "--stop-after", "2")[0] == 0
    assert json.loads((tmp_path / "part" / "run.json").read_text())["training"]["epochs"] == 2
    code, _, err = cli("train", "--resume", str(tmp_path / "part"), "--quiet")
    assert code == 0, err
    whole, part = (load_file(tmp_path / name / "model" / "weights.safetensors") for name in ("whole", "part"))
    assert all(torch.equal(whole[k], part[k]) for k in whole)
    assert json.loads((tmp_path / "part" / "run.json").read_text())["training"]["epochs"] == 4
    code, _, err = cli("train", "--resume", str(tmp_path / "nowhere"))
    assert code == 2 and "nothing to resume" in err


def test_train_with_two_processes_through_torchrun(runs: dict[str, Path], cli: Cli, tmp_path: Path) -> None:
    tiny = ["--set", "dim=8", "--set", "inner=16", "--set", "layers=1", "--set", "heads=1", "--set", "max_len=6"]
    args = ["train", "--dataset", str(runs["data"]), "--model", "sasrec", *tiny, "--set", "epochs=2", "--quiet"]
    code, _, err = cli(*args, "--out", str(tmp_path / "ddp"), "--nproc", "2")
    assert code == 0, err
    meta = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert meta["training"]["epochs"] == 2
    assert cli("evaluate", "--run", str(tmp_path / "ddp"))[0] == 0


def test_train_writes_a_run_directory_with_the_override(runs: dict[str, Path]) -> None:
    meta = json.loads((runs["ease"] / "run.json").read_text())
    assert meta["model"] == "ease"
    assert meta["config"] == {"reg": 50.0}  # default is 250
    assert meta["split_sizes"] == {"train": N_USERS * (PER_USER - 2), "valid": N_USERS, "test": N_USERS}
    assert meta["data"]["dataset"] == str(runs["data"].resolve())
    assert json.loads((runs["ease"] / "model" / "config.json").read_text())["config"] == {"reg": 50.0}
    assert len(json.loads((runs["ease"] / "users.json").read_text())) == N_USERS
    assert json.loads((runs["ease"] / "valid.json").read_text())["protocol"]["part"] == "valid"
    assert json.loads((runs["pop"] / "run.json").read_text())["config"] == {}


@pytest.mark.parametrize("model", ["pop", "ease"])
def test_evaluate_json(cli: Cli, runs: dict[str, Path], model: str) -> None:
    report = cli.json("evaluate", "--run", str(runs[model]))
    metrics = report["metrics"]
    for key in ("ndcg@10", "recall@10", "mrr@10"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["recall@10"] > 0
    assert report["n_users"] == N_USERS
    assert report["model"] == model
    protocol = report["protocol"]
    assert protocol["split"] == "leave-one-out" and protocol["part"] == "test" and protocol["ks"] == [10]


def test_ease_beats_popularity_on_the_block_structure(cli: Cli, runs: dict[str, Path]) -> None:
    pop = cli.json("evaluate", "--run", str(runs["pop"]))["metrics"]["ndcg@10"]
    ease = cli.json("evaluate", "--run", str(runs["ease"]))["metrics"]["ndcg@10"]
    assert ease > pop + 0.1


def test_evaluate_several_ks_on_valid(cli: Cli, runs: dict[str, Path]) -> None:
    report = cli.json("evaluate", "--run", str(runs["ease"]), "--split", "valid", "--k", "5", "10")
    assert {"ndcg@5", "ndcg@10", "recall@5", "recall@10"} <= set(report["metrics"])
    assert report["metrics"]["recall@5"] <= report["metrics"]["recall@10"]
    assert report["protocol"]["part"] == "valid" and report["protocol"]["ks"] == [5, 10]
    saved = json.loads((runs["ease"] / "valid.json").read_text())["metrics"]
    assert report["metrics"]["ndcg@10"] == saved["ndcg@10"]


def test_evaluate_markdown(cli: Cli, runs: dict[str, Path]) -> None:
    code, out, _ = cli("evaluate", "--run", str(runs["pop"]))
    assert code == 0
    assert "ndcg@10" in out and "pop" in out


def test_evaluate_runs_side_by_side_on_the_same_users(cli: Cli, runs: dict[str, Path]) -> None:
    both = cli.json("evaluate", "--run", str(runs["pop"]), str(runs["ease"]), "--sample", "7")
    alone = [cli.json("evaluate", "--run", str(runs[m]), "--sample", "7") for m in ("pop", "ease")]
    assert [r["model"] for r in both] == ["pop", "ease"] and both == alone
    code, out, _ = cli("evaluate", "--run", str(runs["pop"]), str(runs["ease"]))
    rows = [line for line in out.splitlines() if line.startswith("| pop (") or line.startswith("| ease (")]
    assert code == 0 and len(rows) == 2


def test_evaluate_side_by_side_refuses_runs_of_other_data(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user,item\n" + "".join(f"u{u},i{(u + k) % 5}\n" for u in range(4) for k in range(4)))
    code, _, err = cli("train", "--dataset", str(data), "--model", "pop", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    code, out, err = cli("evaluate", "--run", str(runs["pop"]), str(tmp_path / "run"))
    assert code == 2 and out == "" and "different data or splits" in err


def test_recommend_known_user(cli: Cli, runs: dict[str, Path]) -> None:
    result = cli.json("recommend", "--run", str(runs["ease"]), "--user", "u0")
    seen = history_in_file(runs["data"], "u0")
    assert len(seen) == PER_USER
    assert result["user"] == "u0" and result["known_user"] is True and result["history_length"] == PER_USER
    items = [r["item"] for r in result["items"]]
    assert len(items) == 10 and len(set(items)) == 10
    assert not set(items) & set(seen)
    assert [r["title"] for r in result["items"]] == [f"Title {i[1:]}" for i in items]
    scores = [r["score"] for r in result["items"]]
    assert scores == sorted(scores, reverse=True)
    # u0 is an even user: the two even items it has not bought come first
    assert set(items[:2]) == {f"i{i}" for i in range(10)} - set(seen)


def test_recommend_new_user_with_history(cli: Cli, runs: dict[str, Path]) -> None:
    result = cli.json("recommend", "--run", str(runs["ease"]), "--user", "newcomer", "--history", "i0, i1", "--k", "5")
    assert result["known_user"] is False and result["history_length"] == 2
    items = [r["item"] for r in result["items"]]
    assert len(items) == 5
    assert not {"i0", "i1"} & set(items)
    assert all(int(i[1:]) < 10 for i in items)  # from the even block, like its history


def test_recommend_plain_text(cli: Cli, runs: dict[str, Path]) -> None:
    code, out, _ = cli("recommend", "--run", str(runs["pop"]), "--user", "u1", "--k", "3")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == f"user u1 ({PER_USER} items in history)"
    assert len(lines) == 4 and lines[1].strip().startswith("1. Title ")


def test_recommend_explains_from_the_users_history(cli: Cli, runs: dict[str, Path]) -> None:
    result = cli.json("recommend", "--run", str(runs["ease"]), "--user", "u0", "--k", "3", "--explain")
    seen = set(history_in_file(runs["data"], "u0"))
    for entry in result["items"]:
        assert entry["cited"] and set(entry["cited"]) <= seen  # EASE has no vectors: cited by co-occurrence
        assert entry["because"] == "Because you liked " + " and ".join(f"Title {i[1:]}" for i in entry["cited"]) + "."


def test_llm_gen_trains_evaluates_and_explains_from_the_cli(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from tests.llm_toy import toy_lm_dir

    toy = toy_lm_dir(tmp_path / "toy", [f"Title {i}" for i in range(N_ITEMS)] + ["Because", "you", "liked"])
    out = tmp_path / "gen"
    sets = ["--set", f"lm={toy}", "--set", "steps=3", "--set", "batch_size=4", "--set", "beams=5"]
    code, _, err = cli("train", "--dataset", str(runs["data"]), "--model", "llm-gen", "--out", str(out), *sets)
    assert code == 0, err
    report = cli.json("evaluate", "--run", str(out), "--sample", "12")
    assert report["n_users"] == 12 and report["protocol"]["users"] == "a random 12 (seed 0)"
    assert 0 <= report["metrics"]["ndcg@10"] <= report["metrics"]["recall@10"] <= 1
    result = cli.json("recommend", "--run", str(out), "--user", "u0", "--k", "3", "--llm", str(toy))
    seen = set(history_in_file(runs["data"], "u0"))
    assert all(set(e["cited"]) <= seen and not {e["item"]} & seen for e in result["items"])


def test_the_report_after_training_reads_a_sample_for_slow_models(
    cli: Cli, runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lmrec.models import model_class

    monkeypatch.setattr(model_class("pop"), "report_users", 5)  # as llm-gen does with 100
    out = tmp_path / "r"
    code, _, err = cli("train", "--dataset", str(runs["data"]), "--model", "pop", "--out", str(out), "--quiet")
    assert code == 0, err
    report = json.loads((out / "valid.json").read_text())
    assert report["n_users"] == 5 and report["protocol"]["users"] == "a random 5 (seed 0)"


def test_compare_two_runs(cli: Cli, runs: dict[str, Path]) -> None:
    result = cli.json("compare", str(runs["pop"]), str(runs["ease"]))
    assert result["metric"] == "ndcg@10"
    assert result["n"] == N_USERS
    assert 0.0 <= result["t_pvalue"] < 0.05 and 0.0 <= result["wilcoxon_pvalue"] < 0.05
    pop = cli.json("evaluate", "--run", str(runs["pop"]))["metrics"]["ndcg@10"]
    assert result["mean_a"] == pytest.approx(pop, abs=1e-6)
    assert result["mean_diff"] > 0 and result["ci_low"] > 0


def test_compare_a_run_with_itself(cli: Cli, runs: dict[str, Path]) -> None:
    result = cli.json("compare", str(runs["ease"]), str(runs["ease"]), "--metric", "recall", "--k", "5")
    assert result["metric"] == "recall@5"
    assert result["mean_diff"] == 0.0 and result["t_pvalue"] == 1.0 and result["wilcoxon_pvalue"] == 1.0


def test_train_on_a_txt_file_and_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [f"u{u} i{(u + k) % 6}" for u in range(5) for k in range(4)]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "ease.yaml").write_text("reg: 75\n")
    cli = Cli(tmp_path / "cache", capsys)
    out = tmp_path / "run"
    code, _, err = cli(
        "train", "--dataset", str(tmp_path / "pairs.txt"), "--model", "ease", "--config", str(tmp_path / "ease.yaml"),
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["config"] == {"reg": 75.0}
    code, _, err = cli(
        "train", "--dataset", str(tmp_path / "pairs.txt"), "--model", "ease", "--config", str(tmp_path / "ease.yaml"),
        "--set", "reg=60", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["config"] == {"reg": 60.0}  # --set wins
    report = cli.json("evaluate", "--run", str(out), "--k", "3")
    assert report["n_users"] == 5 and "ndcg@3" in report["metrics"]


# -- bad input: exit code 2 and a message that says what and where --------------------------------


def train_fails(cli: Cli, tmp_path: Path, dataset: Path, *extra: str, model: str = "pop") -> str:
    out = tmp_path / "never"
    code, stdout, err = cli("train", "--dataset", str(dataset), "--model", model, "--out", str(out), "--quiet", *extra)
    assert code == 2
    assert stdout == ""
    assert err.startswith("error: ")
    assert not out.exists()  # nothing half-written
    return err


def test_non_numeric_timestamp_names_file_line_column_and_value(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "log.csv"
    bad.write_text("user,item,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,soon\nu2,i1,4\n")
    err = train_fails(cli, tmp_path, bad)
    assert f"{bad}, line 4, column 'timestamp'" in err and "'soon'" in err


def test_missing_item_column_names_file_and_columns(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "log.csv"
    bad.write_text("user,product,timestamp\nu1,i1,1\nu1,i2,2\n")
    err = train_fails(cli, tmp_path, bad)
    assert str(bad) in err and "missing column 'item'" in err and "'product'" in err


def test_empty_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "log.csv"
    bad.write_text("")
    err = train_fails(cli, tmp_path, bad)
    assert f"{bad}: file is empty" in err


def test_invalid_utf8_names_the_line(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "log.csv"
    bad.write_bytes(b"user,item,timestamp\nu1,i1,1\nu1,i2,2\nu1,caf\xe9,3\n")
    err = train_fails(cli, tmp_path, bad)
    assert f"{bad}, line 4" in err and "0xe9" in err and "UTF-8" in err


def test_unknown_model(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    err = train_fails(cli, tmp_path, runs["data"], model="nope")
    assert "unknown model 'nope'" in err and "ease" in err


def test_unknown_set_option(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    err = train_fails(cli, tmp_path, runs["data"], "--set", "lambda=3", model="ease")
    assert "lambda" in err and "reg" in err


def test_bad_set_value(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    err = train_fails(cli, tmp_path, runs["data"], "--set", "reg=lots", model="ease")
    assert "option 'reg'" in err and "'lots'" in err


def test_k_zero_is_an_argparse_error(cli: Cli, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--cache-dir", str(runs["cache"]), "evaluate", "--run", str(runs["pop"]), "--k", "0"])
    assert info.value.code == 2
    assert "must be at least 1, got 0" in capsys.readouterr().err


def test_recommend_unknown_user_without_history(cli: Cli, runs: dict[str, Path]) -> None:
    code, out, err = cli("recommend", "--run", str(runs["ease"]), "--user", "ghost")
    assert code == 2 and out == ""
    assert "unknown user 'ghost'" in err and "--history" in err


def test_recommend_unknown_history_item(cli: Cli, runs: dict[str, Path]) -> None:
    code, out, err = cli("recommend", "--run", str(runs["ease"]), "--user", "u0", "--history", "i1,zzz")
    assert code == 2 and out == ""
    assert "zzz" in err and "unknown item" in err and "'i1'" not in err


def test_evaluate_a_directory_that_is_not_a_run(cli: Cli, tmp_path: Path) -> None:
    code, out, err = cli("evaluate", "--run", str(tmp_path))
    assert code == 2 and out == ""
    assert f"{tmp_path} is not a run directory" in err and "run.json" in err


def test_evaluate_after_the_data_changed(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user,item\n" + "".join(f"u{u},i{(u + k) % 5}\n" for u in range(4) for k in range(4)))
    code, _, err = cli("train", "--dataset", str(data), "--model", "pop", "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    with data.open("a") as f:
        f.write("u9,i1\n")  # a new user
    code, _, err = cli("evaluate", "--run", str(tmp_path / "run"))
    assert code == 2
    assert "users" in err and "changed since this run was trained" in err


# -- option and k edge cases --------------------------------------------------------------------


def test_non_numeric_split_param(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    err = train_fails(cli, tmp_path, runs["data"], "--split", "ratio", "--split-param", "test=abc")
    assert "test" in err and "abc" in err


def test_unknown_split_param(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    err = train_fails(cli, tmp_path, runs["data"], "--split", "ratio", "--split-param", "tset=0.2")
    assert "tset" in err


@pytest.fixture
def tiny_run(tmp_path: Path, cli: Cli) -> Path:
    """A run on a catalog of 6 items, fewer than the default k of 10."""
    data = tmp_path / "tiny.txt"
    data.write_text("".join(f"u{u} i{(u + k) % 6}\n" for u in range(6) for k in range(4)))
    code, _, err = cli("train", "--dataset", str(data), "--model", "pop", "--out", str(tmp_path / "tiny"), "--quiet")
    assert code == 0, err
    return tmp_path / "tiny"


def test_evaluate_k_above_catalog_size_reports_the_requested_k(cli: Cli, tiny_run: Path) -> None:
    report = cli.json("evaluate", "--run", str(tiny_run), "--k", "10")
    assert "ndcg@10" in report["metrics"]


def test_compare_on_a_catalog_smaller_than_k(cli: Cli, tiny_run: Path) -> None:
    result = cli.json("compare", str(tiny_run), str(tiny_run))
    assert result["metric"] == "ndcg@10"


def test_malformed_config_file(cli: Cli, runs: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("reg: [1,\n")
    err = train_fails(cli, tmp_path, runs["data"], "--config", str(bad), model="ease")
    assert str(bad) in err
