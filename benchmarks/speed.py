"""Time to quality of sequential training: lmrec before and after a change, side by side.

Each side is a git commit (checked out to a temporary worktree) or ``now`` (the working tree). A
child process per side imports that side's lmrec and trains ``--model`` with that side's
defaults plus ``--set`` overrides, on the same data and split (leave-one-out, time order):

  ml1m-shaped  lmrec.data.synthetic.ml1m_shaped(seed 0): MovieLens-1M's shape (6,040 users,
               3,416 items, ~1.0 M events), written once to a file both sides read
  ml-100k      from lmrec's source cache

After every epoch the child records the training seconds so far (validations excluded) and the
validation NDCG@10 (all validation users); it stops at the first validation past ``--budget-s``
of training. The table gives the median epoch, the ratio of epochs, and each side's best
validation NDCG@10 within the training time every side had (same wall-clock).

``--recbole-curve FILE`` (from ``recbole_run.py --curve``): also report when each side first
reaches RecBole's best validation NDCG@10, and the ratio to RecBole's time to that best.

    .venv/bin/python benchmarks/speed.py --data ml1m-shaped --sides fad508c,now --budget-s 600
    .venv/bin/python benchmarks/speed.py --data ml-100k --sides now --budget-s 300 \\
        --recbole-curve benchmarks/results/recbole-sasrec-curve.json

Run it alone on the machine (or pinned to an idle core with ``taskset``): it is a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import BENCH, REPO, command_line, machine, thread_env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("ml1m-shaped", "ml-100k"), default="ml1m-shaped")
    parser.add_argument("--sides", default="now", help="comma list of git commits and/or 'now'")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="override for every side")
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds per side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the model's seed (the data's is 0)")
    parser.add_argument("--recbole-curve", type=Path)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "speed.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: data file of a child run
    return parser.parse_args(argv)


# -- one side, in its own process ------------------------------------------------------------------
class OutOfTime(Exception):
    pass


def child(args: argparse.Namespace) -> None:
    """Train with this process's lmrec as `lmrec train` does (train_run); print ``CURVE`` records,
    one per validation."""
    import tempfile

    import torch

    import lmrec.train.validation as validation
    from lmrec.models import FitOptions, model_class
    from lmrec.runs import DataRecipe, train_run

    torch.set_num_threads(args.threads)
    recipe = DataRecipe(dataset="ml-100k" if args.data == "ml-100k" else str(args.child))
    overrides = {"patience": 1000, **dict(kv.split("=", 1) for kv in args.set)}
    klass = model_class(args.model)
    config = klass.config_class.from_dict(overrides)
    original = validation.validation_ndcg
    clock = {"start": time.perf_counter(), "validating": 0.0}

    def timed(model: Any, valid_set: Any, *a: Any, **k: Any) -> float:
        trained = time.perf_counter() - clock["start"] - clock["validating"]
        t0 = time.perf_counter()
        value = original(model, valid_set, *a, **k)
        clock["validating"] += time.perf_counter() - t0
        print("CURVE", json.dumps({"seconds": round(trained, 2), "ndcg@10": round(float(value), 5)}), flush=True)
        if trained > args.budget_s:
            raise OutOfTime
        return value

    validation.validation_ndcg = timed  # type: ignore[assignment]
    if hasattr(config, "for_data"):  # the regularisation that fit will choose for this log
        split, _ = recipe.make_split(args.cache_dir)
        config = config.for_data(split.train_dataset())
    print("CONFIG", json.dumps(config.to_dict(), default=str), flush=True)
    fit = klass.fit

    def clocked_fit(model: Any, *a: Any, **k: Any) -> Any:  # the clock starts when train_run starts fitting
        clock["start"] = time.perf_counter()
        return fit(model, *a, **k)

    klass.fit = clocked_fit  # type: ignore[method-assign]
    # OutOfTime: the budget is spent, and the curve is what was wanted
    with tempfile.TemporaryDirectory(prefix="lmrec-speed-run-") as out, contextlib.suppress(OutOfTime):
        train_run(recipe, args.model, overrides, Path(out) / "run", args.cache_dir, FitOptions(seed=args.seed))


def run_side(side: str, args: argparse.Namespace, data_file: Path | None, work: Path) -> dict[str, Any]:
    src = REPO / "src"
    if side != "now":
        tree = work / f"tree-{side}"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), side], check=True,
                       capture_output=True)  # fmt: skip
        src = tree / "src"
    command = [sys.executable, __file__, "--child", str(data_file or "-"), "--data", args.data,
               "--model", args.model, "--budget-s", str(args.budget_s), "--threads", str(args.threads),
               "--cache-dir", str(args.cache_dir), "--seed", str(args.seed)]  # fmt: skip
    for kv in args.set:
        command += ["--set", kv]
    env = {**os.environ, **thread_env(args.threads), "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if side != "now":
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
    if out.returncode:
        raise SystemExit(f"side {side} failed:\n{out.stderr[-3000:]}")
    curve = [json.loads(line[6:]) for line in out.stdout.splitlines() if line.startswith("CURVE ")]
    config = next(json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("CONFIG "))
    seconds = [c["seconds"] for c in curve]
    epochs = [b - a for a, b in zip([0.0, *seconds[:-1]], seconds, strict=True)]
    return {"side": side, "config": config, "curve": curve, "epoch_s": statistics.median(epochs),
            "process_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def best_within(curve: list[dict[str, float]], seconds: float) -> float:
    return max((c["ndcg@10"] for c in curve if c["seconds"] <= seconds), default=float("nan"))


def first_reaching(curve: list[dict[str, float]], value: float) -> float | None:
    return next((c["seconds"] for c in curve if c["ndcg@10"] >= value), None)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return
    os.environ.update(thread_env(args.threads))
    with tempfile.TemporaryDirectory(prefix="lmrec-speed-") as tmp:
        work, data_file = Path(tmp), None
        if args.data == "ml1m-shaped":
            from lmrec.data.synthetic import ml1m_shaped

            data_file = work / "ml1m-shaped.parquet"
            frame = ml1m_shaped(0).interactions
            frame[["user", "item", "timestamp"]].to_parquet(data_file)
        rows = [run_side(side, args, data_file, work) for side in args.sides.split(",")]

    horizon = min(r["curve"][-1]["seconds"] for r in rows)  # every side trained this long: same wall-clock
    print(f"\n{args.model} on {args.data}, {args.threads} thread(s), budget {args.budget_s:.0f} s of training per side")
    print(f"| side | s/epoch (median) | epochs | vs first | best valid NDCG@10 by {horizon:.0f} s | best overall |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = rows[0]["epoch_s"] / r["epoch_s"]
        r["best_within_first"] = best_within(r["curve"], horizon)
        print(f"| {r['side']} | {r['epoch_s']:.1f} | {len(r['curve'])} | {ratio:.2f}× | {r['best_within_first']:.4f} "
              f"| {max(c['ndcg@10'] for c in r['curve']):.4f} |")  # fmt: skip
    result: dict[str, Any] = {"command": command_line(argv), "machine": machine(), "data": args.data, "rows": rows}
    if args.recbole_curve:
        peer = json.loads(args.recbole_curve.read_text())
        best = max(peer, key=lambda c: c["ndcg@10"])
        print(f"\nRecBole: best valid NDCG@10 {best['ndcg@10']:.4f} at {best['seconds']:.0f} s (epoch {best['epoch']})")
        for r in rows:
            reached = first_reaching(r["curve"], best["ndcg@10"])
            r["reaches_recbole_best_s"] = reached
            if reached is None:
                print(f"  {r['side']}: does not reach it within its budget")
            else:
                print(f"  {r['side']}: reaches it at {reached:.1f} s, 1/{best['seconds'] / max(reached, 1e-9):.0f} "
                      "of RecBole's time")  # fmt: skip
        result["recbole"] = {"curve": peer, "best": best}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
