"""The commands that read trained runs: datasets, evaluate, recommend, compare, report, serve, keys."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmrec.cli.options import (
    WATCH_SECONDS,
    build_reranker,
    set_threads,
    tell,
)
from lmrec.errors import ConfigError, LmrecError

if TYPE_CHECKING:
    from lmrec.runs import Run


def cmd_datasets(args: argparse.Namespace) -> int:
    from lmrec.data.sources import fetch, list_sources

    if args.action == "list":
        for src in list_sources(args.cache_dir):
            mark = "cached" if src["cached"] else "not cached"
            print(f"{src['name']:<18} {mark:<11} {src['description']}")
        return 0
    path = fetch(args.name, args.cache_dir)
    print(path)
    return 0


def _one_dataset_and_split(runs: list[Run]) -> bool:
    """Whether the runs hold the same users and split, so their metrics are over the same queries."""
    first = runs[0]
    return all(r.dataset.users == first.dataset.users and r.split.protocol == first.split.protocol for r in runs)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """One run, or several side by side on the same users (they must share the dataset and split)."""
    from lmrec.evaluate.report import markdown_report
    from lmrec.runs import open_run

    runs = [open_run(Path(p), args.cache_dir) for p in args.run]
    if not _one_dataset_and_split(runs):
        raise LmrecError("the runs hold different data or splits; evaluate side by side runs of one dataset and split")
    reports = [
        run.evaluate(args.split, tuple(args.k), not args.json, build_reranker(args, run), args.candidates, args.sample)
        for run in runs
    ]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
        return 0
    rows = {}
    for report, run in zip(reports, runs, strict=True):
        rows[report["model"] if len(runs) == 1 else f"{report['model']} ({run.directory.name})"] = report["metrics"]
    print(markdown_report(rows, reports[0]["protocol"], reports[0]["n_users"]))
    _print_fairness(list(rows), reports)
    for (label, _), report in zip(rows.items(), reports, strict=True):
        if "privacy" in report:
            dp = report["privacy"]
            print(
                f"{label}: user-level DP, ε = {dp['epsilon']} (target {dp['epsilon_target']}), δ = {dp['delta']:.3g}, "
                f"{dp['accountant'].upper()} accountant, clip {dp['clip']}, noise σ {dp['noise_multiplier']}"
            )
    return 0


def _print_fairness(labels: list[str], reports: list[dict[str, Any]]) -> None:
    """Where the tail and the providers are, and one line per user grouping: each group's mean
    metric and users, then the gap between the best and worst group of enough users."""
    from lmrec.evaluate.fairness import TAIL_RULE

    print(f"\nFairness — {TAIL_RULE}.")
    for label, report in zip(labels, reports, strict=True):
        who = f"{label} " if len(reports) > 1 else ""
        if "providers" in report:
            p = report["providers"]
            print(f"{who}providers ({p['column']}): {p['exposed']} of {p['total']} exposed in the top lists")
        groups = report.get("groups")
        if not groups:
            continue
        metric = groups["metric"]
        for name, grouping in groups["by"].items():
            cells = " · ".join(f"{g} {v[metric]:.4f} ({v['users']})" for g, v in grouping["groups"].items())
            gap = "gap –"
            if grouping["gap"] is not None:
                high, low = grouping["gap_between"]
                gap = f"gap {grouping['gap']:.4f} ({high} − {low})"
            how = f", {grouping['bins']}" if "bins" in grouping else ""
            of = f" ({grouping['of']})" if "of" in grouping else ""
            print(f"{who}{metric} by {name}{of}{how}: {cells}; {gap}")
        for name, why in groups.get("skipped", {}).items():
            print(f"{who}not grouped by {name}: {why}")
    if any(r.get("groups") for r in reports):
        print(f"gap: highest minus lowest group mean over groups of at least {reports[0]['groups']['min_users']} users")


def _recommend_many(args: argparse.Namespace) -> int:
    """--all-users or --users FILE: every user's top-k into one Parquet file, a chunk at a time."""
    from lmrec.batch_recommend import read_user_list, write_recommendations
    from lmrec.runs import open_run

    if args.all_users and args.users:
        raise ConfigError("give --all-users or --users FILE, not both")
    if args.user or args.history or args.new_item:
        raise ConfigError("--all-users and --users score the run's own users: no --user, --history or --new-item")
    if not args.out:
        raise ConfigError("--all-users and --users write a Parquet file: add --out FILE.parquet")
    run = open_run(Path(args.run), args.cache_dir)
    users = None
    if args.users:
        users, repeated = read_user_list(Path(args.users), run.dataset)
        if repeated:
            tell(f"{args.users}: {repeated} repeated user line(s) scored once")
    explainer = None
    if args.explain or args.llm:
        from lmrec.llm.lm import load_lm

        explainer = run.explainer(load_lm(args.llm, args.cache_dir, args.device) if args.llm else None)
    stats = write_recommendations(
        run,
        Path(args.out),
        users,
        k=args.k,
        reranker=build_reranker(args, run),
        candidates=args.candidates,
        explainer=explainer,
        chunk=args.chunk,
        progress=not args.quiet,
    )
    tell(
        f"wrote {stats['rows']} recommendations for {stats['users']} users to {stats['out']} in {stats['seconds']:.1f}s"
        f" ({stats['users_per_second']} users/s, {stats['chunk']} users a chunk)"
    )
    if args.json:
        print(json.dumps(stats))
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from lmrec.runs import open_run

    if args.all_users or args.users:
        return _recommend_many(args)
    if args.user is None:
        raise ConfigError("lmrec recommend needs --user ID, or --all-users / --users FILE with --out FILE.parquet")
    if args.out:
        raise ConfigError("--out writes the recommendations of --all-users or --users FILE; one --user prints them")
    run = open_run(Path(args.run), args.cache_dir)
    history = [h.strip() for h in args.history.split(",") if h.strip()] if args.history else None
    added: list[Any] = []
    if args.new_item:  # items known only by their text, scored by a text-reading model
        from lmrec.newitems import parse_new_item, with_text_items

        added = [parse_new_item(text, i) for i, text in enumerate(args.new_item, 1)]
        run = with_text_items(run, added, cache_dir=args.cache_dir)
    explainer = None
    if args.explain or args.llm:
        from lmrec.llm.lm import load_lm

        explainer = run.explainer(load_lm(args.llm, args.cache_dir, args.device) if args.llm else None)
    result = run.recommend(
        str(args.user),
        history,
        k=args.k,
        reranker=build_reranker(args, run),
        candidates=args.candidates,
        explainer=explainer,
    )
    if added:  # where each new item lands in this user's whole ranking
        order = [it["item"] for it in run.recommend(str(args.user), history, k=run.dataset.n_items)["items"]]
        result["new_items"] = [
            {"item": it.item, "title": it.title, "rank": order.index(it.item) + 1 if it.item in order else None}
            for it in added
        ]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"user {result['user']} ({result['history_length']} items in history)")
    for rank, item in enumerate(result["items"], 1):
        print(f"{rank:>3}. {item['title']}  [item {item['item']}, score {item['score']:.4f}]")
        if "because" in item:
            print(f"     {item['because']}")
    for new in result.get("new_items", []):
        where = f"rank {new['rank']} of {run.dataset.n_items}"
        print(f"new item {new['item']} {new['title']!r}, known by its text only: {where} for this history")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from lmrec.evaluate.significance import paired_test
    from lmrec.runs import open_run

    a, b = (open_run(Path(p), args.cache_dir) for p in (args.run_a, args.run_b))
    ra, rb = a.per_user(args.split, (args.k,)), b.per_user(args.split, (args.k,))
    if list(ra.users) != list(rb.users) or not _one_dataset_and_split([a, b]):
        raise LmrecError("the runs were evaluated on different users; compare runs of one dataset and split")
    metric = f"{args.metric}@{args.k}"
    result: dict[str, Any] = {"metric": metric, "a": str(a.directory), "b": str(b.directory)}
    result.update(paired_test(ra.per_user[metric], rb.per_user[metric]))
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML page: metrics with intervals, paired tests, breakdowns, curves, timings."""
    from lmrec.report import write_report
    from lmrec.runs import open_run

    runs = [open_run(Path(p), args.cache_dir) for p in args.run]
    if not _one_dataset_and_split(runs):
        raise LmrecError("the runs hold different data or splits; report on runs of one dataset and split")
    out = write_report(runs, Path(args.out), args.split, tuple(args.k), args.sample)
    tell(f"wrote {out} ({out.stat().st_size // 1024} KiB): open it in a browser")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from lmrec.serve import open_store, serve
    from lmrec.serve.limits import Limits
    from lmrec.serve.retrain import default_store

    db = args.db or default_store(Path(args.run))
    if not args.no_auth:
        store = open_store(db)
        has_keys = any(k.active for k in store.list_keys())
        store.close()
        if not has_keys:
            tell(
                f"no API keys yet: create one with `lmrec keys create --db {db} --scopes read,write,admin`"
                " (or use --no-auth on a private machine)"
            )
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1:
        # Each worker is a fresh process that reads its thread count from the environment; one torch
        # thread each unless asked, since the workers are the parallelism.
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads or 1)
    set_threads(args)
    serve(
        Path(args.run),
        db,
        args.cache_dir,
        host=args.host,
        port=args.port,
        require_keys=not args.no_auth,
        access_log=not args.no_access_log,
        ann=args.ann,
        watch=WATCH_SECONDS if args.watch else None,
        workers=args.workers,
        micro_batch=not args.no_batch,
        limits=Limits(
            head_timeout_s=args.head_timeout,
            body_timeout_s=args.body_timeout,
            keep_alive_s=args.keep_alive,
            max_connections=args.max_connections,
        ),
    )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import time

    from lmrec.serve.stores import open_store

    store = open_store(args.db)
    try:
        if args.action == "create":
            key_id, key = store.create_key(args.scopes.split(","))
            tell(f"created key {key_id} ({args.scopes}); it is shown only now:")
            print(key)
        elif args.action == "list":
            for k in store.list_keys():
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created))
                print(f"{k.key_id}  {','.join(k.scopes):<18} {'active' if k.active else 'revoked':<8} {created}")
        else:
            if not store.revoke_key(args.key_id):
                raise LmrecError(f"no active key {args.key_id!r}")
            tell(f"revoked {args.key_id}")
    finally:
        store.close()
    return 0
