"""Interaction logs larger than memory: read in record batches, written as per-user sequences.

:func:`prepare` turns a log (Parquet or CSV files, read with ``pyarrow.dataset``) into a prepared
directory in two passes, neither of which holds the whole log:

1. **Scan and spill.** The log is read in record batches of at most ``batch_rows`` rows. Each
   batch's raw IDs get vocabulary rows (users and items in order of first appearance, as the
   in-memory loader numbers them) and its rows are hash-partitioned by user row into ``shards``
   spill files on disk (user row mod ``shards``), so all of one user's events land in one shard.
2. **Sort each shard.** One spill shard at a time (about ``rows / shards`` rows) is read back,
   sorted by user, time and file position, and written as one Parquet file of per-user sequences.

::

    PREPARED_DIR/
      prepared.json            what was read (files, columns), counts, shards, format version
      users.json, items.json   the vocabularies (raw IDs in row order)
      sequences-00000.parquet  one row per user of the shard: user (row), items, timestamps,
      ...                      positions (file row of each event) [, ratings]; users sorted

What is held in memory is one batch in pass 1 and one shard in pass 2, plus the two vocabularies
(one entry per user and item). :func:`read_sequences` reads the shards back, all of them or every
``world``-th from ``rank`` (one DDP rank's part); :func:`load_prepared` builds the
:class:`~lmrec.data.schema.Dataset` that training reads (the loaders recognise a prepared
directory, so ``lmrec train --dataset PREPARED_DIR`` works), with the same vocabularies, the same
time order and so the same leave-one-out split as loading the raw log in memory.

Only the columns training reads are kept: ``user``, ``item``, ``timestamp`` (numbers or Arrow
timestamps; without one, file order is time order) and ``rating``. There is no item catalog: titles
are the item IDs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset, Vocab
from lmrec.errors import ConfigError, DataError

PREPARED_FILE = "prepared.json"
FORMAT_VERSION = 1
ALIASES: dict[str, tuple[str, ...]] = {  # the loaders' names for the columns we read
    "user": ("user", "user_id", "userid", "uid", "customer_id"),
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "product_id", "iid"),
    "timestamp": ("timestamp", "time", "ts", "unix_timestamp", "datetime"),
    "rating": ("rating",),
}


@dataclass(frozen=True)
class PrepareReport:
    """What :func:`prepare` read and wrote, and the most rows it held at once in each pass."""

    rows: int
    users: int
    items: int
    shards: int
    largest_batch: int  # pass 1: most rows of the log held at once
    largest_shard: int  # pass 2: most rows of a shard held at once
    columns: dict[str, str]
    files: list[str]

    def __str__(self) -> str:
        return (
            f"prepared {self.rows:,} interactions of {self.users:,} users and {self.items:,} items into"
            f" {self.shards} shards (at most {self.largest_batch:,} rows per batch,"
            f" {self.largest_shard:,} per shard in memory)"
        )


# -- pass 1: scan, number the IDs, spill by user ------------------------------------------------------


class _Numbering:
    """Raw IDs (strings) → rows in order of first appearance; grows batch by batch."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def rows(self, column: pa.Array) -> np.ndarray:
        """Rows of every value of ``column`` (strings), numbering new IDs as they first appear."""
        encoded = pc.dictionary_encode(column)  # dictionary in order of first appearance
        values = encoded.dictionary.to_pylist()
        rows = np.empty(len(values), np.int64)
        for j, raw in enumerate(values):
            row = self.index.get(raw)
            if row is None:
                row = self.index[raw] = len(self.index)
            rows[j] = row
        return rows[encoded.indices.to_numpy(zero_copy_only=False)]

    def vocab(self) -> Vocab:
        return Vocab(self.index)  # dicts keep insertion order: row order


