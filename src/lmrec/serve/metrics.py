"""Request counters and latency histograms in the Prometheus text format, without a dependency.

Routes are labelled by their template (``/users/{user}/history``), never the raw path, so the
number of series stays bounded whatever clients send.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._events = 0
        self._reloads = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            buckets = self._buckets.setdefault(route, [0] * (len(BUCKETS) + 1))
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sums[route] += seconds
            self._counts[route] += 1

    def add_events(self, n: int) -> None:
        with self._lock:
            self._events += n

    def add_reload(self) -> None:
        with self._lock:
            self._reloads += 1

    def render(self, model: str, version: str, run: str) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        info = f'model="{_label(model)}",version="{_label(version)}",run="{_label(run)}"'
        with self._lock:
            lines = [
                "# HELP lmrec_model_info The model being served (the value is always 1).",
                "# TYPE lmrec_model_info gauge",
                f"lmrec_model_info{{{info}}} 1",
                "# HELP lmrec_feedback_events_total Feedback events accepted.",
                "# TYPE lmrec_feedback_events_total counter",
                f"lmrec_feedback_events_total {self._events}",
                "# HELP lmrec_reloads_total Successful model reloads.",
                "# TYPE lmrec_reloads_total counter",
                f"lmrec_reloads_total {self._reloads}",
                "# HELP lmrec_requests_total HTTP requests by method, route and status.",
                "# TYPE lmrec_requests_total counter",
            ]
            for (method, route, status), n in sorted(self._requests.items()):
                labels = f'method="{_label(method)}",route="{_label(route)}",status="{status}"'
                lines.append(f"lmrec_requests_total{{{labels}}} {n}")
            lines += [
                "# HELP lmrec_request_seconds HTTP request latency by route.",
                "# TYPE lmrec_request_seconds histogram",
            ]
            for route, buckets in sorted(self._buckets.items()):
                r = _label(route)
                total = 0
                for bound, n in zip((*BUCKETS, float("inf")), buckets, strict=True):
                    total += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'lmrec_request_seconds_bucket{{route="{r}",le="{le}"}} {total}')
                lines.append(f'lmrec_request_seconds_sum{{route="{r}"}} {self._sums[route]:.6f}')
                lines.append(f'lmrec_request_seconds_count{{route="{r}"}} {self._counts[route]}')
        return "\n".join(lines) + "\n"
