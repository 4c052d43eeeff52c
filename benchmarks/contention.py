"""Training beside a busy process: epoch times quiet and with one core taken, old thread count vs new.

For each model, ``lmrec train --dataset ml-100k --model M --set epochs=N --quiet`` runs four times:

  old, quiet   ``--threads T`` (T: torch's default here, what every run used before the thread
               policy), nothing else running
  old, busy    the same beside ``python -c 'while True: pass'`` pinned to core ``--busy-core``
  new, quiet   no ``--threads``: the Trainer picks the cores no other process uses (train/threads.py)
  new, busy    the same beside the busy process

(``--modes old,new,passive`` adds an "old + OMP_WAIT_POLICY=PASSIVE" pair: the thread count kept, OpenMP's
waiting threads sleeping instead of spinning.) The busy process is killed after each run, and
every run is bounded by ``--timeout-s``. Per-epoch training seconds (validation excluded) come
from each run's run.json; the table gives their median and the busy / quiet ratio of each mode.

The children run without OMP_NUM_THREADS / MKL_NUM_THREADS (torch's defaults). Run it alone on the
machine, not under ``taskset``: it needs every core, and one of them is the one it makes busy.

    .venv/bin/python benchmarks/contention.py --models sasrec,bert4rec --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BENCH, REPO, command_line, machine

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sasrec,bert4rec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--busy-core", type=int, default=0)
    parser.add_argument("--modes", default="old,new", help="comma list of old, new, passive")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="bound on each run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "contention.json")
    return parser.parse_args(argv)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    return {**env, **(extra or {})}


def default_threads() -> int:
    """torch's intra-op thread count in a fresh process without thread variables."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.check_output([sys.executable, "-c", code], env=child_env(), text=True))


def lmrec() -> list[str]:
    return [sys.executable, "-m", "lmrec"]


def train(model: str, args: argparse.Namespace, threads: int | None, env: dict[str, str], busy: bool) -> dict:
    """One ``lmrec train``, beside a busy process when ``busy``; its per-epoch seconds and threads."""
    hog = None
    if busy:
        hog = subprocess.Popen(["taskset", "-c", str(args.busy_core), sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # running before training looks at the cores
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            command = [*lmrec(), "train", "--dataset", args.dataset, "--model", model, "--quiet"]
            command += ["--set", f"epochs={args.epochs}", "--out", str(out)]
            if threads is not None:
                command += ["--threads", str(threads)]
            t0 = time.perf_counter()
            try:
                done = subprocess.run(command, env=env, timeout=args.timeout_s, capture_output=True, text=True)
            except subprocess.TimeoutExpired:
                return {"error": f"timed out after {args.timeout_s:.0f} s"}
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
            log = json.loads((out / "run.json").read_text())["training"]
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    epochs = log.get("epoch_seconds", [])
    return {
        "epoch_seconds": [round(s, 3) for s in epochs],
        "median_epoch_s": round(statistics.median(epochs), 3) if epochs else None,
        "seconds_per_epoch_with_validation": log.get("seconds_per_epoch"),
        "wall_s": round(wall, 1),
        **{k: log[k] for k in ("threads", "threads_from", "threads_min", "thread_changes", "other_load") if k in log},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    threads = default_threads()
    modes = [m for m in args.modes.split(",") if m]
    setups = {
        "old": (threads, child_env()),
        "new": (None, child_env()),
        "passive": (threads, child_env({"OMP_WAIT_POLICY": "PASSIVE"})),
    }
    rows = []
    for model in args.models.split(","):
        for mode in modes:
            count, env = setups[mode]
            row: dict[str, Any] = {"model": model, "mode": mode}
            for state in ("quiet", "busy"):
                row[state] = train(model, args, count, env, busy=state == "busy")
                print(f"{model} {mode} {state}: {json.dumps(row[state])}", flush=True)
            quiet, busy = row["quiet"].get("median_epoch_s"), row["busy"].get("median_epoch_s")
            row["ratio"] = round(busy / quiet, 2) if quiet and busy else None
            rows.append(row)
    print(f"\n| model | threads | quiet s/epoch | busy s/epoch | busy / quiet |  (default threads here: {threads})")
    print("|---|---|---|---|---|")
    for row in rows:
        label = {"old": f"--threads {threads}", "new": "free cores", "passive": f"--threads {threads}, PASSIVE"}
        q, b = row["quiet"], row["busy"]
        print(
            f"| {row['model']} | {label[row['mode']]} | {q.get('median_epoch_s', q.get('error'))} | "
            f"{b.get('median_epoch_s', b.get('error'))} (threads {b.get('threads_min', b.get('threads'))}) | "
            f"{row['ratio']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"rows": rows, "default_threads": threads, "machine": machine(), "command": command_line(sys.argv[1:])}
    report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.write_text(json.dumps(report, indent=1))
    print(f"→ {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
