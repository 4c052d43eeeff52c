"""Read interaction logs and item catalogs from the formats people actually have.

Every loader returns a :class:`~lmrec.data.schema.Dataset`. Formats:

* MovieLens ml-100k (``u.data``, ``u.item``, ``u.genre``, ``u.user``) and ml-1m / ml-10m
  (``ratings.dat``, ``movies.dat``, ``users.dat``), latin-1 encoded as GroupLens ships them;
* RecBole atomic files (``NAME.inter`` plus optional ``NAME.item`` and ``NAME.user``);
* CSV / TSV / Parquet tables, with a column map or recognised column names;
* one ``user item`` pair per line (the ``.txt`` files published with SASRec), file order = time;
* a directory with ``interactions.{csv,parquet}`` and optional ``items.*`` and ``users.*``;
* a prepared directory (``prepared.json`` and sharded per-user sequences) that
  :func:`lmrec.data.stream.prepare` wrote from a log larger than memory.

Bad input raises :class:`~lmrec.errors.DataError` naming the file, the 1-based file line (the
header counts) and the problem. Nothing is dropped: a row that cannot be read is an error.

Text files are parsed twice: a line-aware scan with the :mod:`csv` module checks the shape of every
row and records the file line each row starts on, then pandas' C parser reads the values. The scan
is what makes error messages exact (blank lines and quoted multi-line fields shift lines); pandas
is what keeps loading a few million rows fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.data.schema import Dataset
from lmrec.data.stream import is_prepared, load_prepared
from lmrec.data.tables import TABLE_SUFFIXES, Table, check_header, read_delimited, read_table, table_suffix
from lmrec.errors import ConfigError, DataError

# Column names we look for, in order of preference, matched case-insensitively. The canonical
# name itself always wins; otherwise exactly one alias must be present.
INTERACTION_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid", "customer_id"),
    "item": ("item", "item_id", "itemid", "movieid", "movie_id", "product_id", "iid"),
    "timestamp": ("timestamp", "time", "ts", "unix_timestamp", "datetime"),
    "rating": ("rating",),
    "event": ("event", "event_type"),
    "weight": ("weight",),
}
TITLE_COLUMNS = ("title", "movie_title", "name", "product_title")
CATEGORY_COLUMNS = ("categories", "genres", "genre", "class", "category")
YEAR_COLUMNS = ("year", "release_year")

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip

SUPPORTED_FORMATS = (
    "a MovieLens directory (u.data or ratings.dat), a RecBole .inter file or directory, "
    "a .csv/.tsv/.csv.gz/.parquet table (columns user,item[,timestamp][,rating]), "
    "a .txt file with one 'user item' pair per line, or a directory holding "
    "interactions.{csv,parquet} and optionally items.* and users.*"
)


# -- columns --------------------------------------------------------------------------------------


def _resolve_columns(
    table: Table,
    roles: Mapping[str, tuple[str, ...]],
    required: tuple[str, ...],
    explicit: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Map our column names to the file's: ``explicit`` first, then the exact name, then the
    unique case-insensitive alias. A required column that cannot be found is an error listing
    what the file has."""
    found = [str(c) for c in table.frame.columns]
    explicit = dict(explicit or {})
    unknown = sorted(set(explicit) - set(roles))
    if unknown:
        raise ConfigError(f"cannot map column(s) {unknown}; known columns are {', '.join(roles)}")
    absent = {ours: theirs for ours, theirs in explicit.items() if theirs not in found}
    if absent:
        raise _missing_columns(table, found, absent)
    mapping = dict(explicit)
    used = set(explicit.values())
    for ours, aliases in roles.items():
        if ours in mapping:
            continue
        if ours in found and ours not in used:
            mapping[ours] = ours
            continue
        lowered = {a.lower() for a in aliases}
        matches = [c for c in found if c.lower() in lowered and c not in used]
        if len(matches) > 1:
            raise table.error(
                f"columns {matches} could each be the {ours!r} column",
                hint=f"name the one to use, e.g. columns={{{ours!r}: {matches[0]!r}}}",
            )
        if matches:
            mapping[ours] = matches[0]
        used.update(matches)
    missing = {ours: "" for ours in required if ours not in mapping}
    if missing:
        raise _missing_columns(table, found, missing)
    return mapping


