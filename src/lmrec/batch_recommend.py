"""Top-k for every user of a run, or for a list of them, into one Parquet file (the daily batch job).

Users are scored a chunk at a time through :meth:`lmrec.runs.Run.ranked`, the path ``lmrec
recommend`` takes for one user, so the items, scores, history exclusion and re-ranking are the
same; memory holds one chunk's scores (chunk × catalog) and one chunk's rows whatever the number of
users, and each chunk is appended to the file as a row group. The file is written under a temporary
name and renamed when complete, so a reader never sees half of it.

Columns: ``user`` and ``item`` (raw IDs), ``rank`` (1..k), ``score`` (the model's; NaN for an item a
re-ranker brought in from outside the model's top), and ``reason`` with explanations.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import DataError
from lmrec.evaluate.evaluator import Reranker
from lmrec.llm.explain import Explainer
from lmrec.runs import Run

SCORE_BUDGET = 1 << 25  # scores of one chunk (users × catalog): 128 MB of float32
MOST_USERS = 1024  # users of one chunk, however small the catalog


def chunk_size(n_items: int, most: int = MOST_USERS) -> int:
    """Users per chunk: as many as keep one chunk's scores within :data:`SCORE_BUDGET`."""
    return max(1, min(most, SCORE_BUDGET // max(1, n_items)))


def read_user_list(path: Path, dataset: Dataset) -> tuple[list[str], int]:
    """The raw user IDs of a file, one a line (blank lines and ``#`` comments skipped), each once in
    the order first met, and how many repeated lines were skipped. A user the run does not know is
    an error naming the file and line."""
    users: dict[str, int] = {}
    repeated = 0
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        user = line.strip()
        if not user or user.startswith("#"):
            continue
        if user in users:
            repeated += 1
            continue
        users[user] = number
    unknown = [f"line {n}: {u!r}" for u, n in users.items() if u not in dataset.users]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise DataError(f"{path}: users the run does not know ({', '.join(unknown[:5])}{more})")
    if not users:
        raise DataError(f"{path}: no user IDs (one a line)")
    return list(users), repeated


class Histories:
    """Every user's time-ordered items, sorted once, so that a chunk's query batch is a few slices
    (``QueryBatch.from_interactions`` sorts the whole log at every call)."""

    def __init__(self, dataset: Dataset) -> None:
        users = dataset.interactions["user"].to_numpy()
        order = np.argsort(users, kind="stable")  # stable: time order within a user
        self.items = dataset.interactions["item"].to_numpy()[order].astype(np.int64)
        ordered = users[order]
        everyone = np.arange(dataset.n_users)
        self.starts = np.searchsorted(ordered, everyone, side="left")
        self.ends = np.searchsorted(ordered, everyone, side="right")

    def batch(self, rows: np.ndarray) -> QueryBatch:
        return QueryBatch.from_histories(rows, [self.items[self.starts[r] : self.ends[r]] for r in rows])


def _schema(explain: bool) -> pa.Schema:
    fields = [("user", pa.string()), ("rank", pa.int32()), ("item", pa.string()), ("score", pa.float32())]
    return pa.schema(fields + ([("reason", pa.string())] if explain else []))


def _chunk_table(
    dataset: Dataset,
    batch: QueryBatch,
    top: np.ndarray,
    scores: np.ndarray,
    explainer: Explainer | None,
    schema: pa.Schema,
) -> pa.Table:
    keep = top >= 0  # fewer than k unseen items left: the row is shorter
    at, rank = np.nonzero(keep)
    items = top[keep]
    columns: dict[str, Any] = {
        "user": dataset.users.raw(batch.users[at]),
        "rank": (rank + 1).astype(np.int32),
        "item": dataset.items.raw(items),
        "score": scores[keep].astype(np.float32),
    }
    if explainer is not None:
        reasons = (explainer.explain(batch.history(int(i)), int(item)) for i, item in zip(at, items, strict=True))
        columns["reason"] = [why.text for why in reasons]
    return pa.Table.from_pandas(pd.DataFrame(columns), schema=schema, preserve_index=False)


def write_recommendations(
    run: Run,
    out: Path,
    users: list[str] | None = None,
    *,
    k: int = 10,
    reranker: Reranker | None = None,
    candidates: int = 100,
    explainer: Explainer | None = None,
    chunk: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the top-``k`` of ``users`` (raw IDs; None: every user of the run) to the Parquet file
    ``out``, ``chunk`` users at a time (None: :func:`chunk_size`). Returns what was written: users,
    rows, seconds and users per second."""
    dataset = run.dataset
    rows = np.arange(dataset.n_users, dtype=np.int64) if users is None else dataset.users.rows(users)
    if users is not None and (rows < 0).any():
        raise DataError(f"unknown user(s) {[u for u, r in zip(users, rows, strict=True) if r < 0][:5]}")
    size = chunk or chunk_size(dataset.n_items)
    histories, schema = Histories(dataset), _schema(explainer is not None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    written, started = 0, time.perf_counter()
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            bar = tqdm(total=len(rows), disable=not progress, desc="recommend", unit="user")
            for start in range(0, len(rows), size):
                batch = histories.batch(rows[start : start + size])
                top, scores = run.ranked(batch, k, reranker, candidates)
                table = _chunk_table(dataset, batch, top, scores, explainer, schema)
                writer.write_table(table)
                written += table.num_rows
                bar.update(len(batch))
            bar.close()
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {
        "users": len(rows),
        "rows": written,
        "k": k,
        "seconds": round(seconds, 3),
        "users_per_second": round(len(rows) / seconds, 1) if seconds > 0 else None,
        "chunk": size,
        "out": str(out),
    }
