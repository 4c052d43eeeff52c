"""Reading one delimited text file or Parquet table into a :class:`Table`: every row's shape
checked by a line-aware scan (so an error names the file line), the values by pandas' C parser."""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.errors import DataError

TABLE_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz", ".parquet", ".pq")
_UTF8_HINT = "re-save the file as UTF-8"
_BLANKS = re.compile(r"[ \t\r]+")  # what pandas' sep=r"\s+" splits on


@dataclass(frozen=True)
class Table:
    """A parsed file: its columns as read (strings for text files) and, for text files, the file
    line each row starts on, so any later check can point at the line."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray | None = None  # None for Parquet, which has rows but no lines
    header_line: int | None = None

    def error(
        self, problem: str, row: int | None = None, column: str | None = None, hint: str | None = None
    ) -> DataError:
        """A DataError for this file, at data row ``row`` (0-based) if given."""
        if row is None:
            return DataError(problem, path=self.path, column=column, hint=hint)
        if self.lines is None:
            return DataError(f"row {row + 1}: {problem}", path=self.path, column=column, hint=hint)
        return DataError(problem, path=self.path, line=int(self.lines[row]), column=column, hint=hint)


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text (gunzipped for ``.gz``); strict decoding, errors name the line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read file: {err.strerror or err}", path=path) from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(f"not a valid gzip file: {err}", path=path) from None
    if encoding == "utf-8" and data.startswith(codecs.BOM_UTF8):  # as Excel writes it
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"byte 0x{data[err.start]:02x} is not valid {encoding.upper()}",
            path=path,
            line=line,
            hint=_UTF8_HINT,
        ) from None


def _records(path: Path, text: str, sep: str | None, quoted: bool) -> Iterator[tuple[int, list[str]]]:
    """``(file line, fields)`` of every non-blank record, split the way pandas will split it.

    ``sep=None`` means runs of blanks. Whitespace-only lines count as blank, as they do in pandas.
    """
    if sep is None:
        for number, line in enumerate(text.split("\n"), start=1):
            fields = _BLANKS.split(line.strip(" \t\r"))
            if fields != [""]:
                yield number, fields
        return
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=sep,
        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
        strict=quoted,
    )
    start = 1
    try:
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"malformed row: {err}", path=path, line=reader.line_num) from None


def _scan(
    path: Path, text: str, sep: str | None, quoted: bool, names: list[str] | None
) -> tuple[list[str], np.ndarray, int | None]:
    """Check that every row has as many fields as the header (or ``names``); return the column
    names, the file line of every data row and the header's line."""
    records = _records(path, text, sep, quoted)
    header_line = None
    if names is None:
        first = next(records, None)
        if first is None:
            raise DataError("file is empty", path=path)
        header_line, header = first
        names = [h.strip() for h in header]
        check_header(path, header_line, names)
    lines: list[int] = []
    for line, fields in records:
        if len(fields) != len(names):
            raise DataError(
                f"malformed row: {len(fields)} field(s), expected {len(names)} ({', '.join(names)})",
                path=path,
                line=line,
                hint=f"quote fields that contain {sep!r}" if quoted else None,
            )
        lines.append(line)
    if not lines:
        raise DataError("file is empty" if not text.strip() else "no data rows, only a header", path=path)
    return names, np.asarray(lines, dtype=np.int64), header_line


def check_header(path: Path, line: int, names: list[str]) -> None:
    """A header may not repeat or leave out a column name."""
    seen: set[str] = set()
    for name in names:
        if not name:
            raise DataError(f"empty column name in header {names}", path=path, line=line)
        if name in seen:
            raise DataError(f"column {name!r} appears twice in the header", path=path, line=line)
        seen.add(name)


def read_delimited(
    path: Path,
    *,
    sep: str | None,
    names: list[str] | None = None,
    quoted: bool = True,
    encoding: str = "utf-8",
) -> Table:
    """Read a delimited text file into string columns.

    ``sep=None`` splits on blanks; ``names`` means the file has no header; ``quoted=False`` reads
    quote characters as data (MovieLens and RecBole files are not quoted).
    """
    text = _read_text(path, encoding)
    if sep == "::":
        # MovieLens .dat files separate fields by "::" and never quote; a one-character stand-in
        # lets the fast C parser read them.
        text, sep = text.replace("::", "\x1f"), "\x1f"
    columns, lines, header_line = _scan(path, text, sep, quoted, names)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=r"\s+" if sep is None else sep,
            header=None if names is not None else 0,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE,
            engine="c",
        )
    except (pd.errors.ParserError, ValueError) as err:
        raise DataError(f"cannot parse file: {err}", path=path) from None
    if len(frame) != len(lines):  # the scan and pandas must agree on what a row is
        raise DataError(f"pandas read {len(frame)} rows where {len(lines)} were expected", path=path)
    frame.columns = pd.Index(columns)
    return Table(path, frame, lines, header_line)


def _read_parquet(path: Path) -> Table:
    """Read a Parquet file; errors point at rows since Parquet has no lines."""
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises many types; all mean "not a readable Parquet file"
        raise DataError(f"cannot read Parquet file: {err}", path=path) from None
    if len(frame) == 0:
        raise DataError("file is empty", path=path)
    return Table(path, frame.reset_index(drop=True), None)


def table_suffix(path: Path) -> str | None:
    """The table suffix of ``path`` (``.csv.gz`` counts as one), or None."""
    name = path.name.lower()
    return next((s for s in TABLE_SUFFIXES if name.endswith(s)), None)


def read_table(path: Path) -> Table:
    """Read a CSV, TSV (optionally gzipped) or Parquet file, chosen by suffix."""
    suffix = table_suffix(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    if suffix is None:
        raise DataError(f"unsupported table format; expected one of {', '.join(TABLE_SUFFIXES)}", path=path)
    return read_delimited(path, sep="\t" if suffix.startswith(".tsv") else ",")
