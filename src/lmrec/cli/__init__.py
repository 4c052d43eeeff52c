"""The ``lmrec`` command: its parser and ``main``; the commands are in :mod:`.train` (those that
train or change a model) and :mod:`.use` (those that read trained runs), what they share in
:mod:`.options`. The only package that reads argv or the environment (but for :mod:`lmrec.cache`,
which reads ``$LMREC_CACHE``)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lmrec.cache import default_cache
from lmrec.cli.options import ONEDNN_CACHES, WATCH_SECONDS, add_rerank_options, dp_arguments, duration, positive
from lmrec.cli.robust import add_parsers as add_robust_parsers
from lmrec.cli.train import cmd_compress, cmd_federated, cmd_mask, cmd_prepare, cmd_retrain, cmd_train, cmd_tune
from lmrec.cli.use import (
    cmd_compare,
    cmd_datasets,
    cmd_evaluate,
    cmd_keys,
    cmd_recommend,
    cmd_report,
    cmd_serve,
)
from lmrec.errors import LmrecError

__all__ = ["build_parser", "duration", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmrec", description="Recommenders with language models and strong baselines."
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="dataset cache (default $LMREC_CACHE or ~/.cache/lmrec)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("datasets", help="list or fetch named datasets")
    p.add_argument("action", choices=["list", "fetch"])
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train a model and save a run directory")
    p.add_argument("--dataset", help="registered name (ml-100k) or a file/directory")
    p.add_argument("--model")
    p.add_argument("--config", help="YAML file of model options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option override")
    p.add_argument("--out", help="run directory to create (checkpointed every epoch)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from its last checkpoint")
    p.add_argument("--nproc", type=positive, default=1, help="data-parallel processes (launches torchrun)")
    dp_arguments(p, "user-level DP-SGD (bpr, sasrec, bert4rec)", "user", "per-user gradient clip")
    p.add_argument("--stop-after", type=positive, metavar="EPOCHS", help="stop after this many epochs (then --resume)")
    p.add_argument(
        "--max-time",
        type=duration,
        metavar="DURATION",
        help="stop at the first epoch end past this (90s, 20m, 1h30m; or max_time in --config); best epoch kept",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="OURS=THEIRS",
        help="column mapping, e.g. user=customer_id",
    )
    p.add_argument("--split", default="leave-one-out", choices=["leave-one-out", "temporal", "ratio", "cold-items"])
    p.add_argument("--split-param", action="append", default=[], metavar="KEY=VALUE", help="e.g. test=0.2, share=0.1")
    p.add_argument("--kcore", type=int, help="keep users and items with at least this many interactions")
    p.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    p.add_argument("--dedupe", action="store_true", help="keep only the last of repeated user-item pairs")
    p.add_argument(
        "--text-template",
        metavar="TEMPLATE",
        help="how text models read this dataset's items, e.g. '{keywords}' or '{title} | {brand} | {categories}'"
        " (default: the title, else the first text column: name, keywords, description, ...)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the cores no other process is using)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="search a model's options on validation (Optuna; needs lmrec[tune])")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--model", required=True, help="sasrec, bert4rec, text-sasrec, bpr, als, ease, itemknn, svd")
    p.add_argument("--trials", type=positive, default=20, help="finished trials the study should hold")
    p.add_argument("--time-budget", type=duration, metavar="DURATION", help="stop starting trials after this (1h)")
    p.add_argument("--study", metavar="FILE", help="SQLite file (or storage URL) of the study: resumable")
    p.add_argument("--out", metavar="BEST.yaml", help="write the best options as YAML for lmrec train --config")
    p.add_argument("--runs", metavar="DIR", help="keep every trial's run here (default: a temporary directory)")
    p.add_argument("--config", help="YAML of options fixed in every trial (not searched)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an option fixed in every trial")
    p.add_argument("--prune-after", type=int, default=5, metavar="EPOCHS", help="epochs before a trial can be pruned")
    p.add_argument("--no-defaults", action="store_true", help="no first trial of the model's defaults")
    p.add_argument("--split", default="leave-one-out", choices=["leave-one-out", "temporal", "ratio", "cold-items"])
    p.add_argument("--split-param", action="append", default=[], metavar="KEY=VALUE", help="e.g. test=0.2, share=0.1")
    p.add_argument("--kcore", type=int, help="keep users and items with at least this many interactions")
    p.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    p.add_argument("--seed", type=int, default=0, help="the sampler's and every trial's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("retrain", help="train a run's model again on its data plus the service's feedback")
    p.add_argument("--run", required=True, help="the run to retrain (model, config, seed, data and split)")
    p.add_argument(
        "--db",
        help="event store: sqlite:///PATH, a file path or postgresql://... (default: the one `lmrec serve` uses)",
    )
    p.add_argument("--out", required=True, help="new run directory to create")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option override")
    p.add_argument("--reload", metavar="URL", help="then swap the service at URL to the new run (POST /admin/reload)")
    p.add_argument("--key", help="an admin API key for --reload (default $LMREC_API_KEY)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("evaluate", help="full-ranking evaluation of a run, or of several side by side")
    p.add_argument("--run", required=True, nargs="+", help="one run directory, or several of one dataset and split")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--k", type=positive, nargs="+", default=[10])
    p.add_argument("--json", action="store_true")
    p.add_argument("--sample", type=positive, help="evaluate that many random users (seed 0), for slow models")
    add_rerank_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k for one user, or for every user into a Parquet file")
    p.add_argument("--run", required=True)
    p.add_argument("--user", help="one user's top-k, printed")
    p.add_argument("--all-users", action="store_true", help="every user of the run, written to --out")
    p.add_argument("--users", metavar="FILE", help="the users of FILE (one ID a line), written to --out")
    p.add_argument("--out", metavar="FILE.parquet", help="columns user, rank, item, score[, reason]")
    p.add_argument("--chunk", type=positive, help="users scored at once (default: as the catalog's size allows)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--history", help="comma-separated item IDs the user just interacted with")
    p.add_argument("--k", type=positive, default=10)
    p.add_argument("--json", action="store_true")
    p.add_argument("--explain", action="store_true", help="a reason per item, citing only the user's history")
    p.add_argument(
        "--llm", help="write the reasons with this LLM (smollm2 or a local model directory); implies --explain"
    )
    p.add_argument("--device", default="cpu", help="device of the --llm")
    p.add_argument(
        "--new-item",
        action="append",
        default=[],
        metavar="TITLE|GENRE,...",
        help="add an item known only by its text (text-reading models), as new-1, new-2, ...",
    )
    add_rerank_options(p)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("compare", help="paired significance test between two runs")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--metric", default="ndcg")
    p.add_argument("--k", type=positive, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="one HTML report of one or more runs (needs lmrec[plot])")
    p.add_argument("--run", required=True, nargs="+", help="runs of one dataset and split; the first is the baseline")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--k", type=positive, nargs="+", default=[10])
    p.add_argument("--sample", type=positive, help="report on that many random users (seed 0), for slow models")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="run the recommendation service (needs lmrec[serve])")
    p.add_argument("--run", required=True)
    p.add_argument(
        "--db",
        help="event store: sqlite:///PATH, a file path or postgresql://user@host:port/db (default RUN_DIR/events.db)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-auth", action="store_true", help="accept requests without API keys (local use only)")
    p.add_argument("--ann", action="store_true", help="approximate top-k with a faiss HNSW index (lmrec[ann])")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 per worker)")
    p.add_argument(
        "--workers", type=int, default=1, help="worker processes (each its own model; share a PostgreSQL store)"
    )
    p.add_argument("--no-access-log", action="store_true", help="no line per request in the log (under load)")
    p.add_argument("--no-batch", action="store_true", help="score each /recommend alone, not in batches")
    p.add_argument(
        "--watch",
        action="store_true",
        help=f"reload when the run's run.json changes (checked every {WATCH_SECONDS:g}s), e.g. a symlink moved on",
    )
    p.add_argument("--head-timeout", type=float, default=10.0, help="seconds a client has to send a request's headers")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a client has to send a request's body")
    p.add_argument("--keep-alive", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--max-connections", type=int, default=2048, help="connections at once; more are answered 503")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("compress", help="compress a run's model into a new run (needs lmrec[compress])")
    p.add_argument("--run", required=True, help="the run to compress (a sequential model: sasrec, bert4rec, ...)")
    p.add_argument("--method", required=True, choices=["int8", "int4", "pq", "onnx", "prune"])
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. m=16 (pq), encoder=int8, heads=1 (prune)"
    )
    p.add_argument("--out", required=True, help="new run directory to create")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("mask", help="write a masked copy of a dataset (pseudonymous IDs, coarse times, no PII)")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--out", required=True, help="directory to create: interactions/items/users.parquet")
    p.add_argument("--key-file", required=True, help="secret HMAC key; created (mode 0600) if missing, never printed")
    p.add_argument("--items", action="store_true", help="pseudonymise item IDs too")
    p.add_argument("--time-granularity", default="none", choices=["none", "day", "week", "month"])
    p.add_argument("--drop", nargs="+", default=[], metavar="COL", help="columns to leave out (COL or TABLE.COL)")
    p.add_argument("--quasi", default="generalise", choices=["generalise", "drop"], help="zip code, age, birth date")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_mask)

    p = sub.add_parser("prepare", help="read a log larger than memory into sharded per-user sequences")
    p.add_argument("--input", required=True, nargs="+", help="Parquet/CSV files of the log, or a directory of them")
    p.add_argument("--out", required=True, help="new directory for the prepared log (--dataset of lmrec train)")
    p.add_argument("--column", action="append", default=[], metavar="OURS=THEIRS", help="e.g. user=customer_id")
    p.add_argument("--shards", type=positive, default=16, help="spill and output shards (memory: rows / shards)")
    p.add_argument("--batch-rows", type=positive, default=1 << 20, help="most rows of the log read at once")
    p.add_argument("--format", choices=["parquet", "csv"], help="the files' format (default: from their suffix)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("federated", help="federated training on Flower (FedAvg; needs lmrec[privacy])")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--model", required=True, help="bpr, sasrec or bert4rec")
    p.add_argument("--clients", type=positive, default=10, help="clients, each holding a disjoint share of the users")
    p.add_argument("--rounds", type=positive, default=20, help="rounds of FedAvg")
    p.add_argument("--local-epochs", type=positive, default=1, help="each client's epochs over its data per round")
    p.add_argument(
        "--server-lr", type=float, default=1.0, help="server step along the clients' mean change (1: plain FedAvg)"
    )
    p.add_argument(
        "--lr-schedule", default="constant", choices=["constant", "cosine"], help="clients' learning rate over rounds"
    )
    p.add_argument("--no-validate", action="store_true", help="keep the last round, not the best on validation")
    p.add_argument("--out", required=True, help="run directory to create")
    p.add_argument("--config", help="YAML file of model options")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model option override")
    p.add_argument("--split", default="leave-one-out", choices=["leave-one-out", "temporal", "ratio"])
    p.add_argument("--kcore", type=int, help="keep users and items with at least this many interactions")
    p.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="Flower's log at warnings only")
    dp_arguments(p, "client-level DP-FedAvg (sasrec, bert4rec)", "client", "clip of each client's update")
    p.set_defaults(func=cmd_federated)

    p = sub.add_parser("keys", help="create, list or revoke the service's API keys")
    keys = p.add_subparsers(dest="action", required=True)
    for action, text in (("create", "make a key (printed once)"), ("list", "list keys"), ("revoke", "revoke a key")):
        k = keys.add_parser(action, help=text)
        k.add_argument(
            "--db", required=True, help="event store: sqlite:///PATH, a file path or postgresql://user@host:port/db"
        )
        if action == "create":
            k.add_argument("--scopes", default="read", help="comma-separated, from read,write,admin (default read)")
        if action == "revoke":
            k.add_argument("key_id", help="the key to revoke (see `lmrec keys list`)")
        k.set_defaults(func=cmd_keys)
    add_robust_parsers(sub)  # attack, detect
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the torchrun shortcut
    for name, value in ONEDNN_CACHES.items():
        os.environ.setdefault(name, value)
    if args.cache_dir is None:
        args.cache_dir = default_cache()
    if args.command == "datasets" and args.action == "fetch" and not args.name:
        print("error: datasets fetch needs a NAME", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (LmrecError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
