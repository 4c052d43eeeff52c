"""Classic recommenders, lmrec against RecBole 1.2.1, on ml-100k under one protocol.

Protocol (both sides): per user, interactions in time order (a stable sort, so ties keep file
order), last one → test, second last → validation, the rest → train; every test user ranks the
whole catalog with the items of their history (train + validation) excluded; NDCG, Recall and
MRR at 10. RecBole reads the same ``ml-100k.inter`` file that lmrec's ``ml-100k`` source caches,
runs in its own virtualenv (``benchmarks/recbole_env.sh``) through ``benchmarks/recbole_run.py``,
one process at a time.

Run from the repository root::

    .venv/bin/python benchmarks/classic.py                     # everything (minutes: BPR)
    .venv/bin/python benchmarks/classic.py --models pop,ease --peer-models Pop --threads 2

It prints a markdown table, the evaluation time, the machine, the date and the command, and
writes the same data as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    DASH,
    DATASET,
    METRICS,
    REPO,
    Arm,
    add_run_arguments,
    check_same_data,
    command_line,
    fmt,
    git_commit,
    load_split,
    machine,
    peer_data_dir,
    recipe,
    run_peer,
    runs_root,
    setup_threads,
    thread_env,
    train_arm,
)

EVAL_REPEATS = 3  # evaluation timings per model; the median is reported
PAIRS = {"pop": "Pop", "itemknn": "ItemKNN", "ease": "EASE", "bpr": "BPR"}  # lmrec name → RecBole name
__all__ = ["BENCH", "REPO", "command_line", "load_split", "machine", "thread_env"]  # what older scripts import


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pop,itemknn,ease,bpr,als,ncf", help="lmrec model names")
    parser.add_argument("--peer-models", default="Pop,ItemKNN,EASE,BPR", help="RecBole model names")
    parser.add_argument("--skip-peer", action="store_true", help="run lmrec only")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads, both sides")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec", help="lmrec dataset cache")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "classic.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


# -- ours -----------------------------------------------------------------------------------------


def run_ours(names: list[str], runs: Path, cache_dir: Path) -> list[dict[str, Any]]:
    """Train each lmrec model as `lmrec train` does (validation for early stopping), evaluate on test."""
    from lmrec.evaluate import evaluate

    rows = []
    for name in names:
        run = train_arm(Arm(name, name), 0, recipe(DATASET), runs / name, cache_dir)
        test = run.split.eval_set("test")
        fit_s = run.meta["train_seconds"]
        eval_times = []
        for _ in range(EVAL_REPEATS):
            t0 = time.perf_counter()
            result = evaluate(run.model, test)
            eval_times.append(time.perf_counter() - t0)
        row = {
            "model": name,
            "run": str(run.directory),
            "metrics": {m: result.metrics[m] for m in METRICS},
            "fit_s": fit_s,
            "eval_s": statistics.median(eval_times),
            "eval_runs_s": eval_times,
            "n_users": result.n_users,
            "n_items": run.model.n_items,
        }
        print(f"lmrec {name}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, fit {fit_s:.2f} s", file=sys.stderr)
        rows.append(row)
    return rows


# -- report ---------------------------------------------------------------------------------------


def render_table(ours: list[dict[str, Any]], peers: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The markdown report: the side-by-side table, evaluation time, machine, date, command."""
    by_peer = {row["model"]: row for row in peers}
    header = [
        "model", "lmrec NDCG@10", "RecBole NDCG@10", "ratio", "lmrec Recall@10", "RecBole Recall@10",
        "lmrec MRR@10", "RecBole MRR@10", "lmrec fit s", "RecBole wall s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    paired = set()
    for row in ours:
        peer = by_peer.get(PAIRS.get(row["model"], ""))
        name = row["model"]
        if peer is not None:
            paired.add(peer["model"])
            name = f"{row['model']} / {peer['model']}"
        m, p = row["metrics"], (peer or {}).get("metrics", {})
        ratio = m["ndcg@10"] / p["ndcg@10"] if p.get("ndcg@10") else None
        cells = [
            name, fmt(m["ndcg@10"], 4), fmt(p.get("ndcg@10"), 4), fmt(ratio, 2),
            fmt(m["recall@10"], 4), fmt(p.get("recall@10"), 4), fmt(m["mrr@10"], 4), fmt(p.get("mrr@10"), 4),
            fmt(row["fit_s"], 2), fmt((peer or {}).get("wall_s"), 1),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for peer in peers:  # RecBole models with no lmrec counterpart in this run
        if peer["model"] not in paired:
            p = peer["metrics"]
            cells = [
                peer["model"], DASH, fmt(p["ndcg@10"], 4), DASH, DASH, fmt(p["recall@10"], 4),
                DASH, fmt(p["mrr@10"], 4), DASH, fmt(peer["wall_s"], 1),
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if ours:
        n_users, n_items = ours[0]["n_users"], ours[0]["n_items"]
        times = ", ".join(f"{row['model']} {row['eval_s']:.3f} s" for row in ours)
        lines.append(
            f"lmrec full-ranking evaluation of {n_users} users × {n_items} items (median of {EVAL_REPEATS}): {times}."
        )
    lines.append(
        "lmrec fit s: fit only (train + validation for early stopping). RecBole wall s: the whole "
        "process (start-up, data loading, fit, validation, test)."
    )
    lines.append(
        f"Machine: {info['machine']['nproc']} CPU cores ({info['machine']['cpu']}), no GPU, "
        f"{info['threads']} threads; torch {info['machine']['torch']}, Python {info['machine']['python']}."
    )
    lines.append(f"Date: {info['date']}. Command: `{info['command']}`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)
    models = [m for m in args.models.split(",") if m]
    peer_models = [] if args.skip_peer else [m for m in args.peer_models.split(",") if m]

    split = load_split(args.cache_dir)
    with runs_root(args.runs, "lmrec-classic-") as runs:
        ours = run_ours(models, runs, args.cache_dir)
    peers: list[dict[str, Any]] = []
    data: dict[str, int] = {}
    if peer_models:
        with tempfile.TemporaryDirectory(prefix="lmrec-recbole-") as tmp:
            data_dir = peer_data_dir(args.cache_dir, Path(tmp) / "data")
            data = check_same_data(split, data_dir / DATASET / f"{DATASET}.inter")
            peers = run_peer(peer_models, data_dir, args.threads, Path(tmp))

    info = {
        "dataset": DATASET,
        "protocol": {**split.protocol, "ranking": "full catalog", "exclude": "history (train + valid)", "k": 10},
        "data": data,
        "threads": args.threads,
        "machine": machine(),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
    }
    print(render_table(ours, peers, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "lmrec": ours, "recbole": peers, "pairs": PAIRS}, indent=2) + "\n")
    print(f"\nWrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
