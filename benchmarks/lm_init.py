"""Language-model-initialised item tables against CE-SASRec, on every ml-100k test user.

Rows (each trained with ``--seeds`` seeds, early stopping on validation NDCG@10; the sasrec
settings are the defaults unless ``--set`` says otherwise):

  sasrec             CE-SASRec, random item rows (the baseline)
  sasrec-bce         the same with one-negative BCE, as most published SASRec numbers are trained
  init-minilm        ID rows start from the packaged MiniLM's item-text embeddings, PCA-whitened
  init-smollm2       the same from SmolLM2-135M's mean-pooled hidden states
  init-smollm2-pull  the same, the rows pulled towards their text start all along (item_init_pull 0.1)
  anchor-minilm      MiniLM-initialised rows whose weight decay pulls them towards their text start
  anchor-smollm2     the same from SmolLM2 (item_decay_to=text: decoupled decay towards the start, L2-SP)
  late-minilm        late fusion: ID rows in, each logit the ID one plus a frozen MiniLM text branch's
  late-smollm2       the same with SmolLM2's embeddings (item_repr=late)

Each row gives test NDCG@10 / Recall@10 (mean over seeds), the paired test against sasrec on the
per-user NDCG@10 averaged over seeds (t-test and Wilcoxon p-values, bootstrap interval), and fit
CPU seconds. Results go to benchmarks/results/lm_init.json after every fit.

``--cold`` also fits each row once (the first seed) on the cold-items split (10 % of the items
held out with all their interactions) and reports Recall@10 / NDCG@10 on the test interactions
whose target is a cold item: an ID row that starts from text keeps that start where no training
interaction moves it; this measures whether that start is enough to score cold items.

    .venv/bin/python benchmarks/lm_init.py --seeds 0,1,2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    BENCH,
    REPO,
    Arm,
    add_run_arguments,
    command_line,
    git_commit,
    machine,
    runs_root,
    setup_threads,
    train,
)

ROWS: dict[str, dict[str, Any]] = {
    "sasrec": {},
    "sasrec-bce": {"loss": "bce"},
    "init-minilm": {"item_init": "text", "text_encoder": "minilm"},
    "init-smollm2": {"item_init": "text", "text_encoder": "smollm2"},
    "init-smollm2-pull": {"item_init": "text", "text_encoder": "smollm2", "item_init_pull": 0.1},
    "anchor-minilm": {"item_init": "text", "text_encoder": "minilm", "item_decay_to": "text"},
    "anchor-smollm2": {"item_init": "text", "text_encoder": "smollm2", "item_decay_to": "text"},
    "late-minilm": {"item_repr": "late", "text_encoder": "minilm"},
    "late-smollm2": {"item_repr": "late", "text_encoder": "smollm2"},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"any of {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="sasrec override for every row")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also the cold-items split (first seed)")
    parser.add_argument("--cold-only", action="store_true", help="the cold-items split alone")
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "lm_init.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)
    with runs_root(args.runs, "lmrec-lm-init-") as runs:  # each row trained as `lmrec train` trains it
        experiment(args, argv, runs)


def experiment(args: argparse.Namespace, argv: list[str], runs: Path) -> None:
    from lmrec.evaluate import evaluate
    from lmrec.evaluate.significance import paired_test

    common = dict(kv.split("=", 1) for kv in args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    result: dict[str, Any] = {"command": command_line(argv), "machine": machine(), "commit": git_commit(), "rows": {}}
    per_user: dict[str, list[np.ndarray]] = {}
    for name in [] if args.cold_only else args.rows.split(","):
        fits = []
        for seed in seeds:
            t0 = time.process_time()
            run = train(Arm(name, "sasrec", {**common, **ROWS[name]}), seed, runs, args.cache_dir)
            cpu = time.process_time() - t0
            scores = evaluate(run.model, run.split.eval_set("test"))
            per_user.setdefault(name, []).append(scores.per_user["ndcg@10"])
            log = run.meta["training"]
            metrics = scores.metrics
            fits.append(
                {
                    "seed": seed,
                    "ndcg@10": metrics["ndcg@10"],
                    "recall@10": metrics["recall@10"],
                    "valid_best": max(log["valid"]),
                    "epochs": len(log["valid"]),
                    "fit_cpu_s": round(cpu, 1),
                }
            )
            print(name, json.dumps(fits[-1]), flush=True)
            result["rows"][name] = {"config": {**common, **ROWS[name]}, "fits": fits}
            args.out.write_text(json.dumps(result, indent=1))

    if args.cold_only:
        result["cold"] = cold_rows(args, common, seeds[0], runs)
        args.out.write_text(json.dumps(result, indent=1))
        return
    print("\n| row | test NDCG@10 | Recall@10 | vs sasrec | t p | Wilcoxon p | 95 % CI of Δ | fit CPU s | epochs |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = np.mean(per_user["sasrec"], axis=0) if "sasrec" in per_user else None
    for name, row in result["rows"].items():
        fits = row["fits"]
        ndcg, recall = np.mean([f["ndcg@10"] for f in fits]), np.mean([f["recall@10"] for f in fits])
        cells = ["–", "–", "–", "–"]
        if base is not None and name != "sasrec":
            test_ = paired_test(base, np.mean(per_user[name], axis=0))
            row["paired_vs_sasrec"] = test_
            cells = [f"{test_['relative_change']:+.1%}", f"{test_['t_pvalue']:.3g}", f"{test_['wilcoxon_pvalue']:.3g}",
                     f"[{test_['ci_low']:+.4f}, {test_['ci_high']:+.4f}]"]  # fmt: skip
        cpu = np.mean([f["fit_cpu_s"] for f in fits])
        epochs = np.mean([f["epochs"] for f in fits])
        print(f"| {name} | {ndcg:.4f} | {recall:.4f} | {' | '.join(cells)} | {cpu:.0f} | {epochs:.0f} |")
    print(f"\n{len(seeds)} seed(s) {seeds}, {len(base) if base is not None else '?'} test users")
    args.out.write_text(json.dumps(result, indent=1))
    if args.cold:
        result["cold"] = cold_rows(args, common, seeds[0], runs)
        args.out.write_text(json.dumps(result, indent=1))


COLD = {"split": "cold-items", "split_params": {"share": 0.1, "seed": 0}}


def cold_rows(args: argparse.Namespace, common: dict[str, str], seed: int, runs: Path) -> dict[str, Any]:
    """Each row fitted on the cold-items split: Recall/NDCG@10 on cold targets, warm validation."""
    from lmrec.evaluate import evaluate

    rows: dict[str, Any] = {}
    print("\n| row (cold-items split) | cold Recall@10 | cold NDCG@10 | warm valid NDCG@10 | users |")
    print("|---|---|---|---|---|")
    for name in args.rows.split(","):
        arm = Arm(f"cold-{name}", "sasrec", {**common, **ROWS[name]}, data=COLD)
        run = train(arm, seed, runs, args.cache_dir, **COLD)  # `lmrec train --split cold-items ...`
        cold = evaluate(run.model, run.split.eval_set("test"))
        warm = evaluate(run.model, run.split.eval_set("valid"))
        rows[name] = {
            "cold_recall@10": cold.metrics["recall@10"],
            "cold_ndcg@10": cold.metrics["ndcg@10"],
            "warm_valid_ndcg@10": warm.metrics["ndcg@10"],
            "users": len(cold.per_user["ndcg@10"]),
        }
        r = rows[name]
        cells = f"{r['cold_recall@10']:.4f} | {r['cold_ndcg@10']:.4f} | {r['warm_valid_ndcg@10']:.4f}"
        print(f"| {name} | {cells} | {r['users']} |")
    return rows


if __name__ == "__main__":
    main()
