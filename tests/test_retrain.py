"""``lmrec retrain``: a new run from an old run's data plus the store's feedback, and the service's swap to it.

Tiny runs trained in tmp_path; the service runs in-process (FastAPI's TestClient), never on the network.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from lmrec.cli import main
from lmrec.data.loaders import load
from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, open_run, read_meta, train_run
from lmrec.serve import create_app
from lmrec.serve.retrain import default_store, retrain, retrain_data
from lmrec.serve.store import Event, EventStore, Item
from lmrec.serve.stores import open_store

N_USERS, N_ITEMS, PER_USER = 30, 20, 8
NEW_ITEM = Item("i99", "Brand New", {"genres": "Low|Even", "description": "never seen before", "price": "3"})
NEW_EVENTS = [Event("newbie", "i1"), Event("newbie", "i3"), Event("newbie", "i99"), Event("u0", "i5", "purchase")]


def write_shop(directory: Path) -> Path:
    """Even users rate items i0..i9, odd users i10..i19; items have titles and genres."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines, t = ["user,item,timestamp,rating"], 1000
    for u in range(N_USERS):
        group = np.arange(10) if u % 2 == 0 else np.arange(10, 20)
        for i in rng.choice(group, PER_USER, replace=False):
            lines.append(f"u{u},i{i},{t},{1 + t % 5}")
            t += 1
    (directory / "interactions.csv").write_text("\n".join(lines) + "\n")
    genres = [f"{'Low' if i < 10 else 'High'}|{'Even' if i % 2 == 0 else 'Odd'}" for i in range(N_ITEMS)]
    (directory / "items.csv").write_text(
        "item,title,genres\n" + "".join(f"i{i},Title {i},{g}\n" for i, g in enumerate(genres))
    )
    return directory


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An EASE run on the shop data, and the cache it was trained with."""
    root = tmp_path_factory.mktemp("retrain")
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    train_run(recipe, "ease", {"reg": 50}, root / "ease", root / "cache", FitOptions(seed=3))
    return {"run": root / "ease", "cache": root / "cache"}


def with_feedback(db: Path) -> EventStore:
    """A store holding a new item (PUT /items), a new user's events on it and others, and an event of a known user."""
    store = open_store(db)
    store.upsert_items([NEW_ITEM, Item("i5", "Five, renamed", {"price": "cheap"})])
    store.add_events(NEW_EVENTS)
    return store


def cli(cache: Path, *args: str) -> int:
    return main(["--cache-dir", str(cache), *args])


# -- the data and the new run -------------------------------------------------------------------------
def test_retrain_data_is_the_run_data_followed_by_the_events(base: dict[str, Path], tmp_path: Path) -> None:
    data = retrain_data(base["run"], with_feedback(tmp_path / "events.db"), base["cache"])
    frame = data.interactions
    assert len(frame) == N_USERS * PER_USER + len(NEW_EVENTS)
    tail = frame.tail(len(NEW_EVENTS))
    assert list(zip(tail["user"], tail["item"], tail["event"], strict=True)) == [
        (e.user, e.item, e.type) for e in NEW_EVENTS
    ]
    assert "rating" not in frame.columns  # events carry none
    assert data.info["events"] == 4 and data.info["new_users"] == 1 and data.info["new_items"] == 1
    assert data.info["stored_items"] == 2 and data.info["dropped_columns"] == ["rating"]
    ds = data.dataset()
    assert "newbie" in ds.users and ds.n_users == N_USERS + 1 and ds.n_items == N_ITEMS + 1
    row = ds.catalog.iloc[ds.items.row("i99")]
    assert row["title"] == "Brand New" and list(row["categories"]) == ["Low", "Even"]
    assert ds.titles([ds.items.row("i5")]) == ["Five, renamed"]  # a stored title wins, as the service shows it
    # Free-form item fields of mixed types survive the Parquet round trip (as text where they must).
    data.write(tmp_path / "data")
    loaded = load(tmp_path / "data")
    assert loaded.n_users == ds.n_users and loaded.n_items == ds.n_items
    assert set(loaded.catalog["price"].dropna()) == {"3", "cheap"}


