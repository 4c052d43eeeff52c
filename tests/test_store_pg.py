"""What only the PostgreSQL store has: several processes on one database, its pool, its URLs.

The contract every store meets runs on PostgreSQL too, in test_store.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmrec.errors import ConfigError, MissingExtraError
from lmrec.serve.store import Event, StoreUnavailable
from lmrec.serve.stores import open_store

pytest_plugins = ["tests.pg"]

WRITER = """
import sys, time
from pathlib import Path
from lmrec.serve.store import Event
from lmrec.serve.stores import open_store
url, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
store = open_store(url)  # both processes create the tables at once on a fresh database
n = 0
for batch in range(120):
    size = 1 + batch % 4
    store.add_events([Event(f"{name}-u{batch % 3}", f"{name}-{n + j}", timestamp=float(n + j)) for j in range(size)])
    n += size
store.close()
print(n, flush=True)
"""


def test_two_processes_write_to_one_database(pg_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, name, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    try:
        for p in procs:  # both have imported everything: start them together
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        written = {}
        for name, p in zip("ab", procs, strict=True):
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            written[name] = int(out.strip())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    store = open_store(pg_url)
    try:
        assert written == {"a": 300, "b": 300}
        events = list(store.all_events())
        assert len(events) == store.count_events() == 600
        assert len({e.id for e in events}) == 600
        for name in "ab":
            assert sorted(e.item for e in events if e.item.startswith(name)) == sorted(
                f"{name}-{n}" for n in range(300)
            )
            for u in range(3):
                history = store.user_events(f"{name}-u{u}")
                assert history == sorted(history, key=lambda e: (e.timestamp, e.id))
                assert len(history) == sum(1 + b % 4 for b in range(120) if b % 3 == u)
    finally:
        store.close()


def test_a_store_sees_what_another_process_wrote(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        assert store.history("x") == []
        code = (
            "from lmrec.serve.store import Event; from lmrec.serve.stores import open_store; "
            f"open_store({pg_url!r}).add_events([Event('x', 'i')])"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert store.history("x") == ["i"]  # the same instance: it keeps no copy of what it read
    finally:
        store.close()


def test_connections_the_server_dropped_are_replaced(pg_url: str) -> None:
    import psycopg

    store = open_store(pg_url)
    try:
        store.add_events([Event("u", "before")])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            deadline = time.monotonic() + 10
            while admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone() != (0,):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert store.history("u") == ["before"]  # a read on a dead pooled connection is retried
        store.add_events([Event("u", "after")])  # so is a write whose BEGIN never reached the server
        assert store.history("u") == ["before", "after"]
    finally:
        store.close()


def test_a_busy_pool_times_out_with_a_clear_error(pg_url: str) -> None:
    from lmrec.serve.pgstore import PostgresStore

    store = PostgresStore(pg_url, pool_size=1, timeout=0.2)
    try:
        store.add_events([Event("u", "i")])
        reading = store.all_events()
        assert next(reading).item == "i"  # the generator holds the only connection
        with pytest.raises(StoreUnavailable, match="busy"):
            store.count_events()
        reading.close()
        assert store.count_events() == 1
    finally:
        store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.count_events()


def test_open_store_postgres_urls(pg_url: str) -> None:
    from lmrec.serve.pgstore import PostgresStore

    for url in (pg_url, pg_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url)
        assert isinstance(store, PostgresStore)
        store.close()
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        PostgresStore("sqlite:///x.db")


def test_an_unreachable_server_is_a_clear_error_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from tests.pg import free_port  # here, not at the top: pytest loads tests.pg as a plugin first

    url = f"postgresql://me:hunter2@127.0.0.1:{free_port()}/db"
    with pytest.raises(StoreUnavailable, match="cannot connect") as info:
        open_store(url)
    assert "hunter2" not in str(info.value) and "me:***@127.0.0.1" in str(info.value)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    monkeypatch.delitem(sys.modules, "lmrec.serve.pgstore", raising=False)
    with pytest.raises(MissingExtraError, match=r"lmrec\[postgres\]"):
        open_store("postgresql://me@127.0.0.1/db")
