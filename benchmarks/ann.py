"""ANN top-k against exact scoring: recall@10 and latency per request, on a trained run's vectors.

Queries are the test users' SASRec states (the hidden state at the last position, which the
service dots with the item table). Two catalogs: the run's own (ml-100k: 1,682 items, where exact
scoring is already fast) and a synthetic large one (``--large`` items: the run's item vectors,
each copied with Gaussian noise of the items' own spread), where exact scoring is what an index
saves. Latency is one query at a time (as a request is served), median and p99, after a warm-up.

    .venv/bin/python benchmarks/ann.py --run runs/sasrec-L50
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

import numpy as np
from harness import BENCH, REPO, command_line, machine, thread_env


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained sequential or MF run")
    parser.add_argument("--large", type=int, default=200_000, help="items in the synthetic catalog")
    parser.add_argument("--queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "ann.json")
    return parser.parse_args(argv)


def timed(index: Any, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    """Median and p99 milliseconds of one-query searches."""
    for q in queries[:10]:
        index.search(q[None], k)
    ms = []
    for q in queries:
        started = time.perf_counter()
        index.search(q[None], k)
        ms.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": statistics.median(ms), "p99_ms": float(np.percentile(ms, 99))}


def catalog_rows(name: str, vectors: np.ndarray, queries: np.ndarray) -> list[dict[str, Any]]:
    from lmrec.serve.ann import VectorIndex, recall_at_k

    rows = []
    for kind in ("exact", "hnsw", "ivf"):
        started = time.perf_counter()
        index = VectorIndex(vectors, kind)  # type: ignore[arg-type]
        build = time.perf_counter() - started
        row = {"catalog": name, "items": len(vectors), "kind": kind, "build_s": build}
        row.update(timed(index, queries))
        row["recall@10"] = recall_at_k(index, queries, 10)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.update(thread_env(args.threads))
    import torch

    from lmrec.runs import open_run
    from lmrec.serve.ann import DotProduct

    torch.set_num_threads(args.threads)
    run = open_run(args.run, args.cache_dir)
    form = DotProduct.of(run.model)
    if form is None:
        raise SystemExit(f"{run.meta['model']} does not score by a dot product; use a sequential or MF run")
    test = run.split.eval_set("test")
    queries, _, ok = form.queries(test.queries)
    queries = np.ascontiguousarray(queries[ok][: args.queries])
    rng = np.random.default_rng(args.seed)
    items = form.items
    copies = items[rng.integers(0, len(items), args.large)]
    large = (copies + rng.normal(0, items.std(0), copies.shape)).astype(np.float32)
    rows = catalog_rows("ml-100k", items, queries) + catalog_rows(f"synthetic {args.large:,}", large, queries)
    info = {
        "run": str(args.run),
        "model": run.meta["model"],
        "queries": len(queries),
        "threads": args.threads,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    print(render(rows, info))


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"{info['model']} user states of {info['queries']} test users, top-10 by inner product, one query per call:",
        "",
        "| catalog | items | index | recall@10 vs exact | p50 ms | p99 ms | build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['catalog']} | {r['items']:,} | {r['kind']} | {r['recall@10']:.3f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['build_s']:.1f} |"
        )
    m = info["machine"]
    lines.append(
        f"\nMachine: {m['nproc']} CPU cores ({m['cpu']}), {info['threads']} thread(s); torch {m['torch']}. "
        f"Date: {info['date']}. Command: `{info['command']}`"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