def _missing_columns(table: Table, found: list[str], missing: Mapping[str, str]) -> DataError:
    """The error for columns that are not in the file, listing the ones that are."""
    wanted = ", ".join(f"{ours!r} (mapped to {theirs!r})" if theirs else repr(ours) for ours, theirs in missing.items())
    hint = "map your column names with columns={'user': ..., 'item': ...}"
    if len(found) == 1 and any(sep in found[0] for sep in (";", "\t", "|")):
        hint = "the header is a single column: is the file separated by something other than ','?"
    return table.error(f"missing column {wanted}; the file has columns {found}", hint=hint)


def _id_strings(table: Table, values: pd.Series, column: str) -> pd.Series:
    """IDs as stripped strings; an empty or missing ID is an error naming its line."""
    if pd.api.types.is_float_dtype(values) and values.notna().all() and bool((values % 1 == 0).all()):
        values = values.astype("int64")  # Parquet ints stored as float: 7.0 -> "7"
    absent = values.isna()
    text = values.astype(object).where(~absent, "").astype(str).str.strip()
    empty = (absent | (text == "")).to_numpy()
    if empty.any():
        raise table.error("empty id", row=int(np.argmax(empty)), column=column)
    return text


def _timestamps(table: Table, values: pd.Series, column: str) -> pd.Series:
    """Datetime columns and ISO 8601 date text become integer seconds since the epoch; anything
    else passes through, so the schema converts numbers and reports the first bad value. A column
    whose first value is a number is taken to be numeric."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        if pd.api.types.is_numeric_dtype(values) or pd.to_numeric(values.iloc[:1], errors="coerce").notna().all():
            return values
        dates = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
        if not dates.notna().all():
            return values
        values = dates
    missing = values.isna().to_numpy()
    if missing.any():
        raise table.error("empty timestamp", row=int(np.argmax(missing)), column=column)
    return (pd.to_datetime(values, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _keyed(table: Table, frame: pd.DataFrame, key: str, column: str) -> pd.DataFrame:
    """``frame`` with ``key`` as validated ID strings; a repeated key is an error naming both lines."""
    keys = _id_strings(table, frame[key], column)
    dup = keys.duplicated(keep="first").to_numpy()
    if dup.any():
        row = int(np.argmax(dup))
        first = int(np.argmax((keys == keys.iat[row]).to_numpy()))
        where = f"line {table.lines[first]}" if table.lines is not None else f"row {first + 1}"
        raise table.error(f"{key} {keys.iat[row]!r} appears again (first at {where})", row=row, column=column)
    return frame.assign(**{key: keys})


def _rename_first(frame: pd.DataFrame, target: str, candidates: tuple[str, ...]) -> tuple[pd.DataFrame, str | None]:
    """Rename the first column in ``candidates`` (case-insensitive) to ``target`` unless ``target``
    is already there; also return which column now holds ``target`` (its original name)."""
    if target in frame.columns:
        return frame, target
    lowered = {str(c).lower(): c for c in frame.columns}
    source = next((lowered[c] for c in candidates if c in lowered), None)
    return (frame, None) if source is None else (frame.rename(columns={source: target}), source)


def _numeric_years(values: pd.Series) -> pd.Series:
    """Years as nullable integers when every non-empty value is a whole number, else unchanged."""
    text = values.astype(str).str.strip()
    years = pd.to_numeric(text.where(text != "", None), errors="coerce")
    parsed = years.notna() | (text == "") | values.isna()
    if not parsed.all() or not bool((years.dropna() % 1 == 0).all()):
        return values
    return years.astype("Int64")


def _year_from_title(titles: pd.Series) -> pd.Series:
    """The year in a MovieLens title such as ``"Toy Story (1995)"`` (missing when absent)."""
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").astype("Int64")


# -- building the dataset -------------------------------------------------------------------------


def _dataset(
    table: Table,
    columns: Mapping[str, str],
    *,
    name: str,
    fmt: str,
    catalog: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
) -> Dataset:
    """Build the Dataset from the interactions table and its column map (ours → theirs)."""
    frame = pd.DataFrame(index=table.frame.index)
    for ours, theirs in columns.items():
        values = table.frame[theirs]
        if ours in ("user", "item"):
            values = _id_strings(table, values, theirs)
        elif ours == "timestamp":
            values = _timestamps(table, values, theirs)
        frame[ours] = values
    try:
        ds = Dataset.from_frame(frame, catalog, name=name, user_features=users, source=str(table.path), first_line=1)
    except DataError as err:
        if err.line is None:
            raise
        # from_frame counts rows from first_line=1; translate its row back to the file line.
        column = columns.get(err.column, err.column) if err.column else None
        raise table.error(err.problem, row=err.line - 1, column=column, hint=err.hint) from None
    ignored = [str(c) for c in table.frame.columns if c not in set(columns.values())]
    return replace(ds, meta={"source": str(table.path), "format": fmt, "ignored_columns": ignored})


def _catalog(table: Table, seq_columns: frozenset[str] = frozenset()) -> pd.DataFrame:
    """An item table with ``item``, ``title``, ``categories`` and ``year`` under our names; other
    columns are kept. Category columns in ``seq_columns`` (RecBole token_seq) split on spaces;
    other category strings are split on ``|`` or ``,`` by the schema."""
    key = _resolve_columns(table, {"item": INTERACTION_ALIASES["item"]}, ("item",))["item"]
    frame = table.frame.rename(columns={key: "item"})
    frame = _keyed(table, frame, "item", key)
    frame, _ = _rename_first(frame, "title", TITLE_COLUMNS)
    frame, category_source = _rename_first(frame, "categories", CATEGORY_COLUMNS)
    if category_source in seq_columns:
        frame["categories"] = [str(v).split() if isinstance(v, str) else [] for v in frame["categories"]]
    frame, year_source = _rename_first(frame, "year", YEAR_COLUMNS)
    if year_source is not None:
        frame["year"] = _numeric_years(frame["year"])
    return frame


def _user_table(table: Table) -> pd.DataFrame:
    """A user feature table with a ``user`` column of ID strings."""
    key = _resolve_columns(table, {"user": INTERACTION_ALIASES["user"]}, ("user",))["user"]
    return _keyed(table, table.frame.rename(columns={key: "user"}), "user", key)


# -- MovieLens ------------------------------------------------------------------------------------


def load_movielens(directory: str | Path) -> Dataset:
    """Load MovieLens ml-100k (``u.data``) or ml-1m/ml-10m (``ratings.dat``) from ``directory``."""
    directory = Path(directory)
    if (directory / "u.data").is_file():
        return _load_ml100k(directory)
    if (directory / "ratings.dat").is_file():
        return _load_ml1m(directory)
    raise DataError("not a MovieLens directory: expected u.data (ml-100k) or ratings.dat (ml-1m)", path=directory)


_RATING_NAMES = ["user", "item", "rating", "timestamp"]
_IDENTITY = {name: name for name in _RATING_NAMES}


def _load_ml100k(directory: Path) -> Dataset:
    """ml-100k: tab-separated ``u.data``, pipe-separated ``u.item``/``u.genre``/``u.user``."""
    ratings = read_delimited(directory / "u.data", sep="\t", names=_RATING_NAMES, quoted=False, encoding="latin-1")
    catalog = _ml100k_items(directory) if (directory / "u.item").is_file() else None
    users = None
    if (directory / "u.user").is_file():
        names = ["user", "age", "gender", "occupation", "zip_code"]
        users = _user_table(
            read_delimited(directory / "u.user", sep="|", names=names, quoted=False, encoding="latin-1")
        )
    return _dataset(ratings, _IDENTITY, name=directory.name, fmt="movielens", catalog=catalog, users=users)


def _ml100k_genres(directory: Path) -> list[str]:
    """Genre names in flag order, from ``u.genre`` when present."""
    path = directory / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES)
    table = read_delimited(path, sep="|", names=["genre", "index"], quoted=False, encoding="latin-1")
    index = pd.to_numeric(table.frame["index"], errors="coerce")
    if index.isna().any():
        raise table.error("genre index is not a number", row=int(np.argmax(index.isna().to_numpy())))
    return list(table.frame["genre"].iloc[np.argsort(index.to_numpy(), kind="stable")])


def _ml100k_items(directory: Path) -> pd.DataFrame:
    """``u.item``: id|title|release date|video release date|url|one 0/1 flag per genre."""
    genres = _ml100k_genres(directory)
    names = ["item", "title", "release_date", "video_release_date", "imdb_url", *genres]
    table = read_delimited(directory / "u.item", sep="|", names=names, quoted=False, encoding="latin-1")
    flags = table.frame[genres].to_numpy() == "1"
    frame = table.frame[["item", "title", "release_date", "imdb_url"]].copy()
    frame["year"] = _year_from_title(frame["title"])
    frame["categories"] = [[g for g, on in zip(genres, row, strict=True) if on] for row in flags]
    return _keyed(table, frame, "item", "item")


def _load_ml1m(directory: Path) -> Dataset:
    """ml-1m / ml-10m: ``::``-separated ``ratings.dat``, ``movies.dat`` and ``users.dat``."""
    ratings = read_delimited(directory / "ratings.dat", sep="::", names=_RATING_NAMES, quoted=False, encoding="latin-1")
    catalog = None
    if (directory / "movies.dat").is_file():
        movies = read_delimited(
            directory / "movies.dat",
            sep="::",
            names=["item", "title", "genres"],
            quoted=False,
            encoding="latin-1",
        )
        frame = movies.frame.drop(columns="genres")
        frame["year"] = _year_from_title(frame["title"])
        frame["categories"] = [[g for g in s.split("|") if g] for s in movies.frame["genres"]]
        catalog = _keyed(movies, frame, "item", "item")
    users = None
    if (directory / "users.dat").is_file():
        names = ["user", "gender", "age", "occupation", "zip_code"]
        users = _user_table(
            read_delimited(directory / "users.dat", sep="::", names=names, quoted=False, encoding="latin-1")
        )
    return _dataset(ratings, _IDENTITY, name=directory.name, fmt="movielens", catalog=catalog, users=users)


# -- RecBole atomic files -------------------------------------------------------------------------


def load_recbole(path: str | Path) -> Dataset:
    """Load RecBole atomic files: ``NAME.inter`` and, next to it, optional ``NAME.item`` and
    ``NAME.user``. ``path`` is the ``.inter`` file or a directory holding exactly one."""
    inter_path = _recbole_inter(Path(path))
    inter, _ = _read_atomic(inter_path)
    columns = _resolve_columns(inter, INTERACTION_ALIASES, ("user", "item"))
    item_path, user_path = inter_path.with_suffix(".item"), inter_path.with_suffix(".user")
    catalog = None
    if item_path.is_file():
        items, types = _read_atomic(item_path)
        catalog = _catalog(items, frozenset(c for c, t in types.items() if t.endswith("_seq")))
    users = _user_table(_read_atomic(user_path)[0]) if user_path.is_file() else None
    return _dataset(inter, columns, name=inter_path.stem, fmt="recbole", catalog=catalog, users=users)


def _recbole_inter(path: Path) -> Path:
    """The ``.inter`` file at or inside ``path``."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.inter")) if path.is_dir() else []
    if len(found) != 1:
        problem = "no .inter file" if not found else f"several .inter files ({', '.join(p.name for p in found)})"
        raise DataError(f"{problem}; pass the .inter file itself", path=path)
    return found[0]


