"""Load test of the recommendation service on loopback: latency percentiles, throughput, CPU per request.

Starts ``lmrec.serve.serve`` (uvicorn, keys off, access log off) in a subprocess on 127.0.0.1 and
loads it with ``POST /recommend`` — or, with ``--mix feedback``, with ``/recommend`` and
``POST /feedback`` alternating 1:1 — users taken round-robin from the run. Nothing leaves the machine.

Two load generators (``--client``):

- ``wrk`` (the default when the ``wrk`` binary is on PATH; ``apt-get install wrk``): a C load generator
  with ``--connections`` keep-alive connections on one thread for ``--duration`` seconds. It costs
  little CPU, which matters when client and server share a small machine.
- ``python``: ``--concurrency`` threads of ``http.client`` sending ``--requests`` requests. Simple and
  dependency-free, but on 2 cores the client itself takes a large share of the CPU.

Run from the repository root::

    .venv/bin/python benchmarks/loadtest.py --requests 50 --client python     # smoke run, tiny synthetic run
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --duration 20 --connections 4
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --mix feedback           # 1:1 with /feedback
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --workers 2 --postgres   # 2 workers, PostgreSQL
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --tree /tmp/old          # serve another checkout
    .venv/bin/python benchmarks/loadtest.py --run RUN_DIR --rerank mmr:0.7 --ann

``--postgres`` starts a throwaway PostgreSQL server (``tests/pg.py``) for the store; otherwise the store
is a fresh SQLite file. ``--tree`` serves the code of another checkout (its ``src``), for a before/after
comparison in one session. Without ``--run`` it trains a tiny run (``--model``) on synthetic data.

It prints p50/p95/p99 latency, throughput and the CPU time per request spent by the server (all its
worker processes), the client and PostgreSQL, and appends them with the machine and command as one
JSON object per line to ``--out``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by design
TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory (default: a tiny synthetic run of --model)")
    parser.add_argument("--model", choices=("sasrec", "ease"), default="sasrec", help="model of the tiny run")
    parser.add_argument(
        "--rerank", metavar="METHOD:LAM[:SIM]", help="re-rank every request, e.g. mmr:0.7 or dpp:0.5:embedding"
    )
    parser.add_argument("--ann", action="store_true", help="serve top-k from an ANN index (lmrec[ann])")
    parser.add_argument("--mix", choices=("none", "feedback"), default="none", help="feedback: 1:1 with /feedback")
    parser.add_argument("--workers", type=int, default=1, help="service worker processes")
    parser.add_argument("--no-batch", action="store_true", help="score each /recommend alone (no micro-batching)")
    parser.add_argument("--postgres", action="store_true", help="store on a throwaway PostgreSQL (tests/pg.py)")
    parser.add_argument("--tree", type=Path, help="serve the lmrec under TREE/src instead of this checkout")
    parser.add_argument("--label", default="", help="a name for this run in the output")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec", help="lmrec dataset cache")
    parser.add_argument("--client", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--duration", type=float, default=20.0, help="wrk: seconds of load")
    parser.add_argument("--connections", type=int, default=4, help="wrk: keep-alive connections")
    parser.add_argument("--requests", type=int, default=2000, help="python client: total requests")
    parser.add_argument("--concurrency", type=int, default=2, help="python client: threads")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=60.0, help="python client: hard limit in seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch / BLAS threads in each server process")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "loadtest.jsonl")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.connections < 1 or args.workers < 1:
        parser.error("--requests, --concurrency, --connections and --workers must be >= 1")
    if not 0 < args.time_limit <= 600 or not 0 < args.duration <= 600:
        parser.error("--time-limit and --duration must be in (0, 600]")
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


# -- what is sent -----------------------------------------------------------------------------------
def bodies(users: list[str], items: list[str], args: argparse.Namespace) -> list[tuple[str, str]]:
    """One cycle of (path, JSON body): every user once, and with the mix a feedback event after each."""
    out = []
    for n, user in enumerate(users):
        rec: dict[str, Any] = {"user": user, "k": args.k}
        if args.rerank_body is not None:
            rec["rerank"] = args.rerank_body
        out.append(("/recommend", json.dumps(rec)))
        if args.mix == "feedback":
            out.append(("/feedback", json.dumps({"user": user, "item": items[(n * 7) % len(items)]})))
    return out


# -- CPU time of processes --------------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_by_process(root: int | None) -> dict[int, float]:
    """User + system CPU seconds so far of ``root`` and each of its descendants (none without a root)."""
    out: dict[int, float] = {}
    for pid in _tree(root) if root is not None else []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return out


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat, all processes)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / TICKS


def cpu_seconds(root: int | None) -> float:
    return sum(cpu_by_process(root).values())


def own_cpu(who: int) -> float:
    """CPU seconds of this process (``resource.RUSAGE_SELF``) or of its finished children."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# -- the load generators ----------------------------------------------------------------------------
