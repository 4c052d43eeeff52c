"""Reload is load → check → warm → swap, and items added at serve time are encoded off the event loop."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from lmrec.errors import ConfigError
from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from lmrec.serve.state import GROW_BATCH
from tests.conftest import KeywordEncoder
from tests.test_serve import SASREC, write_shop

WAIT_S = 120.0  # a bound on waiting for another thread, so a regression fails instead of hanging


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reload")
    recipe = DataRecipe(dataset=str(write_shop(root / "shop")))
    cache = root / "cache"
    out = {"cache": cache, "root": root}
    for name, model, config in (
        ("ease", "ease", {}),
        ("text", "text-sasrec", {**SASREC, "item_repr": "text", "epochs": 2}),
    ):
        train_run(recipe, model, config, root / name, cache, FitOptions(seed=0, text_encoder=KeywordEncoder("Low")))
        out[name] = root / name
    # The text run, with an encoder path that does not exist on this machine.
    broken = root / "broken"
    shutil.copytree(root / "text", broken)
    config_file = broken / "model" / "config.json"
    config = json.loads(config_file.read_text())
    config["config"]["text_encoder"] = str(root / "no-such-encoder")
    config_file.write_text(json.dumps(config))
    out["broken"] = broken
    return out


def in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    return thread, out


# -- reload ---------------------------------------------------------------------------------------------
def test_a_run_whose_encoder_is_missing_says_so_at_load(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no-such-encoder"):
        create_app(runs["broken"], tmp_path / "events.db", runs["cache"], require_keys=False)


def test_a_reload_that_cannot_warm_leaves_the_old_model_serving(runs: dict[str, Path], tmp_path: Path) -> None:
    client = TestClient(
        create_app(runs["ease"], tmp_path / "events.db", runs["cache"], require_keys=False),
        raise_server_exceptions=False,
    )
    assert client.put("/items", json=[{"item": "fresh", "title": "Fresh Low"}]).status_code == 200
    version = client.get("/health").json()["version"]
    r = client.post("/admin/reload", json={"run": str(runs["broken"])})
    assert 400 <= r.status_code < 600 and "no-such-encoder" in r.json()["detail"], r.text
    health = client.get("/health").json()
    assert (health["model"], health["version"]) == ("ease", version)
    for _ in range(2):  # the old model keeps answering, every time
        assert client.post("/recommend", json={"user": "u0", "k": 3}).status_code == 200
        assert client.get("/items/fresh").status_code == 200
    assert client.post("/admin/reload").status_code == 200  # and a good reload still works


def fifo_run(runs: dict[str, Path], tmp_path: Path, where: str) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs["ease"], run)
    fifo = tmp_path / "data.fifo" if where == "dataset" else run / "extra.fifo"
    os.mkfifo(fifo)
    if where == "dataset":
        meta = json.loads((run / "run.json").read_text())
        meta["data"]["dataset"] = str(fifo)
        (run / "run.json").write_text(json.dumps(meta))
    return run


@pytest.mark.parametrize("where", ["dataset", "run directory"])
def test_a_fifo_is_refused_without_hanging(runs: dict[str, Path], tmp_path: Path, where: str) -> None:
    client = TestClient(create_app(runs["ease"], tmp_path / "events.db", runs["cache"], require_keys=False))
    run = fifo_run(runs, tmp_path, where)
    thread, out = in_thread(lambda: client.post("/admin/reload", json={"run": str(run)}))
    thread.join(WAIT_S)
    if thread.is_alive():  # unblock the reader so the test process can end, then fail
        with open(next(run.parent.glob("**/*.fifo")), "wb"):
            pass
        pytest.fail("reloading a run with a FIFO hung")
    assert out[0].status_code == 400 and "FIFO" in out[0].json()["detail"], out[0].text
    assert client.post("/admin/reload").status_code == 200  # the reload lock was let go


# -- items added at serve time ----------------------------------------------------------------------------
class GatedEncoder(KeywordEncoder):
    """A KeywordEncoder that, once armed, waits at its next call until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("Low")
        self.armed, self.entered, self.release = False, threading.Event(), threading.Event()

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if self.armed:
            self.entered.set()
            self.release.wait(WAIT_S)
        return super().encode(texts, progress)


def test_adding_items_never_blocks_the_event_loop(runs: dict[str, Path], tmp_path: Path) -> None:
    encoder = GatedEncoder()
    app = create_app(runs["text"], tmp_path / "events.db", runs["cache"], require_keys=False, text_encoder=encoder)
    new = [{"item": f"new{n}", "title": f"New {n}", "genres": ["Low" if n % 2 else "High"]} for n in range(1000)]
    with TestClient(app) as client:  # one event loop for every request
        encoder.armed = True
        put, put_out = in_thread(lambda: client.put("/items", json=new))
        deadline = time.monotonic() + WAIT_S
        while app.state.service.store.get_item("new999") is None:  # stored: a request now sees the news
            assert time.monotonic() < deadline, "the PUT never stored its items"
            time.sleep(0.05)
        first, first_out = in_thread(lambda: client.post("/recommend", json={"user": "u0", "k": 5}))
        assert encoder.entered.wait(WAIT_S), "nothing encoded the new items"
        # The encoder is stuck in the middle of the new items: other requests still answer.
        probe, probe_out = in_thread(
            lambda: (client.get("/health"), client.post("/recommend", json={"user": "u1", "k": 5}))
        )
        probe.join(WAIT_S)
        blocked = probe.is_alive()
        encoder.release.set()
        for thread in (put, first, probe):
            thread.join(WAIT_S)
        assert not blocked, "/health and /recommend waited for the new items to be encoded"
        assert [r.status_code for r in probe_out[0]] == [200, 200]
        assert first_out[0].status_code == 200 and put_out[0].json() == {"upserted": 1000}
        # Served once ready: encoded in batches, then recommended.
        assert client.get("/items/new999").json()["recommendable"]
        ranked = [it["item"] for it in client.post("/recommend", json={"user": "u0", "k": 100}).json()["items"]]
        assert any(item.startswith("new") for item in ranked)
    assert encoder.calls and max(encoder.calls) <= GROW_BATCH and sum(encoder.calls) >= 1000


def test_another_process_encodes_new_items_in_the_background(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    writer = TestClient(create_app(runs["ease"], db, runs["cache"], require_keys=False))
    reader = TestClient(
        create_app(runs["text"], db, runs["cache"], require_keys=False, text_encoder=KeywordEncoder("Low"))
    )
    assert writer.put("/items", json=[{"item": "late", "title": "Late", "genres": ["Low"]}]).status_code == 200
    assert reader.post("/recommend", json={"user": "u0", "k": 3}).status_code == 200  # starts the encoding
    deadline = time.monotonic() + WAIT_S
    while not reader.get("/items/late").json()["recommendable"]:
        assert time.monotonic() < deadline, "the new item was never served"
        time.sleep(0.05)
    ranked = [it["item"] for it in reader.post("/recommend", json={"user": "u0", "k": 100}).json()["items"]]
    assert "late" in ranked
