"""Sequential models, lmrec against RecBole 1.2.1, on ml-100k under one protocol.

Same data, split and metrics as ``classic.py`` (time-ordered leave-one-out, full ranking, history
excluded, @10). lmrec's models train on whole sequences (every position supervised in one pass)
with early stopping on validation NDCG@10; RecBole's SASRec and BERT4Rec train on every prefix of
every sequence and are run for a fixed number of epochs (``--peer-epochs``, default 1: about ten
minutes each on 2 cores), so the table compares NDCG@10 after their budget and seconds per epoch.

Rows:
  sasrec-L50     SASRec with RecBole's dimensions and MAX_ITEM_LIST_LENGTH=50: the speed pair
  sasrec         the same with max_len 200 (lmrec's default)
  bert4rec       masked-item modelling, max_len 200
  sasrec-pt      masked-item pretraining (``--pretrain-epochs``) then next-item fine-tuning

    .venv/bin/python benchmarks/sequential.py                   # all (about 40 minutes on 2 cores)
    .venv/bin/python benchmarks/sequential.py --skip-peer       # lmrec only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    DASH,
    DATASET,
    METRICS,
    REPO,
    Arm,
    add_run_arguments,
    check_same_data,
    command_line,
    fmt,
    load_split,
    machine,
    peer_data_dir,
    run_peer,
    runs_root,
    setup_threads,
    train,
)

# name → (lmrec model, overrides); the dimensions match the peer runner's (64/256/2/2, dropout 0.2)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sasrec-L50": ("sasrec", {"max_len": 50, "batch_size": 32}),
    "sasrec": ("sasrec", {"max_len": 200, "batch_size": 32}),
    "bert4rec": ("bert4rec", {"max_len": 200, "batch_size": 32}),
    "sasrec-pt": ("sasrec", {"max_len": 200, "batch_size": 32}),  # + pretrain_epochs from the CLI
}
PAIRS = {"sasrec-L50": "SASRec", "bert4rec": "BERT4Rec"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--peer-models", default="SASRec,BERT4Rec")
    parser.add_argument("--peer-epochs", type=int, default=1)
    parser.add_argument("--peer-maxlen", type=int, default=50)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--max-epochs", type=int, help="cap lmrec's epochs (a timing-only run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "sequential.json")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def run_ours(
    names: list[str], runs: Path, cache_dir: Path, pretrain_epochs: int, max_epochs: int | None = None
) -> list[dict[str, Any]]:
    """Each variant trained as `lmrec train --model M --set ...` trains it, evaluated on test."""
    from lmrec.evaluate import evaluate

    rows = []
    for name in names:
        model_name, overrides = VARIANTS[name]
        if max_epochs:
            overrides = {**overrides, "epochs": max_epochs}
        if name == "sasrec-pt":
            overrides = {**overrides, "pretrain_epochs": pretrain_epochs}
        run = train(Arm(name, model_name, overrides), 0, runs, cache_dir)
        fit_s = run.meta["train_seconds"]
        result = evaluate(run.model, run.split.eval_set("test"))
        log = run.meta["training"]
        row = {
            "model": name,
            "run": str(run.directory),
            "config": overrides,
            "metrics": {m: result.metrics[m] for m in METRICS},
            "valid_best": max(log["valid"]),
            "fit_s": fit_s,
            "epochs": log["epochs"],
            "best_epoch": log["best_epoch"],
            "epoch_s": log["train_seconds_per_epoch"],
            "pretrain": log.get("pretrain"),
        }
        print(f"lmrec {name}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, {row['epoch_s']:.2f} s/epoch", file=sys.stderr)
        rows.append(row)
    return rows


def render(ours: list[dict[str, Any]], peers: list[dict[str, Any]], info: dict[str, Any]) -> str:
    by_peer = {p["model"]: p for p in peers}
    header = [
        "model", "NDCG@10", "Recall@10", "MRR@10", "valid NDCG@10 (best)", "s/epoch",
        "epochs (best)", "fit s", "peer", "peer NDCG@10", "peer s/epoch", "speed-up per epoch",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in ours:
        peer = by_peer.get(PAIRS.get(row["model"], ""))
        m = row["metrics"]
        peer_epoch = peer["epoch_s"] if peer else None
        speed = peer_epoch / row["epoch_s"] if peer_epoch else None
        cells = [
            row["model"], fmt(m["ndcg@10"], 4), fmt(m["recall@10"], 4), fmt(m["mrr@10"], 4),
            fmt(row["valid_best"], 4), fmt(row["epoch_s"], 2), f"{row['epochs']} ({row['best_epoch'] + 1})",
            fmt(row["fit_s"], 1), peer["model"] if peer else DASH,
            fmt(peer["metrics"]["ndcg@10"], 4) if peer else DASH, fmt(peer_epoch, 1),
            fmt(speed, 0) + "×" if speed else DASH,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    pt = next((r for r in ours if r["model"] == "sasrec-pt"), None)
    scratch = next((r for r in ours if r["model"] == "sasrec"), None)
    lines.append("")
    if pt and scratch:
        delta = pt["metrics"]["ndcg@10"] / scratch["metrics"]["ndcg@10"] - 1
        lines.append(
            f"Pretrain → fine-tune ({pt['pretrain']['epochs']} masked-item epochs, then next-item) vs from scratch: "
            f"test NDCG@10 {pt['metrics']['ndcg@10']:.4f} vs {scratch['metrics']['ndcg@10']:.4f} ({delta:+.1%})."
        )
    for p in peers:
        valid = p["valid"].get("ndcg@10", DASH)
        lines.append(
            f"RecBole {p['model']}: {p['epochs']} epoch(s), {p['epoch_s']:.1f} s/epoch (process wall "
            f"{p['wall_s']:.0f} s with data and evaluation), test NDCG@10 {p['metrics']['ndcg@10']:.4f}, valid {valid}."
        )
    lines.append(
        "s/epoch: training time of one epoch, validation excluded (lmrec: median over epochs; RecBole: the "
        "'training [time: …]' it logs). An epoch supervises every training interaction once on both sides."
    )
    lines.append(
        f"Machine: {info['machine']['nproc']} CPU cores ({info['machine']['cpu']}), no GPU, {info['threads']} threads; "
        f"torch {info['machine']['torch']}. Date: {info['date']}. Command: `{info['command']}`"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    setup_threads(args.threads, args.pin)
    split = load_split(args.cache_dir)
    with runs_root(args.runs, "lmrec-sequential-") as runs:
        ours = run_ours(
            [m for m in args.models.split(",") if m], runs, args.cache_dir, args.pretrain_epochs, args.max_epochs
        )
    peers: list[dict[str, Any]] = []
    if not args.skip_peer:
        os.environ["MAXLEN"] = str(args.peer_maxlen)
        with tempfile.TemporaryDirectory(prefix="lmrec-recbole-") as tmp:
            data_dir = peer_data_dir(args.cache_dir, Path(tmp) / "data")
            check_same_data(split, data_dir / DATASET / f"{DATASET}.inter")
            names = [m for m in args.peer_models.split(",") if m]
            peers = run_peer(names, data_dir, args.threads, Path(tmp), epochs=args.peer_epochs)
        for p in peers:
            p["epochs"] = len(p["epoch_train_s"])
            p["epoch_s"] = statistics.median(p["epoch_train_s"]) if p["epoch_train_s"] else None
    info = {
        "dataset": DATASET,
        "threads": args.threads,
        "peer_maxlen": args.peer_maxlen,
        "machine": machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(argv),
    }
    print(render(ours, peers, info))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**info, "lmrec": ours, "recbole": peers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
