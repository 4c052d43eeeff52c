"""Before/after the one-Trainer redesign: the same models, seeds and budgets on ml-100k, trained
by the code at a git ref (``--before``, checked out into a temporary worktree) and by this tree.

Each model gets a bounded budget (the table says it) so that both sides run the same number of
epochs or steps; with the same seed the two should agree within noise (bit-identical where the
random draws happen in the same order). Every side runs in its own process, one at a time, with
explicit thread counts.

    .venv/bin/python benchmarks/trainer_parity.py --before c3cd193 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# label (no commas: --cases is comma-separated), registry model, config overrides (bounded budgets)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("sasrec L50 15ep", "sasrec", {"max_len": 50, "batch_size": 128, "epochs": 15}),
    ("bert4rec L50 15ep", "bert4rec", {"max_len": 50, "epochs": 15}),
    ("bpr 30ep", "bpr", {"epochs": 30}),
    ("svd 20ep", "svd", {"epochs": 20}),
    ("ncf 5ep", "ncf", {"epochs": 5}),
    ("tiger 3ep", "tiger", {"epochs": 3, "valid_users": 100}),
    ("text-sasrec L50 8ep", "text-sasrec", {"max_len": 50, "epochs": 8}),
]


def run_side(names: list[str], threads: int, cache: Path) -> list[dict[str, Any]]:
    """Fit and evaluate the cases with whatever ``lmrec`` this interpreter imports."""
    import torch

    torch.set_num_threads(threads)
    from lmrec.evaluate import evaluate
    from lmrec.models import FitOptions
    from lmrec.runs import DataRecipe, train_run

    rows = []
    for label, name, overrides in CASES:
        if label not in names:
            continue
        with tempfile.TemporaryDirectory(prefix="lmrec-parity-") as out:  # as `lmrec train` trains it
            run = train_run(
                DataRecipe("ml-100k"), name, overrides, Path(out), cache, FitOptions(seed=0, cache_dir=cache)
            )
        fit_s = run.meta["train_seconds"]  # the fit alone, as before (not the data, save and report)
        model, test = run.model, run.split.eval_set("test")
        metrics = evaluate(model, test, ks=(10,)).metrics
        log = getattr(model, "training_log", None) or getattr(model, "history", {})
        rows.append(
            {
                "case": label,
                "ndcg@10": metrics["ndcg@10"],
                "recall@10": metrics["recall@10"],
                "epochs": log.get("epochs"),
                "best_epoch": log.get("best_epoch"),
                "fit_s": round(fit_s, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="c3cd193", help="git ref of the code before the change")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--side", choices=["this", "before"], help=argparse.SUPPRESS)  # internal: one side
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "trainer_parity.json")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    if args.side:
        print(json.dumps(run_side(names, args.threads, args.cache_dir)))
        return 0
    env = {**os.environ, **{k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
    sides: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.before], check=True)
        try:
            for side, src in (("before", tree / "src"), ("this", REPO / "src")):
                cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--cases", args.cases]
                cmd += ["--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
                out = subprocess.run(
                    cmd, env={**env, "PYTHONPATH": str(src)}, check=True, capture_output=True, text=True
                )
                sides[side] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"before = {args.before}, after = this tree; ml-100k leave-one-out, all 943 test users, seed 0")
    print(
        "| model (budget) | NDCG@10 before | NDCG@10 after | Recall@10 before | Recall@10 after "
        "| fit s before | fit s after |"
    )
    print("|---|---|---|---|---|---|---|")
    after = {r["case"]: r for r in sides["this"]}
    for b in sides["before"]:
        a = after[b["case"]]
        print(
            f"| {b['case']} | {b['ndcg@10']:.4f} | {a['ndcg@10']:.4f} | {b['recall@10']:.4f} | {a['recall@10']:.4f} "
            f"| {b['fit_s']} | {a['fit_s']} |"
        )
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, torch CPU"
    print(f"\nmachine: {machine}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"before": args.before, "sides": sides, "machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
