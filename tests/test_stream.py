"""The streaming reader (lmrec.data.stream): a log read in small batches and shards gives the same
dataset as the in-memory loader, holds no more rows at once than it was told, and trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmrec.cli import main
from lmrec.data.batch import QueryBatch
from lmrec.data.loaders import load
from lmrec.data.splits import leave_one_out, temporal
from lmrec.data.stream import load_prepared, prepare, read_sequences
from lmrec.data.synthetic import write_large_log
from lmrec.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 generated events of 60 users over 400 items, not in time order across chunks."""
    path = tmp_path_factory.mktemp("log") / "log.parquet"
    assert write_large_log(path, events=3_000, users=60, items=400, topics=8, chunk_users=7, seed=3) == 3_000
    return path


def test_prepared_log_equals_the_in_memory_loader(log: Path, tmp_path: Path) -> None:
    report = prepare(log, tmp_path / "p", shards=3, batch_rows=97)
    prepared, in_memory = load_prepared(tmp_path / "p"), load(log)
    assert prepared.users == in_memory.users and prepared.items == in_memory.items
    pd.testing.assert_frame_equal(prepared.interactions, in_memory.interactions)
    assert (report.rows, report.users, report.items) == (3_000, 60, in_memory.n_items)
    # the same split, and the sequences as the shards hold them are the users' histories
    np.testing.assert_array_equal(leave_one_out(prepared).part, leave_one_out(in_memory).part)
    np.testing.assert_array_equal(temporal(prepared).part, temporal(in_memory).part)
    sequences = read_sequences(tmp_path / "p")
    histories = QueryBatch.from_interactions(in_memory.interactions, np.arange(in_memory.n_users))
    np.testing.assert_array_equal(sequences.users, histories.users)
    np.testing.assert_array_equal(sequences.indptr, histories.indptr)
    np.testing.assert_array_equal(sequences.items, histories.items)


def test_memory_is_bounded_by_the_batch_and_the_shard(log: Path, tmp_path: Path) -> None:
    report = prepare(log, tmp_path / "p", shards=6, batch_rows=50)
    assert report.largest_batch == 50  # 3,000 rows never read more than 50 at once
    # a shard holds about a sixth of the rows: every user's events, no one else's
    assert report.largest_shard < 3_000 / 6 * 2
    sizes = [pq.read_metadata(p).num_rows for p in sorted((tmp_path / "p").glob("sequences-*.parquet"))]
    assert sizes == [10] * 6  # 60 users, one row each, hash-partitioned by user row
    assert not (tmp_path / "p" / "spill").exists()


def test_a_csv_read_in_blocks_is_cut_to_the_batch_size(tmp_path: Path) -> None:
    """pyarrow reads CSV in byte blocks that hold many rows: still at most batch_rows at a time.
    IDs stay text ("007"), a missing timestamp means file order, ratings are kept."""
    rng = np.random.default_rng(0)
    users = [f"{u:03d}" for u in rng.integers(0, 40, size=900)]
    items = [f"0{i}" for i in rng.integers(0, 90, size=900)]
    ratings = rng.integers(1, 6, size=900)
    lines = ["user_id,item_id,rating"] + [f"{u},{i},{r}" for u, i, r in zip(users, items, ratings, strict=True)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    report = prepare(tmp_path / "log.csv", tmp_path / "p", shards=4, batch_rows=64)
    assert report.largest_batch <= 64 and report.columns == {"user": "user_id", "item": "item_id", "rating": "rating"}
    prepared, in_memory = load_prepared(tmp_path / "p"), load(tmp_path / "log.csv")
    assert prepared.users == in_memory.users and all(len(u) == 3 for u in prepared.users.ids)
    assert prepared.items == in_memory.items and all(i.startswith("0") for i in prepared.items.ids)
    pd.testing.assert_frame_equal(prepared.interactions, in_memory.interactions)


def test_large_integer_timestamps_keep_every_digit(tmp_path: Path) -> None:
    """Nanosecond clocks do not fit a float's 53 bits: two events 1 ns apart keep their order."""
    t = 1_700_000_000_000_000_000
    table = pa.table({"user": ["a", "a", "b"], "item": ["x", "y", "x"], "timestamp": [t + 1, t, t + 2]})
    pq.write_table(table, tmp_path / "log.parquet")
    prepare(tmp_path / "log.parquet", tmp_path / "p", shards=2, batch_rows=2)
    frame = load_prepared(tmp_path / "p").interactions
    assert frame["timestamp"].tolist() == [t, t + 1, t + 2]
    assert frame["item"].tolist() == [1, 0, 0]  # y (row 1) first, then x


def test_ranks_read_disjoint_shards_that_cover_every_user(log: Path, tmp_path: Path) -> None:
    prepare(log, tmp_path / "p", shards=5, batch_rows=500)
    parts = [read_sequences(tmp_path / "p", rank=r, world=2) for r in range(2)]
    users = np.concatenate([p.users for p in parts])
    assert len(set(parts[0].users) & set(parts[1].users)) == 0
    assert sorted(users.tolist()) == list(range(60))
    assert sum(int(p.indptr[-1]) for p in parts) == 3_000
    with pytest.raises(ConfigError):
        read_sequences(tmp_path / "p", rank=2, world=2)


def test_bad_input_is_an_error_that_says_where(tmp_path: Path) -> None:
    pq.write_table(pa.table({"user": ["a", None, "c"], "item": ["x", "y", "z"]}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="row 2: empty id"):
        prepare(tmp_path / "empty.parquet", tmp_path / "p1")
    pq.write_table(pa.table({"user": ["a"], "item": ["x"], "timestamp": ["soon"]}), tmp_path / "text.parquet")
    with pytest.raises(DataError, match="not a number"):
        prepare(tmp_path / "text.parquet", tmp_path / "p2")
    pq.write_table(pa.table({"customer": ["a"], "item": ["x"]}), tmp_path / "nouser.parquet")
    with pytest.raises(DataError, match="missing column 'user'"):
        prepare(tmp_path / "nouser.parquet", tmp_path / "p3")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ConfigError, match="not empty"):
        prepare(tmp_path / "nouser.parquet", tmp_path / "full")


def test_lmrec_prepare_then_train_and_evaluate_on_the_prepared_log(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    assert main(["prepare", "--input", str(log), "--out", str(prepared), "--shards", "2", "--batch-rows", "300"]) == 0
    small = ["--set", "epochs=2", "--set", "dim=16", "--set", "inner=32", "--set", "layers=1", "--set", "heads=1"]
    args = ["--cache-dir", str(tmp_path / "cache"), "train", "--dataset", str(prepared), "--model", "sasrec"]
    assert main([*args, *small, "--out", str(run), "--quiet", "--threads", "1"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["split_sizes"] == {"train": 3_000 - 120, "valid": 60, "test": 60}  # leave-one-out
    assert len(meta["training"]["losses"]) == 2
    capsys.readouterr()
    assert main(["--cache-dir", str(tmp_path / "cache"), "evaluate", "--run", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_users"] == 60 and 0 <= report["metrics"]["ndcg@10"] <= 1
