"""Stored records of the wrong type: refused when written (422 naming the field, nothing stored), and
read back without the unreadable field when an older store already holds them (never a 500)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from lmrec.serve.records import readable_item
from tests.conftest import KeywordEncoder
from tests.test_serve import N_ITEMS, SASREC, write_shop

pytest_plugins = ["tests.pg"]  # store_url: each test once on SQLite, once on PostgreSQL

HUGE = 10**400  # a 400-digit integer


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("records")
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    cache = root / "cache"
    out = {"cache": cache}
    for name, model, config in (
        ("ease", "ease", {}),
        ("text", "text-sasrec", {**SASREC, "item_repr": "text", "epochs": 2}),
    ):
        train_run(recipe, model, config, root / name, cache, FitOptions(seed=0, text_encoder=KeywordEncoder("Low")))
        out[name] = root / name
    return out


def client_for(runs: dict[str, Path], run: str, db: Path | str) -> TestClient:
    app = create_app(runs[run], db, runs["cache"], require_keys=False, text_encoder=KeywordEncoder("Low"))
    return TestClient(app, raise_server_exceptions=False)


# -- refused when written -------------------------------------------------------------------------------
REFUSED = {
    "genres a number": ({"genres": 5}, "genres"),
    "genres a boolean": ({"genres": True}, "genres"),
    "genres a list of numbers": ({"genres": [1, 2]}, "genres"),
    "genres an object": ({"genres": {"a": "b"}}, "genres"),
    "categories a number": ({"categories": 7.5}, "categories"),
    "categories a list with null": ({"categories": ["a", None]}, "categories"),
    "year a string": ({"year": "nineteen"}, "year"),
    "year inf as a string": ({"year": "inf"}, "year"),
    "year 1e999 as a string": ({"year": "1e999"}, "year"),
    "year a 400-digit integer": ({"year": HUGE}, "year"),
    "year a fraction": ({"year": 1995.5}, "year"),
    "year a boolean": ({"year": True}, "year"),
    "year out of range": ({"year": 10_000}, "year"),
    "title a number": ({"title": 5}, "title"),
    "extra a number": ({"price": 9.5}, "price"),
    "extra a list": ({"tags": ["a", "b"]}, "tags"),
    "extra an object": ({"meta": {"a": "b"}}, "meta"),
    "extra a boolean": ({"new": False}, "new"),
}


@pytest.mark.parametrize(("fields", "name"), REFUSED.values(), ids=REFUSED.keys())
def test_item_fields_of_the_wrong_type_are_422_naming_the_field(
    runs: dict[str, Path], tmp_path: Path, fields: dict[str, Any], name: str
) -> None:
    client = client_for(runs, "ease", tmp_path / "events.db")
    body = json.dumps([{"item": "i3", **fields}, {"item": "fresh", "title": "Fresh"}])
    r = client.put("/items", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert name in r.json()["detail"], r.text
    assert client.get("/items/fresh").status_code == 404  # nothing of the batch stored
    assert client.get("/items/i3").json()["title"] == "Title 3"


def test_item_fields_of_the_declared_types_are_stored(runs: dict[str, Path], tmp_path: Path) -> None:
    client = client_for(runs, "ease", tmp_path / "events.db")
    body = [
        {"item": "a", "title": "A", "genres": ["x", "y"], "year": 1995, "description": "d"},
        {"item": "b", "categories": "p|q", "year": "2020"},  # a year as its digits is read as the integer
    ]
    assert client.put("/items", json=body).status_code == 200
    assert client.get("/items/a").json()["fields"] == {"genres": ["x", "y"], "year": 1995, "description": "d"}
    assert client.get("/items/b").json()["fields"] == {"categories": "p|q", "year": 2020}


# -- read back from an older store ------------------------------------------------------------------------
# What an older version let a write key store: every one is refused when written now.
MALFORMED: dict[str, str] = {
    "i1": json.dumps({"genres": 5}),
    "i2": json.dumps({"genres": True, "year": "inf"}),
    "i3": json.dumps({"categories": 12, "year": "1e999"}),
    "i4": '{"year": 1e999}',  # read back as float('inf')
    "i5": json.dumps({"year": HUGE}),
    "i6": '{"year": ' + "9" * 5000 + "}",  # more digits than Python reads as an int: not readable JSON
    "i7": json.dumps({"genres": [1, {"a": 2}], "categories": {"x": 1}}),
    "i8": "5",  # fields that are not an object
    "i9": "not json at all",
    "i10": json.dumps({"year": 1995.5, "price": 9.5, "tags": ["a", 1], "meta": {"a": [1, None]}, "new": False}),
    "i11": json.dumps({"year": True, "categories": [None], "genres": "", "rating": 10**30}),
    "i12": json.dumps({"year": 10_000, "description": None}),
    "new1": json.dumps({"genres": 5, "year": "inf"}),  # serve-time items the text model scores
    "new2": json.dumps({"categories": False, "year": HUGE}),
    "new3": "[1, 2, 3]",
}


def seed(url: str) -> None:
    """Write the malformed rows straight into the store's items table, as an older version did."""
    rows = [(item, f"Stored {item}", fields, time.time()) for item, fields in MALFORMED.items()]
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url[len("sqlite:///") :])
        with con:
            con.executemany("INSERT INTO items (item, title, fields, updated_at) VALUES (?, ?, ?, ?)", rows)
        con.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO items (item, title, fields, updated_at) VALUES (%s, %s, %s, %s)", rows)


