"""Request counters and latency histograms in the Prometheus text format, without a dependency.

Routes are labelled by their template (``/users/{user}/history``), never the raw path, so the
number of series stays bounded whatever clients send.

One process keeps its counters in memory. Several worker processes of one service (``lmrec serve
--workers N``) share a directory instead: each process writes every counter through to its own file
there (:class:`_CounterFile`, a memory-mapped table of named values, one writer per file), and
``/metrics``, whichever worker answers it, reads every file and sums them. A worker that died and was
replaced leaves its file, so totals never go down (the rule Prometheus' own multiprocess mode follows).
"""

from __future__ import annotations

import bisect
import json
import mmap
import os
import secrets
import struct
import threading
from collections import defaultdict
from pathlib import Path

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FILE_PREFIX = "lmrec-metrics-"

# A series is named by a tuple: ("requests", method, route, status), ("bucket", route, i),
# ("sum", route), ("count", route), ("events",), ("reloads",).
Key = tuple[str | int, ...]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _CounterFile:
    """This process's counters in a file others can read: a header (bytes used), then records of
    ``[key length u32][key JSON][padding to 8][value f64]``. Only this process writes it; a record is
    complete before the header counts it, and a value is one aligned 8-byte store, so a reader never
    sees half of either."""

    HEADER = 8

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"{FILE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}.bin"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._size = 1 << 16
        os.ftruncate(self._fd, self._size)
        self._map = mmap.mmap(self._fd, self._size)
        self._used = self.HEADER
        self._offsets: dict[Key, int] = {}

    def add(self, key: Key, amount: float) -> None:
        offset = self._offsets.get(key)
        if offset is None:
            offset = self._append(key)
        (value,) = struct.unpack_from("d", self._map, offset)
        struct.pack_into("d", self._map, offset, value + amount)

    def _append(self, key: Key) -> int:
        name = json.dumps(key).encode()
        padded = (4 + len(name) + 7) // 8 * 8
        need = self._used + padded + 8
        if need > self._size:
            while need > self._size:
                self._size *= 2
            os.ftruncate(self._fd, self._size)
            self._map.close()
            self._map = mmap.mmap(self._fd, self._size)
        struct.pack_into(f"I{len(name)}s", self._map, self._used, len(name), name)
        offset = self._used + padded
        struct.pack_into("d", self._map, offset, 0.0)
        self._used = need
        struct.pack_into("Q", self._map, 0, self._used)  # now readers see the record
        self._offsets[key] = offset
        return offset

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def read_counters(path: Path) -> dict[Key, float]:
    """The counters in one process's file."""
    data = path.read_bytes()
    if len(data) < _CounterFile.HEADER:
        return {}
    (used,) = struct.unpack_from("Q", data, 0)
    out: dict[Key, float] = {}
    at = _CounterFile.HEADER
    while at < min(used, len(data)):
        (length,) = struct.unpack_from("I", data, at)
        name = data[at + 4 : at + 4 + length]
        padded = (4 + length + 7) // 8 * 8
        (value,) = struct.unpack_from("d", data, at + padded)
        key = tuple(json.loads(name))
        out[key] = out.get(key, 0.0) + value
        at += padded + 8
    return out


class Metrics:
    """Thread-safe counters for one process, or for every process sharing ``directory``."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._values: dict[Key, float] = defaultdict(float)
        self.directory = Path(directory) if directory is not None else None
        self._file = _CounterFile(self.directory) if self.directory is not None else None

    def _add(self, key: Key, amount: float = 1.0) -> None:
        self._values[key] += amount
        if self._file is not None:
            self._file.add(key, amount)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._add(("requests", method, route, status))
            self._add(("bucket", route, bisect.bisect_left(BUCKETS, seconds)))
            self._add(("sum", route), seconds)
            self._add(("count", route))

    def add_events(self, n: int) -> None:
        with self._lock:
            self._add(("events",), n)

    def add_reload(self) -> None:
        with self._lock:
            self._add(("reloads",))

    def totals(self) -> dict[Key, float]:
        """Every series: this process's, or summed over every process sharing the directory."""
        if self.directory is None:
            with self._lock:
                return dict(self._values)
        out: dict[Key, float] = defaultdict(float)
        for path in sorted(self.directory.glob(f"{FILE_PREFIX}*.bin")):
            for key, value in read_counters(path).items():
                out[key] += value
        return dict(out)

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                self._file.close()
                self._file = None

    def render(self, model: str, version: str, run: str) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        values = self.totals()
        info = f'model="{_label(model)}",version="{_label(version)}",run="{_label(run)}"'
        lines = [
            "# HELP lmrec_model_info The model being served (the value is always 1).",
            "# TYPE lmrec_model_info gauge",
            f"lmrec_model_info{{{info}}} 1",
            "# HELP lmrec_feedback_events_total Feedback events accepted.",
            "# TYPE lmrec_feedback_events_total counter",
            f"lmrec_feedback_events_total {int(values.get(('events',), 0))}",
            "# HELP lmrec_reloads_total Successful model reloads (summed over worker processes).",
            "# TYPE lmrec_reloads_total counter",
            f"lmrec_reloads_total {int(values.get(('reloads',), 0))}",
            "# HELP lmrec_requests_total HTTP requests by method, route and status.",
            "# TYPE lmrec_requests_total counter",
        ]
        requests = sorted((k[1:], v) for k, v in values.items() if k[0] == "requests")
        for (method, route, status), n in requests:
            labels = f'method="{_label(str(method))}",route="{_label(str(route))}",status="{status}"'
            lines.append(f"lmrec_requests_total{{{labels}}} {int(n)}")
        lines += [
            "# HELP lmrec_request_seconds HTTP request latency by route.",
            "# TYPE lmrec_request_seconds histogram",
        ]
        routes = sorted({str(k[1]) for k in values if k[0] == "count"})
        for route in routes:
            r = _label(route)
            total = 0
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                total += int(values.get(("bucket", route, i), 0))
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'lmrec_request_seconds_bucket{{route="{r}",le="{le}"}} {total}')
            lines.append(f'lmrec_request_seconds_sum{{route="{r}"}} {values.get(("sum", route), 0.0):.6f}')
            lines.append(f'lmrec_request_seconds_count{{route="{r}"}} {int(values.get(("count", route), 0))}')
        return "\n".join(lines) + "\n"
