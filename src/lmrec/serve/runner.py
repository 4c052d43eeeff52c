"""Running the service: :func:`serve` (uvicorn, one process or a supervisor and its workers) and the
access log's configuration."""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmrec.cache import default_cache
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.runs import open_run
from lmrec.serve.limits import Limits
from lmrec.serve.retrain import default_store
from lmrec.serve.store import SQLiteStore
from lmrec.serve.stores import open_store

FOLLOW_SECONDS = 1.0  # how often a served process checks the store for a run reloaded elsewhere
WORKER_START_S = 60  # how long a worker process may take to import before it answers health pings
GRACEFUL_S = 10  # on shutdown, how long requests in flight may take before their connections are closed
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def run_service(
    make_app: Callable[..., Any],
    run_dir: str | Path,
    db_url: str | Path | None = None,
    cache_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    require_keys: bool = True,
    access_log: bool = True,
    ann: bool = False,
    watch: float | None = None,
    workers: int = 1,
    micro_batch: bool = True,
    follow: float | None = FOLLOW_SECONDS,
    limits: Limits = Limits(),  # noqa: B008 - frozen
) -> None:
    """Run the service that ``make_app`` builds (:func:`lmrec.serve.app.create_app`) with uvicorn until
    interrupted; :func:`lmrec.serve.app.serve` documents the arguments.

    ``workers`` > 1 starts that many worker processes (uvicorn's supervisor; one listening socket),
    each building its own app from the same arguments (``make_app`` is the factory). They share
    the store, so a store every process can write is wanted: PostgreSQL. SQLite works on one machine
    but lets one writer in at a time, so feedback waits its turn; a warning says so. Their metrics are
    summed over a shared directory, and a reload through any of them reaches all (``follow``).
    """
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("uvicorn", "serve") from exc
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    db = db_url if db_url is not None else default_store(Path(run_dir))
    store = open_store(db)
    try:
        current = store.current_run()
        sqlite = isinstance(store, SQLiteStore)
    finally:
        store.close()
    since = current[0] if current is not None else 0
    options: dict[str, Any] = {"require_keys": require_keys, "ann": ann, "watch": watch, "micro_batch": micro_batch}
    options.update(follow=follow, follow_since=since, max_body_bytes=limits.max_body_bytes)
    options.update(body_timeout_s=limits.body_timeout_s)
    bounds = {**limits.uvicorn_options(), "timeout_graceful_shutdown": GRACEFUL_S}
    log = logging.getLogger("uvicorn.error")
    if workers == 1:
        app = make_app(run_dir, db, cache_dir, **options)
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_config=log_config(), **bounds)
        return
    from uvicorn.supervisors import Multiprocess

    if sqlite:
        log.warning(
            "%d workers on one SQLite store: SQLite lets one writer in at a time, so /feedback from the workers "
            "queues; use PostgreSQL (--db postgresql://...) for several workers",
            workers,
        )
    open_run(Path(run_dir), Path(cache_dir) if cache_dir is not None else default_cache())  # fail here, not N times
    with tempfile.TemporaryDirectory(prefix="lmrec-serve-") as metrics_dir:
        factory = functools.partial(make_app, str(run_dir), str(db), cache_dir, metrics_dir=metrics_dir, **options)
        config = uvicorn.Config(
            factory,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_config=log_config(),
            # A worker answers the supervisor's health pings only once it has imported torch and the
            # service, which takes more than uvicorn's default 5 s on a small, busy machine.
            timeout_worker_healthcheck=WORKER_START_S,
            **bounds,
        )
        server = uvicorn.Server(config)
        sock = config.bind_socket()
        try:
            worker = functools.partial(_worker, server.run, os.getpid())  # dies with this process
            Multiprocess(config, target=worker, sockets=[sock]).run()
        finally:
            sock.close()


def _worker(run: Callable[..., None], supervisor: int, sockets: list[socket.socket] | None = None) -> None:
    """A worker process of ``--workers N``: it stops when its supervisor dies, then serves."""
    die_with_parent(supervisor)
    run(sockets=sockets)


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies, even by ``kill -9`` (Linux's
    ``prctl(PR_SET_PDEATHSIG)``), so that no worker serves on as an orphan holding the port. A parent
    already gone before that (``parent`` is not our parent any more) ends this process now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            logging.getLogger("uvicorn.error").warning(
                "could not ask to stop with the supervisor: %s", os.strerror(ctypes.get_errno())
            )
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


MAX_LOGGED_PATH = 200  # characters of a request's path and query in the access log


class BriefAccessLog(logging.Filter):
    """Cut the request path in uvicorn's access log lines to ``MAX_LOGGED_PATH`` characters, so a
    client cannot write a 16 KiB ID into the log with every request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{a[:MAX_LOGGED_PATH]}...({len(a)} characters)"
                if isinstance(a, str) and len(a) > MAX_LOGGED_PATH
                else a
                for a in record.args
            )
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with :class:`BriefAccessLog` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["brief_paths"] = {"()": BriefAccessLog}
    config["handlers"]["access"].setdefault("filters", []).append("brief_paths")
    return config
