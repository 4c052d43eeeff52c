"""Federated learning on Flower against centralised training on ml-100k, at equal epochs.

Federated: the training users split into ``--clients`` disjoint shards, one per Flower SuperNode
(Simulation Engine, Ray limited to one CPU); ``--rounds`` rounds of FedAvg, each client training
``--local-epochs`` epochs over its own users through lmrec's Trainer from the global weights; the
best round on the validation users kept (:mod:`lmrec.privacy.federated`). Centralised: the same
model and config on all the training data for ``rounds × local epochs`` epochs at most, early
stopping on validation with the best epoch kept — equal passes over the data on both sides.

Quality: leave-one-out, full ranking, all 943 test users, NDCG@10 and Recall@10; the share of
centralised NDCG@10 that federated keeps; wall time of each fit. ``--attack``: the user-level
membership-inference attack of benchmarks/privacy.py (half the users members, rank signal, ROC AUC)
against the federated and the centralised model trained on the members only.

    taskset -c 0 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/federated.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Per model: the config centralised training uses, and the federated clients' batch size — the
# centralised batch over the number of clients, so that a round takes as many optimizer steps on
# each client as a centralised epoch takes (a client holds a tenth of the data at 10 clients).
CONFIGS: dict[str, dict[str, Any]] = {"bpr": {}, "sasrec": {}}
CLIENT_BATCH: dict[str, int] = {"bpr": 200, "sasrec": 16}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bpr,sasrec")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", default="bpr=30,sasrec=15", help="MODEL=ROUNDS,... (= centralised epochs)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--server-lr", type=float, default=1.0, help="1: plain FedAvg")
    parser.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"])
    parser.add_argument("--attack", default="bpr", help="models to attack (comma-separated; '' for none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "lmrec")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "federated.json")
    parser.add_argument("--merge", type=Path, nargs="+", help="result files to merge into --out (no training)")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from lmrec.data.sources import load_source
    from lmrec.data.splits import leave_one_out
    from lmrec.evaluate import evaluate
    from lmrec.models import FitOptions, model_class
    from lmrec.privacy import membership_inference, membership_split
    from lmrec.privacy.federated import FederatedOptions
    from lmrec.privacy.flower import federated_fit
    from lmrec.runs import DataRecipe, federated_run, train_run

    data = load_source("ml-100k", args.cache_dir)
    split = leave_one_out(data)
    test = split.eval_set("test")
    runs_dir = tempfile.TemporaryDirectory(prefix="lmrec-federated-")  # the runs, removed at the end
    runs = Path(runs_dir.name)
    members = membership_split(data, 0.5, seed=0)
    rounds = {k: int(v) for k, v in (pair.split("=") for pair in args.rounds.split(","))}
    attack_models = [m for m in args.attack.split(",") if m]
    rows: list[dict[str, Any]] = []

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for name in args.models.split(","):
        config = CONFIGS[name]
        n_rounds = rounds[name]
        epochs = n_rounds * args.local_epochs
        klass = model_class(name)
        fed = FederatedOptions(
            clients=args.clients,
            rounds=n_rounds,
            local_epochs=args.local_epochs,
            server_lr=args.server_lr,
            lr_schedule=args.lr_schedule,
            seed=args.seed,
        )

        def central(on: Any, stop: Any, klass: Any = klass, config: dict = config, epochs: int = epochs) -> Any:
            """The attack's twin, on the members' half: no data recipe describes it (not train_run)."""
            cfg = klass.config_class.from_dict({**config, "epochs": epochs})
            return klass(cfg).fit(on, stop, FitOptions(seed=args.seed))

        client_config = {**config, "batch_size": CLIENT_BATCH[name]}

        def federated(on: Any, stop: Any, name: str = name, config: dict = client_config, fed: Any = fed) -> Any:
            return federated_fit(name, config, on, stop, fed, FitOptions(seed=args.seed, log=say))

        # centralised as `lmrec train` trains it, federated as `lmrec federated` does, into temporary runs
        c_run = train_run(DataRecipe("ml-100k"), name, {**config, "epochs": epochs}, runs / f"{name}-central",
                          args.cache_dir, FitOptions(seed=args.seed))  # fmt: skip
        c_model, c_seconds = c_run.model, c_run.meta["train_seconds"]  # the fit alone, as before
        c_metrics = evaluate(c_model, test, ks=(10,)).metrics
        say(f"{name} centralised: NDCG@10 {c_metrics['ndcg@10']:.4f} in {c_seconds:.0f}s")
        f_run = federated_run(DataRecipe("ml-100k"), name, client_config, runs / f"{name}-federated", args.cache_dir,
                              fed, FitOptions(seed=args.seed, log=say))  # fmt: skip
        f_model, log, f_seconds = f_run.model, f_run.meta["training"]["federated"], f_run.meta["train_seconds"]
        f_metrics = evaluate(f_model, test, ks=(10,)).metrics
        say(f"{name} federated: NDCG@10 {f_metrics['ndcg@10']:.4f} in {f_seconds:.0f}s")
        row: dict[str, Any] = {
            "model": name,
            "config": config,
            "client_batch_size": CLIENT_BATCH[name],
            "clients": args.clients,
            "rounds": n_rounds,
            "local_epochs": args.local_epochs,
            "server_lr": args.server_lr,
            "lr_schedule": args.lr_schedule,
            "central_ndcg@10": c_metrics["ndcg@10"],
            "central_recall@10": c_metrics["recall@10"],
            "central_epochs_run": len(c_model.training_log["losses"]),
            "central_best_epoch": c_model.training_log["best_epoch"] + 1,
            "central_s": round(c_seconds, 1),
            "federated_ndcg@10": f_metrics["ndcg@10"],
            "federated_recall@10": f_metrics["recall@10"],
            "federated_kept_round": log["kept_round"],
            "federated_s": round(f_seconds, 1),
            "share_of_central": f_metrics["ndcg@10"] / c_metrics["ndcg@10"],
            "client_interactions": log["client_interactions"],
            "per_round": log["per_round"],
        }
        if name in attack_models:  # both trained on the members only, for the epochs/rounds above, no validation
            on = members.train_dataset()
            row["central_attack_auc"] = membership_inference(central(on, None), members).auc
            row["federated_attack_auc"] = membership_inference(federated(on, None)[0], members).auc
            aucs = row["central_attack_auc"], row["federated_attack_auc"]
            say(f"{name} attack AUC: centralised {aucs[0]:.3f}, federated {aucs[1]:.3f}")
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_round"}), file=sys.stderr, flush=True)
    runs_dir.cleanup()

    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)"
    record = {
        "rows": rows,
        "args": vars(args) | {"out": str(args.out), "cache_dir": str(args.cache_dir)},
        "machine": machine,
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(table([record]))
    return 0


def table(records: list[dict[str, Any]]) -> str:
    """The markdown table of one or more result files (one per model when run side by side)."""
    rows = [r for record in records for r in record["rows"]]
    lines = [
        "| model | rounds × local epochs (clients), server lr, client lr | centralised NDCG@10 (best epoch) "
        "| federated NDCG@10 (kept round) | federated / centralised | Recall@10 c / f | attack AUC c / f "
        "| fit s c / f |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        attack = (
            f"{r['central_attack_auc']:.3f} / {r['federated_attack_auc']:.3f}" if "central_attack_auc" in r else "–"
        )
        lines.append(
            f"| {r['model']} | {r['rounds']} × {r['local_epochs']} ({r['clients']}), η {r.get('server_lr', 1.0):g}, "
            f"{r.get('lr_schedule', 'constant')} "
            f"| {r['central_ndcg@10']:.4f} ({r['central_best_epoch']}) "
            f"| {r['federated_ndcg@10']:.4f} ({r['federated_kept_round']}) | {r['share_of_central']:.1%} "
            f"| {r['central_recall@10']:.4f} / {r['federated_recall@10']:.4f} | {attack} "
            f"| {r['central_s']} / {r['federated_s']} |"
        )
    dates = ", ".join(sorted({record["date"] for record in records}))
    lines.append(f"\nmachine: {records[0]['machine']}; {dates}")
    return "\n".join(lines)


def merge(paths: list[Path], out: Path) -> int:
    """Several result files (models run side by side) → one, and its table."""
    records = [json.loads(p.read_text()) for p in paths]
    out.write_text(json.dumps({"parts": records, "rows": [r for rec in records for r in rec["rows"]]}, indent=2))
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
