"""``lmrec recommend --all-users / --users FILE --out recs.parquet``: every user's top-k in a file,
the same lists ``lmrec recommend --user`` prints, written a chunk at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lmrec.batch_recommend import chunk_size
from lmrec.cli import main
from tests.test_cli import N_USERS, Cli, history_in_file, write_shop

K = 5


@pytest.fixture(scope="module")
def shop_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shop of test_cli (even users buy i0..i9, odd ones i10..i19), with an ease and a bpr run."""
    root = tmp_path_factory.mktemp("batch")
    data = write_shop(root / "shop")
    cache = root / "cache"
    for model, extra in (("ease", ["--set", "reg=50"]), ("bpr", ["--set", "epochs=3", "--set", "dim=8"])):
        args = ["train", "--dataset", str(data), "--model", model, "--out", str(root / model), "--quiet", *extra]
        assert main(["--cache-dir", str(cache), *args]) == 0
    return {"data": data, "cache": cache, "ease": root / "ease", "bpr": root / "bpr"}


@pytest.fixture
def cli(shop_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(shop_runs["cache"], capsys)


def write_all(cli: Cli, run: Path, out: Path, *extra: str) -> pd.DataFrame:
    code, _, err = cli("recommend", "--run", str(run), "--all-users", "--out", str(out), "--k", str(K), *extra)
    assert code == 0, err
    assert not out.with_name(out.name + ".partial").exists()
    return pd.read_parquet(out)


@pytest.mark.parametrize("model", ["ease", "bpr"])
def test_every_user_gets_k_ranked_unseen_items(
    cli: Cli, shop_runs: dict[str, Path], tmp_path: Path, model: str
) -> None:
    recs = write_all(cli, shop_runs[model], tmp_path / "recs.parquet", "--chunk", "7")  # 30 users: 5 chunks
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert set(recs["user"]) == {f"u{u}" for u in range(N_USERS)}
    assert len(recs) == N_USERS * K
    for user, rows in recs.groupby("user", sort=False):
        assert rows["rank"].tolist() == list(range(1, K + 1))
        assert (np.diff(rows["score"].to_numpy()) <= 0).all(), user
        assert not set(rows["item"]) & set(history_in_file(shop_runs["data"], str(user)))
    assert pq.ParquetFile(tmp_path / "recs.parquet").num_row_groups == 5  # one per chunk, written as they came


@pytest.mark.parametrize("model", ["ease", "bpr"])
def test_the_file_holds_what_recommend_prints_for_one_user(
    cli: Cli, shop_runs: dict[str, Path], tmp_path: Path, model: str
) -> None:
    recs = write_all(cli, shop_runs[model], tmp_path / "recs.parquet")
    for user in ("u0", "u1", "u17"):
        one = cli.json("recommend", "--run", str(shop_runs[model]), "--user", user, "--k", str(K))
        rows = recs[recs["user"] == user]
        assert rows["item"].tolist() == [it["item"] for it in one["items"]]
        assert rows["score"].to_numpy() == pytest.approx([it["score"] for it in one["items"]], abs=1e-5)


def test_a_list_of_users_and_explanations(cli: Cli, shop_runs: dict[str, Path], tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# tonight's mailing\nu3\n\nu8\nu3\n")
    out = tmp_path / "some.parquet"
    code, stdout, err = cli(
        "recommend", "--run", str(shop_runs["ease"]), "--users", str(users), "--out", str(out), "--explain", "--json"
    )
    assert code == 0, err
    assert "1 repeated user line" in err
    assert json.loads(stdout)["users"] == 2 and json.loads(stdout)["rows"] == 2 * 10
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["user", "rank", "item", "score", "reason"]
    assert recs["user"].unique().tolist() == ["u3", "u8"]
    assert recs["reason"].str.len().min() > 0


def test_re_ranked_lists_are_the_ones_recommend_prints(cli: Cli, shop_runs: dict[str, Path], tmp_path: Path) -> None:
    rerank = ["--rerank", "mmr", "--lam", "0.3", "--candidates", "12", "--similarity", "cooccurrence"]
    recs = write_all(cli, shop_runs["ease"], tmp_path / "mmr.parquet", *rerank)
    plain = write_all(cli, shop_runs["ease"], tmp_path / "plain.parquet")
    one = cli.json("recommend", "--run", str(shop_runs["ease"]), "--user", "u4", "--k", str(K), *rerank)
    assert recs[recs["user"] == "u4"]["item"].tolist() == [it["item"] for it in one["items"]]
    assert not recs["item"].equals(plain["item"])  # MMR at λ 0.3 changes some list


def test_bad_requests_are_refused_with_what_to_do(cli: Cli, shop_runs: dict[str, Path], tmp_path: Path) -> None:
    run = str(shop_runs["ease"])
    code, _, err = cli("recommend", "--run", run, "--all-users")
    assert code == 2 and "--out" in err
    code, _, err = cli("recommend", "--run", run, "--all-users", "--user", "u1", "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and "no --user" in err
    code, _, err = cli("recommend", "--run", run)
    assert code == 2 and "--all-users" in err
    users = tmp_path / "users.txt"
    users.write_text("u1\nnobody\n")
    code, _, err = cli("recommend", "--run", run, "--users", str(users), "--out", str(tmp_path / "x.parquet"))
    assert code == 2 and "line 2: 'nobody'" in err and str(users) in err
    assert not (tmp_path / "x.parquet").exists()


def test_chunks_keep_the_score_matrix_bounded() -> None:
    assert chunk_size(20) == 1024  # small catalogs: many users at once
    assert chunk_size(1_000_000) == 33  # 33 × 1M float32 scores ≈ 128 MB
    assert chunk_size(100_000_000) == 1
