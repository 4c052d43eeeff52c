"""Load test of the recommendation service on loopback: latency percentiles and throughput.

Starts ``lmrec.serve.serve`` with uvicorn in a subprocess on 127.0.0.1 (a free port, keys off,
access log off), sends a bounded number of ``POST /recommend`` requests from a few client threads
(one keep-alive connection each, users taken round-robin from the run), and stops at the request
count or the time limit, whichever comes first. Nothing leaves the machine.

Run from the repository root::

    .venv/bin/python benchmarks/loadtest.py --requests 50                    # smoke run, tiny synthetic SASRec run
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --requests 2000 --concurrency 4
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --rerank mmr:0.7   # MMR re-ranking, genre similarity
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --ann              # top-k from an HNSW index

Without ``--run`` it trains a tiny run (``--model``, SASRec by default) on synthetic data in a
temporary directory. It prints
p50/p95/p99 latency and throughput and writes them, with the machine and command, as JSON to
``--out``. The client threads share the machine with the server: on a small machine keep
``--concurrency`` low and read the numbers as an upper bound on latency.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import shlex
import socket
import statistics
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
    parser.add_argument("--run", type=Path, help="run directory (default: a tiny synthetic run of --model)")
    parser.add_argument("--model", choices=("sasrec", "ease"), default="sasrec", help="model of the tiny run")
    parser.add_argument(
        "--rerank", metavar="METHOD:LAM[:SIM]", help="re-rank every request, e.g. mmr:0.7 or dpp:0.5:embedding"
    )
    parser.add_argument("--ann", action="store_true", help="serve top-k from an ANN index (lmrec[ann])")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec", help="lmrec dataset cache")
    parser.add_argument("--requests", type=int, default=2000, help="total /recommend requests")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0, help="hard limit in seconds for the requests")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads in the server")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loadtest.json")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or not 0 < args.time_limit <= 600:
        parser.error("--requests and --concurrency must be >= 1, --time-limit in (0, 600]")
    args.rerank_body = None
    if args.rerank:
        method, _, rest = args.rerank.partition(":")
        lam, _, similarity = rest.partition(":")
        try:
            args.rerank_body = {
                "method": method,
                "lam": float(lam),
                **({"similarity": similarity} if similarity else {}),
            }
        except ValueError:
            parser.error(f"--rerank takes METHOD:LAM[:SIMILARITY], e.g. mmr:0.7:embedding; got {args.rerank!r}")
    return args


TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "ease": {},
    "sasrec": {"dim": 32, "inner": 64, "layers": 1, "max_len": 20, "epochs": 3, "batch_size": 64},
}


def tiny_run(root: Path, model: str) -> Path:
    """A small run on synthetic data (300 users, 200 items) for a self-contained test."""
    import numpy as np

    from lmrec.models.base import FitOptions
    from lmrec.runs import DataRecipe, train_run

    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for u in range(300):
        for t, i in enumerate(rng.choice(200, 20, replace=False)):
            lines.append(f"u{u},i{i},{u * 100 + t}")
    data = root / "data.csv"
    data.write_text("\n".join(lines) + "\n")
    train_run(DataRecipe(dataset=str(data)), model, TINY_CONFIGS[model], root / "run", root / "cache", FitOptions())
    return root / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    payload = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    return response.status, json.loads(data) if data else None


def wait_ready(port: int, server: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            status, health = request(conn, "GET", "/health")
            conn.close()
            if status == 200:
                return dict(health)
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout:.0f}s")


def load(port: int, users: list[str], args: argparse.Namespace) -> tuple[list[float], int, float]:
    """Send the requests; returns per-request latencies (s), the error count, and the wall time."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.time_limit

    def worker() -> None:
        nonlocal errors
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            started = time.perf_counter()
            try:
                body = {"user": users[n % len(users)], "k": args.k}
                if args.rerank_body is not None:
                    body["rerank"] = args.rerank_body
                status, _ = request(conn, "POST", "/recommend", body)
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            mine.append(time.perf_counter() - started)
            failed += status != 200
        conn.close()
        with lock:
            latencies.extend(mine)
            errors += failed

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmrec-loadtest-") as tmp:
        run_dir = args.run.resolve() if args.run else tiny_run(Path(tmp), args.model)
        cache = args.cache_dir if args.run else Path(tmp) / "cache"
        port = free_port()
        env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
        code = (
            "import sys, torch; torch.set_num_threads(int(sys.argv[5])); from lmrec.serve import serve; "
            "serve(sys.argv[1], sys.argv[2], sys.argv[3], host='127.0.0.1', port=int(sys.argv[4]), "
            "require_keys=False, access_log=False, ann=sys.argv[6] == '1')"
        )
        db = Path(tmp) / "events.db"
        cmd = [sys.executable, "-c", code, str(run_dir), str(db), str(cache), str(port), str(args.threads)]
        cmd.append("1" if args.ann else "0")
        server = subprocess.Popen(cmd, env=env)
        try:
            health = wait_ready(port, server, timeout=120)
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            _, listed = request(conn, "GET", "/users?limit=1000")
            warm = {"user": listed["users"][0], "k": args.k, "rerank": args.rerank_body}
            status, answer = request(conn, "POST", "/recommend", warm)  # builds a re-ranker outside the timing
            if status != 200:
                raise SystemExit(f"POST /recommend answered {status}: {answer}")
            conn.close()
            latencies, errors, wall = load(port, listed["users"], args)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    ms = [x * 1000 for x in latencies]
    result = {
        "endpoint": "POST /recommend",
        "model": health["model"],
        "run": health["run"] if args.run else f"tiny synthetic {args.model} run (300 users, 200 items)",
        "index": health.get("index", "exact"),
        "rerank": args.rerank_body,
        "users": health["users"],
        "items": health["items"],
        "k": args.k,
        "requests": len(ms),
        "errors": errors,
        "concurrency": args.concurrency,
        "server_threads": args.threads,
        "seconds": round(wall, 3),
        "throughput_rps": round(len(ms) / wall, 1) if wall > 0 else None,
        "latency_ms": {
            "p50": round(percentile(ms, 50), 3),
            "p95": round(percentile(ms, 95), 3),
            "p99": round(percentile(ms, 99), 3),
            "mean": round(statistics.fmean(ms), 3),
            "max": round(max(ms), 3),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, "benchmarks/loadtest.py", *argv]),
    }
    lat = result["latency_ms"]
    print(
        f"{result['model']} ({result['index']} top-k{', rerank ' + args.rerank if args.rerank else ''}): "
        f"{result['requests']} requests ({errors} errors), concurrency {args.concurrency}, "
        f"{result['throughput_rps']} req/s; latency ms p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
