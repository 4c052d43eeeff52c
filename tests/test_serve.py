"""The service, end to end in-process with FastAPI's TestClient on tiny runs trained in tmp_path."""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import json
import logging
import logging.config
import subprocess
import sys
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from lmrec.errors import MissingExtraError
from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from tests.conftest import KeywordEncoder

N_USERS, N_ITEMS, PER_USER = 30, 20, 8
SASREC = {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 3, "batch_size": 16}


def genres(i: int) -> str:
    """Two genres per item: its half of the catalog (Low: i0..i9, High: i10..i19) and its parity."""
    return f"{'Low' if i < 10 else 'High'}|{'Even' if i % 2 == 0 else 'Odd'}"


def write_shop(directory: Path) -> Path:
    """Even users buy only items i0..i9, odd users only i10..i19; items have titles and genres."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines, t = ["user,item,timestamp"], 1000
    for u in range(N_USERS):
        group = np.arange(10) if u % 2 == 0 else np.arange(10, 20)
        for i in rng.choice(group, PER_USER, replace=False):
            lines.append(f"u{u},i{i},{t}")
            t += 1
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    catalog = "".join(f"i{i},Title {i},{genres(i)}\n" for i in range(N_ITEMS))
    (directory / "items.csv").write_text("item,title,genres\n" + catalog)
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    cache = root / "cache"
    out = {}
    for name, model, config in (
        ("ease", "ease", {}),
        ("ease2", "ease", {"reg": 50}),
        ("sasrec", "sasrec", SASREC),
        ("text", "text-sasrec", {**SASREC, "item_repr": "text", "epochs": 20}),
    ):
        train_run(recipe, model, config, root / name, cache, FitOptions(seed=0, text_encoder=KeywordEncoder("Low")))
        out[name] = root / name
    out["cache"] = cache
    return out


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(runs: dict[str, Path], tmp_path: Path) -> AppFactory:
    def make(run: str = "ease", require_keys: bool = False, db: Path | None = None, **kw: Any) -> TestClient:
        app = create_app(runs[run], db or tmp_path / "events.db", runs["cache"], require_keys=require_keys, **kw)
        return TestClient(app)

    return make


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    return make_client()


def seen_by(user: str, root: Path) -> set[str]:
    rows = (root / "interactions.csv").read_text().splitlines()[1:]
    return {r.split(",")[1] for r in rows if r.split(",")[0] == user}


def recommend(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# -- recommendations and the feedback loop ----------------------------------------------------------
def test_recommend_a_known_user(client: TestClient, runs: dict[str, Path]) -> None:
    out = recommend(client, user="u0", k=5)
    assert out["user"] == "u0" and out["model"] == "ease" and len(out["version"]) == 12
    items = [it["item"] for it in out["items"]]
    assert len(items) == 5
    assert not set(items) & seen_by("u0", runs["ease"].parent / "shop")
    assert all(it["title"] == "Title " + it["item"][1:] for it in out["items"])
    scores = [it["score"] for it in out["items"]]
    assert scores == sorted(scores, reverse=True)
    with_seen = recommend(client, user="u0", k=20, exclude_seen=False)
    assert len(with_seen["items"]) == 20


def test_feedback_changes_the_next_recommendation(client: TestClient) -> None:
    top = recommend(client, user="u0", k=5)["items"][0]["item"]
    r = client.post("/feedback", json={"user": "u0", "item": top, "type": "click"})
    assert r.status_code == 202 and r.json() == {"accepted": 1}
    after = [it["item"] for it in recommend(client, user="u0", k=5)["items"]]
    assert top not in after
    hist = client.get("/users/u0/history").json()
    assert hist["items"][-1] == {"item": top, "title": f"Title {top[1:]}", "source": "feedback", "type": "click",
                                 "timestamp": hist["items"][-1]["timestamp"]}  # fmt: skip
    assert hist["length"] == PER_USER + 1 and hist["known_user"]


def test_feedback_batch_and_new_user(client: TestClient) -> None:
    assert client.post("/recommend", json={"user": "newbie"}).status_code == 404
    events = [{"user": "newbie", "item": "i3", "timestamp": 1}, {"user": "newbie", "item": "i5", "timestamp": 2}]
    assert client.post("/feedback", json=events).json() == {"accepted": 2}
    out = recommend(client, user="newbie", k=5)
    assert {"i3", "i5"}.isdisjoint(it["item"] for it in out["items"])
    # Even items go with even items: the two clicks pull the list towards i0..i9.
    assert sum(int(it["item"][1:]) < 10 for it in out["items"]) >= 4
    hist = client.get("/users/newbie/history").json()
    assert [h["item"] for h in hist["items"]] == ["i3", "i5"] and not hist["known_user"]


def test_sasrec_feedback_changes_scores(make_client: AppFactory) -> None:
    client = make_client("sasrec")
    before = {it["item"]: it["score"] for it in recommend(client, user="u1", k=20, exclude_seen=False)["items"]}
    item = recommend(client, user="u1", k=1)["items"][0]["item"]
    assert client.post("/feedback", json={"user": "u1", "item": item}).status_code == 202
    after = {it["item"]: it["score"] for it in recommend(client, user="u1", k=20, exclude_seen=False)["items"]}
    assert before.keys() == after.keys()
    assert any(abs(before[i] - after[i]) > 1e-6 for i in before)
    assert item not in [it["item"] for it in recommend(client, user="u1", k=10)["items"]]


def test_anonymous_history(client: TestClient) -> None:
    out = recommend(client, history=["i11", "i12", "i13"], k=5)
    assert out["user"] is None
    items = [it["item"] for it in out["items"]]
    assert {"i11", "i12", "i13"}.isdisjoint(items)
    assert sum(int(i[1:]) >= 10 for i in items) >= 4
    r = client.post("/recommend", json={"history": ["i1", "nope", "zilch"]})
    assert r.status_code == 422 and "nope" in r.json()["detail"] and "zilch" in r.json()["detail"]
    assert client.post("/recommend", json={}).status_code == 422


def test_unknown_user_is_404_with_a_message(client: TestClient) -> None:
    r = client.post("/recommend", json={"user": "ghost"})
    assert r.status_code == 404 and "ghost" in r.json()["detail"]
    assert client.get("/users/ghost/history").status_code == 404
    # An unknown user with a history is an anonymous session under that name.
    assert client.post("/recommend", json={"user": "ghost", "history": ["i1"]}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/recommend", b'{"user": "u0", ', 400),
        ("post", "/recommend", b"not json", 400),
        ("post", "/recommend", {"user": "u0", "k": 0}, 422),
        ("post", "/recommend", {"user": "u0", "k": 1000}, 422),
        ("post", "/recommend", {"user": "u0", "k": "ten"}, 422),
        ("post", "/recommend", {"user": "u0", "k": 2.5}, 422),
        ("post", "/recommend", {"user": ["u0"]}, 422),
        ("post", "/recommend", {"user": True}, 422),
        ("post", "/recommend", {"user": "u0", "exclude_seen": "yes"}, 422),
        ("post", "/recommend", {"user": "u0", "kk": 3}, 422),
        ("post", "/recommend", [1, 2], 422),
        ("post", "/feedback", {"user": "u0", "item": "i999"}, 422),
        ("post", "/feedback", {"user": "u0"}, 422),
        ("post", "/feedback", {"user": "u0", "item": "i1", "timestamp": "yesterday"}, 422),
        ("post", "/feedback", [], 422),
        ("post", "/feedback", b'{"user": "u0", "item": "i1", "timestamp": NaN}', 422),
        ("put", "/items", {"item": "x"}, 422),
        ("put", "/items", [{"title": "no id"}], 422),
        ("get", "/items/nothing", None, 404),
        ("get", "/users/u0/history?limit=0", None, 422),
        ("get", "/nowhere", None, 404),
    ],
)
def test_client_mistakes_are_4xx_with_a_message(
    client: TestClient, method: str, path: str, body: Any, status: int
) -> None:
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail


def test_body_size_limit(make_client: AppFactory) -> None:
    client = make_client(max_body_bytes=1000)
    r = client.post("/recommend", json={"history": ["i1"] * 500})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the limit holds for a streamed body too
        yield b'{"history": ['
        for _ in range(300):
            yield b'"i1",'
        yield b'"i1"]}'

    r = client.post("/recommend", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


# -- items --------------------------------------------------------------------------------------------
def test_items_added_at_serve_time(client: TestClient) -> None:
    body = [
        {"item": "new1", "title": "A new thing", "description": "shiny", "genres": ["x", "y"]},
        {"item": "i2", "title": "Renamed two"},
    ]
    assert client.put("/items", json=body).json() == {"upserted": 2}
    new = client.get("/items/new1").json()
    assert new == {
        "item": "new1",
        "title": "A new thing",
        "fields": {"description": "shiny", "genres": ["x", "y"]},
        "recommendable": False,
    }
    old = client.get("/items/i2").json()
    assert old["title"] == "Renamed two" and old["recommendable"] and old["fields"]["categories"] == ["Low", "Even"]
    # Feedback on a new item is kept, but the model cannot recommend it yet.
    assert client.post("/feedback", json={"user": "u0", "item": "new1"}).status_code == 202
    out = recommend(client, user="u0", k=20, exclude_seen=False)
    assert "new1" not in [it["item"] for it in out["items"]]
    assert {it["item"]: it["title"] for it in out["items"]}["i2"] == "Renamed two"
    assert client.get("/users/u0/history").json()["items"][-1]["item"] == "new1"
    assert recommend(client, history=["new1"])["items"]  # a known-but-unscorable item is allowed


def test_text_model_recommends_items_added_at_serve_time(make_client: AppFactory) -> None:
    client = make_client("text", text_encoder=KeywordEncoder("Low"))
    new = [
        {"item": "new-low", "title": "Fresh", "genres": ["Low"]},
        {"item": "new-high", "title": "Other", "genres": "High"},
    ]
    assert client.put("/items", json=new).status_code == 200
    assert client.get("/items/new-low").json()["recommendable"]
    ranked = [it["item"] for it in recommend(client, user="u0", k=N_ITEMS)["items"]]  # u0 buys Low items
    assert {"new-low", "new-high"} <= set(ranked) and ranked.index("new-low") < ranked.index("new-high")
    assert recommend(client, history=["new-low"])["items"]  # a new item is read as history too
    # Feedback on it joins the user's history; a second process on the same database scores it too.
    assert client.post("/feedback", json={"user": "u0", "item": "new-low"}).status_code == 202
    other = make_client("text", text_encoder=KeywordEncoder("Low"))
    ranked = [it["item"] for it in recommend(other, user="u0", k=N_ITEMS)["items"]]
    assert "new-low" not in ranked and "new-high" in ranked
    # A new text replaces the old one.
    client.put("/items", json=[{"item": "new-high", "title": "Renamed", "genres": ["Low"]}])
    out = recommend(client, user="u0", k=N_ITEMS)["items"]
    assert {it["item"]: it["title"] for it in out}["new-high"] == "Renamed"


# -- auth -----------------------------------------------------------------------------------------------
def test_auth(make_client: AppFactory) -> None:
    client = make_client(require_keys=True)
    store = client.app.state.service.store  # type: ignore[attr-defined]
    _, reader = store.create_key(["read"])
    _, writer = store.create_key(["write"])
    admin_id, admin = store.create_key(["admin"])

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    r = client.post("/recommend", json={"user": "u0"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "key" in r.json()["detail"]
    assert client.post("/recommend", json={"user": "u0"}, headers=auth(reader + "x")).status_code == 401
    assert client.post("/recommend", json={"user": "u0"}, headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/recommend", json={"user": "u0"}, headers=auth(reader)).status_code == 200
    assert client.post("/recommend", json={"user": "u0"}, headers={"X-API-Key": reader}).status_code == 200
    r = client.post("/feedback", json={"user": "u0", "item": "i1"}, headers=auth(reader))
    assert r.status_code == 403 and "write" in r.json()["detail"]
    assert client.post("/feedback", json={"user": "u0", "item": "i1"}, headers=auth(writer)).status_code == 202
    assert client.post("/recommend", json={"user": "u0"}, headers=auth(writer)).status_code == 403
    assert client.post("/admin/reload", headers=auth(writer)).status_code == 403
    assert client.post("/recommend", json={"user": "u0"}, headers=auth(admin)).status_code == 200
    # Health and metrics are public; keys are managed over the API by an admin.
    assert client.get("/health").status_code == 200
    made = client.post("/admin/keys", json={"scopes": ["read"]}, headers=auth(admin))
    assert made.status_code == 201
    new_id, new_key = made.json()["key_id"], made.json()["key"]
    assert client.get("/users/u0/history", headers=auth(new_key)).status_code == 200
    listed = client.get("/admin/keys", headers=auth(admin)).json()
    assert {k["key_id"] for k in listed} >= {admin_id, new_id}
    assert all("key" not in k and "hash" not in k for k in listed)
    assert client.delete(f"/admin/keys/{new_id}", headers=auth(admin)).status_code == 204
    assert client.get("/users/u0/history", headers=auth(new_key)).status_code == 401
    assert client.delete(f"/admin/keys/{new_id}", headers=auth(admin)).status_code == 404
    assert client.post("/admin/keys", json={"scopes": ["root"]}, headers=auth(admin)).status_code == 422


# -- operations -----------------------------------------------------------------------------------------
def test_reload_swaps_the_model(make_client: AppFactory, runs: dict[str, Path]) -> None:
    client = make_client("ease")
    v1 = recommend(client, user="u0")["version"]
    r = client.post("/admin/reload", json={"run": str(runs["sasrec"])})
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["model"] == "sasrec" and info["version"] != v1 and info["run"] == str(runs["sasrec"])
    out = recommend(client, user="u0")
    assert out["model"] == "sasrec" and out["version"] == info["version"]
    assert client.post("/admin/reload", json={"run": str(runs["ease2"])}).json()["version"] not in (v1, out["version"])
    bad = client.post("/admin/reload", json={"run": str(runs["cache"])})
    assert bad.status_code == 400 and "still serving" in bad.json()["detail"]
    assert client.get("/health").json()["run"] == str(runs["ease2"])
    assert client.post("/admin/reload").json()["run"] == str(runs["ease2"])  # same run, re-read


def test_events_persist_across_restarts(make_client: AppFactory, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    first = make_client(db=db)
    first.post("/feedback", json={"user": "u2", "item": "i7"})
    second = make_client("ease2", db=db)
    hist = second.get("/users/u2/history").json()
    assert hist["items"][-1]["item"] == "i7" and hist["items"][-1]["source"] == "feedback"


def test_metrics_health_docs_and_page(client: TestClient) -> None:
    recommend(client, user="u0")
    client.post("/recommend", json={"user": "u0", "k": 0})
    client.get("/users/u3/history")
    text = client.get("/metrics").text
    assert 'lmrec_requests_total{method="POST",route="/recommend",status="200"} 1' in text
    assert 'lmrec_requests_total{method="POST",route="/recommend",status="422"} 1' in text
    assert 'route="/users/{user}/history"' in text and "/users/u3" not in text
    assert 'lmrec_request_seconds_bucket{route="/recommend",le="+Inf"} 2' in text
    assert 'lmrec_model_info{model="ease",version="' in text
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["users"] == N_USERS and health["items"] == N_ITEMS
    assert "/recommend" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<title>lmrec</title>" in page.text
    assert client.get("/users?limit=3").json() == {"users": ["u0", "u1", "u2"], "total": N_USERS}


def test_missing_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "lmrec.serve.app")
    with pytest.raises(MissingExtraError, match=r"lmrec\[serve\]"):
        importlib.import_module("lmrec.serve.app")


# -- what the service refuses: one ID rule, storable text, bounded numbers ------------------------------
BAD_IDS = {
    "lone surrogate": "\ud800",
    "surrogate inside": "a\udfffb",
    "slash": "a/b",
    "dot": ".",
    "dot dot": "..",
    "NUL": "a\x00",
    "control": "a\x1fb",
    "newline": "a\nb",
    "zero width": "a\u200bb",
    "too long": "x" * 257,
    "empty": "",
}


@pytest.fixture(scope="module")
def shared(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """One app for the many refusal cases (each checks that it changed nothing)."""
    db = tmp_path_factory.mktemp("refusals") / "events.db"
    return TestClient(create_app(runs["ease"], db, runs["cache"], require_keys=False))


def post_raw(client: TestClient, method: str, path: str, body: Any) -> Any:
    """Send ``body`` as JSON the way any client may: lone surrogates escaped, NaN as ``NaN``."""
    content = json.dumps(body, allow_nan=True).encode()
    return client.request(method, path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("bad", list(BAD_IDS.values()), ids=list(BAD_IDS))
@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    [
        ("post", "/recommend", lambda v: {"user": v}, "user"),
        ("post", "/recommend", lambda v: {"history": ["i1", v]}, "history.1"),
        ("post", "/feedback", lambda v: {"user": v, "item": "i1"}, "user"),
        ("post", "/feedback", lambda v: [{"user": "u0", "item": "i1"}, {"user": "u0", "item": v}], "1.item"),
        ("put", "/items", lambda v: [{"item": v, "title": "x"}], "0.item"),
    ],
    ids=["recommend user", "recommend history", "feedback user", "feedback item", "items item"],
)
def test_one_id_rule_everywhere_an_id_enters(
    shared: TestClient, bad: str, method: str, path: str, body: Callable[[str], Any], where: str
) -> None:
    store = shared.app.state.service.store  # type: ignore[attr-defined]
    before = store.count_events()
    r = post_raw(shared, method, path, body(bad))
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{where}: ") and len(r.text) < 1000
    assert store.count_events() == before


# A URL cannot carry a lone surrogate (percent-encoding is of UTF-8), nor a '/' or a '.' segment in one.
@pytest.mark.parametrize(
    "bad", [v for k, v in BAD_IDS.items() if k not in ("slash", "dot", "dot dot", "empty") and "surrogate" not in k]
)
def test_path_ids_follow_the_same_rule(shared: TestClient, bad: str) -> None:
    for path in (f"/items/{quote(bad, safe='')}", f"/users/{quote(bad, safe='')}/history"):
        r = shared.get(path)
        detail = r.json()["detail"]
        assert r.status_code == 422 and ("an ID" in detail or "at most 256" in detail), r.text


def test_accepted_ids_read_back_and_echoes_are_short(client: TestClient) -> None:
    odd = "ü ?#%&+ é:;@=" + "x" * 243  # 256 characters, all allowed
    assert len(odd) == 256
    assert client.put("/items", json=[{"item": odd, "title": "Odd"}]).status_code == 200
    assert client.post("/feedback", json={"user": odd, "item": odd}).status_code == 202
    assert client.get(f"/items/{quote(odd, safe='')}").json()["title"] == "Odd"
    assert client.get(f"/users/{quote(odd, safe='')}/history").json()["items"][-1]["item"] == odd
    ghost = "g" * 256
    for path in (f"/items/{ghost}", f"/users/{ghost}/history"):
        r = client.get(path)
        assert r.status_code == 404 and len(r.json()["detail"]) < 160 and "(256 characters)" in r.json()["detail"]
    r = client.post("/recommend", json={"history": ["h" * 256]})
    assert r.status_code == 422 and len(r.json()["detail"]) < 160


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"item": "t1", "title": "\ud800"}, "0.title"),
        ({"item": "t2", "title": "a\x00b"}, "0.title"),
        ({"item": "t3", "description": "\udc00"}, "0: field 'description' must be valid Unicode"),
        ({"item": "t4", "genres": ["ok", "\ud83d"]}, "0.genres"),
        ({"item": "t5", "score": float("nan")}, "0: field 'score' must be a string"),
        ({"item": "t6", "score": float("inf")}, "0: field 'score' must be a string"),
        ({"item": "t7", "nested": functools.reduce(lambda acc, _: [acc], range(20), [])}, "0: field 'nested'"),
    ],
    ids=["surrogate title", "NUL title", "surrogate field", "surrogate deep", "NaN", "inf", "too deep"],
)
def test_item_text_the_store_cannot_hold_is_422_and_never_stored(
    shared: TestClient, item: dict[str, Any], where: str
) -> None:
    r = post_raw(shared, "put", "/items", [item])
    assert r.status_code == 422 and r.json()["detail"].startswith(where), r.text
    assert shared.get(f"/items/{item['item']}").status_code == 404  # nothing half-stored to fail on later


def test_item_fields_that_are_fine_read_back(client: TestClient) -> None:
    body = [{"item": "fine", "title": "😀 ok\ttab", "description": "tab\there", "genres": ["é", "😀"], "year": 9999}]
    assert client.put("/items", json=body).status_code == 200
    got = client.get("/items/fine").json()
    assert got["title"] == "😀 ok\ttab" and got["fields"] == {
        k: v for k, v in body[0].items() if k not in ("item", "title")
    }


@pytest.mark.parametrize(
    ("timestamp", "status"),
    [(1.7e308, 422), (253402300800, 422), (-1, 422), (float("inf"), 422), (253402300799, 202), (0, 202)],
)
def test_timestamps_are_bounded(shared: TestClient, timestamp: float, status: int) -> None:
    r = post_raw(shared, "post", "/feedback", {"user": "u0", "item": "i1", "timestamp": timestamp})
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["detail"].startswith("timestamp: ")


@pytest.mark.parametrize("event_type", ["\ud800", "a/b", "\x00", "x" * 33, ""])
def test_event_types_are_names(shared: TestClient, event_type: str) -> None:
    r = post_raw(shared, "post", "/feedback", {"user": "u0", "item": "i1", "type": event_type})
    assert r.status_code == 422 and r.json()["detail"].startswith("type: "), r.text


@pytest.mark.parametrize(
    "meta",
    [
        [],
        "run",
        {},
        {"data": 1, "model": "ease"},
        {"data": {"dataset": 5}, "model": "ease"},
        {"data": {"dataset": "x", "nope": 1}, "model": "ease"},
        {"data": {"dataset": "x", "split_params": []}, "model": "ease"},
        {"data": {"dataset": "x"}, "model": ["ease"]},
        {"data": {"dataset": "x"}, "model": "ease", "retrain": "yes"},
    ],
)
def test_reload_of_a_run_json_of_the_wrong_shape_is_400(make_client: AppFactory, tmp_path: Path, meta: Any) -> None:
    client = make_client()
    before = client.get("/health").json()["version"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps(meta))
    r = client.post("/admin/reload", json={"run": str(bad)})
    assert r.status_code == 400 and "still serving" in r.json()["detail"] and "run.json" in r.json()["detail"], r.text
    assert client.get("/health").json()["version"] == before


@pytest.mark.parametrize("run", ["/tmp/\ud800", "/tmp/a\x00b"])
def test_reload_path_must_be_storable_text(shared: TestClient, run: str) -> None:
    r = post_raw(shared, "post", "/admin/reload", {"run": run})
    assert r.status_code == 422 and r.json()["detail"].startswith("run: ")


def test_keys_are_never_ambiguous(make_client: AppFactory) -> None:
    client = make_client(require_keys=True)
    store = client.app.state.service.store  # type: ignore[attr-defined]
    _, key = store.create_key(["read"])
    _, other = store.create_key(["read"])

    def call(*headers: tuple[str, str]) -> Any:
        return client.post("/recommend", json={"user": "u0"}, headers=list(headers))

    assert call(("Authorization", f"Bearer {key}")).status_code == 200
    r = call(("Authorization", "Bearer nope"), ("Authorization", f"Bearer {key}"))  # the last would have won
    assert r.status_code == 400 and "'authorization' headers" in r.json()["detail"]
    assert call(("X-API-Key", key), ("x-api-key", key)).status_code == 400
    r = call(("Authorization", "Basic dTpw"), ("X-API-Key", key))  # no silent fall-back to X-API-Key
    assert r.status_code == 401 and "scheme 'Basic'" in r.json()["detail"]
    assert call(("Authorization", "Bearer "), ("X-API-Key", key)).status_code == 401
    r = call(("Authorization", f"Bearer {key}"), ("X-API-Key", other))
    assert r.status_code == 400 and "two different keys" in r.json()["detail"]
    assert call(("Authorization", f"Bearer {key}"), ("X-API-Key", key)).status_code == 200


def test_key_ids_in_the_path_are_bounded(make_client: AppFactory) -> None:
    client = make_client(require_keys=True)
    _, admin = client.app.state.service.store.create_key(["admin"])  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {admin}"}
    assert client.delete("/admin/keys/" + "k" * 65, headers=headers).status_code == 422
    r = client.delete("/admin/keys/" + "k" * 64, headers=headers)
    assert r.status_code == 404 and len(r.json()["detail"]) < 120


def test_openapi_declares_how_to_send_a_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert any(s.get("name") == "X-API-Key" and s.get("in") == "header" for s in schemes.values())
    for path, method in (("/recommend", "post"), ("/feedback", "post"), ("/admin/reload", "post")):
        assert {name for req in spec["paths"][path][method]["security"] for name in req} == set(schemes)
    assert "security" not in spec["paths"]["/health"]["get"]


def test_security_headers_and_the_pages_csp(client: TestClient) -> None:
    for path in ("/health", "/docs", "/openapi.json", "/nowhere"):
        r = client.get(path)
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    page = client.get("/")
    csp = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "'unsafe-inline'" not in csp["script-src"] and "'unsafe-eval'" not in csp["script-src"]
    # The page as served works under its policy: each script and style sheet it loads is this server's,
    # and each inline script is allowed by its hash.
    found = _PageParts()
    found.feed(page.text)
    assert all(src.startswith("/") and not src.startswith("//") for src in found.sources), found.sources
    for block in found.inline_scripts:
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp["script-src"]
    if found.style_attributes:
        assert "'unsafe-inline'" in csp["style-src"]


class _PageParts(HTMLParser):
    """What a page loads (``src``/stylesheet ``href``), its inline scripts, and whether it has ``style=``."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.inline_scripts: list[str] = []
        self.style_attributes = False
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.style_attributes |= "style" in a
        if tag == "script":
            self._in_script = a.get("src") is None
            if a.get("src"):
                self.sources.append(str(a["src"]))
        if tag == "link" and a.get("rel") == "stylesheet":
            self.sources.append(str(a.get("href")))

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.inline_scripts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def test_page_csp_hashes_inline_blocks() -> None:
    from lmrec.serve.app import page_csp

    # The example of the CSP specification and MDN: this script's well-known SHA-256.
    csp = page_csp("<p>x</p><script>alert('Hello, world.');</script><script src='/a.js'></script>")
    assert "script-src 'self' 'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='" in csp
    assert "script-src 'self' 'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='" in page_csp(
        "<script>alert('Hello, world.');</script>".replace("\n", "\r\n")
    )
    assert "script-src 'self';" in page_csp("<script src='/app.js' defer></script>")
    styled = page_csp("<style>p{}</style><p style='color: red'>x</p>")
    assert "style-src 'self' 'unsafe-inline'" in styled and "sha256" not in styled.split("style-src")[1]
    assert "style-src 'self' 'sha256-" in page_csp("<style>p { color: red }</style>")