def _dataset(
    files: Sequence[Path], file_format: str | None, id_columns: Sequence[str] = ()
) -> tuple[pads.Dataset, str]:
    """The files as one Arrow dataset; CSV ID columns are read as text ("007" stays "007")."""
    suffixes = {_format_of(f) for f in files}
    fmt = file_format or (suffixes.pop() if len(suffixes) == 1 else "")
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"cannot tell the format of {[str(f) for f in files]}; pass file_format='parquet' or 'csv'")
    source: Any = fmt
    if fmt == "csv" and id_columns:
        types = {c: pa.string() for c in id_columns}
        source = pads.CsvFileFormat(convert_options=pacsv.ConvertOptions(column_types=types))
    try:
        return pads.dataset([str(f) for f in files], format=source), fmt
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"cannot read {fmt} files: {err}", path=files[0]) from None


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    return ""


def _resolve(schema: pa.Schema, explicit: Mapping[str, str] | None, where: Path) -> dict[str, str]:
    """Our column name → the file's, as the loaders do it: explicit, exact, then one alias."""
    found = list(schema.names)
    mapping = dict(explicit or {})
    unknown = sorted(set(mapping) - set(ALIASES))
    if unknown:
        raise ConfigError(f"cannot map column(s) {unknown}; a prepared log reads {', '.join(ALIASES)}")
    absent = [theirs for theirs in mapping.values() if theirs not in found]
    if absent:
        raise DataError(f"no column(s) {absent}; the files have {found}", path=where)
    for ours, aliases in ALIASES.items():
        if ours in mapping:
            continue
        matches = [c for c in found if c.lower() in aliases and c not in mapping.values()]
        if ours in found:
            matches = [ours]
        if len(matches) > 1:
            raise DataError(f"columns {matches} could each be the {ours!r} column; map one", path=where)
        if matches:
            mapping[ours] = matches[0]
    for ours in ("user", "item"):
        if ours not in mapping:
            raise DataError(f"missing column {ours!r}; the files have {found}", path=where)
    return mapping


def _ids(batch: pa.RecordBatch, name: str, first_row: int, where: Path) -> pa.Array:
    """A column of IDs as strings; a missing or empty ID is an error naming its row."""
    column = batch.column(name)
    if pa.types.is_floating(column.type):  # 7.0 -> "7", as the loaders read whole floats
        as_int = pc.cast(column, pa.int64(), safe=False)
        if pc.all(pc.equal(pc.cast(as_int, column.type), column)).as_py() is not False:
            column = as_int
    text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
    empty = pc.fill_null(pc.equal(text, ""), True)
    if pc.any(empty).as_py():
        row = int(np.argmax(empty.to_numpy(zero_copy_only=False)))
        raise DataError(f"row {first_row + row + 1}: empty id", path=where, column=name)
    return text


