"""Bounded clients: head and body limits, read timeouts, keep-alive, capped error bodies, security
headers on every response (500s included), hang-ups not counted as 500s, no-store on secrets; and
workers that die with their supervisor. The socket tests run against a real served process on
127.0.0.1 (:func:`lmrec.serve.serve` in a subprocess, small limits so that they end quickly)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx
from fastapi.testclient import TestClient

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve import create_app
from lmrec.serve.limits import MAX_DETAIL
from tests.pg import free_port
from tests.test_serve import write_shop

START_TIMEOUT = 180.0  # seconds for a served process to import torch and the service on a busy box
WAIT_S = 60.0  # a bound on waiting for the server to act, so that a regression fails instead of hanging
SECURITY = {"x-frame-options": "DENY", "x-content-type-options": "nosniff"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("limits")
    cache = root / "cache"
    train_run(DataRecipe(dataset=str(write_shop(root / "shop"))), "ease", {}, root / "ease", cache, FitOptions(seed=0))
    return {"ease": root / "ease", "cache": cache, "root": root}


def app_for(runs: dict[str, Path], tmp_path: Path, **kw: Any) -> Any:
    return create_app(runs["ease"], tmp_path / "events.db", runs["cache"], require_keys=False, **kw)


def series(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


# -- in process -------------------------------------------------------------------------------------------
def test_a_500_carries_the_security_headers(runs: dict[str, Path], tmp_path: Path) -> None:
    app = app_for(runs, tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    app.state.service.live.query = broken
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/recommend", json={"user": "u0"})
    assert r.status_code == 500
    assert {k: r.headers.get(k) for k in SECURITY} == SECURITY
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert (
        series(client.get("/metrics").text)['lmrec_requests_total{method="POST",route="/recommend",status="500"}'] == 1
    )


def test_a_new_key_is_never_cached(runs: dict[str, Path], tmp_path: Path) -> None:
    client = TestClient(app_for(runs, tmp_path))
    r = client.post("/admin/keys", json={"scopes": ["read"]})
    assert r.status_code == 201 and r.json()["key"].startswith("lmr_")
    assert r.headers["cache-control"] == "no-store"


def test_error_bodies_are_capped(runs: dict[str, Path], tmp_path: Path) -> None:
    client = TestClient(app_for(runs, tmp_path))
    r = client.put("/items", json=[{"item": "/" * 200, "genres": 5} for _ in range(1000)])
    assert r.status_code == 422 and "more" in r.json()["detail"]
    assert len(r.content) < 4 * MAX_DETAIL
    r = client.post("/admin/reload", json={"run": "x" * 4000})
    assert 400 <= r.status_code < 500 and len(r.json()["detail"]) <= MAX_DETAIL + 40


def asgi_call(app: Any, method: str, path: str, messages: list[dict[str, Any]], headers: dict[str, str]) -> list[Any]:
    """Send ``messages`` (then wait forever) to the app as a server would; what the app sent back."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), WAIT_S))
    return sent


def test_a_client_hanging_up_mid_body_is_not_a_500(runs: dict[str, Path], tmp_path: Path) -> None:
    app = app_for(runs, tmp_path)
    part = {"type": "http.request", "body": b'{"user": "u0", ', "more_body": True}
    headers = {"content-type": "application/json", "content-length": "100"}
    sent = asgi_call(app, "POST", "/feedback", [part, {"type": "http.disconnect"}], headers)
    assert sent == []  # nobody to answer
    counted = series(TestClient(app).get("/metrics").text)
    assert not [k for k in counted if 'status="500"' in k], counted
    assert counted['lmrec_requests_total{method="POST",route="unmatched",status="499"}'] == 1


def test_a_body_that_stops_coming_is_408(runs: dict[str, Path], tmp_path: Path) -> None:
    app = app_for(runs, tmp_path, body_timeout_s=0.2)
    part = {"type": "http.request", "body": b'{"user": "u0", ', "more_body": True}
    sent = asgi_call(app, "POST", "/feedback", [part], {"content-type": "application/json", "content-length": "100"})
    start = sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"] and (b"x-frame-options", b"DENY") in start["headers"]


