"""A masked copy of a dataset: pseudonymous IDs, coarser times, scrubbed text, generalised users.

:func:`mask_dataset` turns a :class:`~lmrec.data.schema.Dataset` into three tables that
:func:`write_masked` saves as ``interactions.parquet``, ``items.parquet`` and ``users.parquet``, a
directory ``lmrec train --dataset DIR`` reads back. What changes:

* user IDs (and with ``items=True`` item IDs, in the interactions and the catalog alike) become
  keyed HMAC-SHA256 pseudonyms, truncated hex: the same key gives the same pseudonym in every file
  and every run, and without the key they cannot be linked back to the raw ID;
* timestamps are floored to the day, week (Monday) or month; rows keep their order, so each user's
  sequence, ties included, reads back in the original order and time-ordered splits do not move;
* free-text columns (titles, descriptions, any string column) are scrubbed of e-mail addresses,
  phone and card numbers (:func:`~lmrec.privacy.pii.scrub_text`);
* user quasi-identifiers are generalised (zip code → its first digits, age → a band, birth date →
  its year) or dropped; any column can be dropped by name.

The key is a file of random bytes, created readable by its owner only when missing and never
printed. Columns the loader did not read (they are not part of the dataset) are not copied, and the
report says so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from lmrec.data.loaders import load
from lmrec.data.schema import Dataset
from lmrec.data.sources import SOURCES, load_source
from lmrec.errors import ConfigError, DataError
from lmrec.privacy.pii import scrub_text

Granularity = Literal["none", "day", "week", "month"]
GRANULARITIES = ("none", "day", "week", "month")
KEY_BYTES = 32
MIN_KEY_BYTES = 16
REPORT_FILE = "MASK.json"
ZIP_COLUMNS = ("zip", "zip_code", "zipcode", "postcode", "post_code", "postal_code")
AGE_COLUMNS = ("age",)
BIRTH_COLUMNS = ("birth_date", "birthdate", "date_of_birth", "dob", "birthday")
MAX_SECONDS = 1e11  # later than the year 5000 as seconds: such timestamps are milliseconds or not times


# -- the key and pseudonyms -----------------------------------------------------------------------


def load_key(path: str | Path, create: bool = True) -> bytes:
    """The secret key in ``path``; when the file is missing (and ``create``), 32 random bytes are
    written to a new file that only its owner can read (mode 0600). A key file that others can read
    is refused, as ssh refuses such a private key."""
    path = Path(path)
    if not path.exists():
        if not create:
            raise ConfigError(f"no key file {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, key)
        finally:
            os.close(fd)
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"key file {path} can be read by others (mode {mode:o}); chmod 600 it")
    key = path.read_bytes()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"key file {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}")
    return key


def pseudonym(key: bytes, kind: str, raw: str, chars: int = 16) -> str:
    """The keyed pseudonym of one raw ID: HMAC-SHA256 of ``kind`` and the ID, ``chars`` hex digits.
    ``kind`` ("user", "item") keeps user 5 and item 5 apart."""
    digest = hmac.new(key, kind.encode() + b"\x00" + raw.encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:chars]


def pseudonyms(key: bytes, kind: str, raws: Iterable[str], chars: int = 16) -> dict[str, str]:
    """Raw ID → pseudonym for distinct IDs; two IDs with one pseudonym are an error."""
    mapping = {raw: pseudonym(key, kind, raw, chars) for raw in dict.fromkeys(raws)}
    if len(set(mapping.values())) != len(mapping):
        raise DataError(f"two {kind} ids share a {chars}-character pseudonym; mask with more hash characters")
    return mapping


# -- options and report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskOptions:
    """What to mask. ``drop`` names columns (``title``, or ``items.title`` for one table);
    ``quasi``: generalise user quasi-identifiers or drop them; ``presidio``: also run Presidio's
    recognisers (None: when installed)."""

    items: bool = False
    time_granularity: Granularity = "none"
    drop: tuple[str, ...] = ()
    quasi: Literal["generalise", "drop"] = "generalise"
    hash_chars: int = 16
    zip_digits: int = 3
    age_band: int = 10
    presidio: bool | None = None

    def __post_init__(self) -> None:
        if self.time_granularity not in GRANULARITIES:
            raise ConfigError(f"time granularity {self.time_granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        if self.quasi not in ("generalise", "drop"):
            raise ConfigError(f"quasi must be 'generalise' or 'drop', not {self.quasi!r}")
        if not 8 <= self.hash_chars <= 64:
            raise ConfigError(f"hash_chars must be in [8, 64], got {self.hash_chars}")
        if self.zip_digits < 0 or self.age_band < 1:
            raise ConfigError("zip_digits must be >= 0 and age_band >= 1")


@dataclass
class MaskReport:
    """What masking changed: values changed per ``table.column``, columns dropped, how each
    generalised column was generalised, and what was not copied."""

    changed: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    generalised: dict[str, str] = field(default_factory=dict)
    not_copied: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"{name}: {count} of {self.rows[name.split('.')[0]]} values changed" for name, count in self.changed.items()
        ]
        out += [f"{name}: {how}" for name, how in self.generalised.items()]
        out += [f"dropped {name}" for name in self.dropped]
        out += [f"not copied (not read by the loader): {name}" for name in self.not_copied]
        return out


@dataclass
class MaskedTables:
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None


# -- the parts ------------------------------------------------------------------------------------


def generalise_times(timestamps: np.ndarray, granularity: Granularity) -> np.ndarray:
    """Seconds since the epoch floored to the start (UTC) of their day, week (Monday) or month.
    Flooring never reorders: a later time never gets an earlier value."""
    ts = np.asarray(timestamps)
    if granularity == "none" or len(ts) == 0:
        return ts
    if np.abs(ts).max() > MAX_SECONDS:
        raise ConfigError(f"timestamps up to {ts.max():g} are not seconds since 1970; use time granularity 'none'")
    dt = pd.to_datetime(pd.Series(ts.astype(np.float64)), unit="s", utc=True).dt.tz_localize(None)
    floored: pd.Series = dt.dt.floor("D")
    if granularity == "week":
        floored = floored - pd.to_timedelta(dt.dt.day_of_week, unit="D")
    elif granularity == "month":
        floored = pd.Series(dt.dt.to_period("M").dt.to_timestamp())
    return ((floored - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _column_kind(name: str, names: tuple[str, ...]) -> bool:
    return name.lower().replace(" ", "_").replace("-", "_") in names


def _age_bands(values: pd.Series, width: int) -> pd.Series:
    """Ages as bands ``"20-29"`` (``"90+"`` from 90 on); values that are not numbers stay."""
    ages = pd.to_numeric(values, errors="coerce")
    low = (np.floor(ages / width) * width).astype("Int64")
    bands = [
        v if pd.isna(a) else ("90+" if a >= 90 else f"{lo}-{lo + width - 1}")
        for v, a, lo in zip(values, ages, low, strict=True)
    ]
    return pd.Series(bands, index=values.index, dtype=object)


def _zip_prefix(values: pd.Series, digits: int) -> pd.Series:
    text = values.astype(object).where(values.isna(), values.astype(str).str.strip())
    return text.where(text.isna(), text.str[:digits])


def _birth_year(values: pd.Series) -> pd.Series:
    dates = pd.to_datetime(values, errors="coerce", format="mixed")
    return dates.dt.year.astype("Int64")


def _text_columns(frame: pd.DataFrame, skip: set[str]) -> list[str]:
    """Columns holding strings (or lists of strings), other than ``skip``."""
    out = []
    for col in frame.columns:
        if col in skip:
            continue
        values = frame[col].dropna()
        if pd.api.types.is_string_dtype(frame[col]) or (
            frame[col].dtype == object and len(values) and isinstance(values.iat[0], str | list | np.ndarray)
        ):
            out.append(str(col))
    return out


def _scrub_column(values: pd.Series, scrub: Callable[[str], str]) -> tuple[pd.Series, int]:
    """Scrubbed values (lists element by element) and how many values changed."""
    cache: dict[str, str] = {}

    def one(v: str) -> str:
        if v not in cache:
            cache[v] = scrub(v)
        return cache[v]

    out, changed = [], 0
    for v in values:
        if isinstance(v, str):
            new: Any = one(v)
            changed += new != v
        elif isinstance(v, list | tuple | np.ndarray):
            new = [one(str(x)) for x in v]
            changed += new != [str(x) for x in v]
        else:
            new = v
        out.append(new)
    return pd.Series(out, index=values.index, dtype=object), changed


def _drop(frame: pd.DataFrame, table: str, drop: set[str], report: MaskReport, protected: set[str]) -> pd.DataFrame:
    names = [c for c in frame.columns if c in drop or f"{table}.{c}" in drop]
    refused = [c for c in names if c in protected]
    if refused:
        raise ConfigError(f"cannot drop {table}.{refused[0]}: the dataset needs it")
    report.dropped += [f"{table}.{c}" for c in names]
    return frame.drop(columns=names)


# -- masking --------------------------------------------------------------------------------------


def mask_dataset(dataset: Dataset, key: bytes, options: MaskOptions | None = None) -> tuple[MaskedTables, MaskReport]:
    """The masked tables of ``dataset`` (raw-ID level, rows in the dataset's order) and the report."""
    options = options or MaskOptions()
    report = MaskReport(options=asdict(options), not_copied=[str(c) for c in dataset.meta.get("ignored_columns", [])])
    drop = set(options.drop)
    scrub = lambda text: scrub_text(text, options.presidio)  # noqa: E731
    users = pseudonyms(key, "user", dataset.users.ids, options.hash_chars)
    items = pseudonyms(key, "item", dataset.items.ids, options.hash_chars) if options.items else None

    # interactions: in time order, so ties keep their order when read back
    inter = dataset.interactions
    report.rows["interactions"] = len(inter)
    out = pd.DataFrame({"user": [users[u] for u in dataset.users.raw(inter["user"].to_numpy())]})
    report.changed["interactions.user"] = len(inter)
    raw_items = dataset.items.raw(inter["item"].to_numpy())
    out["item"] = [items[i] for i in raw_items] if items is not None else raw_items
    if items is not None:
        report.changed["interactions.item"] = len(inter)
    ts = inter["timestamp"].to_numpy()
    coarse = generalise_times(ts, options.time_granularity)
    out["timestamp"] = coarse
    if options.time_granularity != "none":
        report.changed["interactions.timestamp"] = int((coarse != ts).sum())
        report.generalised["interactions.timestamp"] = f"floored to the {options.time_granularity} (UTC)"
    for col in inter.columns:
        if col not in ("user", "item", "timestamp"):
            out[col] = inter[col].to_numpy()
    out = _drop(out, "interactions", drop, report, {"user", "item"})
    for col in _text_columns(out, {"user", "item"}):
        out[col], n = _scrub_column(out[col], scrub)
        report.changed[f"interactions.{col}"] = n

    # catalog: one row per item, in vocabulary order, so item rows read back the same
    catalog = dataset.catalog.copy()
    report.rows["items"] = len(catalog)
    if items is not None:
        raw = catalog["item"].astype(str)
        catalog["item"] = [items[i] for i in raw]
        report.changed["items.item"] = len(catalog)
        # an item without a title is titled by its raw ID: that title would give the ID away
        untitled = catalog["title"].astype(str) == raw
        catalog.loc[untitled, "title"] = catalog.loc[untitled, "item"]
    catalog = _drop(catalog, "items", drop, report, {"item"})
    for col in _text_columns(catalog, {"item"}):
        catalog[col], n = _scrub_column(catalog[col], scrub)
        report.changed[f"items.{col}"] = report.changed.get(f"items.{col}", 0) + n

    user_table = None
    if dataset.user_features is not None and "user" in dataset.user_features.columns:
        user_table = _mask_users(dataset.user_features, users, key, options, drop, report, scrub)
    return MaskedTables(out, catalog, user_table), report


def _mask_users(
    frame: pd.DataFrame,
    users: dict[str, str],
    key: bytes,
    options: MaskOptions,
    drop: set[str],
    report: MaskReport,
    scrub: Callable[[str], str],
) -> pd.DataFrame:
    frame = frame.copy()
    report.rows["users"] = len(frame)
    raw = frame["user"].astype(str)
    # users with features but no interaction are not in the vocabulary; same key, same pseudonym
    frame["user"] = [users.get(u) or pseudonym(key, "user", u, options.hash_chars) for u in raw]
    report.changed["users.user"] = len(frame)
    frame = _drop(frame, "users", drop, report, {"user"})
    quasi = {}
    for col in frame.columns:
        for names, how in ((ZIP_COLUMNS, "zip"), (AGE_COLUMNS, "age"), (BIRTH_COLUMNS, "birth")):
            if _column_kind(str(col), names):
                quasi[str(col)] = how
    for col, how in quasi.items():
        name = f"users.{col}"
        if options.quasi == "drop":
            frame = frame.drop(columns=col)
            report.dropped.append(name)
            continue
        before = frame[col]
        if how == "zip":
            after = _zip_prefix(before, options.zip_digits)
            report.generalised[name] = f"first {options.zip_digits} characters"
        elif how == "age":
            after = _age_bands(before, options.age_band)
            report.generalised[name] = f"{options.age_band}-year bands, 90+"
        else:
            after = _birth_year(before)
            report.generalised[name] = "year only"
        same = (before.astype(str) == after.astype(str)) | (before.isna() & after.isna())
        report.changed[name] = int((~same).sum())
        frame[col] = after
    for col in _text_columns(frame, {"user", *quasi}):
        frame[col], n = _scrub_column(frame[col], scrub)
        report.changed[f"users.{col}"] = n
    return frame


def write_masked(tables: MaskedTables, out: str | Path, report: MaskReport | None = None) -> Path:
    """Save the tables as a dataset directory (Parquet) that :func:`lmrec.data.loaders.load` reads;
    ``out`` must be new or empty. The report, if given, goes to ``MASK.json`` (it holds no key)."""
    out = _new_directory(out)
    out.mkdir(parents=True, exist_ok=True)
    tables.interactions.to_parquet(out / "interactions.parquet", index=False)
    tables.items.to_parquet(out / "items.parquet", index=False)
    if tables.users is not None:
        tables.users.to_parquet(out / "users.parquet", index=False)
    if report is not None:
        (out / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
    return out


def _new_directory(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory; choose a new output directory")
    return out


def load_dataset(dataset: str, cache_dir: Path) -> Dataset:
    """A registered dataset name (fetched into ``cache_dir``) or a path any loader reads."""
    return load_source(dataset, cache_dir) if dataset in SOURCES else load(Path(dataset))


def mask(dataset: str, out: str | Path, key_file: str | Path, cache_dir: Path, options: MaskOptions) -> MaskReport:
    """Load ``dataset``, mask it with the key in ``key_file`` (created if missing), write it to ``out``."""
    _new_directory(out)  # before a key is made or data read
    ds = load_dataset(dataset, cache_dir)
    key = load_key(key_file)
    tables, report = mask_dataset(ds, key, options)
    write_masked(tables, out, report)
    return report
