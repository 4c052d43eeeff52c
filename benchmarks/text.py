"""Language models read the catalog: ID vs text vs fused SASRec on ml-100k, warm, cold and transfer.

Three experiments, one run, all lmrec (no peer offers these):

1. warm   — time-ordered leave-one-out, test NDCG@10 / Recall@10 of SASRec with ID items, items
            from text (all-MiniLM-L6-v2 embeddings through a learned adaptor), and fused.
2. cold   — the cold-items split (10 % of items held out with all their interactions): Recall@10
            and NDCG@10 on test interactions whose target is a cold item, beside the warm
            validation numbers of the same models.
3. transfer — ml-100k items split into two genre-disjoint catalogs (A: action, adventure, sci-fi,
            thriller, crime, war, western, horror, fantasy, film-noir, mystery; B: the rest). A text
            SASRec is pretrained on A and fine-tuned on B with 1 %, 10 %, 100 % of B's training
            users, against training on B alone. (The clothing-reviews set has no user ids, so no
            sequences to transfer to; this is the closest real thing on the data we have.)

    .venv/bin/python benchmarks/text.py                  # all three (~20 minutes on 1 thread)
    .venv/bin/python benchmarks/text.py --parts cold --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
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

GENRES_A = {
    "Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "War", "Western", "Horror", "Fantasy", "Film-Noir", "Mystery",
}  # fmt: skip
BASE = {"max_len": 50, "batch_size": 32}  # the best SASRec setting of the sequential benchmark
SHARES = (0.01, 0.1, 1.0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="warm,cold,transfer")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="item representations to compare")
    parser.add_argument("--smoke", action="store_true", help="2 epochs per model, to check the script")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "text.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def fit(model: str, overrides: dict[str, Any], train: Any, valid: Any, cache_dir: Path, smoke: bool) -> Any:
    """The transfer part's fits: on genre-split catalogs and user subsamples that no data recipe
    describes, so not (yet) through train_run."""
    from lmrec.models import FitOptions, model_class

    cfg = {**BASE, **overrides, **({"epochs": 2} if smoke else {})}
    klass = model_class(model)
    t0 = time.perf_counter()
    fitted = klass(klass.config_class.from_dict(cfg)).fit(train, valid, FitOptions(seed=0, cache_dir=cache_dir))
    fitted.fit_seconds = time.perf_counter() - t0
    return fitted


def scores(model: Any, eval_set: Any) -> dict[str, float]:
    from lmrec.evaluate import evaluate

    m = evaluate(model, eval_set, metrics=("ndcg", "recall")).metrics
    return {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"], "users": len(eval_set)}


VARIANTS = {"sasrec (id)": ("sasrec", {}), "text-sasrec (text)": ("text-sasrec", {"item_repr": "text"}),
            "text-sasrec (fused)": ("text-sasrec", {"item_repr": "fused"}),
            "text-sasrec (aligned)": ("text-sasrec", {"item_repr": "aligned"})}  # fmt: skip


def trained(name: str, runs: Path, args: argparse.Namespace, **data: Any) -> Any:
    """A variant as `lmrec train --model M --set ... [--split ...]` trains it, read back from its run."""
    model, overrides = VARIANTS[name]
    cfg = {**BASE, **overrides, **({"epochs": 2} if args.smoke else {})}
    label = name + (f" {data['split']}" if data else "")
    return train(Arm(label, model, cfg, data=data), 0, runs, args.cache_dir, **data)


def warm(runs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in args.variants.split(","):
        run = trained(name, runs, args)
        test = scores(run.model, run.split.eval_set("test"))
        rows.append({"model": name, "test": test, "fit_s": run.meta["train_seconds"]})
        print(f"warm {name}: {rows[-1]['test']}", file=sys.stderr)
    return rows


def cold(runs: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for name in args.variants.split(","):
        run = trained(name, runs, args, split="cold-items", split_params={"share": 0.1, "seed": 0})
        rows.append(
            {
                "model": name,
                "cold_test": scores(run.model, run.split.eval_set("test")),
                "warm_valid": scores(run.model, run.split.eval_set("valid")),
                "fit_s": run.meta["train_seconds"],
            }
        )
        print(f"cold {name}: {rows[-1]['cold_test']}", file=sys.stderr)
    return rows


def genre_catalogs(ds: Any) -> tuple[Any, Any]:
    """Two datasets over the same users with genre-disjoint item sets."""
    in_a = np.array([bool(set(c) & GENRES_A) for c in ds.catalog["categories"]])
    inter = ds.interactions
    a = ds.with_interactions(inter[in_a[inter["item"].to_numpy()]]).compacted()
    b = ds.with_interactions(inter[~in_a[inter["item"].to_numpy()]]).compacted()
    return a, b


def transfer(ds: Any, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    from lmrec.data.splits import leave_one_out

    source, target = genre_catalogs(ds)
    text = {"item_repr": "text"}
    src_split = leave_one_out(source)
    pre = fit("text-sasrec", text, src_split.train_dataset(), src_split.eval_set("valid"), args.cache_dir, args.smoke)
    pre.save(out_dir / "source-model")
    split = leave_one_out(target)
    train = split.train_dataset()
    rng = np.random.default_rng(0)
    rows = []
    for share in SHARES:
        users = rng.permutation(train.n_users)[: max(1, round(train.n_users * share))]
        inter = train.interactions
        part = train.with_interactions(inter[inter["user"].isin(users)])
        for init in (None, str(out_dir / "source-model")):
            m = fit(
                "text-sasrec", {**text, "init_from": init}, part, split.eval_set("valid"), args.cache_dir, args.smoke
            )
            rows.append(
                {
                    "share": share,
                    "train_interactions": len(part.interactions),
                    "pretrained": init is not None,
                    "test": scores(m, split.eval_set("test")),
                    "fit_s": m.fit_seconds,
                }
            )
            print(f"transfer {share} pretrained={init is not None}: {rows[-1]['test']}", file=sys.stderr)
    summary = {"source": source.summary(), "target": target.summary()}
    return {
        "catalogs": {k: {x: v[x] for x in ("users", "items", "interactions")} for k, v in summary.items()},
        "rows": rows,
    }


def render(results: dict[str, Any], info: dict[str, Any]) -> str:
    lines = []
    if "warm" in results:
        lines += ["Warm (leave-one-out, test):", "", "| model | NDCG@10 | Recall@10 | fit s |", "|---|---|---|---|"]
        for r in results["warm"]:
            lines.append(
                f"| {r['model']} | {r['test']['ndcg@10']:.4f} | {r['test']['recall@10']:.4f} | {r['fit_s']:.0f} |"
            )
        lines.append("")
    if "cold" in results:
        lines += [
            "Cold items (10 % of items never seen in training; test = their interactions):",
            "",
            "| model | cold Recall@10 | cold NDCG@10 | warm (valid) Recall@10 | warm (valid) NDCG@10 | fit s |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["cold"]:
            c, w = r["cold_test"], r["warm_valid"]
            lines.append(
                f"| {r['model']} | {c['recall@10']:.4f} | {c['ndcg@10']:.4f} | {w['recall@10']:.4f} | "
                f"{w['ndcg@10']:.4f} | {r['fit_s']:.0f} |"
            )
        lines.append(f"({results['cold'][0]['cold_test']['users']} users with a cold target.)")
        lines.append("")
    if "transfer" in results:
        t = results["transfer"]
        lines += [
            f"Transfer A → B (genre-disjoint catalogs; A: {t['catalogs']['source']}, B: {t['catalogs']['target']}):",
            "",
            "| share of B's training users | train interactions | B alone NDCG@10 | pretrained on A NDCG@10 | gain |",
            "|---|---|---|---|---|",
        ]
        for share in SHARES:
            pair = {r["pretrained"]: r for r in t["rows"] if r["share"] == share}
            alone, pre = pair[False]["test"]["ndcg@10"], pair[True]["test"]["ndcg@10"]
            gain = f"{pre / alone - 1:+.0%}" if alone else "–"
            lines.append(f"| {share:.0%} | {pair[False]['train_interactions']} | {alone:.4f} | {pre:.4f} | {gain} |")
        lines.append("")
    lines.append(
        f"Machine: {info['machine']['nproc']} CPU cores ({info['machine']['cpu']}), no GPU, {info['threads']} threads; "
        f"torch {info['machine']['torch']}. Date: {info['date']}. Command: `{info['command']}`"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder loads from the package, never the hub
    setup_threads(args.threads, args.pin)

    from lmrec.data.sources import load_source

    parts = args.parts.split(",")
    results: dict[str, Any] = {}
    with runs_root(args.runs, "lmrec-text-") as runs:
        if "warm" in parts:
            results["warm"] = warm(runs, args)
        if "cold" in parts:
            results["cold"] = cold(runs, args)
    if "transfer" in parts:
        ds = load_source("ml-100k", args.cache_dir)
        results["transfer"] = transfer(ds, args, args.out.parent / "text-transfer")
    info = {
        "threads": args.threads,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "commit": git_commit(),
        "smoke": args.smoke,
    }
    print(render(results, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
