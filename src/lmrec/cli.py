"""The ``lmrec`` command. The only module that reads argv or the environment (but for
:mod:`lmrec.cache`, which reads ``$LMREC_CACHE``)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmrec.cache import default_cache
from lmrec.errors import ConfigError, LmrecError

if TYPE_CHECKING:
    from lmrec.models.base import FitOptions
    from lmrec.runs import Run

RERANK_DEFAULTS = {"mmr": 0.7, "dpp": 0.8, "calibration": 0.5}
WATCH_SECONDS = 2.0  # how often `lmrec serve --watch` looks at the run
# oneDNN, which runs torch's bf16 matmuls on CPU, keeps a kernel per input shape in two caches of
# 1,024 entries each (ideep's LRU_CACHE_CAPACITY, oneDNN's primitive cache). A model whose shapes
# change every step (supervised positions × sampled candidates over a large catalog) filled them
# with ~2 GB over an epoch; 64 entries bound that and cost nothing measurable on ml-100k (2.09 s a
# SASRec epoch either way, one thread). They are read at the first bf16 matmul; a set value wins.
ONEDNN_CACHES = {"LRU_CACHE_CAPACITY": "64", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration(text: str) -> float:
    """Seconds in "90s", "20m", "1h", "1h30m" or a bare number of seconds."""
    text = text.strip().lower()
    match = DURATION.fullmatch(text)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 20m, 1h or 1h30m, got {text!r}")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _max_time(args: argparse.Namespace, overrides: dict[str, Any]) -> float | None:
    """--max-time, else ``max_time`` of the --config YAML or --set (taken out of the model options)."""
    value = overrides.pop("max_time", None)
    if args.max_time is not None or value is None:
        return args.max_time
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return duration(str(value))
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"max_time in {args.config or '--set'}: {err}") from None


def _number(key: str, text: str) -> int | float:
    try:
        return int(text) if key == "seed" else float(text)
    except ValueError:
        raise LmrecError(f"--split-param {key} needs a number, got {text!r}") from None


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LmrecError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except yaml.YAMLError as exc:
            raise LmrecError(f"{args.config}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise LmrecError(f"{args.config}: expected a mapping of model options")
        values.update(loaded)
    values.update(_parse_sets(args.set))
    return values


def _reranker(args: argparse.Namespace, run: Any) -> Any:
    """The re-ranker asked for with --rerank/--lam/--similarity, or None."""
    if not args.rerank:
        return None
    from lmrec.rerank import make_reranker

    value = args.lam if args.lam is not None else RERANK_DEFAULTS[args.rerank]
    try:
        train = run.split.train_dataset()
        return make_reranker(args.rerank, value, train, model=run.model, similarity_name=args.similarity)
    except ValueError as exc:
        raise LmrecError(f"--rerank {args.rerank} --lam {value}: {exc}") from None


def _add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", choices=sorted(RERANK_DEFAULTS), help="re-rank the top candidates for diversity")
    p.add_argument("--lam", type=float, help="trade-off: MMR/calibration λ, DPP θ (1 = relevance only for MMR)")
    p.add_argument("--similarity", default="genre", choices=["genre", "embedding", "cooccurrence"])
    p.add_argument("--candidates", type=_positive, default=100, help="how many of the model's top items to re-rank")


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


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _fit_options(args: argparse.Namespace, seed: int) -> FitOptions:
    from lmrec.models.base import FitOptions
    from lmrec.train.distributed import init_from_env, launched_by_torchrun
    from lmrec.train.trainer import Strategy

    return FitOptions(
        seed=seed,
        device=args.device,
        progress=not args.quiet,
        log=_say,
        cache_dir=args.cache_dir,
        stop_after=getattr(args, "stop_after", None),
        max_time=getattr(args, "max_time", None),
        strategy=init_from_env(args.device) if launched_by_torchrun() else Strategy(),
        dp=_dp_spec(args),
        threads=getattr(args, "threads", 0) or None,  # 0: the Trainer picks the cores no other process uses
    )


def _dp_arguments(p: argparse.ArgumentParser, what: str, unit: str, clip: str) -> None:
    """--dp-epsilon, --dp-delta, --dp-clip and --dp-accountant (read back by :func:`_dp_spec`)."""
    p.add_argument("--dp-epsilon", type=float, help=f"{what} to this ε (needs lmrec[privacy])")
    p.add_argument("--dp-delta", type=float, help=f"δ of the DP guarantee (default 1 / (10 · {unit}s))")
    p.add_argument("--dp-clip", type=float, default=1.0, help=clip)
    p.add_argument("--dp-accountant", choices=("prv", "rdp"), default="prv", help="privacy accountant")


def _dp_spec(args: argparse.Namespace) -> Any:
    """The DP guarantee asked for by --dp-epsilon [--dp-delta] [--dp-clip] [--dp-accountant], or None."""
    if getattr(args, "dp_epsilon", None) is None:
        return None
    from lmrec.train.privacy import DPSpec

    return DPSpec(epsilon=args.dp_epsilon, delta=args.dp_delta, clip=args.dp_clip, accountant=args.dp_accountant)


def _torchrun(argv_in: list[str], nproc: int) -> int:
    """Run this command again as ``torchrun --nproc-per-node N -m lmrec ...`` (one machine)."""
    import subprocess

    argv, skip = [], False
    for arg in argv_in:  # drop --nproc N / --nproc=N
        if skip or arg.startswith("--nproc"):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "lmrec", *argv]
    _say("launching: " + " ".join(command[1:]))
    return subprocess.call(command)


def _report_trained(run: Run) -> None:
    valid_file = run.directory / "valid.json"
    valid = json.loads(valid_file.read_text()) if valid_file.exists() else None
    _say(f"trained {run.meta['model']} in {run.meta['train_seconds']:.1f}s → {run.directory}")
    if run.meta.get("stopped") == "max_time":
        _say(f"stopped at the first epoch end past --max-time {run.meta['max_time']:g}s; the best epoch is kept")
    if valid:
        _say("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))


def cmd_train(args: argparse.Namespace) -> int:
    from lmrec.runs import DataRecipe, resume_run, train_run

    if args.nproc > 1:  # the shortcut: this same command under torchrun
        return _torchrun(args.argv, args.nproc)
    _set_threads(args)
    if args.resume:
        if args.dataset or args.model or args.out:
            raise ConfigError("--resume RUN continues RUN as it was started: no --dataset, --model or --out")
        options = _fit_options(args, args.seed)
        run = resume_run(Path(args.resume), args.cache_dir, options)
        options.strategy.close()
        if options.strategy.is_main:
            _report_trained(run)
        return 0
    if not (args.dataset and args.model and args.out):
        raise ConfigError("lmrec train needs --dataset, --model and --out (or --resume RUN)")
    split_params = _parse_sets(args.split_param)
    recipe = DataRecipe(
        dataset=args.dataset,
        columns=_parse_sets(args.column) or None,
        kcore=args.kcore,
        min_rating=args.min_rating,
        dedupe=args.dedupe,
        split=args.split,
        split_params={k: _number(k, v) for k, v in split_params.items()},
        text_template=args.text_template,
    )
    overrides = _model_overrides(args)
    args.max_time = _max_time(args, overrides)
    options = _fit_options(args, args.seed)
    run = train_run(recipe, args.model, overrides, Path(args.out), args.cache_dir, options)
    options.strategy.close()
    if options.strategy.is_main:
        _report_trained(run)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """A search over the model's declared options on validation (Optuna), the best written as YAML."""
    from lmrec.runs import DataRecipe
    from lmrec.tune import TuneOptions, markdown_table, tune, write_config

    _set_threads(args)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is ours
    except ImportError:
        pass  # tune() says which extra to install
    split_params = _parse_sets(args.split_param)
    recipe = DataRecipe(
        dataset=args.dataset,
        kcore=args.kcore,
        min_rating=args.min_rating,
        split=args.split,
        split_params={k: _number(k, v) for k, v in split_params.items()},
    )
    options = TuneOptions(
        trials=args.trials,
        time_budget=args.time_budget,
        seed=args.seed,
        study=args.study,
        fixed=_model_overrides(args),
        runs_dir=Path(args.runs) if args.runs else None,
        prune_warmup=args.prune_after,
        defaults_first=not args.no_defaults,
    )
    result = tune(args.model, recipe, options, args.cache_dir, _fit_options(args, args.seed), say=_say)
    print(markdown_table(result.rows, result.best["trial"]))
    best = result.best
    _say(f"{result.ran} trial(s) run, {len(result.rows)} in the study; best: trial {best['trial']} ({best['options']})")
    defaults = next((r for r in result.rows if r["options"] == "defaults" and r["ndcg@10"] is not None), None)
    if defaults is not None:  # the comparison the search is for, both measured alike
        change = best["ndcg@10"] / defaults["ndcg@10"] - 1 if defaults["ndcg@10"] else float("nan")
        _say(
            f"validation ndcg@10: best {best['ndcg@10']:.4f}, the defaults (trial {defaults['trial']})"
            f" {defaults['ndcg@10']:.4f} ({change:+.1%})"
        )
    if args.out:
        path = write_config(Path(args.out), result, args.model, args.dataset)
        _say(f"wrote {path}: lmrec train --dataset {args.dataset} --model {args.model} --config {path} --out RUN")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from lmrec.serve.retrain import ReloadFailed, default_store, reload_service, retrain
    from lmrec.serve.store import redact_url
    from lmrec.serve.stores import open_store

    _set_threads(args)
    run_dir, out = Path(args.run), Path(args.out)
    db = args.db or default_store(run_dir)
    store = open_store(db)
    try:
        options = _fit_options(args, seed=0)  # retrain uses the run's seed
        run = retrain(run_dir, store, out, args.cache_dir, options, _parse_sets(args.set))
    finally:
        store.close()
    added = run.meta["retrain"]
    _say(
        f"added {added['events']} events from {redact_url(str(db))}: {added['new_users']} new users,"
        f" {added['new_items']} new items ({added['stored_items']} items from PUT /items)"
    )
    if added["dropped_columns"]:
        _say(f"left out the column(s) {', '.join(added['dropped_columns'])}: events have no values for them")
    _report_trained(run)
    if args.reload:
        key = args.key or os.environ.get("LMREC_API_KEY")
        try:
            info = reload_service(args.reload, out, key)
        except ReloadFailed as err:
            raise LmrecError(f"{err}; the new run is in {out} (reload it with POST /admin/reload)") from None
        _say(f"{args.reload} now serves {info.get('model')} version {info.get('version')} from {info.get('run')}")
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
        run.evaluate(args.split, tuple(args.k), not args.json, _reranker(args, run), args.candidates, args.sample)
        for run in runs
    ]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports))
        return 0
    rows = {}
    for report, run in zip(reports, runs, strict=True):
        rows[report["model"] if len(runs) == 1 else f"{report['model']} ({run.directory.name})"] = report["metrics"]
    print(markdown_report(rows, reports[0]["protocol"], reports[0]["n_users"]))
    for (label, _), report in zip(rows.items(), reports, strict=True):
        if "privacy" in report:
            dp = report["privacy"]
            print(
                f"{label}: user-level DP, ε = {dp['epsilon']} (target {dp['epsilon_target']}), δ = {dp['delta']:.3g}, "
                f"{dp['accountant'].upper()} accountant, clip {dp['clip']}, noise σ {dp['noise_multiplier']}"
            )
    return 0


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
            _say(f"{args.users}: {repeated} repeated user line(s) scored once")
    explainer = None
    if args.explain or args.llm:
        from lmrec.llm.lm import load_lm

        explainer = run.explainer(load_lm(args.llm, args.cache_dir, args.device) if args.llm else None)
    stats = write_recommendations(
        run,
        Path(args.out),
        users,
        k=args.k,
        reranker=_reranker(args, run),
        candidates=args.candidates,
        explainer=explainer,
        chunk=args.chunk,
        progress=not args.quiet,
    )
    _say(
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
        reranker=_reranker(args, run),
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
    _say(f"wrote {out} ({out.stat().st_size // 1024} KiB): open it in a browser")
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
            _say(
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
    _set_threads(args)
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


def cmd_compress(args: argparse.Namespace) -> int:
    """A run's model compressed into a new run that evaluate, recommend and serve load as any other."""
    import shutil
    import time

    from lmrec import __version__
    from lmrec.compress.model import (
        CompressedConfig,
        compress_model,
        directory_bytes,
        source_parameter_count,
    )
    from lmrec.models.base import FitOptions
    from lmrec.runs import RUN_FILE, Run, open_run

    _set_threads(args)
    source_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == source_dir.resolve() or (out / RUN_FILE).exists():
        raise LmrecError(f"{out} already holds a run; compress into a new directory")
    run = open_run(source_dir, args.cache_dir)
    config = CompressedConfig.from_dict({**_parse_sets(args.set), "method": args.method})
    options = FitOptions(seed=int(run.meta.get("seed", 0)), progress=not args.quiet, log=_say, cache_dir=args.cache_dir)
    started = time.perf_counter()
    model = compress_model(run.model, config, run.split.train_dataset(), run.split.eval_set("valid"), options)
    seconds = time.perf_counter() - started
    model.save(out / "model")
    for name in ("users.json", "items.json"):
        shutil.copyfile(source_dir / name, out / name)
    before, after = directory_bytes(source_dir / "model"), directory_bytes(out / "model")
    record = {
        "method": args.method,
        "encoder": model.config.encoder_kind,
        "table": model.config.table_kind,
        "source_run": str(source_dir.resolve()),
        "source_model": run.meta["model"],
        "bytes_before": before,
        "bytes_after": after,
        "times_smaller": round(before / after, 3),
        "parameters_before": source_parameter_count(run.model),
        "parameters_after": model.parameter_count(),
        "seconds": round(seconds, 3),
    }
    keep = ("data", "filters", "split_sizes", "seed")
    meta = {
        "lmrec_version": __version__,
        "model": model.name,
        "config": model.config.to_dict(),
        **{k: run.meta[k] for k in keep if k in run.meta},
        "compress": record,
        "training": model.training_log,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / RUN_FILE).write_text(json.dumps(meta, indent=2))
    valid = Run(out, meta, model, run.split).evaluate("valid")
    (out / "valid.json").write_text(json.dumps(valid, indent=2))
    _say(
        f"compressed {run.meta['model']} ({args.method}: {record['encoder']} encoder, {record['table']} table)"
        f" {before:,} → {after:,} bytes ({record['times_smaller']}× smaller) → {out}"
    )
    _say("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    """A masked copy of a dataset: keyed pseudonyms, coarser times, scrubbed text, generalised users."""
    from lmrec.privacy.mask import MaskOptions, mask

    options = MaskOptions(
        items=args.items, time_granularity=args.time_granularity, drop=tuple(args.drop), quasi=args.quasi
    )
    report = mask(args.dataset, Path(args.out), Path(args.key_file), args.cache_dir, options)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        for line in report.lines():
            _say(line)
        _say(f"wrote {args.out} (train on it with `lmrec train --dataset {args.out}`)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """A log larger than memory → per-user sequences in sharded Parquet that `lmrec train` reads."""
    from lmrec.data.stream import prepare

    report = prepare(
        args.input,
        Path(args.out),
        columns=_parse_sets(args.column) or None,
        shards=args.shards,
        batch_rows=args.batch_rows,
        file_format=args.format,
    )
    _say(str(report))
    _say(f"train on it with `lmrec train --dataset {args.out} --model sasrec --out RUN`")
    if args.json:
        print(json.dumps(report.__dict__))
    return 0


def cmd_federated(args: argparse.Namespace) -> int:
    """FedAvg on Flower over clients holding disjoint users; the global model saved as a run."""
    import logging

    from lmrec.models.base import FitOptions
    from lmrec.privacy.federated import FederatedOptions
    from lmrec.runs import DataRecipe, federated_run

    _set_threads(args)
    if args.quiet:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    recipe = DataRecipe(dataset=args.dataset, kcore=args.kcore, min_rating=args.min_rating, split=args.split)
    fed = FederatedOptions(
        clients=args.clients,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        server_lr=args.server_lr,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        validate=not args.no_validate,
        dp=_dp_spec(args),
    )
    options = FitOptions(seed=args.seed, log=_say, cache_dir=args.cache_dir)
    run = federated_run(recipe, args.model, _model_overrides(args), Path(args.out), args.cache_dir, fed, options)
    log = run.meta["training"]["federated"]
    _say(
        f"federated {args.model}: {fed.clients} clients, {fed.rounds} rounds in {run.meta['train_seconds']:.1f}s,"
        f" kept round {log['kept_round']} → {run.directory}"
    )
    valid_file = run.directory / "valid.json"
    if valid_file.exists():
        valid = json.loads(valid_file.read_text())
        _say("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    import time

    from lmrec.serve.stores import open_store

    store = open_store(args.db)
    try:
        if args.action == "create":
            key_id, key = store.create_key(args.scopes.split(","))
            _say(f"created key {key_id} ({args.scopes}); it is shown only now:")
            print(key)
        elif args.action == "list":
            for k in store.list_keys():
                created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created))
                print(f"{k.key_id}  {','.join(k.scopes):<18} {'active' if k.active else 'revoked':<8} {created}")
        else:
            if not store.revoke_key(args.key_id):
                raise LmrecError(f"no active key {args.key_id!r}")
            _say(f"revoked {args.key_id}")
    finally:
        store.close()
    return 0


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
    p.add_argument("--nproc", type=_positive, default=1, help="data-parallel processes (launches torchrun)")
    _dp_arguments(p, "user-level DP-SGD (bpr, sasrec, bert4rec)", "user", "per-user gradient clip")
    p.add_argument("--stop-after", type=_positive, metavar="EPOCHS", help="stop after this many epochs (then --resume)")
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
    p.add_argument("--trials", type=_positive, default=20, help="finished trials the study should hold")
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
    p.add_argument("--k", type=_positive, nargs="+", default=[10])
    p.add_argument("--json", action="store_true")
    p.add_argument("--sample", type=_positive, help="evaluate that many random users (seed 0), for slow models")
    _add_rerank_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k for one user, or for every user into a Parquet file")
    p.add_argument("--run", required=True)
    p.add_argument("--user", help="one user's top-k, printed")
    p.add_argument("--all-users", action="store_true", help="every user of the run, written to --out")
    p.add_argument("--users", metavar="FILE", help="the users of FILE (one ID a line), written to --out")
    p.add_argument("--out", metavar="FILE.parquet", help="columns user, rank, item, score[, reason]")
    p.add_argument("--chunk", type=_positive, help="users scored at once (default: as the catalog's size allows)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--history", help="comma-separated item IDs the user just interacted with")
    p.add_argument("--k", type=_positive, default=10)
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
    _add_rerank_options(p)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("compare", help="paired significance test between two runs")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--metric", default="ndcg")
    p.add_argument("--k", type=_positive, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="one HTML report of one or more runs (needs lmrec[plot])")
    p.add_argument("--run", required=True, nargs="+", help="runs of one dataset and split; the first is the baseline")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--k", type=_positive, nargs="+", default=[10])
    p.add_argument("--sample", type=_positive, help="report on that many random users (seed 0), for slow models")
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
    p.add_argument("--shards", type=_positive, default=16, help="spill and output shards (memory: rows / shards)")
    p.add_argument("--batch-rows", type=_positive, default=1 << 20, help="most rows of the log read at once")
    p.add_argument("--format", choices=["parquet", "csv"], help="the files' format (default: from their suffix)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("federated", help="federated training on Flower (FedAvg; needs lmrec[privacy])")
    p.add_argument("--dataset", required=True, help="registered name (ml-100k) or a file/directory")
    p.add_argument("--model", required=True, help="bpr, sasrec or bert4rec")
    p.add_argument("--clients", type=_positive, default=10, help="clients, each holding a disjoint share of the users")
    p.add_argument("--rounds", type=_positive, default=20, help="rounds of FedAvg")
    p.add_argument("--local-epochs", type=_positive, default=1, help="each client's epochs over its data per round")
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
    _dp_arguments(p, "client-level DP-FedAvg (sasrec, bert4rec)", "client", "clip of each client's update")
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
