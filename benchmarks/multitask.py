"""Multi-task learning on ml-100k: next item + rating + like (rating >= 4) over one sequential encoder.

Same data and split as ``sequential.py`` (time-ordered leave-one-out; next item ranked against the
full catalog with the history excluded, @10, all test users). The rating and like tasks are scored
on the same test interactions: each test user's held-out item, its rating (RMSE, MAE) and whether
it is >= 4 (AUC, log-loss), predicted from the history and the item.

Rows (every one with SASRec's encoder: dim 64, 2 layers, 2 heads, max_len 50, batch 128, lr 1e-3):
  sasrec         single task: next item (the existing model)
  rating-only    single task: mtl-sasrec with tasks=rating (early stopping on validation RMSE)
  like-only      single task: mtl-sasrec with tasks=like (early stopping on validation AUC)
  shared         mtl-sasrec, 3 tasks, shared bottom
  mmoe           mtl-sasrec, 3 tasks, MMoE (4 experts)
  ple            mtl-sasrec, 3 tasks, PLE (2 shared + 1 per task)
Multi-task rows stop early on validation next-item NDCG@10 (``--stop-on``) with fixed weights 1
(``--weighting``). Each row is the mean of ``--seeds`` seeds; relative changes are against the
single-task row of that task.

    .venv/bin/python benchmarks/multitask.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    DASH,
    DATASET,
    Arm,
    add_run_arguments,
    command_line,
    fmt,
    git_commit,
    load_split,
    machine,
    runs_root,
    setup_threads,
    train,
)

ENCODER: dict[str, Any] = {"max_len": 50, "batch_size": 128}
# name → (lmrec model, overrides, tasks it is scored on)
VARIANTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "sasrec": ("sasrec", {}, ("next_item",)),
    "rating-only": ("mtl-sasrec", {"tasks": ("rating",), "mixer": "shared"}, ("rating",)),
    "like-only": ("mtl-sasrec", {"tasks": ("like",), "mixer": "shared"}, ("like",)),
    "shared": ("mtl-sasrec", {"mixer": "shared"}, ("next_item", "rating", "like")),
    "mmoe": ("mtl-sasrec", {"mixer": "mmoe", "experts": 4}, ("next_item", "rating", "like")),
    "ple": ("mtl-sasrec", {"mixer": "ple", "experts": 2, "task_experts": 1}, ("next_item", "rating", "like")),
}
SINGLE = {"next_item": "sasrec", "rating": "rating-only", "like": "like-only"}
MULTI = ("shared", "mmoe", "ple")
# metric → True when higher is better; the first of each task is the one the "done when" reads
TASK_METRICS: dict[str, dict[str, bool]] = {
    "next_item": {"ndcg@10": True, "recall@10": True},
    "rating": {"rmse": False, "mae": False},
    "like": {"auc": True, "log_loss": False},
}
LIMIT = 0.005  # "loses none by more than 0.5 % relative"


def parse_args(argv: list[str]) -> argparse.Namespace:
    from lmrec.cache import default_cache

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=200, help="most epochs per fit (early stopping decides)")
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1; rows are their means")
    parser.add_argument("--stop-on", default="auto", help="multi-task early stopping: auto (next item) or mean")
    parser.add_argument("--weighting", default="fixed", help="multi-task loss weighting: fixed or uncertainty")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", type=Path, default=default_cache(), help="lmrec dataset cache")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "multitask.json")
    parser.add_argument("--report", type=Path, help="print the tables of a results file (a stopped run's too) and stop")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def fit_one(name: str, seed: int, runs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant with one seed as `lmrec train` does; its test metrics on the tasks it has,
    fit time and log. (train_run validates on the plain validation set: next-item early stopping.)"""
    from lmrec.evaluate import evaluate
    from lmrec.models.multitask import MultiTaskSASRec, RatedEvalSet

    model_name, overrides, tasks = VARIANTS[name]
    overrides = {**ENCODER, **overrides, "epochs": args.epochs, "patience": args.patience}
    if model_name == "mtl-sasrec" and len(tasks) > 1:
        overrides.update(stop_on=args.stop_on, weighting=args.weighting)
    c0 = time.process_time()
    run = train(Arm(name, model_name, overrides), seed, runs, args.cache_dir)
    fit_s, fit_cpu_s = run.meta["train_seconds"], time.process_time() - c0
    model, test = run.model, RatedEvalSet.from_split(run.split, "test")
    metrics: dict[str, float] = {}
    if "next_item" in tasks:
        result = evaluate(model, test, ks=(10,), metrics=("ndcg", "recall"))
        metrics.update({f"next_item/{m}": result.metrics[m] for m in ("ndcg@10", "recall@10")})
    if isinstance(model, MultiTaskSASRec):
        rated = [s for s in model.specs if s.kind != "next_item"]
        for task, values in model.task_metrics(test, rated).items():
            metrics.update({f"{task}/{m}": v for m, v in values.items()})
    log = run.meta["training"]
    row = {
        "model": name,
        "seed": seed,
        "run": str(run.directory),
        "config": overrides,
        "metrics": metrics,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "epochs": log["epochs"],
        "best_epoch": log["best_epoch"],
        "stop_on": log.get("stop_on", "next_item"),
        "expert_utilisation": log.get("expert_utilisation", {}),
        "experts": log.get("experts", {}),
        "valid_tasks": log.get("valid_tasks", []),
        "task_losses": log.get("task_losses", []),
    }
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    print(
        f"{name} seed {seed}: {shown}; {log['epochs']} epochs (best {log['best_epoch'] + 1}), "
        f"{fit_s:.0f} s wall, {fit_cpu_s:.0f} s CPU",
        file=sys.stderr,
        flush=True,
    )
    return row


