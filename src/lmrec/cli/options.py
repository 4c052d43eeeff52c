"""What the ``lmrec`` commands share: parsing options (durations, ``--set``, YAML configs, split
parameters), threads, fit options, differential privacy, re-rankers, torchrun."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmrec.errors import ConfigError, LmrecError

if TYPE_CHECKING:
    from lmrec.models.base import FitOptions
    from lmrec.runs import Run

RERANK_DEFAULTS = {"mmr": 0.7, "dpp": 0.8, "calibration": 0.5, "fair": 0.3}
WATCH_SECONDS = 2.0  # how often `lmrec serve --watch` looks at the run
# oneDNN, which runs torch's bf16 matmuls on CPU, keeps a kernel per input shape in two caches of
# 1,024 entries each (ideep's LRU_CACHE_CAPACITY, oneDNN's primitive cache). A model whose shapes
# change every step (supervised positions × sampled candidates over a large catalog) filled them
# with ~2 GB over an epoch; 64 entries bound that and cost nothing measurable on ml-100k (2.09 s a
# SASRec epoch either way, one thread). They are read at the first bf16 matmul; a set value wins.
ONEDNN_CACHES = {"LRU_CACHE_CAPACITY": "64", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}


def tell(message: str) -> None:
    print(message, file=sys.stderr)


def positive(text: str) -> int:
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


def time_budget(args: argparse.Namespace, overrides: dict[str, Any]) -> float | None:
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


def parse_number(key: str, text: str) -> int | float:
    try:
        return int(text) if key == "seed" else float(text)
    except ValueError:
        raise LmrecError(f"--split-param {key} needs a number, got {text!r}") from None


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LmrecError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except yaml.YAMLError as exc:
            raise LmrecError(f"{args.config}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise LmrecError(f"{args.config}: expected a mapping of model options")
        values.update(loaded)
    values.update(parse_sets(args.set))
    return values


def build_reranker(args: argparse.Namespace, run: Any) -> Any:
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


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rerank",
        choices=sorted(RERANK_DEFAULTS),
        help="re-rank the top candidates for diversity, calibration or long-tail exposure",
    )
    p.add_argument(
        "--lam",
        type=float,
        help="trade-off: MMR/calibration λ, DPP θ, fair p (target share of long-tail items; 0 = model order)",
    )
    p.add_argument("--similarity", default="genre", choices=["genre", "embedding", "cooccurrence"])
    p.add_argument("--candidates", type=positive, default=100, help="how many of the model's top items to re-rank")


def set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def fit_options(args: argparse.Namespace, seed: int) -> FitOptions:
    from lmrec.models.base import FitOptions
    from lmrec.train.distributed import init_from_env, launched_by_torchrun
    from lmrec.train.trainer import Strategy

    return FitOptions(
        seed=seed,
        device=args.device,
        progress=not args.quiet,
        log=tell,
        cache_dir=args.cache_dir,
        stop_after=getattr(args, "stop_after", None),
        max_time=getattr(args, "max_time", None),
        strategy=init_from_env(args.device) if launched_by_torchrun() else Strategy(),
        dp=dp_spec(args),
        threads=getattr(args, "threads", 0) or None,  # 0: the Trainer picks the cores no other process uses
    )


def dp_arguments(p: argparse.ArgumentParser, what: str, unit: str, clip: str) -> None:
    """--dp-epsilon, --dp-delta, --dp-clip and --dp-accountant (read back by :func:`dp_spec`)."""
    p.add_argument("--dp-epsilon", type=float, help=f"{what} to this ε (needs lmrec[privacy])")
    p.add_argument("--dp-delta", type=float, help=f"δ of the DP guarantee (default 1 / (10 · {unit}s))")
    p.add_argument("--dp-clip", type=float, default=1.0, help=clip)
    p.add_argument("--dp-accountant", choices=("prv", "rdp"), default="prv", help="privacy accountant")


def dp_spec(args: argparse.Namespace) -> Any:
    """The DP guarantee asked for by --dp-epsilon [--dp-delta] [--dp-clip] [--dp-accountant], or None."""
    if getattr(args, "dp_epsilon", None) is None:
        return None
    from lmrec.train.privacy import DPSpec

    return DPSpec(epsilon=args.dp_epsilon, delta=args.dp_delta, clip=args.dp_clip, accountant=args.dp_accountant)


def run_torchrun(argv_in: list[str], nproc: int) -> int:
    """Run this command again as ``torchrun --nproc-per-node N -m lmrec ...`` (one machine)."""
    import subprocess

    argv, skip = [], False
    for arg in argv_in:  # drop --nproc N / --nproc=N
        if skip or arg.startswith("--nproc"):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "-m", "lmrec", *argv]
    tell("launching: " + " ".join(command[1:]))
    return subprocess.call(command)


def report_trained(run: Run) -> None:
    valid_file = run.directory / "valid.json"
    valid = json.loads(valid_file.read_text()) if valid_file.exists() else None
    tell(f"trained {run.meta['model']} in {run.meta['train_seconds']:.1f}s → {run.directory}")
    if run.meta.get("stopped") == "max_time":
        tell(f"stopped at the first epoch end past --max-time {run.meta['max_time']:g}s; the best epoch is kept")
    if valid:
        tell("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in valid["metrics"].items() if "@" in k))
