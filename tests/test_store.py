"""The event store contract, on SQLite and on a real PostgreSQL server: durability, time order,
items, hashed API keys, URLs. Every test taking ``backend`` or ``store`` runs once per backend."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmrec.errors import ConfigError, DataError
from lmrec.serve.store import MAX_TIMESTAMP, Event, EventStore, Item, SQLiteStore, trained_through
from lmrec.serve.stores import open_store

pytest_plugins = ["tests.pg"]


@dataclass
class Backend:
    """A fresh store location, and what differs between backends."""

    name: str
    url: str
    integrity_error: type[Exception]  # what a NULL in a NOT NULL column raises
    data_files: Callable[[], list[Path]]  # every file the store's data may have reached (tables, logs)


@pytest.fixture
def backend(store_url: str, request: pytest.FixtureRequest) -> Backend:
    if store_url.startswith("sqlite:///"):
        directory = Path(store_url[len("sqlite:///") :]).parent
        return Backend("sqlite", store_url, sqlite3.IntegrityError, lambda: sorted(directory.iterdir()))
    import psycopg

    from tests.pg import PostgresServer

    server: PostgresServer = request.getfixturevalue("pg_server")

    def pg_files() -> list[Path]:
        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # table pages on disk too, not only in the write-ahead log
            row = conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()
        assert row is not None
        data = server.root / "data"
        return [p for d in (data / "base" / str(row[0]), data / "pg_wal") for p in sorted(d.iterdir()) if p.is_file()]

    return Backend("postgres", store_url, psycopg.IntegrityError, pg_files)


@pytest.fixture
def store(backend: Backend) -> Iterator[EventStore]:
    s = open_store(backend.url)
    yield s
    s.close()


def test_events_are_returned_in_time_order_per_user(store: EventStore) -> None:
    n = store.add_events(
        [Event("u1", "b", timestamp=20.0), Event("u2", "x", timestamp=5.0), Event("u1", "a", timestamp=10.0)]
    )
    assert n == 3
    assert store.history("u1") == ["a", "b"]
    assert store.history("u2") == ["x"]
    assert store.history("nobody") == []
    events = store.user_events("u1")
    assert [e.type for e in events] == ["click", "click"]
    assert all(e.received_at is not None and e.id is not None for e in events)
    assert [e.item for e in store.all_events()] == ["b", "x", "a"]  # arrival order
    assert store.count_events() == 3


def test_missing_timestamp_means_now_and_ties_keep_arrival_order(store: EventStore) -> None:
    store.add_events([Event("u", "first"), Event("u", "second")])
    events = store.user_events("u")
    assert [e.item for e in events] == ["first", "second"]
    assert events[0].timestamp == events[0].received_at


def test_a_failed_batch_stores_nothing(store: EventStore, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="event 1: item must be a string"):  # refused before the database
        store.add_events([Event("u", "ok"), Event("u", None)])  # type: ignore[arg-type]
    assert store.count_events() == 0
    # Past the check, the database refuses the NULL and rolls the whole batch back.
    module = sys.modules[type(store).__module__]
    monkeypatch.setattr(module, "check_events", lambda events: None)
    with pytest.raises(backend.integrity_error):
        store.add_events([Event("u", "ok"), Event("u", None)])  # type: ignore[arg-type]
    assert store.count_events() == 0
    store.add_events([Event("u", "after")])  # the store is still usable after a failed batch
    assert store.history("u") == ["after"]


def test_all_events_pages_through_a_large_log(store: EventStore) -> None:
    store.add_events([Event(f"u{i % 7}", f"i{i}", timestamp=float(i)) for i in range(10_005)])
    events = list(store.all_events())
    assert [e.item for e in events] == [f"i{i}" for i in range(10_005)]
    assert len({e.id for e in events}) == 10_005


def test_events_survive_reopening_and_a_kill(backend: Backend) -> None:
    open_store(backend.url).close()  # the tables exist before the child starts
    # A child process writes, then dies without closing anything (SIGKILL-like os._exit).
    code = (
        "import os, sys; from lmrec.serve.stores import open_store; from lmrec.serve.store import Event;"
        f"s = open_store({backend.url!r}); n = s.add_events([Event('u', 'i1'), Event('u', 'i2')]);"
        "print(n, flush=True); os._exit(9)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9 and out.stdout.strip() == "2", out.stderr
    reopened = open_store(backend.url)
    assert reopened.history("u") == ["i1", "i2"]
    reopened.close()


def test_pragmas(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()


def test_concurrent_writers(store: EventStore) -> None:
    def write(t: int) -> None:
        for i in range(25):
            store.add_events([Event(f"u{t}", f"i{i}")])

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count_events() == 100
    assert store.history("u3") == [f"i{i}" for i in range(25)]


def test_items_upsert(store: EventStore) -> None:
    assert store.upsert_items([Item("a", "Alpha", {"genres": ["x"]}), Item("b")]) == 2
    assert store.get_item("a") == Item("a", "Alpha", {"genres": ["x"]}, store.get_item("a").updated_at)  # type: ignore[union-attr]
    store.upsert_items([Item("a", "Alpha 2", {"description": "new"})])
    got = store.get_item("a")
    assert got is not None and got.title == "Alpha 2" and got.fields == {"description": "new"}
    assert store.get_item("missing") is None
    assert set(store.get_items(["a", "b", "zz"])) == {"a", "b"}
    assert store.get_items([]) == {}


def test_items_a_later_duplicate_in_one_batch_wins(store: EventStore) -> None:
    assert store.upsert_items([Item("a", "first"), Item("a", "second", {"n": "2"})]) == 2
    got = store.get_item("a")
    assert got is not None and (got.title, got.fields) == ("second", {"n": "2"})


def test_items_updated_since(store: EventStore) -> None:
    store.upsert_items([Item("a", "Alpha"), Item("b", "Beta")])
    first = store.items_updated_since(0.0)
    assert [it.item for it in first] == ["a", "b"]
    mark = max(it.updated_at or 0.0 for it in first)
    time.sleep(0.01)
    store.upsert_items([Item("a", "Alpha 2")])
    later = store.items_updated_since(mark + 0.005)
    assert [(it.item, it.title) for it in later] == [("a", "Alpha 2")]
    assert store.items_updated_since(later[0].updated_at + 1) == []  # type: ignore[operator]


def test_get_items_many_ids(store: EventStore) -> None:
    store.upsert_items([Item(f"i{n}", f"T{n}") for n in range(0, 1200, 2)])
    got = store.get_items([f"i{n}" for n in range(1200)] + ["i0"])
    assert set(got) == {f"i{n}" for n in range(0, 1200, 2)}


def test_keys_are_hashed_and_revocable(backend: Backend) -> None:
    store = open_store(backend.url)
    key_id, plaintext = store.create_key(["read", "write"])
    assert plaintext.startswith(f"lmr_{key_id}_")
    assert store.verify_key(plaintext) == frozenset({"read", "write"})
    assert store.verify_key(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")) is None
    assert store.verify_key("garbage") is None
    assert store.verify_key(f"lmr_{key_id}") is None
    # Neither the database nor its write-ahead log holds the plaintext or the secret part; the
    # hash is there, which shows the files searched are the ones the key went to.
    secret = plaintext.rsplit("_", 1)[1].encode()
    hashed = hashlib.sha256(plaintext.encode()).hexdigest().encode()
    found_hash = False
    for f in backend.data_files():
        data = f.read_bytes()
        assert plaintext.encode() not in data and secret not in data, f
        found_hash = found_hash or hashed in data
    assert found_hash
    listed = store.list_keys()
    assert [(k.key_id, k.scopes, k.active) for k in listed] == [(key_id, ("read", "write"), True)]
    assert store.revoke_key(key_id)
    assert not store.revoke_key(key_id)
    assert store.verify_key(plaintext) is None
    assert not store.list_keys()[0].active
    store.close()


def test_keys_are_seen_by_another_store_on_the_same_database(backend: Backend) -> None:
    a, b = open_store(backend.url), open_store(backend.url)
    key_id, plaintext = a.create_key(["admin"])
    assert b.verify_key(plaintext) == frozenset({"admin"})
    assert b.revoke_key(key_id)
    assert a.verify_key(plaintext) is None
    a.close()
    b.close()


def test_bad_scopes(store: EventStore) -> None:
    with pytest.raises(DataError, match="scopes"):
        store.create_key(["read", "root"])
    with pytest.raises(DataError):
        store.create_key([])


def test_open_store_urls(tmp_path: Path) -> None:
    a = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    b = open_store(tmp_path / "sub" / "b.db")
    assert isinstance(a, SQLiteStore) and a.path == tmp_path / "a.db"
    assert isinstance(b, SQLiteStore) and (tmp_path / "sub" / "b.db").exists()
    a.close()
    b.close()
    with pytest.raises(ConfigError, match="unsupported"):
        open_store("mysql://x")
    with pytest.raises(ConfigError, match="empty"):
        open_store("sqlite:///")


def test_unsupported_url_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("mysql://me:hunter2@db.example/x")
    assert "hunter2" not in str(info.value) and "me:***@db.example" in str(info.value)


# -- what a store may hold: one rule for every writer ------------------------------------------------
@pytest.mark.parametrize(
    ("event", "says"),
    [
        (Event("a/b", "i"), "event 0: user must not contain '/'"),
        (Event("u", "\ud800"), "event 0: item must be printable"),
        (Event("u", "x" * 257), "event 0: item must be at most 256"),
        (Event("u", ".."), "event 0: item must not be '..'"),
        (Event("u", "i", "a\x00"), "event 0: type must be printable"),
        (Event("u", "i", timestamp=1.7e308), "event 0: timestamp must be seconds since the epoch"),
        (Event("u", "i", timestamp=float("nan")), "event 0: timestamp"),
        (Event("u", "i", timestamp=-1.0), "event 0: timestamp"),
    ],
)
def test_events_the_store_refuses(store: EventStore, event: Event, says: str) -> None:
    with pytest.raises(DataError, match=re.escape(says)):
        store.add_events([Event("u", "ok"), event][1:])
    assert store.count_events() == 0


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (Item("\udc00"), "item 0: item must be printable"),
        (Item("x", "bad\ud800title"), "title must be valid Unicode"),
        (Item("x", "a\x00b"), "title must not contain NUL"),
        (Item("x", None, {"d": "\ud800"}), "field 'd' must be valid Unicode"),
        (Item("x", None, {"\x00": "1"}), "a field's name must not contain NUL"),
        (Item("x", None, {"n": float("inf")}), "field 'n' must be a string, got a number"),
        (Item("x", None, {"d": [[["deep"]]]}), "field 'd' must be a string, got a list"),
        (Item("x", None, {"d": {1, 2}}), "field 'd' must be a string, got a set"),
        (Item("x", None, {"genres": 5}), "field 'genres' must be a list of strings or one string, got a number"),
        (Item("x", None, {"categories": [True]}), "field 'categories' must be a list of strings"),
        (Item("x", None, {"year": float("inf")}), "field 'year' must be an integer from 1 to 9999, got a number"),
        (Item("x", None, {"year": 10**400}), "field 'year' must be an integer from 1 to 9999, got an integer out"),
        (Item("x", None, {"year": "1995"}), "field 'year' must be an integer"),
    ],
)
def test_items_the_store_refuses(store: EventStore, item: Item, says: str) -> None:
    with pytest.raises(DataError, match=re.escape(says)):
        store.upsert_items([item])
    assert store.items_updated_since(0.0) == []


def test_accepted_ids_and_texts_round_trip(store: EventStore) -> None:
    odd = "ü ?#%&+ é:;@=😀" + "x" * 242
    store.add_events([Event(odd, odd, "add to cart", timestamp=MAX_TIMESTAMP)])
    assert store.user_events(odd)[0].item == odd
    fields = {"k": "ü\t😀", "genres": ["ü", "x|y"], "categories": "a|b", "year": 9999}
    store.upsert_items([Item(odd, "tab\tand\nnewline", fields)])
    assert store.get_item(odd) == Item(odd, "tab\tand\nnewline", fields,
                                       store.get_item(odd).updated_at)  # type: ignore[union-attr]  # fmt: skip


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = SQLiteStore(db)
    store.add_events([Event("u", "i")])  # the WAL and its index exist from the first write
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    store.close()
    assert set(modes) >= {"events.db", "events.db-wal", "events.db-shm"}
    assert set(modes.values()) == {0o600}, modes
    db2 = tmp_path / "shared.db"
    db2.touch(mode=0o640)
    os.chmod(db2, 0o640)  # an existing file keeps the mode its owner gave it
    SQLiteStore(db2).close()
    assert stat.S_IMODE(db2.stat().st_mode) == 0o640


def test_trained_through(store: EventStore) -> None:
    meta = {"retrain": {"store": store.location, "last_event_id": 7}}
    assert trained_through(meta, store) == 7
    assert trained_through({"retrain": {"store": "elsewhere", "last_event_id": 7}}, store) == 0
    assert trained_through({}, store) == trained_through({"retrain": "junk"}, store) == 0
