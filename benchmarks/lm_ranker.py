"""A fine-tuned language-model ranker re-ranking EASE on ml-100k: quality gain, training time, latency.

Protocol: time-ordered leave-one-out (last interaction → test, second last → validation), full-catalog
ranking with the history excluded, metrics @10. The base (EASE) proposes its top ``--candidates``
items; ``lm-ranker`` (all-MiniLM-L6-v2 fine-tuned as a bi-encoder on the training interactions,
``--steps`` steps of ``--batch-size`` examples with hard negatives from EASE) re-orders them. All
rows below share the same base model and so the same candidates:

* base                     — EASE alone;
* base + MiniLM zero-shot  — the pretrained encoder, no fine-tuning (``steps=0``);
* base + lm-ranker (mix m) — the fine-tuned encoder; mix 1.0 orders the candidates by the ranker,
                             0.5 blends ranker and base z-scores (no refit: one model, two orders).

Latency: the median wall time of ``score`` for one user (batch of 1, the base scores the catalog,
the ranker reads the history and scores the candidates) over ``--latency-users`` test users, the
re-ranking part alone, and the throughput of batched scoring (``--batch`` users per call).

    .venv/bin/python benchmarks/lm_ranker.py --steps 300            # ~30 minutes on 2 CPU cores
    .venv/bin/python benchmarks/lm_ranker.py --smoke                # 3 steps, 50 test users
    .venv/bin/python benchmarks/lm_ranker.py --device cuda          # on a GPU
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

METRICS = ("ndcg@10", "recall@10", "mrr@10")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    parser.add_argument("--batch-size", type=int, default=16, help="training examples per step")
    parser.add_argument("--candidates", type=int, default=20, help="base top-N the ranker re-orders")
    parser.add_argument("--mix", default="1.0,0.5", help="candidate orders to evaluate (comma-separated)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more lm-ranker options")
    parser.add_argument("--no-zero-shot", action="store_true", help="skip the pretrained (steps=0) row")
    parser.add_argument("--latency-users", type=int, default=100, help="users timed one at a time")
    parser.add_argument("--batch", type=int, default=64, help="users per call for the throughput figure")
    parser.add_argument("--smoke", action="store_true", help="3 steps, 50 test users: checks the script")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.latency_users = 3, 20
    if args.out is None:
        args.out = BENCH / "results" / ("lm_ranker-smoke.json" if args.smoke else "lm_ranker.json")
    return args


def metrics(model: Any, test: Any, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    from lmrec.evaluate import evaluate

    t0 = time.perf_counter()
    result = evaluate(model, test, ks=ks, metrics=("ndcg", "recall", "mrr"))
    return {**result.metrics, "eval_s": time.perf_counter() - t0}


def latency(model: Any, test: Any, n_users: int, batch: int) -> dict[str, float]:
    """Median ms per single-user ``score`` (and for the base and the re-ranking alone), and
    users per second with ``batch`` users per call."""
    import torch

    queries = test.queries
    one = [queries.slice(i, i + 1) for i in range(min(n_users, len(queries)))]
    model.score(one[0])  # warm-up (lazy initialisation, allocator)

    def median_ms(fn: Any) -> float:
        times = []
        for q in one:
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(q)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    def rerank(q: Any) -> None:
        _, items, _ = model.candidates(q)
        model.ranker_scores(q, items)

    out = {
        "users_timed": len(one),
        "score_ms": median_ms(model.score),
        "base_score_ms": median_ms(model.base.score),
        "candidates_and_rerank_ms": median_ms(rerank),
    }
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(queries), batch):
            model.score(queries.slice(s, min(s + batch, len(queries))))
    out["batch"] = batch
    out["users_per_s"] = len(queries) / (time.perf_counter() - t0)
    return out


def fit_ranker(name: str, overrides: dict[str, Any], runs: Path, args: argparse.Namespace) -> Any:
    """The lm-ranker as `lmrec train --model lm-ranker --set ...` trains it, read back from its run."""
    run = train(Arm(name, "lm-ranker", overrides), args.seed, runs, args.cache_dir, device=args.device)
    run.model.training_log = {**run.meta["training"], "fit_s": run.meta["train_seconds"]}
    return run.model


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    base = next(r for r in rows if r["model"] == "base")["test"]
    lines = [
        f"ml-100k, leave-one-out, test users: {info['test_users']}; the ranker re-orders EASE's top "
        f"{info['candidates']} (they hold the test item for {info['candidate_recall']:.1%} of the users).",
        "",
        "| model | NDCG@10 | Recall@10 | MRR@10 | NDCG gain | fine-tuning s | score 1 user ms | users/s (batched) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, lat = r["test"], r.get("latency", {})
        gain = f"{t['ndcg@10'] / base['ndcg@10'] - 1:+.1%}" if r["model"] != "base" and base["ndcg@10"] else "–"
        train = f"{r['train_s']:.0f}" if "train_s" in r else "–"
        ms = f"{lat['score_ms']:.1f}" if lat else "–"
        ups = f"{lat['users_per_s']:.0f}" if lat else "–"
        lines.append(
            f"| {r['model']} | {t['ndcg@10']:.4f} | {t['recall@10']:.4f} | {t['mrr@10']:.4f} | {gain} | {train} "
            f"| {ms} | {ups} |"
        )
    lines.append("")
    for r in rows:
        if r.get("latency"):
            lat = r["latency"]
            lines.append(
                f"{r['model']}: one user (batch of 1, median of {lat['users_timed']}): score {lat['score_ms']:.1f} ms, "
                f"of which the base alone takes {lat['base_score_ms']:.1f} ms (base top-N + language-model re-ranking "
                f"timed alone: {lat['candidates_and_rerank_ms']:.1f} ms); {lat['users_per_s']:.0f} users/s when "
                f"scoring {lat['batch']} users per call."
            )
    tuned = next((r for r in rows if "train_s" in r and r["config"]["steps"] > 0), None)
    if tuned is not None:
        c = tuned["config"]
        lines.append(
            f"Fine-tuning: {c['steps']} steps × {c['batch_size']} examples, {c['negatives']} negatives each "
            f"({c['hard_negatives']} from the base top {c['candidates']}) plus in-batch ones, lr {c['lr']}, "
            f"{tuned['trained_parameters']:,} weights trained, {tuned['train_s']:.0f} s; item vectors "
            f"{tuned['item_encode_s']:.1f} s; loss {tuned['loss_first']:.3f} → {tuned['loss_last']:.3f} "
            f"(mean of the first and last 10 % of the steps)."
        )
    m = info["machine"]
    lines.append(
        f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['gpu']}, {info['threads']} threads; torch {m['torch']}, "
        f"Python {m['python']}. Date: {info['date']}. Command: `{info['command']}`"
        + (" (smoke run: numbers only check the script)" if info["smoke"] else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the encoder loads from the package, never the hub
    setup_threads(args.threads, args.pin)  # before numpy / torch load their thread pools
    with runs_root(args.runs, "lmrec-lm-ranker-") as runs:
        experiment(args, argv, runs)


def experiment(args: argparse.Namespace, argv: list[str], runs: Path) -> None:
    import torch

    from lmrec.models.base import ModelConfig

    split = load_split(args.cache_dir)
    test = split.eval_set("test")
    if args.smoke:
        test = test.subset(np.arange(len(test)) < 50)
    extra = dict(item.split("=", 1) for item in args.set)
    config = {"base": "ease", "candidates": args.candidates, "steps": args.steps, "batch_size": args.batch_size}
    config.update(extra)

    tuned = fit_ranker("lm-ranker", config, runs, args)
    _say(f"fine-tuned in {tuned.training_log['train_s']:.1f} s")
    candidates = tuned.config.candidates
    base_test = metrics(tuned.base, test, ks=tuple(sorted({10, candidates})))
    rows: list[dict[str, Any]] = [{"model": "base", "base": tuned.config.base, "test": base_test}]
    rows[0]["latency"] = {}

    def ranker_row(name: str, model: Any) -> dict[str, Any]:
        cfg: ModelConfig = model.config
        loss = model.training_log["losses"]
        tenth = max(1, len(loss) // 10)
        row = {
            "model": name,
            "config": cfg.to_dict(),
            "test": metrics(model, test),
            "fit_s": model.training_log["fit_s"],
            "train_s": model.training_log["train_s"],
            "item_encode_s": model.training_log["item_encode_s"],
            "trained_parameters": model.training_log["trained_parameters"],
            "loss_first": float(np.mean(loss[:tenth])) if loss else float("nan"),
            "loss_last": float(np.mean(loss[-tenth:])) if loss else float("nan"),
        }
        _say(f"{name}: {row['test']}")
        return row

    if not args.no_zero_shot:
        zero = fit_ranker("zero-shot", {**config, "steps": 0}, runs, args)
        rows.append(ranker_row("base + MiniLM zero-shot", zero))
        del zero
    for mix in [float(m) for m in args.mix.split(",") if m]:
        tuned.config.mix = mix
        row = ranker_row(f"base + lm-ranker (mix {mix:g})", tuned)
        if mix == 1.0:
            row["latency"] = latency(tuned, test, args.latency_users, args.batch)
        rows.append(row)
    tuned.config.mix = 1.0

    info = {
        "dataset": "ml-100k",
        "protocol": {**split.protocol, "ranking": "full catalog", "exclude": "history (train + valid)", "k": 10},
        "test_users": len(test),
        "candidates": candidates,
        "candidate_recall": base_test[f"recall@{candidates}"],
        "threads": args.threads,
        "device": args.device,
        "machine": {
            **machine(),
            **({"gpu": torch.cuda.get_device_name(0)} if args.device.startswith("cuda") else {}),
        },
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
        "commit": git_commit(),
        "smoke": args.smoke,
    }
    for row in rows:
        row["test"] = {k: v for k, v in row["test"].items() if k in (*METRICS, "eval_s", f"recall@{candidates}")}
    print(render(rows, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "rows": rows}, indent=2) + "\n")
    _say(f"\nWrote {args.out}")


if __name__ == "__main__":
    main()
