"""TIGER with semantic IDs from text, from a trained SASRec's item rows or from both, and hybrid
decoding with that SASRec, on every ml-100k test user against the SASRec itself.

Rows:

  sasrec        the ``--sasrec`` run (loaded, not trained): the baseline, and the source of the
                collaborative codes and of the hybrid's guide
  tiger-text    codes by residual k-means of the MiniLM item-text embeddings (the default)
  tiger-collab  codes from the SASRec's item rows (``ids_from=collab``)
  tiger-both    codes from both, each whitened to the SASRec's width (``ids_from=both``)
  hybrid-W      the TIGER row best on validation, its beam search guided by the SASRec's
                distribution at weight W (``hybrid_weight``; lmrec.llm.trie.PriorGuided); every
                weight of ``--weights`` is scored on all validation users, the best one on test

Each TIGER trains with early stopping on ``valid_users`` validation users (the checkpoint best on
them kept). Per row: test NDCG@10 / Recall@10 on all test users, the paired test against sasrec
(per-user NDCG@10), fit CPU seconds, CPU milliseconds per test user to score (beam search), and
the codes' usage (codewords used per level, items whose first codes collide).

    taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiger.py --sasrec runs/sasrec-ml100k --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    REPO,
    Arm,
    add_run_arguments,
    command_line,
    git_commit,
    load_split,
    machine,
    runs_root,
    setup_threads,
    train,
)

SOURCES = ("text", "collab", "both")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sasrec", type=Path, required=True, help="a trained sasrec run over ml-100k")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"TIGER rows: any of {', '.join(SOURCES)}")
    parser.add_argument("--weights", default="0.5,1,2", help="hybrid weights tried on validation ('' for none)")
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="tiger override for every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "tiger.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)
    with runs_root(args.runs, "lmrec-tiger-") as runs:
        experiment(args, argv, runs)


def experiment(args: argparse.Namespace, argv: list[str], runs: Path) -> None:
    from lmrec.evaluate import evaluate
    from lmrec.evaluate.significance import paired_test
    from lmrec.models.sequential import load_sequential
    from lmrec.models.tiger import Tiger

    split = load_split(args.cache_dir)
    valid, test = split.eval_set("valid"), split.eval_set("test")
    common: dict[str, Any] = dict(kv.split("=", 1) for kv in args.set)  # strings: the config parses them
    result: dict[str, Any] = {"command": command_line(argv), "machine": machine(), "commit": git_commit(), "rows": {}}
    per_user: dict[str, Any] = {}

    def record(name: str, model: Any, extra: dict[str, Any]) -> None:
        t0 = time.process_time()
        scores = evaluate(model, test)
        ms_per_user = 1000 * (time.process_time() - t0) / len(scores.per_user["ndcg@10"])
        per_user[name] = scores.per_user["ndcg@10"]
        row = {"ndcg@10": scores.metrics["ndcg@10"], "recall@10": scores.metrics["recall@10"]}
        row |= {"cpu_ms_per_user": round(ms_per_user, 2), **extra}
        if name != "sasrec":
            row["paired_vs_sasrec"] = paired_test(per_user["sasrec"], per_user[name])
        result["rows"][name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "paired_vs_sasrec"}), flush=True)
        args.out.write_text(json.dumps(result, indent=1))

    sasrec_dir = str(args.sasrec)  # the run the collab codes and the hybrid's guide read
    record("sasrec", load_sequential(args.sasrec, "--sasrec"), {"run": sasrec_dir})
    best: tuple[float, Tiger] | None = None
    for source in args.sources.split(","):
        overrides = {**common, "ids_from": source}
        if source != "text":
            overrides["collab_run"] = sasrec_dir
        t0 = time.process_time()  # trained as `lmrec train --model tiger --set ...` trains it
        run = train(Arm(f"tiger-{source}", "tiger", overrides), args.seed, runs, args.cache_dir)
        model, log = run.model, run.meta["training"]
        fit = {"config": overrides, "fit_cpu_s": round(time.process_time() - t0, 1), "codes": log["codes"]}
        fit |= {"epochs": len(log["valid"]), "valid_best_sampled": max(log["valid"])}
        record(f"tiger-{source}", model, fit)
        if best is None or max(log["valid"]) > best[0]:
            best = (max(log["valid"]), model)

    def guided(base: Tiger, weight: float) -> Tiger:
        """``base``'s weights and codes, decoding guided by the SASRec at ``weight``."""
        hybrid = Tiger(base.config.updated({"hybrid_run": sasrec_dir, "hybrid_weight": weight}))
        hybrid.n_users, hybrid.n_items = base.n_users, base.n_items
        hybrid.load_state(base.state())
        return hybrid

    weights = [float(w) for w in args.weights.split(",") if w]
    if best is not None and weights:
        base = best[1]
        tried = {w: evaluate(guided(base, w), valid).metrics["ndcg@10"] for w in weights}
        print(f"hybrid valid NDCG@10 per weight: {tried}", flush=True)
        weight = max(tried, key=lambda w: tried[w])
        extra = {"from": f"tiger-{base.config.ids_from}", "valid_ndcg@10_per_weight": tried}
        record(f"hybrid-{weight:g}", guided(base, weight), extra)

    columns = ["row", "test NDCG@10", "Recall@10", "vs sasrec", "t p", "Wilcoxon p", "fit CPU s", "CPU ms / user"]
    columns += ["codes used per level", "items in collisions"]
    print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for name, row in result["rows"].items():
        test_ = row.get("paired_vs_sasrec")
        vs = (
            f"{test_['relative_change']:+.1%} | {test_['t_pvalue']:.3g} | {test_['wilcoxon_pvalue']:.3g}"
            if test_
            else "– | – | –"
        )
        codes = row.get("codes", {})
        used, collisions = codes.get("used_per_level", "–"), codes.get("items_in_collisions", "–")
        print(
            f"| {name} | {row['ndcg@10']:.4f} | {row['recall@10']:.4f} | {vs} | {row.get('fit_cpu_s', '–')} "
            f"| {row['cpu_ms_per_user']} | {used} | {collisions} |"
        )
    print(f"\nseed {args.seed}, {len(per_user['sasrec'])} test users; {result['machine']}")


if __name__ == "__main__":
    main()
