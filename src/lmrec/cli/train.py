"""The commands that train or change a model: train, tune, retrain, compress, mask, prepare,
federated."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmrec.cli.options import (
    dp_spec,
    fit_options,
    model_overrides,
    parse_number,
    parse_sets,
    report_trained,
    run_torchrun,
    set_threads,
    tell,
    time_budget,
)
from lmrec.errors import ConfigError, LmrecError

if TYPE_CHECKING:
    pass


def cmd_train(args: argparse.Namespace) -> int:
    from lmrec.runs import DataRecipe, resume_run, train_run

    if args.nproc > 1:  # the shortcut: this same command under torchrun
        return run_torchrun(args.argv, args.nproc)
    set_threads(args)
    if args.resume:
        if args.dataset or args.model or args.out:
            raise ConfigError("--resume RUN continues RUN as it was started: no --dataset, --model or --out")
        options = fit_options(args, args.seed)
        run = resume_run(Path(args.resume), args.cache_dir, options)
        options.strategy.close()
        if options.strategy.is_main:
            report_trained(run)
        return 0
    if not (args.dataset and args.model and args.out):
        raise ConfigError("lmrec train needs --dataset, --model and --out (or --resume RUN)")
    split_params = parse_sets(args.split_param)
    recipe = DataRecipe(
        dataset=args.dataset,
        columns=parse_sets(args.column) or None,
        kcore=args.kcore,
        min_rating=args.min_rating,
        dedupe=args.dedupe,
        split=args.split,
        split_params={k: parse_number(k, v) for k, v in split_params.items()},
        text_template=args.text_template,
    )
    overrides = model_overrides(args)
    args.max_time = time_budget(args, overrides)
    options = fit_options(args, args.seed)
    run = train_run(recipe, args.model, overrides, Path(args.out), args.cache_dir, options)
    options.strategy.close()
    if options.strategy.is_main:
        report_trained(run)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """A search over the model's declared options on validation (Optuna), the best written as YAML."""
    from lmrec.runs import DataRecipe
    from lmrec.tune import TuneOptions, markdown_table, tune, write_config

    set_threads(args)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is ours
    except ImportError:
        pass  # tune() says which extra to install
    split_params = parse_sets(args.split_param)
    recipe = DataRecipe(
        dataset=args.dataset,
        kcore=args.kcore,
        min_rating=args.min_rating,
        split=args.split,
        split_params={k: parse_number(k, v) for k, v in split_params.items()},
    )
    options = TuneOptions(
        trials=args.trials,
        time_budget=args.time_budget,
        seed=args.seed,
        study=args.study,
        fixed=model_overrides(args),
        runs_dir=Path(args.runs) if args.runs else None,
        prune_warmup=args.prune_after,
        defaults_first=not args.no_defaults,
    )
    result = tune(args.model, recipe, options, args.cache_dir, fit_options(args, args.seed), say=tell)
    print(markdown_table(result.rows, result.best["trial"]))
    best = result.best
    tell(f"{result.ran} trial(s) run, {len(result.rows)} in the study; best: trial {best['trial']} ({best['options']})")
    defaults = next((r for r in result.rows if r["options"] == "defaults" and r["ndcg@10"] is not None), None)
    if defaults is not None:  # the comparison the search is for, both measured alike
        change = best["ndcg@10"] / defaults["ndcg@10"] - 1 if defaults["ndcg@10"] else float("nan")
        tell(
            f"validation ndcg@10: best {best['ndcg@10']:.4f}, the defaults (trial {defaults['trial']})"
            f" {defaults['ndcg@10']:.4f} ({change:+.1%})"
        )
    if args.out:
        path = write_config(Path(args.out), result, args.model, args.dataset)
        tell(f"wrote {path}: lmrec train --dataset {args.dataset} --model {args.model} --config {path} --out RUN")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from lmrec.serve.retrain import ReloadFailed, default_store, reload_service, retrain
    from lmrec.serve.store import redact_url
    from lmrec.serve.stores import open_store

    set_threads(args)
    run_dir, out = Path(args.run), Path(args.out)
    db = args.db or default_store(run_dir)
    store = open_store(db)
    try:
        options = fit_options(args, seed=0)  # retrain uses the run's seed
        run = retrain(run_dir, store, out, args.cache_dir, options, parse_sets(args.set))
    finally:
        store.close()
    added = run.meta["retrain"]
    tell(
        f"added {added['events']} events from {redact_url(str(db))}: {added['new_users']} new users,"
        f" {added['new_items']} new items ({added['stored_items']} items from PUT /items)"
    )
    if added["dropped_columns"]:
        tell(f"left out the column(s) {', '.join(added['dropped_columns'])}: events have no values for them")
    report_trained(run)
    if args.reload:
        key = args.key or os.environ.get("LMREC_API_KEY")
        try:
            info = reload_service(args.reload, out, key)
        except ReloadFailed as err:
            raise LmrecError(f"{err}; the new run is in {out} (reload it with POST /admin/reload)") from None
        tell(f"{args.reload} now serves {info.get('model')} version {info.get('version')} from {info.get('run')}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    """A run's model compressed into a new run that evaluate, recommend and serve load as any other."""
    import shutil
    import time

    from lmrec.compress.model import (
        CompressedConfig,
        compress_model,
        directory_bytes,
        source_parameter_count,
    )
    from lmrec.models.base import FitOptions
    from lmrec.runs import RUN_FILE, open_run, write_run

    set_threads(args)
    source_dir, out = Path(args.run), Path(args.out)
    if out.resolve() == source_dir.resolve() or (out / RUN_FILE).exists():
        raise LmrecError(f"{out} already holds a run; compress into a new directory")
    run = open_run(source_dir, args.cache_dir)
    config = CompressedConfig.from_dict({**parse_sets(args.set), "method": args.method})
    options = FitOptions(seed=int(run.meta.get("seed", 0)), progress=not args.quiet, log=tell, cache_dir=args.cache_dir)
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
    fields = {**{k: run.meta[k] for k in keep if k in run.meta}, "compress": record, "training": model.training_log}
    write_run(out, model.name, model.config, model, run.split, fields)
    tell(
        f"compressed {run.meta['model']} ({args.method}: {record['encoder']} encoder, {record['table']} table)"
        f" {before:,} → {after:,} bytes ({record['times_smaller']}× smaller) → {out}"
    )
    if (out / "valid.json").exists():
        valid = json.loads((out / "valid.json").read_text())
        tell("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))
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
            tell(line)
        tell(f"wrote {args.out} (train on it with `lmrec train --dataset {args.out}`)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """A log larger than memory → per-user sequences in sharded Parquet that `lmrec train` reads."""
    from lmrec.data.stream import prepare

    report = prepare(
        args.input,
        Path(args.out),
        columns=parse_sets(args.column) or None,
        shards=args.shards,
        batch_rows=args.batch_rows,
        file_format=args.format,
    )
    tell(str(report))
    tell(f"train on it with `lmrec train --dataset {args.out} --model sasrec --out RUN`")
    if args.json:
        print(json.dumps(report.__dict__))
    return 0


def cmd_federated(args: argparse.Namespace) -> int:
    """FedAvg on Flower over clients holding disjoint users; the global model saved as a run."""
    import logging

    from lmrec.models.base import FitOptions
    from lmrec.privacy.federated import FederatedOptions
    from lmrec.runs import DataRecipe, federated_run

    set_threads(args)
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
        dp=dp_spec(args),
    )
    options = FitOptions(seed=args.seed, log=tell, cache_dir=args.cache_dir)
    run = federated_run(recipe, args.model, model_overrides(args), Path(args.out), args.cache_dir, fed, options)
    log = run.meta["training"]["federated"]
    tell(
        f"federated {args.model}: {fed.clients} clients, {fed.rounds} rounds in {run.meta['train_seconds']:.1f}s,"
        f" kept round {log['kept_round']} → {run.directory}"
    )
    valid_file = run.directory / "valid.json"
    if valid_file.exists():
        valid = json.loads(valid_file.read_text())
        tell("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))
    return 0