def summarise(rows: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per variant: the mean of each metric and of the fit time over seeds, and the mean gates."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        keys = sorted({k for r in mine for k in r["metrics"]})
        gates: dict[str, list[float]] = {}
        for task in mine[0]["expert_utilisation"]:
            per_seed = [r["expert_utilisation"][task] for r in mine]
            gates[task] = [statistics.fmean(g[e] for g in per_seed) for e in range(len(per_seed[0]))]
        out[name] = {
            "metrics": {k: statistics.fmean(r["metrics"][k] for r in mine) for k in keys},
            "fit_s": statistics.fmean(r["fit_s"] for r in mine),
            "fit_cpu_s": statistics.fmean(r["fit_cpu_s"] for r in mine),
            "epochs": statistics.fmean(r["epochs"] for r in mine),
            "seeds": len(mine),
            "expert_utilisation": gates,
            "experts": mine[0]["experts"],
        }
    return out


def relative(value: float, single: float, higher_better: bool) -> float:
    """Relative change against the single-task value, signed so that > 0 is better."""
    change = (value - single) / abs(single)
    return change if higher_better else -change


def verdicts(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each multi-task variant: the signed relative change on each task's main metric, how
    many tasks it wins, its worst loss, and whether it meets the issue's "done when"."""
    out = {}
    for name in MULTI:
        if name not in summary:
            continue
        changes = {}
        for task, metrics in TASK_METRICS.items():
            main, higher = next(iter(metrics.items()))
            single = summary.get(SINGLE[task], {}).get("metrics", {}).get(f"{task}/{main}")
            ours = summary[name]["metrics"].get(f"{task}/{main}")
            if single is not None and ours is not None:
                changes[task] = relative(ours, single, higher)
        wins = sum(c > 0 for c in changes.values())
        worst = min(changes.values()) if changes else 0.0
        out[name] = {"changes": changes, "wins": wins, "worst": worst, "done": wins >= 2 and worst >= -LIMIT}
    return out


def render(summary: dict[str, dict[str, Any]], verdict: dict[str, dict[str, Any]], info: dict[str, Any]) -> str:
    columns = [(task, m, higher) for task, ms in TASK_METRICS.items() for m, higher in ms.items()]
    header = ["model", *(f"{t} {m}" for t, m, _ in columns), "fit CPU s", "fit wall s", "epochs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary.items():
        cells = [name]
        for task, metric, higher in columns:
            value = row["metrics"].get(f"{task}/{metric}")
            single = summary.get(SINGLE[task], {}).get("metrics", {}).get(f"{task}/{metric}")
            if value is None:
                cells.append(DASH)
            elif name != SINGLE[task] and single is not None:
                cells.append(f"{value:.4f} ({relative(value, single, higher):+.2%})")
            else:
                cells.append(f"{value:.4f}")
        cells += [fmt(row["fit_cpu_s"], 0), fmt(row["fit_s"], 0), fmt(row["epochs"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Means of {info['seeds']} seed(s). In brackets: relative change against the single-task row of that task, "
        "signed so that + is better (for RMSE, MAE and log-loss + means lower)."
    )
    for name, v in verdict.items():
        shown = ", ".join(f"{t} {c:+.2%}" for t, c in v["changes"].items())
        lines.append(
            f"{name}: wins {v['wins']} of {len(v['changes'])} tasks ({shown}); worst {v['worst']:+.2%}; "
            f"done-when (>= 2 wins, no loss beyond {LIMIT:.1%}): {'met' if v['done'] else 'not met'}."
        )
    for name, row in summary.items():
        for task, gates in row["expert_utilisation"].items():
            names = row["experts"].get(task, [])
            shown = ", ".join(f"{n} {g:.2f}" for n, g in zip(names, gates, strict=False))
            lines.append(f"Expert utilisation, {name}, {task} (mean gate weight, best epoch): {shown}.")
    lines.append(
        f"Fit time: seconds of one fit (validation included), {info['threads']}-thread figures with the process pinned "
        "to one core: CPU seconds of the process (time.process_time) and wall seconds (the core was shared with "
        "other jobs, so wall time overstates the work). "
        f"Machine: {os.cpu_count()} CPU cores ({info['machine']['cpu']}), {info['machine']['nproc']} used, no GPU; "
        f"torch {info['machine']['torch']}. Date: {info['date']}. Command: `{info['command']}`"
    )
    return "\n".join(lines)


def stopping_table(rows: list[dict[str, Any]]) -> str:
    """Validation of each multi-task fit at the epoch it stopped on (the one kept) against each
    task's own best epoch, beside the single-task fits' best: where one stopping point cannot
    serve every task, this shows it."""
    lines = [
        "| fit | seed | task | valid at the kept epoch | best valid (epoch) | single-task best valid |",
        "|---|---|---|---|---|---|",
    ]
    single_best: dict[tuple[str, int], float] = {}
    for r in rows:
        for task, metrics in TASK_METRICS.items():
            if r["model"] == SINGLE[task] and r.get("valid_tasks"):
                main, higher = next(iter(metrics.items()))
                values = [e[task][main] for e in r["valid_tasks"]]
                single_best[(task, r["seed"])] = max(values) if higher else min(values)
    for r in rows:
        if r["model"] not in MULTI:
            continue
        for task, metrics in TASK_METRICS.items():
            main, higher = next(iter(metrics.items()))
            values = [e[task][main] for e in r["valid_tasks"]]
            best = max(range(len(values)), key=lambda e: values[e] if higher else -values[e])
            single = single_best.get((task, r["seed"]))
            kept = r["best_epoch"]
            lines.append(
                f"| {r['model']} | {r['seed']} | {task} {main} | {values[kept]:.4f} (epoch {kept + 1}) "
                f"| {values[best]:.4f} ({best + 1}) | {DASH if single is None else f'{single:.4f}'} |"
            )
    return "\n".join(lines)


def report(path: Path) -> None:
    saved = json.loads(path.read_text())
    rows = saved["runs"]
    names = list(dict.fromkeys(r["model"] for r in rows))
    info = {**saved, "seeds": len({r["seed"] for r in rows})}
    summary = summarise(rows, names)
    print(render(summary, verdicts(summary), info))
    print()
    print(stopping_table(rows))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report:
        report(args.report)
        return
    setup_threads(args.threads, args.pin)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    split = load_split(args.cache_dir)
    if not split.dataset.has_ratings:
        raise SystemExit(f"{DATASET} has no rating column: the rating and like tasks need one")
    info = {
        "dataset": DATASET,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "patience": args.patience,
        "stop_on": args.stop_on,
        "weighting": args.weighting,
        "threads": args.threads,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "commit": git_commit(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with runs_root(args.runs, "lmrec-multitask-") as runs:
        for seed in range(args.seeds):
            for name in names:
                rows.append(fit_one(name, seed, runs, args))
                # written after every fit, so a stopped run keeps what it measured ("complete": false)
                partial = {**info, "complete": len(rows) == args.seeds * len(names), "runs": rows}
                args.out.write_text(json.dumps(partial, indent=2) + "\n")
    summary = summarise(rows, names)
    verdict = verdicts(summary)
    print(render(summary, verdict, info))
    result = {**info, "complete": True, "summary": summary, "verdict": verdict, "runs": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
