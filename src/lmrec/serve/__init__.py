"""The recommendation service (``pip install 'lmrec[serve]'``).

The event store needs only the standard library, so ``lmrec keys`` works without the extra;
the web app (FastAPI) and the server (uvicorn) are imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmrec.serve.store import SCOPES, ApiKey, Event, EventStore, Item, SQLiteStore
from lmrec.serve.stores import open_store

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(run_dir: str | Path, *args: Any, **kwargs: Any) -> FastAPI:
    """See :func:`lmrec.serve.app.create_app` (imported here lazily: it needs fastapi)."""
    from lmrec.serve.app import create_app as make

    return make(run_dir, *args, **kwargs)


def serve(run_dir: str | Path, *args: Any, **kwargs: Any) -> None:
    """See :func:`lmrec.serve.app.serve` (imported here lazily: it needs fastapi and uvicorn)."""
    from lmrec.serve.app import serve as run

    run(run_dir, *args, **kwargs)


__all__ = ["SCOPES", "ApiKey", "Event", "EventStore", "Item", "SQLiteStore", "create_app", "open_store", "serve"]
