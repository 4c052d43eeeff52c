"""SASRec on the sparse shared logs: quality, time per epoch and time to the best validation epoch.

Issue 35's rows: the default ``sasrec`` (no ``--set``) and any other arms given as ``NAME:KEY=VALUE,...``,
trained through the harness (``train_run`` → ``open_run``, every test user, paired tests against the
first arm), plus what the harness table leaves out: seconds per epoch, the best validation epoch and
the wall time until it ended (``to_best_s``), the wall time until early stopping (``fit_s``).
Run it against an older tree by pointing PYTHONPATH at that tree's ``src`` (``before`` rows)::

    .venv/bin/python benchmarks/sparse.py --dataset ../shared/data/amazon-beauty-2014 --threads 2
    .venv/bin/python benchmarks/sparse.py --dataset D --arms 'default' 'ce-bs512:batch_size=512'
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/sparse.py --dataset D --tag before
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import BENCH, Arm, run_arms


def parse_arm(text: str) -> Arm:
    """``NAME`` or ``NAME:key=value,key=value`` → an sasrec arm with those ``--set`` options."""
    name, _, rest = text.partition(":")
    options = dict(pair.split("=", 1) for pair in rest.split(",") if pair)
    return Arm(name, "sasrec", options)


def timing(run_dir: str) -> dict[str, Any]:
    """Seconds per epoch, best epoch (1-based) and the wall time until it ended, from run.json."""
    training = json.loads((Path(run_dir) / "run.json").read_text())["training"]
    seconds = training.get("epoch_seconds") or [training["seconds_per_epoch"]] * training["epochs"]
    best = training["best_epoch"] + 1
    return {
        "seconds_per_epoch": round(training["seconds_per_epoch"], 2),
        "best_epoch": best,
        "to_best_s": round(sum(seconds[:best]), 1),
        "stopped": training.get("stopped"),
        "best_valid": round(max(training["valid"]), 5) if training.get("valid") else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a shared log directory (interactions.csv + items.csv)")
    parser.add_argument("--arms", nargs="+", default=["default"], help="NAME[:key=value,...], the first the baseline")
    parser.add_argument("--seeds", default="0", help="comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pin", default="", help="CPU cores to pin to, e.g. 0")
    parser.add_argument("--tag", default="", help="added to the run and result names (e.g. before)")
    parser.add_argument("--runs", type=Path, default=Path("runs/sparse"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    log = Path(args.dataset).name
    tag = f"-{args.tag}" if args.tag else ""
    arms = [parse_arm(a) for a in args.arms]
    arms = [Arm(a.name + tag, a.model, a.options) for a in arms]
    out = args.out or BENCH / "results" / f"sparse-{log}{tag}.json"
    report = run_arms(
        arms,
        [int(s) for s in args.seeds.split(",")],
        baseline=arms[0].name,
        runs_dir=args.runs / log,
        out=out,
        dataset=args.dataset,
        argv=sys.argv[1:] if argv is None else argv,
        title=f"SASRec on {log}",
        threads=args.threads,
        pin=[int(c) for c in args.pin.split(",") if c] or None,
    )
    print("\n| arm | seed | s/epoch | best epoch | to best (s) | fit (s) | best valid | test ndcg@10 | stopped |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, result in report["arms"].items():
        for seed in result["seeds"]:
            seed["timing"] = timing(seed["run"])
            t = seed["timing"]
            print(
                f"| {name} | {seed['seed']} | {t['seconds_per_epoch']} | {t['best_epoch']} | {t['to_best_s']} | "
                f"{seed['fit_s']} | {t['best_valid']} | {seed['metrics']['ndcg@10']:.4f} | {t['stopped']} |"
            )
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
