"""Several service processes: metrics summed over workers, a reload reaching every process on one
store, and requests in flight scored together in one batch (the same answers as one by one)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import httpx
from fastapi.testclient import TestClient

import lmrec.serve.service as service_module
from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from lmrec.serve.app import Batcher, RunFollower
from lmrec.serve.metrics import Metrics
from lmrec.serve.state import LiveState, score_together
from lmrec.serve.stores import open_store

pytest_plugins = ["tests.pg"]

SASREC = {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 2, "batch_size": 16}
START_TIMEOUT = 120.0  # seconds for two worker processes to import torch and the service on a busy CI box


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two EASE runs and a SASRec run of one small log (user u likes the items of u's parity)."""
    root = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    lines, t = ["user,item,timestamp"], 0
    for u in range(24):
        for i in rng.choice(np.arange(u % 2, 20, 2), 7, replace=False):
            lines.append(f"u{u},i{i},{t}")
            t += 1
    csv = root / "log.csv"
    csv.write_text("\n".join(lines) + "\n")
    out = {}
    for name, model, config in (("ease", "ease", {}), ("ease2", "ease", {"reg": 50}), ("sasrec", "sasrec", SASREC)):
        train_run(DataRecipe(dataset=str(csv)), model, config, root / name, root / "cache", FitOptions(seed=0))
        out[name] = root / name
    out["cache"] = root / "cache"
    return out