def _lua_string(text: str) -> str:
    level = "=" * next(n for n in range(1, 10) if f"]{'=' * n}]" not in text)
    return f"[{level}[{text}]{level}]"


WRK_SCRIPT = """
local paths = {%(paths)s}
local payloads = {%(payloads)s}
local n = 0
local thread_id = 0
local threads = {}
wrk.headers["Content-Type"] = "application/json"
setup = function(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end
init = function(args)
  n = thread_id * 7919
end
request = function()
  n = n + 1
  local i = (n %% #paths) + 1
  return wrk.format("POST", paths[i], nil, payloads[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LMREC {"requests": %%d, "duration_us": %%d, "p50": %%d, "p95": %%d, "p99": %%d, "mean": %%f, "max": %%d, '
    .. '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def load_wrk(port: int, cycle: list[tuple[str, str]], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    script = tmp / "load.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "paths": ", ".join(_lua_string(p) for p, _ in cycle),
            "payloads": ", ".join(_lua_string(b) for _, b in cycle),
        }
    )
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration:g}s", "--timeout", "10s", "-s", str(script)]
    out = subprocess.run([*cmd, f"http://{HOST}:{port}"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^LMREC (\{.*\})$", out, re.MULTILINE)
    if not found:
        raise SystemExit(f"wrk printed no summary:\n{out}")
    s = json.loads(found.group(1))
    seconds = s["duration_us"] / 1e6
    errors = s["connect"] + s["read"] + s["write"] + s["status"] + s["timeout"]
    ms = {q: s[q] / 1000 for q in ("p50", "p95", "p99", "mean", "max")}
    return {"requests": s["requests"], "errors": errors, "seconds": seconds, "latency_ms": ms}


def load_python(port: int, cycle: list[tuple[str, str]], args: argparse.Namespace) -> dict[str, Any]:
    """``--requests`` requests from ``--concurrency`` threads, one keep-alive connection each."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.time_limit
    headers = {"Content-Type": "application/json"}

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
            path, body = cycle[n % len(cycle)]
            started = time.perf_counter()
            try:
                conn.request("POST", path, body=body.encode(), headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            mine.append(time.perf_counter() - started)
            failed += status >= 300
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
    seconds = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(ms),
        "errors": errors,
        "seconds": seconds,
        "latency_ms": {
            "p50": percentile(ms, 50),
            "p95": percentile(ms, 95),
            "p99": percentile(ms, 99),
            "mean": statistics.fmean(ms),
            "max": max(ms),
        },
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# -- the server -------------------------------------------------------------------------------------
SERVER_CODE = (
    "import json, sys, torch; torch.set_num_threads(int(sys.argv[2])); from lmrec.serve import serve; "
    "serve(**json.loads(sys.argv[1]))"
)


@contextmanager
def store_url(args: argparse.Namespace, tmp: Path) -> Iterator[tuple[str, int | None]]:
    """A fresh store: (URL, the PostgreSQL postmaster's pid or None for SQLite)."""
    if not args.postgres:
        yield str(tmp / "events.db"), None
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("lmrec_tests_pg", REPO / "tests" / "pg.py")  # the tests' server
    assert spec is not None and spec.loader is not None
    pg = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pg)
    server = pg.start_server()
    try:
        pid = int((server.root / "data" / "postmaster.pid").read_text().split()[0])
        yield server.new_database(), pid
    finally:
        server.stop()


@contextmanager
def running_server(args: argparse.Namespace, run_dir: Path, db: str, cache: Path) -> Iterator[tuple[int, int]]:
    """The service in a subprocess: (its port, its pid); stopped on the way out."""
    port = free_port()
    kwargs: dict[str, Any] = {
        "run_dir": str(run_dir),
        "db_url": db,
        "cache_dir": str(cache),
        "host": HOST,
        "port": port,
        "require_keys": False,
        "access_log": False,
        "ann": args.ann,
    }
    if args.workers > 1:  # only then: an older tree (--tree) has no such argument
        kwargs["workers"] = args.workers
    if args.no_batch:
        kwargs["micro_batch"] = False
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    if args.tree is not None:
        env["PYTHONPATH"] = str(args.tree.resolve() / "src")
    cmd = [sys.executable, "-c", SERVER_CODE, json.dumps(kwargs), str(args.threads)]
    log = Path(tempfile.mkdtemp(prefix="lmrec-loadtest-log-")) / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, server, timeout=120)
        # Every worker listening before the load starts: wrk's connections are kept for the whole run.
        deadline = time.monotonic() + 120
        while log.read_text().count("Application startup complete") < args.workers:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"the workers did not all start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(log.parent, ignore_errors=True)


