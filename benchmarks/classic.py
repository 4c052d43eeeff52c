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
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
PEER_PYTHON = BENCH / ".venv-recbole" / "bin" / "python"
DATASET = "ml-100k"
METRICS = ("ndcg@10", "recall@10", "mrr@10")
EVAL_REPEATS = 3  # evaluation timings per model; the median is reported
PAIRS = {"pop": "Pop", "itemknn": "ItemKNN", "ease": "EASE", "bpr": "BPR"}  # lmrec name → RecBole name
DASH = "–"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="pop,itemknn,ease,bpr,als,ncf", help="lmrec model names")
    parser.add_argument("--peer-models", default="Pop,ItemKNN,EASE,BPR", help="RecBole model names")
    parser.add_argument("--skip-peer", action="store_true", help="run lmrec only")
    parser.add_argument("--threads", type=int, default=2, help="torch / BLAS threads, both sides")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec", help="lmrec dataset cache")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "classic.json")
    return parser.parse_args(argv)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS / OpenMP threads (read when numpy or torch load)."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


# -- ours -----------------------------------------------------------------------------------------


def load_split(cache_dir: Path) -> Any:
    """ml-100k from lmrec's source cache, split leave-one-out in time order."""
    from lmrec.data.sources import load_source
    from lmrec.data.splits import leave_one_out

    return leave_one_out(load_source(DATASET, cache_dir))


def run_ours(names: list[str], split: Any) -> list[dict[str, Any]]:
    """Fit each lmrec model on train (validation for early stopping), evaluate on test."""
    from lmrec.evaluate import evaluate
    from lmrec.models import FitOptions, model_class

    train, valid, test = split.train_dataset(), split.eval_set("valid"), split.eval_set("test")
    rows = []
    for name in names:
        t0 = time.perf_counter()
        model = model_class(name)().fit(train, valid, FitOptions(seed=0))
        fit_s = time.perf_counter() - t0
        eval_times = []
        for _ in range(EVAL_REPEATS):
            t0 = time.perf_counter()
            result = evaluate(model, test)
            eval_times.append(time.perf_counter() - t0)
        row = {
            "model": name,
            "metrics": {m: result.metrics[m] for m in METRICS},
            "fit_s": fit_s,
            "eval_s": statistics.median(eval_times),
            "eval_runs_s": eval_times,
            "n_users": result.n_users,
            "n_items": model.n_items,
        }
        print(f"lmrec {name}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, fit {fit_s:.2f} s", file=sys.stderr)
        rows.append(row)
    return rows


# -- the peer -------------------------------------------------------------------------------------


def peer_data_dir(cache_dir: Path, dest: Path) -> Path:
    """A RecBole data directory (``dest/ml-100k/ml-100k.inter``) holding the interactions that
    lmrec read: the cached atomic file when the source came from the recbole wheel, else that
    file taken out of the wheel the way the source does (the cache then holds GroupLens files)."""
    from lmrec.data.sources import RECBOLE_ML100K, RECBOLE_WHEEL, Downloader

    target = dest / DATASET / f"{DATASET}.inter"
    target.parent.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / DATASET / f"{DATASET}.inter"
    if cached.is_file():
        shutil.copyfile(cached, target)
    else:
        wheel = Downloader().get_wheel(RECBOLE_WHEEL, dest)
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(f"{RECBOLE_ML100K}.inter"))
    return dest


def check_same_data(split: Any, inter_file: Path) -> dict[str, int]:
    """Interactions, users and items on both sides; an error when they differ."""
    import pandas as pd

    theirs = pd.read_csv(inter_file, sep="\t", usecols=[0, 1])
    ours = split.dataset.interactions
    counts = {
        "interactions": (len(ours), len(theirs)),
        "users": (ours["user"].nunique(), theirs.iloc[:, 0].nunique()),
        "items": (ours["item"].nunique(), theirs.iloc[:, 1].nunique()),
    }
    differ = {k: v for k, v in counts.items() if v[0] != v[1]}
    if differ:
        raise SystemExit(f"lmrec and RecBole data differ (lmrec, RecBole): {differ}")
    return {k: int(v[0]) for k, v in counts.items()}


def run_peer(
    names: list[str], data_dir: Path, threads: int, log_dir: Path, epochs: int | None = None
) -> list[dict[str, Any]]:
    """Set up RecBole's virtualenv if needed, then run each model in its own process, one at a time."""
    subprocess.run(["bash", str(BENCH / "recbole_env.sh")], check=True, stdout=sys.stderr)
    env = {**os.environ, **thread_env(threads), "THREADS": str(threads)}
    rows = []
    for name in names:
        log = log_dir / f"recbole-{name}.log"
        command = [str(PEER_PYTHON), str(BENCH / "recbole_run.py"), name, str(data_dir), DATASET]
        command += [str(epochs)] if epochs else []
        command += ["--checkpoint-dir", str(log_dir / f"ckpt-{name}")]
        t0 = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        wall_s = time.perf_counter() - t0
        text = log.read_text()
        results = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            tail = "\n".join(text.splitlines()[-20:])
            raise SystemExit(f"RecBole {name} failed (exit {done.returncode}):\n{tail}")
        record = json.loads(results[-1].removeprefix("RESULT "))
        row = {
            "model": name,
            "metrics": {m: record["test"][m] for m in METRICS},
            "wall_s": wall_s,
            "recbole_wall_s": record["wall_s"],  # inside run_recbole: data, fit, test
            "valid": record["valid"],
            # RecBole logs "epoch N training [time: S s, ...]" per epoch: training time alone
            "epoch_train_s": [float(s) for s in re.findall(r"training \[time: ([\d.]+)s", text)],
        }
        print(f"RecBole {name}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, wall {wall_s:.1f} s", file=sys.stderr)
        rows.append(row)
    return rows


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    return {
        "nproc": len(os.sched_getaffinity(0)),  # not `nproc`, which reports OMP_NUM_THREADS once set
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none used (CPU only)",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _fmt(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


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
            name, _fmt(m["ndcg@10"], 4), _fmt(p.get("ndcg@10"), 4), _fmt(ratio, 2),
            _fmt(m["recall@10"], 4), _fmt(p.get("recall@10"), 4), _fmt(m["mrr@10"], 4), _fmt(p.get("mrr@10"), 4),
            _fmt(row["fit_s"], 2), _fmt((peer or {}).get("wall_s"), 1),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for peer in peers:  # RecBole models with no lmrec counterpart in this run
        if peer["model"] not in paired:
            p = peer["metrics"]
            cells = [
                peer["model"], DASH, _fmt(p["ndcg@10"], 4), DASH, DASH, _fmt(p["recall@10"], 4),
                DASH, _fmt(p["mrr@10"], 4), DASH, _fmt(peer["wall_s"], 1),
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


def command_line(argv: list[str]) -> str:
    """The command as typed from the repository root."""
    python = Path(sys.executable)
    if python.is_relative_to(REPO):  # keep the venv's symlink name, e.g. .venv/bin/python
        python = python.relative_to(REPO)
    script = Path(sys.argv[0]).resolve().relative_to(REPO)  # the script that was run, not this module
    return shlex.join([str(python), str(script), *argv])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.update(thread_env(args.threads))  # before numpy / torch are imported
    import torch

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    peer_models = [] if args.skip_peer else [m for m in args.peer_models.split(",") if m]

    split = load_split(args.cache_dir)
    ours = run_ours(models, split)
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
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
    }
    print(render_table(ours, peers, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "lmrec": ours, "recbole": peers, "pairs": PAIRS}, indent=2) + "\n")
    print(f"\nWrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
