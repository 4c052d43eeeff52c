"""Choose a model's options on validation: ``lmrec tune`` with the benchmarks' settings.

    taskset -c 1 .venv/bin/python benchmarks/tune.py --model sasrec --trials 20 --time-budget 1h

runs ``lmrec tune --dataset ml-100k --model sasrec --trials 20 --time-budget 1h --threads 1
--study benchmarks/results/tune-sasrec.db --out benchmarks/results/tune-sasrec.yaml`` (Optuna TPE
over the model's declared search space, median pruning on per-epoch validation NDCG@10, every trial
trained through ``lmrec.runs.train_run``; the study resumes: run the same command again to go on).
Arguments it does not know go to ``lmrec tune`` as they are (``--set patience=10``). The trials
table is printed as markdown; ``lmrec train --config benchmarks/results/tune-sasrec.yaml`` trains
the best.

The hand-written grid this script was before (``--case NAME:K=V``, seeds, paired test on test
NDCG@10), which produced the tune-*.json results quoted in RESULTS.md, is in git history
(``git show 01d7b7f:benchmarks/tune.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def command(argv: list[str]) -> list[str]:
    """The ``lmrec`` arguments for this script's arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--trials", default="20")
    parser.add_argument("--threads", default="1")
    args, rest = parser.parse_known_args(argv)
    name = f"tune-{args.model}" + ("" if args.dataset == "ml-100k" else f"-{Path(args.dataset).stem}")
    return [
        "tune",
        *("--model", args.model, "--dataset", args.dataset, "--trials", args.trials, "--threads", args.threads),
        *("--study", str(RESULTS / f"{name}.db"), "--out", str(RESULTS / f"{name}.yaml")),
        *rest,
    ]


def main(argv: list[str] | None = None) -> int:
    from lmrec.cli import main as lmrec

    RESULTS.mkdir(exist_ok=True)
    lmrec_args = command(sys.argv[1:] if argv is None else argv)
    print("lmrec " + " ".join(lmrec_args), file=sys.stderr)
    return lmrec(lmrec_args)


if __name__ == "__main__":
    sys.exit(main())
