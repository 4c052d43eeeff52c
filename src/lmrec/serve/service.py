"""What the endpoints share (:class:`Service`: the store and the live state, swapped whole on reload),
and the helpers that run beside the requests: micro-batching of ``/recommend`` (:class:`Batcher`),
reloading when the served run changes on disk (:class:`RunWatcher`) or in the store (:class:`RunFollower`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.data.sources import SOURCES
from lmrec.errors import DataError
from lmrec.runs import RUN_FILE, read_meta
from lmrec.serve.metrics import Metrics
from lmrec.serve.schemas import ServingInfo
from lmrec.serve.state import LiveState, Prepared, score_together
from lmrec.serve.store import EventStore
from lmrec.text.encoders import TextEncoder


class Service:
    """What the endpoints share: the store, the live state (one reference, swapped on reload)."""

    def __init__(
        self,
        run_dir: Path,
        store: EventStore,
        cache_dir: Path,
        require_keys: bool,
        ann: bool = False,
        text_encoder: TextEncoder | None = None,
        metrics_dir: str | Path | None = None,
        run_number: int = 0,
    ) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.require_keys = require_keys
        self.ann = ann
        self.text_encoder = text_encoder
        self.live = self._open(run_dir)
        self.metrics = Metrics(metrics_dir)
        self.run_number = run_number  # the store's record of the served run this process follows
        self._reload_lock = threading.Lock()

    def reload(self, run_dir: str | None, record: bool = True, number: int | None = None) -> LiveState:
        """Build the new state completely, then replace the one reference requests read.

        ``record``: record the run in the store, so that every other process on it follows
        (:class:`RunFollower`); a reload that follows such a record passes its ``number`` instead.
        """
        with self._reload_lock:
            target = Path(run_dir) if run_dir else self.live.run.directory
            self.live = self._open(target)
            if record:
                number = self.store.record_run(str(target))
            if number is not None:
                self.run_number = max(self.run_number, number)
            self.metrics.add_reload()
            return self.live

    def _open(self, run_dir: Path) -> LiveState:
        """Load → check → warm: a state that has answered one request, or an error (nothing swapped)."""
        check_files(run_dir)
        live = LiveState.open(run_dir, self.cache_dir, self.store, ann=self.ann, text_encoder=self.text_encoder)
        live.warm()
        return live

    def info(self) -> ServingInfo:
        live = self.live
        return ServingInfo(model=live.model_name, version=live.version, run=str(live.run.directory))


def check_files(run_dir: Path) -> None:
    """Refuse a run whose files, or whose dataset, are not regular files or directories: reading a FIFO
    or a device blocks forever (and a reload would hold the service's reload lock while it waits)."""
    data = read_meta(run_dir)["data"]  # it refuses a run.json that is not a regular file
    dataset = None if data["dataset"] in SOURCES else Path(str(data["dataset"]))
    paths = [run_dir / name for name in os.listdir(run_dir)]
    if (run_dir / "model").is_dir():
        paths += [run_dir / "model" / name for name in os.listdir(run_dir / "model")]
    if dataset is not None:
        paths.append(dataset)
        if dataset.is_dir():
            paths += [dataset / name for name in os.listdir(dataset)]
    for path in paths:
        if path.exists() and not (path.is_file() or path.is_dir()):
            what = "dataset path" if path == dataset else "file"
            raise DataError(
                f"run {run_dir}: {what} {path} is not a regular file (a FIFO, socket or device); not reading it"
            )


class RunWatcher:
    """Reload the service when the served run's ``run.json`` changes: the run was rewritten, or the run
    directory is a symlink that now points at another run (``ln -sfn runs/new runs/current``).

    A daemon thread checks every ``interval`` seconds. A reload that fails (a run still being written)
    leaves the old state serving and is tried again at the next check; a swap by ``/admin/reload`` is
    taken as the new starting point, not reloaded again.
    """

    def __init__(self, service: Service, interval: float) -> None:
        self.service, self.interval = service, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmrec-run-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _stamp(self) -> tuple[str, int] | None:
        """Which file the served run's ``run.json`` is now, and when it was written (None: unreadable)."""
        path = self.service.live.run.directory / RUN_FILE
        try:
            return str(path.resolve()), path.stat().st_mtime_ns
        except OSError:
            return None

    def _loop(self) -> None:
        log = logging.getLogger("uvicorn.error")  # printed by `lmrec serve`
        live, seen, failed = self.service.live, self._stamp(), None
        while not self._stop.wait(self.interval):
            if self.service.live is not live:  # swapped through /admin/reload meanwhile
                live, seen = self.service.live, self._stamp()
                continue
            now = self._stamp()
            if now is None or now == seen:
                continue
            try:
                live = self.service.reload(None, record=False)  # every worker watches for itself
            except Exception as err:  # keep serving the old state and watching
                if now != failed:
                    log.warning("run %s changed but reloading failed, still serving %s: %s", now[0], live.version, err)
                failed = now
                continue
            seen = now
            log.info("run %s changed: now serving %s", now[0], live.version)


class Batcher:
    """Score the ``/recommend`` requests that are in flight together in one forward pass.

    Requests are answered on the event loop. Each one checks its input, reads its history, hands its
    :class:`~lmrec.serve.state.Prepared` here and waits; the first of them schedules a flush with
    ``call_soon``, which runs after every request the loop already had ready has handed in its own.
    So a lone request waits for nothing, and under load the requests read in one turn of the loop share
    one batch (:func:`~lmrec.serve.state.score_together`). If a batch fails, its queries are scored
    one by one, so only a query that fails alone gets the error.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Prepared, asyncio.Future[tuple[np.ndarray, np.ndarray]]]] = []

    async def score(self, query: Prepared) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = loop.create_future()
        self._pending.append((query, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        try:
            results = score_together([q for q, _ in pending])
        except Exception:
            for query, future in pending:
                try:
                    _resolve(future, score_together([query])[0])
                except Exception as err:
                    if not future.done():
                        future.set_exception(err)
            return
        for (_, future), result in zip(pending, results, strict=True):
            _resolve(future, result)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():  # a client that went away cancelled its request
        future.set_result(value)


class RunFollower:
    """Serve the run the store says is current: ``/admin/reload`` on any process of a store records the
    run it swapped in (:meth:`EventStore.record_run`), and every other process that follows the store
    (every worker of ``lmrec serve --workers N``, every replica on one PostgreSQL) reloads it within
    ``interval`` seconds. A run that fails to load is logged once and left; the old state keeps serving.
    """

    def __init__(self, service: Service, interval: float) -> None:
        self.service, self.interval = service, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmrec-run-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> bool:
        """Reload if the store records a newer run than this process serves; True if it reloaded."""
        current = self.service.store.current_run()
        if current is None or current[0] <= self.service.run_number:
            return False
        number, run = current
        try:
            live = self.service.reload(run, record=False, number=number)
        except Exception as err:  # keep serving the old state; a later record is tried again
            self.service.run_number = number
            logging.getLogger("uvicorn.error").warning("could not follow the store to run %s: %s", run, err)
            return False
        logging.getLogger("uvicorn.error").info("following the store: now serving %s from %s", live.version, run)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as err:  # the store is unreachable for a moment: try at the next check
                logging.getLogger("uvicorn.error").warning("could not read the served run from the store: %s", err)
