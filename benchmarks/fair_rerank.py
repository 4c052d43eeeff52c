"""The fair-exposure re-ranker's trade-off on trained runs (issue 33): NDCG@10 against the long
tail's share of the top 10, as ``lmrec evaluate --run RUN --rerank fair --lam P`` reports them.

Each run is opened as ``lmrec evaluate`` opens it and evaluated on all its test users with its own
order (p = 0) and re-ranked by :class:`lmrec.rerank.FairExposure` at each ``--values`` p (the target
tail share of every prefix, α = 0.1, from the top 100). The tail is every item outside the most
popular ones holding the first half of the run's training interactions
(:func:`lmrec.evaluate.fairness.tail_items`). With several runs (seeds) the table gives their mean
and a paired test of NDCG@10 per user against p = 0; a row is marked when the tail share rises by
≥ 30 % at ≤ 5 % NDCG@10 loss (the issue's bar).

    taskset -c 0 .venv/bin/python benchmarks/fair_rerank.py --runs runs/robust-ml100k/sasrec-clean-seed{0,1,2} \\
        --out benchmarks/results/fair-rerank-ml100k.json --pin 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from harness import BENCH, header, setup_threads

VALUES = (0.3, 0.4, 0.45, 0.5, 0.6)


def evaluate_run(run_dir: Path, values: list[float], cache_dir: Path) -> dict[str, Any]:
    """Metrics and per-user NDCG@10 of one run without re-ranking (p = 0) and at each p."""
    from lmrec.evaluate import evaluate
    from lmrec.rerank import make_reranker
    from lmrec.runs import open_run

    run = open_run(run_dir, cache_dir)
    train = run.split.train_dataset()
    test = run.split.eval_set("test")
    out = {}
    for p in [0.0, *values]:
        reranker = make_reranker("fair", p, train) if p > 0 else None
        metrics = run.evaluate("test", reranker=reranker)["metrics"]
        per_user = evaluate(run.model, test, reranker=reranker, candidates=100).per_user["ndcg@10"]
        out[f"{p:g}"] = {"metrics": metrics, "per_user": per_user.tolist()}
        print(f"{run_dir.name} p={p:g}: ndcg@10 {metrics['ndcg@10']:.4f} tail {metrics['tail_share@10']:.4f}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, nargs="+", required=True, help="run directories (seeds of one model)")
    p.add_argument("--values", default=",".join(f"{v:g}" for v in VALUES), help="the p values")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pin", type=int, nargs="+", metavar="CORE")
    p.add_argument("--out", type=Path, default=BENCH / "results" / "fair-rerank.json")
    args = p.parse_args(argv)
    setup_threads(args.threads, args.pin)
    from lmrec.cache import default_cache
    from lmrec.evaluate.significance import paired_test

    values = [float(v) for v in args.values.split(",")]
    runs = {str(r): evaluate_run(r, values, default_cache()) for r in args.runs}
    rows = []
    for key in [f"{v:g}" for v in [0.0, *values]]:
        ndcg = [r[key]["metrics"]["ndcg@10"] for r in runs.values()]
        tail = [r[key]["metrics"]["tail_share@10"] for r in runs.values()]
        base_ndcg = [r["0"]["metrics"]["ndcg@10"] for r in runs.values()]
        base_tail = [r["0"]["metrics"]["tail_share@10"] for r in runs.values()]
        tests = [paired_test(r["0"]["per_user"], r[key]["per_user"])["t_pvalue"] for r in runs.values()]
        row = {
            "p": float(key),
            "ndcg@10": statistics.fmean(ndcg),
            "tail_share@10": statistics.fmean(tail),
            "ndcg_change": statistics.fmean(ndcg) / statistics.fmean(base_ndcg) - 1,
            "tail_change": statistics.fmean(tail) / statistics.fmean(base_tail) - 1,
            "p_values": tests,
            "gini": statistics.fmean(r[key]["metrics"]["gini"] for r in runs.values()),
            "coverage": statistics.fmean(r[key]["metrics"]["coverage"] for r in runs.values()),
        }
        row["meets_bar"] = row["tail_change"] >= 0.30 and row["ndcg_change"] >= -0.05
        rows.append(row)
    report = {"title": "The fair re-ranker's trade-off", **header(argv), "runs": list(runs), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    table = render(report)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return report


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"## {report['title']}: {len(report['runs'])} run(s), {', '.join(Path(r).name for r in report['runs'])}",
        "",
        f"Machine: {m['cpu']}, torch {m['torch']}. Commit {report['commit']}, {report['date']}. "
        f"Command: `{report['command']}`",
        "",
        "| p | NDCG@10 | Δ NDCG | p-value (paired, per run) | tail share@10 | Δ tail | Gini | coverage | bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ps = ", ".join(f"{v:.2g}" for v in r["p_values"]) if r["p"] > 0 else "–"
        lines.append(
            f"| {r['p']:g} | {r['ndcg@10']:.4f} | {r['ndcg_change']:+.1%} | {ps} | {r['tail_share@10']:.4f} "
            f"| {r['tail_change']:+.1%} | {r['gini']:.4f} | {r['coverage']:.4f} | {'✓' if r['meets_bar'] else ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
