"""Two or more saved runs of one dataset and split, side by side on every test user: the metrics
@10, seconds per user, and the paired test of each run against the first (per-user NDCG@10).
``--ensemble`` adds one more row: the runs together, each item scored by the mean of the runs'
log-softmax over the catalog (a test of how much headroom more models would give).

    .venv/bin/python benchmarks/runs_side_by_side.py runs/sasrec runs/llm-gen --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from harness import REPO, command_line, machine, thread_env


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="the first is the baseline of the paired tests")
    parser.add_argument("--split", default="test", choices=("valid", "test"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--ensemble", action="store_true", help="add the runs' ensemble as a row")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    os.environ.update(thread_env(args.threads))
    import torch

    from lmrec.evaluate import evaluate
    from lmrec.evaluate.significance import paired_test
    from lmrec.runs import open_run

    class Ensemble:
        """The mean of the models' log-softmax over the catalog (history items are masked later)."""

        name = "ensemble"

        def __init__(self, models: list) -> None:
            self.models, self.n_items = models, models[0].n_items

        def score(self, batch: object) -> torch.Tensor:
            parts = [torch.log_softmax(m.score(batch).float().nan_to_num(neginf=-1e9), -1) for m in self.models]
            return torch.stack(parts).mean(0)

    torch.set_num_threads(args.threads)
    runs = [open_run(path, args.cache_dir) for path in args.runs]
    entries = [(str(path), run.model) for path, run in zip(args.runs, runs, strict=True)]
    if args.ensemble:
        entries.append(("ensemble of the runs above", Ensemble([run.model for run in runs])))
    eval_set = runs[0].split.eval_set(args.split)
    rows, per_user = [], []
    for label, model in entries:
        t0 = time.perf_counter()
        result = evaluate(model, eval_set, ks=(10,))
        seconds = time.perf_counter() - t0
        per_user.append(result.per_user["ndcg@10"])
        row = {"run": label, "model": model.name, "users": len(result.per_user["ndcg@10"]),
               "seconds_per_user": seconds / max(1, len(per_user[-1])), **result.metrics}  # fmt: skip
        if len(per_user) > 1:
            row["vs_first"] = paired_test(per_user[0], per_user[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| run | model | NDCG@10 | Recall@10 | vs first | t p | Wilcoxon p | s per user |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        versus = "– | – | –"
        if test := row.get("vs_first"):
            versus = f"{test['relative_change']:+.1%} | {test['t_pvalue']:.3g} | {test['wilcoxon_pvalue']:.3g}"
        print(f"| {row['run']} | {row['model']} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} | {versus} "
              f"| {row['seconds_per_user']:.3f} |")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"command": command_line(argv), "machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