# -- a real served process ----------------------------------------------------------------------------------
def start_server(
    runs: dict[str, Path], root: Path, workers: int = 1, **limits: Any
) -> tuple[subprocess.Popen[bytes], int, Path]:
    port, log = free_port(), root / f"serve-{workers}.log"
    kwargs = {
        "run_dir": str(runs["ease"]),
        "db_url": str(root / f"events-{workers}.db"),
        "cache_dir": str(runs["cache"]),
        "port": port,
        "require_keys": False,
        "access_log": False,
        "workers": workers,
    }
    code = (
        "import json, sys; from lmrec.serve import serve; from lmrec.serve.limits import Limits; "
        "kw = json.loads(sys.argv[1]); serve(**kw['serve'], limits=Limits(**kw['limits']))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("wb") as out:
        args = [sys.executable, "-c", code, json.dumps({"serve": kwargs, "limits": limits})]
        server = subprocess.Popen(args, stdout=out, stderr=out, env=env)
    deadline = time.monotonic() + START_TIMEOUT
    while log.read_text().count("Application startup complete") < workers:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the service did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return server, port, log


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture(scope="module")
def served(runs: dict[str, Path]) -> Iterator[int]:
    server, port, _ = start_server(
        runs, runs["root"], max_headers=50, max_head_bytes=8192, head_timeout_s=1.0, body_timeout_s=1.0, keep_alive_s=1
    )
    try:
        yield port
    finally:
        stop(server)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server stopped reading
        sock.sendall(data)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000_000 + b"\r\n\r\n",
    ],
    ids=["20,000 headers", "a 10 MB header"],
)
def test_a_huge_head_is_431(served: int, head: bytes) -> None:
    with connect(served) as sock:
        send_quietly(sock, head)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"x-frame-options: DENY" in answer


def test_connections_that_send_nothing_or_too_slowly_are_closed(served: int) -> None:
    with connect(served) as idle, connect(served) as partial, connect(served) as slow_body:
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the end of the head
        slow_body.sendall(b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        slow_body.sendall(b'Content-Length: 100\r\n\r\n{"user": ')  # and never the rest of the body
        assert read_all(idle) == b""  # closed: recv returns before the socket's timeout fails the test
        assert read_all(partial).startswith(b"HTTP/1.1 408 ")
        assert read_all(slow_body).startswith(b"HTTP/1.1 408 ")
    with connect(served) as keep_alive:  # after a response, an idle keep-alive connection is closed too
        keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(keep_alive).startswith(b"HTTP/1.1 200 ")
    counted = series(httpx.get(f"http://127.0.0.1:{served}/metrics").text)
    assert not [k for k in counted if 'status="500"' in k], counted


def test_a_hang_up_mid_body_is_not_a_500(served: int) -> None:
    with connect(served) as sock:
        sock.sendall(b"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b'Content-Length: 100\r\n\r\n{"user": ')
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        counted = series(httpx.get(f"http://127.0.0.1:{served}/metrics").text)
        if any('status="499"' in k for k in counted):
            break
        time.sleep(0.1)
    assert any('status="499"' in k for k in counted) and not [k for k in counted if 'status="500"' in k], counted


# -- workers die with their supervisor ------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_a_killed_supervisor_and_the_port_binds_again(runs: dict[str, Path], tmp_path: Path) -> None:
    server, port, _ = start_server(runs, tmp_path, workers=2)
    workers = children(server.pid)
    try:
        assert len(workers) >= 2, workers
        server.send_signal(signal.SIGKILL)
        server.wait()
        deadline = time.monotonic() + WAIT_S
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "workers outlived their supervisor"
        with socket.socket() as sock:  # as uvicorn binds it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
    finally:
        for w in workers:  # our own orphans, if the test failed
            if alive(w):
                os.kill(w, signal.SIGKILL)