@pytest.mark.parametrize("run", ["ease", "text"])
def test_every_endpoint_answers_over_a_store_of_malformed_records(
    runs: dict[str, Path], store_url: str, run: str
) -> None:
    client = client_for(runs, run, store_url)  # creates the store
    seed(store_url)
    poisoned = list(MALFORMED)
    answers = []
    feedback = [{"user": "u0", "item": item} for item in poisoned] + [{"user": "new-user", "item": "new1"}]
    answers.append(client.post("/feedback", json=feedback))
    for body in (
        {"user": "u0", "k": N_ITEMS, "exclude_seen": False},
        {"user": "u1", "k": N_ITEMS, "explain": True},
        {"user": "new-user", "k": 5},
        {"history": poisoned, "k": N_ITEMS, "explain": True, "exclude_seen": False},
        {"user": "u0", "k": 5, "rerank": {"method": "mmr", "lam": 0.5}},
        {"user": "u0", "k": 5, "rerank": {"method": "calibration", "lam": 0.5}},
    ):
        answers.append(client.post("/recommend", json=body))
    answers += [client.get(f"/items/{item}") for item in poisoned]
    answers += [client.get(f"/users/{user}/history") for user in ("u0", "new-user")]
    answers += [client.get(path) for path in ("/health", "/metrics", "/users", "/")]
    answers.append(client.put("/items", json=[{"item": "good", "title": "Good", "genres": ["Low"]}]))
    answers.append(client.post("/admin/reload"))
    answers.append(client.post("/recommend", json={"user": "u0", "k": N_ITEMS}))
    bad = [(r.request.method, r.request.url.path, r.status_code, r.text[:200]) for r in answers if r.status_code >= 500]
    assert not bad
    assert all(r.status_code < 300 for r in answers[1:7]), [r.text for r in answers[1:7]]
    # The unreadable field is left out; what can be read is served.
    assert client.get("/items/i2").json()["fields"] == {"categories": ["Low", "Even"]}  # the catalog's only
    i5 = client.get("/items/i5").json()
    assert i5["title"] == "Stored i5" and "year" not in i5["fields"]
    listed = client.post("/recommend", json={"user": "u0", "k": 100, "exclude_seen": False}).json()["items"]
    by_id = {it["item"]: it for it in listed}
    assert by_id["i1"]["genres"] == ["Low", "Odd"]  # the catalog's, since the stored genres cannot be read
    assert by_id["i5"]["year"] is None
    i10 = client.get("/items/i10").json()["fields"]  # free-form fields of other types were stored then: kept
    assert "year" not in i10 and i10["price"] == 9.5 and i10["tags"] == ["a", 1] and i10["new"] is False
    if run == "text":  # serve-time items with malformed fields are scored from what can be read
        assert {"new1", "new2", "new3"} <= set(by_id)


def test_a_malformed_record_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reported: set[tuple[str, float | None]] = set()
    for _ in range(3):
        item = readable_item("x", "T", '{"genres": 5, "year": "inf", "ok": "fine"}', 1.0, reported)
        assert item.fields == {"ok": "fine"} and item.title == "T"
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1
    assert readable_item("y", 5, "{}", 1.0).title is None  # a title that is not text
    assert readable_item("z", None, '{"year": "1995", "genres": "A|B"}', 1.0).fields == {"year": 1995, "genres": "A|B"}