def vocabulary(run_dir: Path, name: str) -> list[str]:
    return [str(x) for x in json.loads((run_dir / f"{name}.json").read_text())]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmrec-loadtest-") as tmp_name:
        tmp = Path(tmp_name)
        run_dir = args.run.resolve() if args.run else tiny_run(tmp, args.model)
        cache = args.cache_dir if args.run else tmp / "cache"
        users, items = vocabulary(run_dir, "users"), vocabulary(run_dir, "items")
        cycle = bodies(users, items, args)
        with store_url(args, tmp) as (db, pg_pid), running_server(args, run_dir, db, cache) as (port, pid):
            conn = http.client.HTTPConnection(HOST, port, timeout=10)
            health = request(conn, "GET", "/health")[1]
            for user in users[: 20 * args.workers]:  # warms the workers; builds a re-ranker outside the timing
                warm = {"user": user, "k": args.k, "rerank": args.rerank_body}
                status, answer = request(conn, "POST", "/recommend", warm)
                if status != 200:
                    raise SystemExit(f"POST /recommend answered {status}: {answer}")
            conn.close()
            # The client's CPU: wrk is a child that exits within the window; the Python client is this process.
            client = resource.RUSAGE_CHILDREN if args.client == "wrk" else resource.RUSAGE_SELF
            busy = machine_busy_seconds()
            cpu = (cpu_by_process(pid), own_cpu(client), cpu_seconds(pg_pid))
            measured = load_wrk(port, cycle, args, tmp) if args.client == "wrk" else load_python(port, cycle, args)
            per_process = {p: s - cpu[0].get(p, 0.0) for p, s in cpu_by_process(pid).items()}
            server_cpu = sum(per_process.values())
            client_cpu = own_cpu(client) - cpu[1]
            pg_cpu = cpu_seconds(pg_pid) - cpu[2] if pg_pid is not None else None
            # Whatever else ran on the machine meanwhile (other users' jobs): the noise in this run.
            others_cpu = machine_busy_seconds() - busy - server_cpu - client_cpu - (pg_cpu or 0.0)

    n, seconds = measured["requests"], measured["seconds"]

    def per_request(cpu_s: float | None) -> float | None:
        return None if cpu_s is None or n == 0 else round(cpu_s / n * 1000, 3)

    result = {
        "label": args.label,
        "endpoints": "POST /recommend" + (" + POST /feedback 1:1" if args.mix == "feedback" else ""),
        "model": health["model"],
        "run": str(run_dir) if args.run else f"tiny synthetic {args.model} run (300 users, 200 items)",
        "tree": str(args.tree) if args.tree else "this checkout",
        "store": "postgresql" if args.postgres else "sqlite",
        "workers": args.workers,
        "micro_batch": not args.no_batch,  # meaningless for a tree from before micro-batching
        "index": health.get("index", "exact"),
        "rerank": args.rerank_body,
        "users": health["users"],
        "items": health["items"],
        "k": args.k,
        "client": args.client,
        "connections": args.connections if args.client == "wrk" else args.concurrency,
        "server_threads": args.threads,
        "requests": n,
        "errors": measured["errors"],
        "seconds": round(seconds, 3),
        "throughput_rps": round(n / seconds, 1) if seconds > 0 else None,
        "latency_ms": {q: round(v, 3) for q, v in measured["latency_ms"].items()},
        # The server's busy processes (a worker each, with --workers) and their CPU seconds over the run:
        # how evenly the kernel shared the connections between the workers.
        "server_cpu_s_by_process": sorted((round(v, 2) for v in per_process.values() if v > 0.5), reverse=True),
        "other_processes_cpu_s": round(others_cpu, 2),
        "cpu_ms_per_request": {
            "server": per_request(server_cpu),
            "client": per_request(client_cpu),
            "postgres": per_request(pg_cpu),
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join([Path(sys.executable).name, "benchmarks/loadtest.py", *argv]),
    }
    lat, cpu_ms = result["latency_ms"], result["cpu_ms_per_request"]
    print(
        f"{args.label or result['tree']}: {result['model']} ({result['endpoints']}, {args.workers} worker(s), "
        f"{result['store']}, {args.client} x{result['connections']}): {n} requests ({measured['errors']} errors), "
        f"{result['throughput_rps']} req/s; latency ms p50 {lat['p50']} p95 {lat['p95']} p99 {lat['p99']}; "
        f"CPU ms/request server {cpu_ms['server']} client {cpu_ms['client']} postgres {cpu_ms['postgres']}; "
        f"server CPU s by process {result['server_cpu_s_by_process']}; "
        f"other processes' CPU s {result['other_processes_cpu_s']} over {result['seconds']} s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"appended to {args.out}", file=sys.stderr)
    return 0 if measured["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