# -- metrics across processes -------------------------------------------------------------------------
def _series(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def test_metrics_sum_over_every_process_sharing_a_directory(tmp_path: Path) -> None:
    a, b = Metrics(tmp_path), Metrics(tmp_path)  # two workers: one file each
    for _ in range(3):
        a.observe("POST", "/recommend", 200, 0.003)
    b.observe("POST", "/recommend", 200, 0.02)
    b.observe("POST", "/feedback", 202, 0.001)
    b.add_events(5)
    a.add_reload()
    b.add_reload()
    text = a.render("ease", "v1", "run")
    assert text == b.render("ease", "v1", "run")  # whichever worker answers /metrics
    s = _series(text)
    assert s['lmrec_requests_total{method="POST",route="/recommend",status="200"}'] == 4
    assert s['lmrec_requests_total{method="POST",route="/feedback",status="202"}'] == 1
    assert s["lmrec_feedback_events_total"] == 5
    assert s["lmrec_reloads_total"] == 2
    assert s['lmrec_request_seconds_bucket{route="/recommend",le="0.0025"}'] == 0
    assert s['lmrec_request_seconds_bucket{route="/recommend",le="0.005"}'] == 3
    assert s['lmrec_request_seconds_bucket{route="/recommend",le="+Inf"}'] == 4
    assert s['lmrec_request_seconds_count{route="/recommend"}'] == 4
    assert s['lmrec_request_seconds_sum{route="/recommend"}'] == pytest.approx(0.029)
    # A worker that is gone (closed, replaced) still counts: totals never go down.
    b.close()
    assert _series(a.render("ease", "v1", "run"))["lmrec_feedback_events_total"] == 5


def test_a_process_file_grows_past_its_first_size(tmp_path: Path) -> None:
    a, reader = Metrics(tmp_path), Metrics(tmp_path)
    routes = [f"/route/{n}/{'x' * 40}" for n in range(200)]  # ~250 KiB of records: past the first 64 KiB
    for n, route in enumerate(routes):
        for _ in range(n % 3 + 1):
            a.observe("GET", route, 200, 0.001)
    s = _series(reader.render("m", "v", "r"))
    for n, route in enumerate(routes):
        assert s[f'lmrec_requests_total{{method="GET",route="{route}",status="200"}}'] == n % 3 + 1


def test_one_process_keeps_its_metrics_in_memory(tmp_path: Path) -> None:
    m = Metrics()
    m.observe("POST", "/recommend", 200, 0.003)
    assert _series(m.render("m", "v", "r"))['lmrec_request_seconds_count{route="/recommend"}'] == 1
    assert not list(tmp_path.iterdir())


# -- requests scored together ---------------------------------------------------------------------------
def _queries(runs: dict[str, Path], tmp_path: Path) -> tuple[LiveState, list[Any]]:
    live = LiveState.open(runs["sasrec"], runs["cache"], open_store(tmp_path / "events.db"))
    queries = [live.query(f"u{u}", None, 5) for u in range(6)]  # histories of different lengths
    queries.append(live.query(None, ["i0", "i2"], 5))  # an anonymous session
    queries.append(live.query("u1", ["i3"], 3))  # another k: scored in its own group
    queries.append(live.query("u2", None, 5, exclude_seen=False))
    return live, queries


def test_a_batch_scores_as_each_query_alone(runs: dict[str, Path], tmp_path: Path) -> None:
    live, queries = _queries(runs, tmp_path)
    together = score_together(queries)
    for query, (top, scores) in zip(queries, together, strict=True):
        ((alone_top, alone_scores),) = score_together([query])
        assert top.shape == (1, query.n)
        assert top.tolist() == alone_top.tolist()
        np.testing.assert_allclose(scores, alone_scores, rtol=1e-5, atol=1e-6)
    batched, alone = live.answer(queries[0], *together[0])[0], live.recommend("u0", None, 5)
    # The same answer; scores rounded to 6 places may differ in the last one (a batch sums in another order).
    assert [it["item"] for it in batched["items"]] == [it["item"] for it in alone["items"]]
    np.testing.assert_allclose(
        [it["score"] for it in batched["items"]], [it["score"] for it in alone["items"]], atol=2e-6
    )
    assert {k: v for k, v in batched.items() if k != "items"} == {k: v for k, v in alone.items() if k != "items"}


def test_requests_in_flight_share_one_forward_pass(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, queries = _queries(runs, tmp_path)
    batches: list[int] = []

    def counting(qs: Any) -> Any:
        batches.append(len(qs))
        return score_together(qs)

    monkeypatch.setattr(service_module, "score_together", counting)

    async def all_at_once() -> list[Any]:
        batcher = Batcher()
        return await asyncio.gather(*(batcher.score(q) for q in queries))

    results = asyncio.run(all_at_once())
    assert batches == [len(queries)]
    for query, (top, _) in zip(queries, results, strict=True):
        assert top.tolist() == score_together([query])[0][0].tolist()


def test_micro_batching_off_answers_the_same(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    on = TestClient(create_app(runs["sasrec"], db, runs["cache"], require_keys=False))
    off = TestClient(create_app(runs["sasrec"], db, runs["cache"], require_keys=False, micro_batch=False))
    for body in ({"user": "u3", "k": 4}, {"history": ["i1"], "k": 2, "explain": True}):
        a, b = on.post("/recommend", json=body), off.post("/recommend", json=body)
        assert a.status_code == b.status_code == 200
        assert a.headers["content-type"] == "application/json"
        assert a.json() == b.json()
        assert set(a.json()["items"][0]) == {"item", "score", "title", "year", "genres", "because", "cited"}


# -- a reload reaches every process ---------------------------------------------------------------------
def test_served_run_records_on_each_backend(store_url: str) -> None:
    store = open_store(store_url)
    try:
        assert store.current_run() is None
        first = store.record_run("/runs/a")
        second = store.record_run("/runs/b")
        assert second > first
        assert store.current_run() == (second, "/runs/b")
    finally:
        store.close()


def test_a_reload_through_one_process_reaches_the_others(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    a = TestClient(create_app(runs["ease"], db, runs["cache"], require_keys=False))
    b_app = create_app(runs["ease"], db, runs["cache"], require_keys=False)
    b, follower = TestClient(b_app), RunFollower(b_app.state.service, 1.0)
    assert not follower.check()  # nothing recorded yet
    assert a.post("/admin/reload", json={"run": str(runs["ease2"])}).status_code == 200
    assert b.get("/health").json()["run"] == str(runs["ease"])
    assert follower.check()
    assert b.get("/health").json()["run"] == str(runs["ease2"])
    assert not follower.check()  # already serving the latest record
    # A recorded run this process cannot load is left (logged); the old state keeps serving.
    store = open_store(db)
    store.record_run(str(tmp_path / "no-such-run"))
    store.close()
    assert not follower.check()
    assert b.get("/health").json()["run"] == str(runs["ease2"])
    assert b.post("/recommend", json={"user": "u0"}).status_code == 200


def test_a_worker_started_after_a_reload_serves_the_reloaded_run(runs: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = open_store(db)
    since = store.record_run(str(runs["ease"]))  # the service's start
    store.record_run(str(runs["ease2"]))  # a reload through some worker
    store.close()
    late = create_app(runs["ease"], db, runs["cache"], require_keys=False, follow=1.0, follow_since=since)
    assert TestClient(late).get("/health").json()["run"] == str(runs["ease2"])
    fresh = create_app(runs["ease"], db, runs["cache"], require_keys=False, follow=1.0)  # a service starting now
    assert TestClient(fresh).get("/health").json()["run"] == str(runs["ease"])


# -- the real thing: two uvicorn workers ----------------------------------------------------------------
def _wait(what: str, check: Any, timeout: float, server: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the service exited ({server.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}")
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.mark.slow  # two spawned processes import torch and the service: ~20 s on 2 idle cores, more when busy
def test_two_workers_sum_their_metrics_and_all_follow_a_reload(runs: dict[str, Path], tmp_path: Path) -> None:
    from tests.pg import free_port

    port, log = free_port(), tmp_path / "serve.log"
    kwargs = {
        "run_dir": str(runs["ease"]),
        "db_url": str(tmp_path / "events.db"),
        "cache_dir": str(runs["cache"]),
        "port": port,
        "require_keys": False,
        "access_log": False,
        "workers": 2,
    }
    code = "import json, sys; from lmrec.serve import serve; serve(**json.loads(sys.argv[1]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-c", code, json.dumps(kwargs)], stdout=out, stderr=out, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        started = lambda: log.read_text().count("Application startup complete") == 2  # noqa: E731
        _wait("two workers", started, START_TIMEOUT, server, log)
        for n in range(30):  # a new connection each: the kernel hands them to either worker
            assert httpx.post(f"{base}/recommend", json={"user": f"u{n % 24}", "k": 3}).status_code == 200
        assert httpx.post(f"{base}/feedback", json={"user": "u0", "item": "i2"}).status_code == 202

        def metrics() -> dict[str, float]:
            return _series(httpx.get(f"{base}/metrics").text)

        s = metrics()
        assert s['lmrec_requests_total{method="POST",route="/recommend",status="200"}'] == 30
        assert s["lmrec_feedback_events_total"] == 1
        assert httpx.post(f"{base}/admin/reload", json={"run": str(runs["ease2"])}).status_code == 200
        # Each worker counts its own reload: 2 in the sum once the other one has followed the store.
        _wait("the reload to reach both workers", lambda: metrics()["lmrec_reloads_total"] == 2, 60, server, log)
        for _ in range(10):
            assert httpx.get(f"{base}/health").json()["run"] == str(runs["ease2"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
