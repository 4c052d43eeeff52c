"""Open an event store by URL: the one place that knows every implementation.

:mod:`lmrec.serve.store` (the interface and SQLite) and :mod:`lmrec.serve.pgstore` (PostgreSQL, an
extra) do not know about each other beyond the interface; this module picks between them.
"""

from __future__ import annotations

from pathlib import Path

from lmrec.errors import ConfigError
from lmrec.serve.store import EventStore, SQLiteStore, redact_url


def open_store(url: str | Path) -> EventStore:
    """Open (creating tables if needed) the store at ``url``.

    ``sqlite:///path`` or a plain file path: a SQLite file. ``postgresql://user@host:port/db``
    (or ``postgres://``): a PostgreSQL database, which needs ``pip install 'lmrec[postgres]'``.
    """
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from lmrec.serve.pgstore import PostgresStore  # psycopg is an extra: imported only when asked for

        return PostgresStore(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///") :]
    elif "://" in text:
        raise ConfigError(
            f"unsupported store URL {redact_url(text)!r}; use sqlite:///path/to/events.db, a file path, "
            "or postgresql://user@host:port/db"
        )
    if not text:
        raise ConfigError("empty store path")
    return SQLiteStore(Path(text))


__all__ = ["open_store"]