def test_access_log_paths_are_cut_short() -> None:
    from lmrec.serve.app import MAX_LOGGED_PATH, BriefAccessLog, log_config

    long_path = "/users/" + "x" * 5000 + "/history"
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", long_path, "1.1", 404), None,
    )  # fmt: skip
    assert BriefAccessLog().filter(record)
    line = record.getMessage()
    assert len(line) < MAX_LOGGED_PATH + 100 and "(5015 characters)" in line and line.endswith("404")
    config = log_config()
    assert "brief_paths" in config["handlers"]["access"]["filters"]
    logging.config.dictConfig(config)  # a configuration uvicorn accepts
    assert any(isinstance(f, BriefAccessLog) for h in logging.getLogger("uvicorn.access").handlers for f in h.filters)


def test_the_serve_layer_has_no_import_cycle() -> None:
    code = (
        "import sys; import lmrec.serve.store, lmrec.serve.state; "
        "bad = {'lmrec.serve.pgstore', 'lmrec.serve.retrain', 'lmrec.serve.stores'} & set(sys.modules); "
        "print(sorted(bad)); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # lmrec.serve's __init__ imports stores (open_store), so only pgstore and retrain must stay out.
    assert "pgstore" not in done.stdout and "retrain" not in done.stdout, done.stdout + done.stderr


# -- several workers, one database --------------------------------------------------------------------
def test_workers_sharing_a_database_see_each_others_feedback(make_client: AppFactory, tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    a, b = make_client(db=db), make_client(db=db)
    before = [it["item"] for it in recommend(b, user="u0", k=5)["items"]]  # b has read u0 once already
    assert a.post("/feedback", json={"user": "u0", "item": before[0]}).status_code == 202
    after = [it["item"] for it in recommend(b, user="u0", k=5)["items"]]
    assert before[0] not in after
    assert b.get("/users/u0/history").json()["items"][-1]["item"] == before[0]
    # A user only the other worker has heard of is known here too.
    assert b.post("/recommend", json={"user": "fresh"}).status_code == 404
    assert a.post("/feedback", json={"user": "fresh", "item": "i4"}).status_code == 202
    assert "i4" not in [it["item"] for it in recommend(b, user="fresh")["items"]]


# -- re-ranking -----------------------------------------------------------------------------------------
def test_rerank_mmr_diversifies_and_says_what_ran(client: TestClient) -> None:
    plain = recommend(client, user="u0", k=5)
    assert plain["rerank"] is None
    first, second = (it["item"] for it in plain["items"][:2])
    assert genres(int(first[1:])) == genres(int(second[1:]))  # the model's top two are alike
    out = recommend(client, user="u0", k=5, rerank={"method": "mmr", "lam": 0.3})
    assert out["rerank"]["method"] == "mmr" and out["rerank"]["lam"] == 0.3
    assert out["rerank"]["similarity"] == "genre" and out["rerank"]["reranker"].startswith("MMR(lam=0.3")
    items = [it["item"] for it in out["items"]]
    assert items[0] == first  # MMR's first pick is always the most relevant
    assert genres(int(items[1][1:])) != genres(int(items[0][1:]))
    assert len(items) == len(set(items)) == 5
    seen = {h["item"] for h in client.get("/users/u0/history").json()["items"]}
    assert not set(items) & seen
    scores = {it["item"]: it["score"] for it in recommend(client, user="u0", k=20)["items"]}
    assert all(scores[it["item"]] == it["score"] for it in out["items"])  # the model's scores, reordered


@pytest.mark.parametrize(
    ("rerank", "describes"),
    [
        ({"method": "dpp", "lam": 0.5}, "DPP(theta=0.5"),
        ({"method": "calibration", "lam": 0.9}, "Calibrated(lam=0.9"),
        ({"method": "fair", "lam": 0.5}, "FairExposure(p=0.5, alpha=0.1"),
        ({"method": "mmr", "lam": 0.5, "similarity": "cooccurrence", "candidates": 10}, "CooccurrenceSimilarity"),
    ],
)
def test_rerank_methods(client: TestClient, rerank: dict[str, Any], describes: str) -> None:
    out = recommend(client, user="u1", k=4, rerank=rerank)
    assert describes in out["rerank"]["reranker"] and len(out["items"]) == 4


def test_rerank_embedding_similarity_needs_embeddings(make_client: AppFactory) -> None:
    r = make_client("ease").post(
        "/recommend", json={"user": "u0", "rerank": {"method": "mmr", "lam": 0.5, "similarity": "embedding"}}
    )
    assert r.status_code == 422 and "embeddings" in r.json()["detail"]
    sasrec = make_client("sasrec")
    assert "embedding" in sasrec.get("/health").json()["similarities"]
    out = recommend(sasrec, user="u0", rerank={"method": "mmr", "lam": 0.5, "similarity": "embedding"})
    assert "EmbeddingSimilarity" in out["rerank"]["reranker"]


@pytest.mark.parametrize(
    ("rerank", "says"),
    [
        ({"method": "dpp", "lam": 1.0}, "DPP needs lam < 1"),
        ({"method": "mmr", "lam": 1.5}, "rerank.lam"),
        ({"method": "mmr", "lam": -0.1}, "rerank.lam"),
        ({"method": "mmr", "lam": "0.5"}, "rerank.lam"),
        ({"method": "mmr"}, "rerank.lam"),
        ({"method": "xquad", "lam": 0.5}, "rerank.method"),
        ({"method": "mmr", "lam": 0.5, "similarity": "vibes"}, "rerank.similarity"),
        ({"method": "mmr", "lam": 0.5, "candidates": 0}, "rerank.candidates"),
        ({"method": "mmr", "lam": 0.5, "candidates": 10_000}, "rerank.candidates"),
        ({"method": "mmr", "lam": 0.5, "extra": 1}, "rerank.extra"),
        ("mmr", "rerank"),
    ],
)
def test_rerank_bad_values_are_422(client: TestClient, rerank: Any, says: str) -> None:
    r = client.post("/recommend", json={"user": "u0", "rerank": rerank})
    assert r.status_code == 422 and says in r.json()["detail"], r.text


def test_rerankers_are_built_once_and_reused(client: TestClient) -> None:
    from lmrec.serve.state import RerankSpec

    live = client.app.state.service.live  # type: ignore[attr-defined]
    spec = RerankSpec("mmr", 0.4, "genre", 50)
    assert live.reranker(spec) is live.reranker(RerankSpec("mmr", 0.4, "genre", 100))
    assert live.reranker(spec) is not live.reranker(RerankSpec("mmr", 0.5, "genre", 50))
    assert live.reranker(RerankSpec("calibration", 0.5, "genre")) is live.reranker(
        RerankSpec("calibration", 0.5, "cooccurrence")
    )
    assert live.reranker(RerankSpec("fair", 0.3, "genre")) is live.reranker(RerankSpec("fair", 0.3, "embedding"))


def test_health_lists_what_the_run_supports(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["index"] == "exact"
    assert health["rerankers"] == ["mmr", "dpp", "calibration", "fair"]
    assert health["similarities"] == ["genre", "cooccurrence"]  # EASE has no item embeddings


# -- ANN -------------------------------------------------------------------------------------------------
def test_ann_index_serves_dot_product_models(make_client: AppFactory) -> None:
    pytest.importorskip("faiss")
    exact, fast = make_client("sasrec"), make_client("sasrec", ann=True)
    assert fast.get("/health").json()["index"] == "hnsw"
    want = [it["item"] for it in recommend(exact, user="u1", k=5)["items"]]
    got = recommend(fast, user="u1", k=5)
    assert len(got["items"]) == 5 and len(set(want) & {it["item"] for it in got["items"]}) >= 4
    seen = {h["item"] for h in fast.get("/users/u1/history").json()["items"]}
    assert not seen & {it["item"] for it in got["items"]}
    assert recommend(fast, user="u1", k=5, rerank={"method": "mmr", "lam": 0.5})["rerank"]["method"] == "mmr"
    # EASE is not a dot product of two vectors: it stays exact.
    assert make_client("ease", ann=True).get("/health").json()["index"] == "exact"