def test_retrained_run_knows_the_new_user_and_evaluates(
    base: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, new = tmp_path / "events.db", tmp_path / "new"
    with_feedback(db).close()
    assert cli(base["cache"], "retrain", "--run", str(base["run"]), "--db", str(db), "--out", str(new), "--quiet") == 0
    assert "added 4 events" in capsys.readouterr().err
    old_meta, meta = read_meta(base["run"]), read_meta(new)
    assert (meta["model"], meta["config"], meta["seed"]) == (old_meta["model"], old_meta["config"], old_meta["seed"])
    assert meta["data"]["split"] == old_meta["data"]["split"] and meta["data"]["dataset"] == str(
        (new / "data").resolve()
    )
    assert meta["retrain"]["from"] == str(base["run"].resolve()) and meta["retrain"]["last_event_id"] == 4
    run = open_run(new, base["cache"])
    assert "newbie" in run.dataset.users and "i99" in run.dataset.items
    out = run.recommend("newbie", k=5)
    assert out["known_user"] and out["history_length"] == 3 and len(out["items"]) == 5
    assert not {it["item"] for it in out["items"]} & {"i1", "i3", "i99"}
    assert cli(base["cache"], "evaluate", "--run", str(new), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_users"] == N_USERS + 1 and 0 <= report["metrics"]["ndcg@10"] <= 1
    # The old run is untouched and still opens.
    assert "newbie" not in open_run(base["run"], base["cache"]).dataset.users


def test_retraining_a_retrained_run_adds_only_newer_events(base: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = with_feedback(db)
    first = retrain(base["run"], store, tmp_path / "first", base["cache"], FitOptions())
    store.add_events([Event("newbie", "i7")])
    assert default_store(tmp_path / "first") == str(db.resolve())  # no --db: the store it was retrained from
    second_store = open_store(default_store(tmp_path / "first"))
    second = retrain(tmp_path / "first", second_store, tmp_path / "second", base["cache"], FitOptions())
    assert second.meta["retrain"]["events"] == 1 and second.meta["retrain"]["new_users"] == 0
    assert len(second.dataset.interactions) == len(first.dataset.interactions) + 1
    assert second.meta["config"] == first.meta["config"] and second.meta["seed"] == 3


def test_retrain_refuses_to_overwrite_its_run(base: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    assert cli(base["cache"], "retrain", "--run", str(base["run"]), "--db", str(db), "--out", str(base["run"])) == 2
    assert open_run(base["run"], base["cache"]).meta["model"] == "ease"


# -- the service --------------------------------------------------------------------------------------
def test_service_swaps_to_the_retrained_run(base: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    client = TestClient(create_app(base["run"], db, base["cache"], require_keys=False))
    assert client.put("/items", json=[{"item": "i99", "title": "Brand New", "genres": "Low|Even"}]).status_code == 200
    feedback = [{"user": e.user, "item": e.item, "type": e.type} for e in NEW_EVENTS]
    assert client.post("/feedback", json=feedback).status_code == 202
    old = client.get("/health").json()
    assert client.get("/users/newbie/history").json()["known_user"] is False

    store = open_store(db)  # another connection to the service's store, as `lmrec retrain` opens it
    retrain(base["run"], store, tmp_path / "new", base["cache"], FitOptions())
    store.close()
    r = client.post("/admin/reload", json={"run": str(tmp_path / "new")})
    assert r.status_code == 200, r.text
    assert r.json()["version"] != old["version"] and r.json()["model"] == "ease"
    health = client.get("/health").json()
    assert health["users"] == old["users"] + 1 and health["items"] == old["items"] + 1
    hist = client.get("/users/newbie/history").json()
    # Known now, and the events the run was trained on are not counted a second time.
    assert hist["known_user"] and hist["length"] == 3 and {e["source"] for e in hist["items"]} == {"dataset"}
    assert client.get("/users/u0/history").json()["length"] == PER_USER + 1
    out = client.post("/recommend", json={"user": "newbie", "k": 5}).json()
    assert out["version"] == health["version"] and len(out["items"]) == 5
    # Feedback after the retrain is live history again.
    client.post("/feedback", json={"user": "newbie", "item": "i9"})
    assert client.get("/users/newbie/history").json()["items"][-1]["source"] == "feedback"


def test_requests_during_reloads_all_succeed(base: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = with_feedback(db)
    new = retrain(base["run"], store, tmp_path / "new", base["cache"], FitOptions()).directory
    store.close()
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()
    # One event loop for every request, as under uvicorn (without the context manager each call
    # would start a loop of its own, and one such run hung on a request that never completed).
    with TestClient(create_app(base["run"], db, base["cache"], require_keys=False)) as client:
        versions = {client.get("/health").json()["version"]}

        def ask() -> None:
            while not stop.is_set():
                r = client.post("/recommend", json={"user": "u0", "k": 5})
                answers.append((r.status_code, r.json().get("version")))

        askers = [threading.Thread(target=ask, daemon=True) for _ in range(2)]
        for t in askers:
            t.start()
        for run in (new, base["run"], new, base["run"], new):
            r = client.post("/admin/reload", json={"run": str(run)})
            assert r.status_code == 200, r.text
            versions.add(r.json()["version"])
        stop.set()
        for t in askers:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in askers), "a request during the reloads never completed"
    assert len(versions) == 2 and answers
    assert all(code == 200 for code, _ in answers) and {v for _, v in answers} <= versions


def forward_to(client: TestClient) -> Callable[..., Any]:
    """A stand-in for ``urllib.request.urlopen`` that hands the request to an in-process app."""

    def urlopen(request: urllib.request.Request, timeout: float | None = None) -> io.BytesIO:
        path = urllib.parse.urlsplit(request.full_url).path
        headers = dict(request.header_items())
        r = client.request(request.get_method(), path, content=request.data, headers=headers)
        if r.status_code >= 400:
            raise urllib.error.HTTPError(
                request.full_url, r.status_code, r.reason_phrase, r.headers, io.BytesIO(r.content)
            )
        return io.BytesIO(r.content)

    return urlopen


def test_cli_retrain_reloads_the_service(
    base: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "events.db"
    store = with_feedback(db)
    _, admin = store.create_key(["admin"])
    _, reader = store.create_key(["read"])
    store.close()
    client = TestClient(create_app(base["run"], db, base["cache"], require_keys=True))
    monkeypatch.setattr(urllib.request, "urlopen", forward_to(client))
    args = ["retrain", "--run", str(base["run"]), "--db", str(db), "--quiet", "--reload", "http://lmrec.test/"]

    # A key without the admin scope: a clear error, and the new run stays on disk.
    assert cli(base["cache"], *args, "--out", str(tmp_path / "a"), "--key", reader) == 2
    err = capsys.readouterr().err
    assert "403" in err and "admin" in err and str(tmp_path / "a") in err
    assert open_run(tmp_path / "a", base["cache"]).meta["retrain"]["events"] == 4
    assert client.get("/health").json()["run"] == str(base["run"])

    monkeypatch.setenv("LMREC_API_KEY", admin)
    assert cli(base["cache"], *args, "--out", str(tmp_path / "b")) == 0
    health = client.get("/health").json()
    assert health["run"] == str((tmp_path / "b").resolve())
    assert f"version {health['version']}" in capsys.readouterr().err


def test_watch_reloads_when_the_run_directory_link_moves(base: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = with_feedback(db)
    retrain(base["run"], store, tmp_path / "new", base["cache"], FitOptions())
    store.close()
    current = tmp_path / "current"
    current.symlink_to(base["run"], target_is_directory=True)
    with TestClient(create_app(current, db, base["cache"], require_keys=False, watch=0.05)) as client:
        before = client.get("/health").json()
        step = tmp_path / "next"
        step.symlink_to(tmp_path / "new", target_is_directory=True)
        os.replace(step, current)  # an atomic switch, as `ln -sfn` would do in two steps
        deadline = time.monotonic() + 20
        while client.get("/health").json()["version"] == before["version"] and time.monotonic() < deadline:
            time.sleep(0.05)
        after = client.get("/health").json()
    assert after["version"] != before["version"] and after["users"] == before["users"] + 1
    assert after["run"] == str(current)