def _read_atomic(path: Path) -> tuple[Table, dict[str, str]]:
    """An atomic file with ``name:type`` headers stripped to ``name``; also returns name → type."""
    table = read_delimited(path, sep="\t", quoted=False)
    names, types = [], {}
    for header in table.frame.columns:
        name, _, kind = str(header).partition(":")
        names.append(name)
        types[name] = kind
    check_header(path, table.header_line or 1, names)
    frame = table.frame.set_axis(names, axis=1)
    return replace(table, frame=frame), types


# -- tables, lines, directories -------------------------------------------------------------------


def load_table(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    items_path: str | Path | None = None,
    users_path: str | Path | None = None,
) -> Dataset:
    """Load interactions from a CSV/TSV/Parquet table (by suffix; ``.csv.gz`` works).

    Columns named ``user, item[, timestamp][, rating][, event][, weight]`` need no mapping;
    ``columns`` maps our name to yours (``{"user": "customer_id", "item": "sku"}``) and common
    aliases (``user_id``, ``userId``, ``movieId``, ``ts`` ...) are found when unambiguous. Without
    a timestamp, file order is time order. ``items_path`` and ``users_path`` name optional item
    (``item`` plus text columns) and user tables.
    """
    path = Path(path)
    table = read_table(path)
    mapping = _resolve_columns(table, INTERACTION_ALIASES, ("user", "item"), columns)
    catalog = _catalog(read_table(Path(items_path))) if items_path is not None else None
    users = _user_table(read_table(Path(users_path))) if users_path is not None else None
    name = path.name[: -len(table_suffix(path) or "")] or path.name
    return _dataset(table, mapping, name=name, fmt="table", catalog=catalog, users=users)


