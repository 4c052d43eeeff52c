"""The event store: feedback events, items added at serve time, and API keys.

One interface (:class:`EventStore`) and two implementations: the default on the standard
library's sqlite3 (:class:`SQLiteStore`: one file, WAL journal, ``synchronous=FULL`` so a write the
service has acknowledged survives a crash or a kill; created readable by its owner only), and
:class:`lmrec.serve.pgstore.PostgresStore` (``pip install 'lmrec[postgres]'``) for several service
processes or machines sharing one database. :func:`lmrec.serve.stores.open_store` picks the
implementation from a URL (it lives there so that this module never refers to the PostgreSQL one).

What may be stored is one rule for every writer (the service checks it at its boundary, the stores
again), and how a stored record is read back whatever an older version wrote: :mod:`lmrec.serve.records`.

API keys look like ``lmr_<key id>_<secret>``. Only the SHA-256 of the whole key is stored; the
plaintext is returned once by :meth:`EventStore.create_key` and never again. The secret has 256
bits of entropy, so a plain (fast) hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmrec.errors import DataError, LmrecError
from lmrec.serve.records import (
    MAX_DEPTH,
    MAX_ID,
    MAX_TIMESTAMP,
    Event,
    Item,
    brief,
    check_events,
    check_items,
    fields_problem,
    id_problem,
    readable_item,
    text_problem,
    timestamp_problem,
)

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "lmr"


def trained_through(meta: dict[str, Any], store: EventStore) -> int:
    """The id of the last event of ``store`` that a run (its ``run.json``) was trained on (0: none)."""
    info = meta.get("retrain")
    if not isinstance(info, dict) or info.get("store") != store.location:
        return 0
    return int(info.get("last_event_id", 0))


class StoreUnavailable(LmrecError):
    """The store's database cannot be reached, or all its connections stayed busy too long (HTTP 503)."""


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key without its secret."""

    key_id: str
    scopes: tuple[str, ...]
    created: float
    revoked: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


class EventStore(ABC):
    """Durable storage behind the service. Every method is safe to call from several threads.

    A store keeps no copy of what it read: every call asks the database, so what one process
    wrote is what the next read in any process sees.
    """

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the data lives: an absolute file path, or a database URL without its password."""

    # -- events ---------------------------------------------------------------------------------
    @abstractmethod
    def add_events(self, events: Sequence[Event]) -> int:
        """Store all events in one transaction (all or none); returns how many were stored."""

    @abstractmethod
    def user_events(self, user: str) -> list[Event]:
        """The events of one user in time order (timestamp, then arrival)."""

    def history(self, user: str) -> list[str]:
        """The items of one user's events in time order."""
        return [e.item for e in self.user_events(user)]

    @abstractmethod
    def all_events(self) -> Iterator[Event]:
        """Every event in arrival order (for retraining)."""

    @abstractmethod
    def count_events(self) -> int: ...

    # -- items ----------------------------------------------------------------------------------
    @abstractmethod
    def upsert_items(self, items: Sequence[Item]) -> int:
        """Insert or replace items by ID in one transaction; returns how many."""

    @abstractmethod
    def get_items(self, ids: Sequence[str]) -> dict[str, Item]:
        """The stored items among ``ids`` (missing IDs are absent from the result)."""

    def get_item(self, item_id: str) -> Item | None:
        return self.get_items([item_id]).get(item_id)

    @abstractmethod
    def items_updated_since(self, since: float) -> list[Item]:
        """Items added or updated at or after ``since`` (the store's clock), oldest first."""

    # -- API keys -------------------------------------------------------------------------------
    @abstractmethod
    def create_key(self, scopes: Iterable[str]) -> tuple[str, str]:
        """Make a key with ``scopes``; returns (key id, plaintext). The plaintext is not stored."""

    @abstractmethod
    def verify_key(self, plaintext: str) -> frozenset[str] | None:
        """The scopes of an active key, or None for a wrong, malformed or revoked key."""

    @abstractmethod
    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key; False if there is no such active key."""

    @abstractmethod
    def list_keys(self) -> list[ApiKey]: ...

    # -- the served run -------------------------------------------------------------------------
    @abstractmethod
    def record_run(self, run: str) -> int:
        """Record ``run`` as the run every service process on this store serves from now on (a reload
        through any of them); returns its number, which only grows."""

    @abstractmethod
    def current_run(self) -> tuple[int, str] | None:
        """The latest recorded run (its number, its directory), or None if none was recorded."""

    @abstractmethod
    def close(self) -> None: ...


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{netloc}{slash}{tail}"


def _hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def new_key(scopes: Iterable[str]) -> tuple[str, str, str, str]:
    """A fresh key for ``scopes``: (key id, plaintext, hash to store, scopes to store)."""
    wanted = check_scopes(scopes)
    key_id = secrets.token_hex(6)
    plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, plaintext, _hash(plaintext), ",".join(wanted)


def key_id_of(plaintext: str) -> str | None:
    """The key id part of a well-formed key, or None."""
    parts = plaintext.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    return parts[1]


def key_matches(stored_hash: str, plaintext: str) -> bool:
    """Compare in constant time, so the response time says nothing about how much of a key was right."""
    return hmac.compare_digest(stored_hash, _hash(plaintext))


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes as a sorted tuple; unknown names are an error."""
    out = sorted({s.strip() for s in scopes if s.strip()})
    bad = [s for s in out if s not in SCOPES]
    if bad or not out:
        raise DataError(f"scopes must be some of {list(SCOPES)}, got {out or 'none'}")
    return tuple(out)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user        TEXT NOT NULL,
    item        TEXT NOT NULL,
    type        TEXT NOT NULL,
    timestamp   REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user, timestamp, id);
