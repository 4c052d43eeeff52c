"""Where a served request's time goes: a py-spy raw (collapsed) profile of a service worker, grouped.

The profiles in ``benchmarks/results/serve-pyspy-*.txt.gz`` were recorded with
``py-spy record -p WORKER_PID -d 10 -r 250 -f raw --nonblocking`` while ``wrk -c4`` loaded
``/recommend``. Samples of a thread waiting (a condition, the event loop's select) are left out;
each other sample goes to the first group whose frame it holds, in the order below.

    .venv/bin/python benchmarks/pyspy_groups.py benchmarks/results/serve-pyspy-sqlite.txt.gz
"""

from __future__ import annotations

import argparse
import collections
import gzip
from pathlib import Path

GROUPS = (
    ("model forward + top-k (state.score_together)", "score_together"),
    ("store: the user's events", "user_events"),
    ("store: stored items", "get_items"),
    ("store: other", "PostgresStore."),
    ("store: other", "SQLiteStore."),
    ("answer, describe, JSON (lmrec)", "LiveState.answer"),
    ("answer, describe, JSON (lmrec)", "describe ("),
    ("answer, describe, JSON (lmrec)", "recommend_json"),
    ("query: history rows, IDs (lmrec)", "LiveState.query"),
    ("request validation (FastAPI, pydantic)", "solve_dependencies"),
    ("request validation (FastAPI, pydantic)", "request_body_to_args"),
    ("response write (uvicorn transport)", "RequestResponseCycle.send"),
    ("HTTP parsing (uvicorn, httptools)", "data_received"),
    ("metrics middleware", "Metrics.observe"),
)
WAITING = ("Condition.wait", "runners.py:118", "_asyncio.py:1133")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    path = parser.parse_args().profile
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, n = line.rsplit(" ", 1)
        if any(w in stack.split(";")[-1] for w in WAITING):
            continue
        group = next((name for name, frame in GROUPS if frame in stack), "rest: ASGI, Starlette, FastAPI, event loop")
        counts[group] += int(n)
    total = sum(counts.values())
    print(f"{path.name}: {total} busy samples")
    for name, n in counts.most_common():
        print(f"- {name}: {n / total:.1%}")


if __name__ == "__main__":
    main()