def load_lines(path: str | Path) -> Dataset:
    """Load a file with one ``user item`` pair per line, separated by blanks (the ``.txt`` format
    SASRec published). There is no timestamp: file order is time order."""
    path = Path(path)
    table = read_delimited(path, sep=None, names=["user", "item"], quoted=False)
    return _dataset(table, {"user": "user", "item": "item"}, name=path.stem, fmt="lines")


def load_directory(directory: str | Path, columns: Mapping[str, str] | None = None) -> Dataset:
    """Load ``interactions.{csv,parquet}`` plus optional ``items.*`` and ``users.*`` from a
    directory (any table suffix works for each)."""
    directory = Path(directory)
    interactions = _find_table(directory, "interactions")
    if interactions is None:
        raise DataError("no interactions.csv or interactions.parquet", path=directory)
    ds = load_table(
        interactions,
        columns,
        items_path=_find_table(directory, "items"),
        users_path=_find_table(directory, "users"),
    )
    return replace(ds, name=directory.name, meta={**ds.meta, "format": "directory"})


def _find_table(directory: Path, stem: str) -> Path | None:
    """``directory/stem.<table suffix>``; two candidates are ambiguous and an error."""
    found = [directory / f"{stem}{s}" for s in TABLE_SUFFIXES if (directory / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise DataError(f"several {stem} files ({', '.join(p.name for p in found)}); keep one", path=directory)
    return found[0] if found else None


# -- dispatch -------------------------------------------------------------------------------------


def load(path: str | Path, columns: Mapping[str, str] | None = None) -> Dataset:
    """Load any supported format, chosen from what ``path`` is (see the module docstring).

    ``columns`` maps column names and applies to tables and ``interactions.*`` directories only.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("no such file or directory", path=path)
    if path.is_dir():
        kind = _directory_kind(path)
    elif path.name in ("u.data", "ratings.dat"):
        path, kind = path.parent, "movielens"
    elif path.suffix == ".inter":
        kind = "recbole"
    elif table_suffix(path) is not None:
        kind = "table"
    elif path.suffix == ".txt":
        kind = "lines"
    else:
        raise DataError(f"unsupported format; lmrec reads {SUPPORTED_FORMATS}", path=path)
    if columns is not None and kind not in ("table", "directory"):  # a prepared log's map was applied by prepare
        raise ConfigError(f"a column map applies to CSV/Parquet tables, not to {kind} data ({path})")
    if kind == "prepared":
        return load_prepared(path)
    if kind == "movielens":
        return load_movielens(path)
    if kind == "recbole":
        return load_recbole(path)
    if kind == "table":
        return load_table(path, columns)
    if kind == "directory":
        return load_directory(path, columns)
    return load_lines(path)


def _directory_kind(directory: Path) -> str:
    """Which loader reads this directory."""
    if is_prepared(directory):
        return "prepared"
    if (directory / "u.data").is_file() or (directory / "ratings.dat").is_file():
        return "movielens"
    if any(directory.glob("*.inter")):
        return "recbole"
    if _find_table(directory, "interactions") is not None:
        return "directory"
    raise DataError(f"no data found; lmrec reads {SUPPORTED_FORMATS}", path=directory)