CREATE TABLE IF NOT EXISTS items (
    item       TEXT PRIMARY KEY,
    title      TEXT,
    fields     TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_updated ON items (updated_at);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id  TEXT PRIMARY KEY,
    hash    TEXT NOT NULL,
    scopes  TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS served_runs (
    id  INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    at  REAL NOT NULL
);
"""


def _create_private(path: Path) -> None:
    """Create the database file, if it is new, readable and writable by its owner only (0600): it
    holds every user's history. SQLite gives its ``-wal`` and ``-shm`` files the database's mode."""
    with contextlib.suppress(FileExistsError):  # an existing store keeps the mode its owner gave it
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))


class SQLKeys:
    """API keys over SQL, shared by :class:`SQLiteStore` and ``PostgresStore``: a store gives its
    ``_transaction`` and ``_query`` and the parameter mark of its driver (``?`` or ``%s``)."""

    _mark = "?"

    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)

    def create_key(self, scopes: Iterable[str]) -> tuple[str, str]:
        key_id, plaintext, hashed, wanted = new_key(scopes)
        with self._transaction() as db:
            db.execute(
                self._sql("INSERT INTO api_keys (key_id, hash, scopes, created) VALUES (?, ?, ?, ?)"),
                (key_id, hashed, wanted, time.time()),
            )
        return key_id, plaintext

    def verify_key(self, plaintext: str) -> frozenset[str] | None:
        key_id = key_id_of(plaintext)
        if key_id is None:
            return None
        rows = self._query(self._sql("SELECT hash, scopes, revoked FROM api_keys WHERE key_id = ?"), (key_id,))
        if not rows:
            return None
        stored, scopes, revoked = rows[0]
        if not key_matches(stored, plaintext) or revoked is not None:
            return None
        return frozenset(scopes.split(","))

    def revoke_key(self, key_id: str) -> bool:
        with self._transaction() as db:
            cur = db.execute(
                self._sql("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL"), (time.time(), key_id)
            )
            return bool(cur.rowcount > 0)

    def list_keys(self) -> list[ApiKey]:
        rows = self._query("SELECT key_id, scopes, created, revoked FROM api_keys ORDER BY created")
        return [ApiKey(k, tuple(s.split(",")), c, r) for k, s, c, r in rows]


class SQLiteStore(SQLKeys, EventStore):
    """The default store: one SQLite file, one connection guarded by a lock.

    SQLite serialises writers anyway; a lock around one connection keeps the code simple and
    is far from the bottleneck next to scoring. Several processes on one machine may share the
    file (WAL mode, a busy timeout); across machines, use :class:`~lmrec.serve.pgstore.PostgresStore`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._location = str(self.path.resolve())  # now: a symlinked run directory may later point elsewhere
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(self.path)
        self._lock = threading.Lock()
        self._reported: set[tuple[str, float | None]] = set()  # malformed stored items already logged
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @property
    def location(self) -> str:
        return self._location

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- events ---------------------------------------------------------------------------------
    def add_events(self, events: Sequence[Event]) -> int:
        check_events(events)
        now = time.time()
        rows = [(e.user, e.item, e.type, now if e.timestamp is None else float(e.timestamp), now) for e in events]
        with self._transaction() as db:
            db.executemany("INSERT INTO events (user, item, type, timestamp, received_at) VALUES (?, ?, ?, ?, ?)", rows)
        return len(rows)

    def user_events(self, user: str) -> list[Event]:
        rows = self._query(
            "SELECT id, user, item, type, timestamp, received_at FROM events WHERE user = ? ORDER BY timestamp, id",
            (user,),
        )
        return [Event(u, i, t, ts, r, id_) for id_, u, i, t, ts, r in rows]

    def all_events(self) -> Iterator[Event]:
        last = 0
        while True:  # in pages, so a large log is never held in memory at once
            rows = self._query(
                "SELECT id, user, item, type, timestamp, received_at FROM events WHERE id > ? ORDER BY id LIMIT 10000",
                (last,),
            )
            if not rows:
                return
            for id_, u, i, t, ts, r in rows:
                yield Event(u, i, t, ts, r, id_)
            last = rows[-1][0]

    def count_events(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM events")[0][0])

    # -- items ----------------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[Item]) -> int:
        check_items(items)
        now = time.time()
        rows = [(it.item, it.title, json.dumps(it.fields), now) for it in items]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO items (item, title, fields, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (item) DO UPDATE SET title = excluded.title, fields = excluded.fields, "
                "updated_at = excluded.updated_at",
                rows,
            )
        return len(rows)

    def get_items(self, ids: Sequence[str]) -> dict[str, Item]:
        out: dict[str, Item] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT item, title, fields, updated_at FROM items WHERE item IN ({marks})", chunk)
            for item, title, fields, updated in rows:
                out[item] = readable_item(item, title, fields, updated, self._reported)
        return out

    def items_updated_since(self, since: float) -> list[Item]:
        rows = self._query(
            "SELECT item, title, fields, updated_at FROM items WHERE updated_at >= ? ORDER BY updated_at", (since,)
        )
        return [readable_item(item, title, fields, updated, self._reported) for item, title, fields, updated in rows]

    # -- the served run -------------------------------------------------------------------------
    def record_run(self, run: str) -> int:
        with self._transaction() as db:
            cur = db.execute("INSERT INTO served_runs (run, at) VALUES (?, ?)", (run, time.time()))
            return int(cur.lastrowid or 0)

    def current_run(self) -> tuple[int, str] | None:
        rows = self._query("SELECT id, run FROM served_runs ORDER BY id DESC LIMIT 1")
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = [
    "KEY_PREFIX",
    "MAX_DEPTH",
    "MAX_ID",
    "MAX_TIMESTAMP",
    "SCOPES",
    "ApiKey",
    "Event",
    "EventStore",
    "Item",
    "SQLKeys",
    "SQLiteStore",
    "StoreUnavailable",
    "brief",
    "check_events",
    "check_items",
    "check_scopes",
    "fields_problem",
    "id_problem",
    "key_id_of",
    "key_matches",
    "new_key",
    "readable_item",
    "redact_url",
    "text_problem",
    "timestamp_problem",
    "trained_through",
]