def _numbers(batch: pa.RecordBatch, name: str, first_row: int, where: Path, dtype: Any) -> np.ndarray:
    """A numeric column (Arrow timestamps become seconds since the epoch); nulls and text are errors."""
    column = batch.column(name)
    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("s", tz=column.type.tz)), pa.int64())
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise DataError(
            f"column type {column.type} is not a number",
            path=where,
            column=name,
            hint="a prepared log reads numeric (or Arrow timestamp) times and ratings",
        )
    if column.null_count:
        row = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(f"row {first_row + row + 1}: empty {name}", path=where, column=name)
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _pieces(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``size`` rows (a CSV reader's blocks can hold more)."""
    for batch in batches:
        for start in range(0, batch.num_rows, size):
            yield batch.slice(start, size)


# -- the whole thing ----------------------------------------------------------------------------------


def prepare(
    files: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    shards: int = 16,
    batch_rows: int = 1 << 20,
    file_format: str | None = None,
) -> PrepareReport:
    """Read the log in ``files`` (Parquet or CSV files, or a directory of them) in batches of at
    most ``batch_rows`` rows and write its per-user sequences to ``out`` in ``shards`` Parquet files
    (see the module docstring). ``columns`` maps our column names to the files' (``user``, ``item``,
    ``timestamp``, ``rating``). Memory: one batch, then one shard (~rows / shards), at a time."""
    if shards < 1 or batch_rows < 1:
        raise ConfigError(f"shards and batch_rows must be >= 1, got {shards} and {batch_rows}")
    paths = _files(files)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; prepare into a new directory")
    data, fmt = _dataset(paths, file_format)
    mapping = _resolve(data.schema, columns, paths[0])
    if fmt == "csv":
        data, _ = _dataset(paths, fmt, [mapping["user"], mapping["item"]])
    has_time, has_rating = "timestamp" in mapping, "rating" in mapping
    # integer times stay integers (nanosecond clocks do not fit a float's 53 bits)
    time_type = data.schema.field(mapping["timestamp"]).type if has_time else pa.int64()
    integral = pa.types.is_integer(time_type) or pa.types.is_timestamp(time_type)
    time_dtype = np.int64 if integral else np.float64
    spill_dir = out / "spill"
    spill_dir.mkdir(parents=True)
    users, items = _Numbering(), _Numbering()
    spill_schema = pa.schema(
        [("user", pa.int64()), ("item", pa.int64()), ("timestamp", pa.from_numpy_dtype(time_dtype))]
        + [("position", pa.int64())]
        + ([("rating", pa.float32())] if has_rating else [])
    )
    writers = [pq.ParquetWriter(spill_dir / f"{k:05d}.parquet", spill_schema) for k in range(shards)]
    rows = largest_batch = 0
    try:
        scan = data.to_batches(columns=list(dict.fromkeys(mapping.values())), batch_size=batch_rows)
        for batch in _pieces(scan, batch_rows):
            n = batch.num_rows
            if n == 0:
                continue
            largest_batch = max(largest_batch, n)
            user = users.rows(_ids(batch, mapping["user"], rows, paths[0]))
            item = items.rows(_ids(batch, mapping["item"], rows, paths[0]))
            position = np.arange(rows, rows + n, dtype=np.int64)
            # without a timestamp, file order is time order
            time = _numbers(batch, mapping["timestamp"], rows, paths[0], time_dtype) if has_time else position
            part = {"user": user, "item": item, "timestamp": time, "position": position}
            if has_rating:
                part["rating"] = _numbers(batch, mapping["rating"], rows, paths[0], np.float32)
            shard = user % shards
            order = np.argsort(shard, kind="stable")
            bounds = np.searchsorted(shard[order], np.arange(shards + 1))
            for k in range(shards):
                take = order[bounds[k] : bounds[k + 1]]
                if len(take):
                    writers[k].write_table(pa.table({c: v[take] for c, v in part.items()}, schema=spill_schema))
            rows += n
    finally:
        for w in writers:
            w.close()
    if rows == 0:
        shutil.rmtree(out)
        raise DataError("no interactions", path=paths[0])
    user_vocab, item_vocab = users.vocab(), items.vocab()
    del users, items
    largest_shard = 0
    for k in range(shards):
        largest_shard = max(largest_shard, _sort_shard(spill_dir / f"{k:05d}.parquet", out, k))
    shutil.rmtree(spill_dir)
    user_vocab.save(out / "users.json")
    item_vocab.save(out / "items.json")
    report = PrepareReport(
        rows=rows,
        users=len(user_vocab),
        items=len(item_vocab),
        shards=shards,
        largest_batch=largest_batch,
        largest_shard=largest_shard,
        columns=mapping,
        files=[str(p.resolve()) for p in paths],
    )
    meta = {"format_version": FORMAT_VERSION, "format": fmt, **asdict(report)}
    (out / PREPARED_FILE).write_text(json.dumps(meta, indent=2))
    return report


def _files(files: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files of the log: the paths given, or the table files inside a directory."""
    given = [Path(files)] if isinstance(files, str | Path) else [Path(f) for f in files]
    paths: list[Path] = []
    for path in given:
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and _format_of(p))
            if not inside:
                raise DataError("no .parquet or .csv files in this directory", path=path)
            paths.extend(inside)
        elif path.is_file():
            paths.append(path)
        else:
            raise DataError("no such file or directory", path=path)
    if not paths:
        raise ConfigError("prepare needs at least one file")
    return paths


def _sort_shard(spill: Path, out: Path, k: int) -> int:
    """Sort one spill shard by (user, time, file position) and write it as per-user sequences."""
    table = pq.read_table(spill)
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    del table
    order = np.lexsort((cols["position"], cols["timestamp"], cols["user"]))
    user = cols["user"][order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else np.zeros(0, np.int64)
    offsets = pa.array(np.r_[starts, len(user)].astype(np.int32))
    lists = {
        "items": cols["item"][order],
        "timestamps": cols["timestamp"][order],
        "positions": cols["position"][order],
    }
    if "rating" in cols:
        lists["ratings"] = cols["rating"][order]
    arrays = {"user": pa.array(user[starts])}
    arrays.update({name: pa.ListArray.from_arrays(offsets, pa.array(v)) for name, v in lists.items()})
    pq.write_table(pa.table(arrays), out / f"sequences-{k:05d}.parquet")
    spill.unlink()
    return len(user)


# -- reading a prepared directory ---------------------------------------------------------------------


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / PREPARED_FILE).is_file()


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / PREPARED_FILE
    if not path.is_file():
        raise DataError(f"not a prepared log (no {PREPARED_FILE}); make one with `lmrec prepare`", path=directory)
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"prepared with format {meta.get('format_version')}, this lmrec reads {FORMAT_VERSION}; prepare it again",
            path=path,
        )
    return meta


def shard_files(directory: str | Path, rank: int = 0, world: int = 1) -> list[Path]:
    """The sequence shards of a prepared directory; with ``world`` > 1, every ``world``-th from
    ``rank`` (what one data-parallel rank reads)."""
    if not 0 <= rank < world:
        raise ConfigError(f"need 0 <= rank < world, got rank {rank} of {world}")
    meta = read_meta(directory)
    return [Path(directory) / f"sequences-{k:05d}.parquet" for k in range(rank, meta["shards"], world)]


def read_sequences(directory: str | Path, rank: int = 0, world: int = 1) -> QueryBatch:
    """The time-ordered item sequences (vocabulary rows) of the users in this rank's shards, one
    shard in memory at a time while reading; users in row order."""
    users, lengths, items = [], [], []
    for path in shard_files(directory, rank, world):
        table = pq.read_table(path, columns=["user", "items"])
        users.append(table.column("user").to_numpy())
        lists = table.column("items").combine_chunks()
        lengths.append(np.diff(lists.offsets.to_numpy()))
        items.append(lists.flatten().to_numpy())
    if not users:
        return QueryBatch(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    u, n, flat = np.concatenate(users), np.concatenate(lengths), np.concatenate(items)
    order = np.argsort(u, kind="stable")
    starts = np.r_[0, np.cumsum(n)][:-1]
    pieces = [flat[starts[i] : starts[i] + n[i]] for i in order]
    return QueryBatch.from_histories(u[order], pieces)


def load_prepared(directory: str | Path) -> Dataset:
    """The Dataset of a prepared directory: vocabularies as prepared, interactions in time order
    (ties in file order), as :func:`lmrec.data.loaders.load` gives for the raw log."""
    directory = Path(directory)
    meta = read_meta(directory)
    columns: dict[str, list[np.ndarray]] = {"user": [], "item": [], "timestamp": [], "position": []}
    has_rating = "rating" in meta["columns"]
    if has_rating:
        columns["rating"] = []
    for path in shard_files(directory):
        table = pq.read_table(path)
        lists = table.column("items").combine_chunks()
        lengths = np.diff(lists.offsets.to_numpy())
        columns["user"].append(np.repeat(table.column("user").to_numpy(), lengths))
        for ours, theirs in (("item", "items"), ("timestamp", "timestamps"), ("position", "positions")) + (
            (("rating", "ratings"),) if has_rating else ()
        ):
            columns[ours].append(table.column(theirs).combine_chunks().flatten().to_numpy())
        del table, lists
    flat = {name: np.concatenate(parts) for name, parts in columns.items()}
    del columns
    order = np.lexsort((flat.pop("position"), flat["timestamp"]))
    frame = pd.DataFrame({name: values[order] for name, values in flat.items()})
    del flat, order
    users, items = Vocab.load(directory / "users.json"), Vocab.load(directory / "items.json")
    catalog = pd.DataFrame({"item": items.ids, "title": items.ids, "categories": [[] for _ in items.ids]})
    return Dataset(
        interactions=frame,
        users=users,
        items=items,
        catalog=catalog,
        name=directory.name,
        meta={"source": str(directory), "format": "prepared", "files": meta["files"]},
    )
