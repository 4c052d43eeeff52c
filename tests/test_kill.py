"""Every event the service acknowledged survives a SIGKILL of the service, on each store backend.

The real service (uvicorn) runs in a child process on a loopback port; two
threads post feedback as fast as they can, the service is killed mid-stream, started again on the
same store, and every event that got a 202 must be in the store. Events are unique by (user,
timestamp), and a batch is all there or not at all: nothing half-written, nothing invented.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx

from lmrec.models.base import FitOptions
from lmrec.runs import DataRecipe, train_run
from lmrec.serve.stores import open_store

pytest_plugins = ["tests.pg"]

N_USERS, N_ITEMS = 20, 10
STREAM_SECONDS = 1.5  # of acknowledged feedback before the kill
START_TIMEOUT = 90.0

Key = tuple[str, str, str, float]  # user, item, type, timestamp


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """A tiny EASE run (user u likes the items of u's parity), its dataset cache and its items."""
    root = tmp_path_factory.mktemp("kill")
    lines, t = ["user,item,timestamp"], 0
    for u in range(N_USERS):
        for i in range(u % 2, N_ITEMS, 2):
            lines.append(f"u{u},i{i},{t}")
            t += 1
    csv = root / "interactions.csv"
    csv.write_text("\n".join(lines) + "\n")
    train_run(DataRecipe(dataset=str(csv)), "ease", {}, root / "run", root / "cache", FitOptions())
    return root / "run", root / "cache", [f"i{i}" for i in range(N_ITEMS)]


def _serve(log: str, run: str, db: str, cache: str, port: int) -> None:
    """The child: the real service (uvicorn), its output in ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from lmrec.serve import serve

    serve(run, db, cache, host="127.0.0.1", port=port, require_keys=False, access_log=False)


def _processes() -> multiprocessing.context.ForkServerContext:
    # A fork server imports torch, FastAPI and the service once (running no torch op, so forking it
    # is safe); each service start is then a fork, not seconds of imports on a small CI machine.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lmrec.serve.app", "lmrec.runs", "uvicorn", "tests.test_kill"])
    return context


@contextmanager
def service(run: Path, cache: Path, db: str, log: Path) -> Iterator[tuple[multiprocessing.process.BaseProcess, str]]:
    """The real service in a child process, up and answering; always stopped on the way out."""
    from tests.pg import free_port

    port = free_port()
    proc = _processes().Process(target=_serve, args=(str(log), str(run), db, str(cache), port), daemon=True)
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not proc.is_alive():
                text = log.read_text() if log.exists() else ""
                pytest.fail(f"the service exited with {proc.exitcode}:\n{text[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not start in {START_TIMEOUT:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        yield proc, base
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)


class Sender(threading.Thread):
    """Posts feedback (single events and batches of 3) until the server stops answering."""

    def __init__(self, base: str, name: str, items: list[str], stamps: Iterator[int], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.user, self.items, self.stamps, self.stop = base, name, items, stamps, stop
        self.sent: list[list[Key]] = []  # every batch posted, acknowledged or not
        self.acked: list[list[Key]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                batch: list[Key] = [
                    (self.user, self.items[(n + j) % len(self.items)], "click", float(next(self.stamps)))
                    for j in range(1 if n % 2 else 3)
                ]
                body = [{"user": u, "item": i, "type": t, "timestamp": ts} for u, i, t, ts in batch]
                self.sent.append(batch)
                try:
                    response = client.post("/feedback", json=body[0] if len(body) == 1 else body)
                except httpx.TransportError as err:  # the kill: connection refused, reset or cut short
                    self.error = err
                    return
                if response.status_code != 202:
                    self.error = AssertionError(f"{response.status_code}: {response.text}")
                    return
                self.acked.append(batch)


def test_acknowledged_feedback_survives_sigkill(
    trained: tuple[Path, Path, list[str]], store_url: str, tmp_path: Path
) -> None:
    run, cache, items = trained
    db = store_url.removeprefix("sqlite:///") if store_url.startswith("sqlite:///") else store_url
    log = tmp_path / "service.log"
    stamps = itertools.count(1_000_000)  # shared: every event has its own timestamp
    stop = threading.Event()
    senders: list[Sender] = []
    with service(run, cache, db, log) as (proc, base):
        senders = [Sender(base, f"k{t}", items, stamps, stop) for t in range(2)]
        for s in senders:
            s.start()
        try:
            deadline = time.monotonic() + 30
            while sum(len(s.acked) for s in senders) == 0:  # the stream is flowing ...
                assert all(s.is_alive() for s in senders), [s.error for s in senders]
                assert time.monotonic() < deadline, "no feedback acknowledged in 30 s"
                time.sleep(0.01)
            time.sleep(STREAM_SECONDS)
            assert all(s.is_alive() for s in senders), [s.error for s in senders]  # ... and still is
            proc.kill()  # SIGKILL, mid-stream
            proc.join(timeout=10)
            assert proc.exitcode == -signal.SIGKILL
        finally:
            stop.set()
            for s in senders:
                s.join(timeout=20)
    assert all(not s.is_alive() for s in senders)
    assert all(isinstance(s.error, httpx.TransportError) for s in senders), [s.error for s in senders]

    acked = [e for s in senders for batch in s.acked for e in batch]
    assert len(acked) >= 10, f"only {len(acked)} events acknowledged before the kill: nothing was tested"

    # The service starts again on the same store and serves what was acknowledged.
    with service(run, cache, db, log) as (_, base):
        for s in senders:
            got = httpx.get(f"{base}/users/{s.user}/history", params={"limit": 10_000}, timeout=10).json()
            assert got["length"] >= sum(len(b) for b in s.acked)
        # Any ID the service accepts reads back through a real server's URL decoding (decoded once, so
        # "%00" stays three characters; Starlette's TestClient cannot show this: it decodes twice).
        odd = "p%00 %2F ü?#&+" + "x" * 242
        assert httpx.post(f"{base}/feedback", json={"user": odd, "item": items[0]}, timeout=10).status_code == 202
        got = httpx.get(f"{base}/users/{quote(odd, safe='')}/history", timeout=10)
        assert got.status_code == 200 and got.json()["user"] == odd, got.text

    store = open_store(db)
    try:
        stored = [(e.user, e.item, e.type, e.timestamp) for e in store.all_events() if e.user != odd]
    finally:
        store.close()
    stored_set = set(stored)
    assert len(stored_set) == len(stored)  # nothing stored twice
    missing = [e for e in acked if e not in stored_set]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events lost, e.g. {missing[:3]}"
    sent = [batch for s in senders for batch in s.sent]
    assert stored_set <= {e for batch in sent for e in batch}  # nothing invented
    for batch in sent:  # a batch in flight at the kill is all there or not at all
        assert sum(e in stored_set for e in batch) in (0, len(batch)), batch
