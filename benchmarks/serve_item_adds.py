"""/health and /recommend latency while a 1,000-item PUT is encoded: does adding items block the service?

Starts ``lmrec serve`` (keys off, access log off) on 127.0.0.1 for a run of a model that reads item
text (``text-sasrec``; without ``--run`` a tiny one is trained on synthetic data with the packaged
MiniLM encoder), measures /health and /recommend for other users for ``--baseline`` seconds while
idle, then again while one ``PUT /items`` of ``--items`` new items is in flight, and prints
p50/p99/max of each, the PUT's own time, and whether the new items are recommendable when it
returns. Two probe threads (one per endpoint, keep-alive connections) send requests back to back;
every loop is bounded (``--max-seconds``). Nothing leaves the machine.

Run from the repository root, the server pinned like the rest of the benchmarks::

    taskset -c 0 .venv/bin/python benchmarks/serve_item_adds.py --run RUN_DIR --items 1000
    .venv/bin/python benchmarks/serve_item_adds.py --items 1000 --tree /tmp/old   # another checkout's src

It appends one JSON object per run (the numbers, the machine, the command) to ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by design


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a text-sasrec run directory (default: a tiny synthetic one)")
    parser.add_argument("--items", type=int, default=1000, help="new items in the one PUT")
    parser.add_argument("--baseline", type=float, default=5.0, help="seconds of idle probing before the PUT")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop probing after this long anyway")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--tree", type=Path, help="serve the lmrec under TREE/src instead of this checkout")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec", help="lmrec dataset cache")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve_item_adds.jsonl")
    return parser.parse_args(argv)


def tiny_text_run(root: Path) -> Path:
    """300 users, 200 items with titles and genres; text-sasrec over the packaged MiniLM encoder."""
    import numpy as np

    from lmrec.models.base import FitOptions
    from lmrec.runs import DataRecipe, train_run

    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for u in range(300):
        for t, i in enumerate(rng.choice(200, 20, replace=False)):
            lines.append(f"u{u},i{i},{u * 100 + t}")
    data = root / "data"
    data.mkdir()
    (data / "interactions.csv").write_text("\n".join(lines) + "\n")
    genres = ("Drama", "Comedy", "Action", "Romance")
    catalog = "".join(f"i{i},Item number {i},{genres[i % 4]}\n" for i in range(200))
    (data / "items.csv").write_text("item,title,genres\n" + catalog)
    config = {"item_repr": "text", "dim": 32, "inner": 64, "layers": 1, "max_len": 20, "epochs": 2}
    train_run(DataRecipe(dataset=str(data)), "text-sasrec", config, root / "run", root / "cache", FitOptions())
    return root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def call(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summary(latencies: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in latencies]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else math.nan,
    }


class Probe(threading.Thread):
    """Sends one kind of request back to back on a keep-alive connection until told to stop."""

    def __init__(self, port: int, method: str, path: str, bodies: list[Any], deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.bodies, self.deadline = port, method, path, bodies, deadline
        self.window: list[float] | None = None  # where latencies go now (None: not recorded)
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        n = 0
        while not self.done.is_set() and time.monotonic() < self.deadline:
            body = self.bodies[n % len(self.bodies)] if self.bodies else None
            n += 1
            started = time.perf_counter()
            try:
                status, _ = call(conn, self.method, self.path, body)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                continue
            elapsed = time.perf_counter() - started
            if status != 200:
                self.errors += 1
            window = self.window
            if window is not None:
                window.append(elapsed)
        conn.close()


def serve(args: argparse.Namespace, run_dir: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port, log = free_port(), tmp / "server.log"
    cmd = [sys.executable, "-m", "lmrec.cli", "--cache-dir", str(args.cache_dir), "serve", "--run", str(run_dir)]
    cmd += ["--db", str(tmp / "events.db"), "--host", HOST, "--port", str(port), "--no-auth", "--no-access-log"]
    cmd += ["--threads", str(args.threads)]
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve() / "src")
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            ready = call(conn, "GET", "/health")[0] == 200
            conn.close()
            if ready:
                return server, port, log
        except OSError:
            pass
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lmrec-item-adds-"))
    try:
        run_dir = args.run.resolve() if args.run else tiny_text_run(tmp)
        users = [str(u) for u in json.loads((run_dir / "users.json").read_text())][:100]
        server, port, _ = serve(args, run_dir, tmp)
        try:
            deadline = time.monotonic() + args.max_seconds
            probes = [
                Probe(port, "GET", "/health", [], deadline),
                Probe(port, "POST", "/recommend", [{"user": u, "k": 10} for u in users], deadline),
            ]
            for probe in probes:
                probe.start()
            baseline: list[list[float]] = [[], []]
            for probe, window in zip(probes, baseline, strict=True):
                probe.window = window
            time.sleep(args.baseline)
            during: list[list[float]] = [[], []]
            for probe, window in zip(probes, during, strict=True):
                probe.window = window
            stamp = f"{time.time():.0f}"
            genres = ("Drama", "Comedy", "Action", "Romance")
            items = [
                {
                    "item": f"new-{stamp}-{n}",
                    "title": f"A new item {n} about {genres[n % 4].lower()}",
                    "genres": [genres[n % 4]],
                }
                for n in range(args.items)
            ]
            conn = http.client.HTTPConnection(HOST, port, timeout=args.max_seconds)
            started = time.perf_counter()
            status, _ = call(conn, "PUT", "/items", items)
            put_s = time.perf_counter() - started
            for probe in probes:
                probe.window = None
                probe.done.set()
            for probe in probes:
                probe.join(timeout=60)
            _, info = call(conn, "GET", f"/items/{items[-1]['item']}")
            conn.close()
            result = {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {os.cpu_count()} CPUs",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "run": str(run_dir),
                "items": args.items,
                "put_status": status,
                "put_s": round(put_s, 3),
                "recommendable_after_put": bool(info and info.get("recommendable")),
                "baseline": {"health": summary(baseline[0]), "recommend": summary(baseline[1])},
                "during_put": {"health": summary(during[0]), "recommend": summary(during[1])},
                "probe_errors": sum(p.errors for p in probes),
            }
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(json.dumps(result) + "\n")
        return 0 if status == 200 else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
