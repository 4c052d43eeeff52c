"""The one benchmark harness: arms trained the way ``lmrec train`` trains them, compared on the test users.

An :class:`Arm` is a model name, its ``--set`` options and, optionally, changes to the data recipe
(filters, split). :func:`run_arms` trains every arm for every seed through
:func:`lmrec.runs.train_run` (the function ``lmrec train`` calls), opens each run again with
:func:`lmrec.runs.open_run` (what ``lmrec evaluate`` does), keeps per-user NDCG@10 of all test
users, and tests each arm against a named baseline arm with lmrec's paired test
(:func:`lmrec.evaluate.significance.paired_test`), per seed and on the per-user mean over seeds.
It writes a JSON file and a markdown table (mean ± std over seeds, relative difference, p-value, fit
time, epochs) headed by the machine, the command line, the git commit and the date.

As a command, e.g. every model of a family before and after a change, three seeds::

    .venv/bin/python benchmarks/harness.py --arm sasrec=sasrec --arm l50=sasrec:max_len=50 \\
        --seeds 0,1,2 --threads 1 --pin 1 --runs runs/bench --out benchmarks/results/harness.json

How scripts use it: every script in ``benchmarks/`` is run as ``python benchmarks/NAME.py`` from the
repository root; Python then puts ``benchmarks/`` first on ``sys.path``, so ``from harness import
Arm, run_arms`` works with no path surgery. No script imports another script; this module is the
only shared one (``tests/test_benchmarks_hygiene.py`` checks both rules).

Runs are kept under ``runs_dir`` as ``ARM-seedS``; an arm whose run directory already holds a
finished run of the same request (model, options, data, seed) is not trained again, and a run that
stopped part way (killed) continues from its last checkpoint, so a long experiment can be resumed
by running the same command again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmrec.models.base import FitOptions
    from lmrec.runs import DataRecipe, Run

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
DATASET = "ml-100k"
DASH = "–"
PEER_PYTHON = BENCH / ".venv-recbole" / "bin" / "python"  # RecBole's virtualenv (benchmarks/recbole_env.sh)
METRICS = ("ndcg@10", "recall@10", "mrr@10")  # what the peer comparisons report
METRIC = "ndcg@10"  # the metric of the paired tests
TABLE_METRICS = ("ndcg@10", "recall@10")


@dataclass(frozen=True)
class Arm:
    """One configuration to train: ``model`` with ``options`` (the values of ``lmrec train --set``)
    on the harness's data recipe changed by ``data`` (e.g. ``{"kcore": 5}``). ``fit`` holds extra
    :class:`~lmrec.models.base.FitOptions` fields (``dp``: a DPSpec, as ``--dp-epsilon`` gives;
    ``text_encoder``: a stand-in encoder in tests), recorded in the run by their fields (a dataclass)
    or their type's name."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)


# -- the machine, the command, the threads -----------------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap BLAS / OpenMP threads (read when numpy or torch load)."""
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def setup_threads(threads: int = 1, pin: Sequence[int] | None = None) -> None:
    """Set the thread count explicitly (the environment for libraries not loaded yet, and torch's
    own count) and, if ``pin`` is given, pin this process to those CPU cores."""
    os.environ.update(thread_env(threads))
    if pin:
        os.sched_setaffinity(0, set(pin))
    import torch

    torch.set_num_threads(threads)


def machine() -> dict[str, Any]:
    """CPU model, cores this process may use, GPU, torch and Python versions, torch threads."""
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    return {
        "nproc": len(os.sched_getaffinity(0)),  # not `nproc`, which reports OMP_NUM_THREADS once set
        "cores": sorted(os.sched_getaffinity(0)),
        "cpu": cpu,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none used (CPU only)",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed from the repository root (``argv``: the script's arguments)."""
    argv = sys.argv[1:] if argv is None else argv
    python, script = Path(sys.executable), Path(sys.argv[0]).resolve()
    if python.is_relative_to(REPO):  # keep the venv's symlink name, e.g. .venv/bin/python
        python = python.relative_to(REPO)
    if script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return shlex.join([str(python), str(script), *argv])


def git_commit() -> str:
    """The checked-out commit, with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def header(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What every result carries: machine, command, commit, date."""
    return {
        "machine": machine(),
        "command": command_line(argv),
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


# -- data ------------------------------------------------------------------------------------------


def recipe(dataset: str = DATASET, **fields: Any) -> DataRecipe:
    """A data recipe as ``lmrec train --dataset D [--kcore ...] [--split ...]`` builds it."""
    from lmrec.runs import DataRecipe

    return DataRecipe(dataset=dataset, **fields)


def load_split(cache_dir: Path, dataset: str = DATASET) -> Any:
    """The split ``lmrec train --dataset DATASET`` trains on (leave-one-out in time order), for
    measurements that need the data but no run."""
    split, _ = recipe(dataset).make_split(cache_dir)
    return split


# -- training through train_run ----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _describe(value: Any) -> Any:
    """A ``fit`` value as the run records it: a dataclass by its fields, JSON as is, else its type."""
    from dataclasses import is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **asdict(value)}
    try:
        json.dumps(value)
    except TypeError:
        return type(value).__name__
    return value


def _request(arm: Arm, data: DataRecipe, seed: int) -> dict[str, Any]:
    """What ``train_run`` writes to ``train.json`` for this arm and seed (JSON-normalised)."""
    return _jsonable(
        {
            "model": arm.model,
            "overrides": arm.options,
            "data": asdict(data.resolved()),
            "seed": seed,
            "extra_meta": {"harness": {"arm": arm.name, "fit": {k: _describe(v) for k, v in arm.fit.items()}}},
        }
    )


def _fit_options(arm: Arm, seed: int, cache_dir: Path, device: str, progress: bool) -> FitOptions:
    from lmrec.models.base import FitOptions

    return FitOptions(
        seed=seed,
        device=device,
        progress=progress,
        log=lambda message: print(message, file=sys.stderr),
        cache_dir=cache_dir,
        **arm.fit,
    )


def train_arm(
    arm: Arm,
    seed: int,
    base: DataRecipe,
    run_dir: Path,
    cache_dir: Path,
    device: str = "cpu",
    progress: bool = False,
) -> Run:
    """Train ``arm`` with ``seed`` into ``run_dir`` as ``lmrec train`` does and return the run as
    ``open_run`` reads it back. A finished run of the same request in ``run_dir`` is reused; a
    stopped one is resumed from its checkpoint; a different one is an error (never overwritten)."""
    from dataclasses import replace

    from lmrec.runs import RUN_FILE, TRAIN_FILE, open_run, resume_run, train_run

    data = replace(base, **arm.data)
    request = _request(arm, data, seed)
    options = _fit_options(arm, seed, cache_dir, device, progress)
    asked_file = run_dir / TRAIN_FILE
    if asked_file.is_file():
        asked = json.loads(asked_file.read_text())
        if asked != request:
            raise SystemExit(
                f"{run_dir} holds a run of another request ({asked.get('model')} {asked.get('overrides')}); "
                "remove it or choose another --runs directory"
            )
        if (run_dir / RUN_FILE).is_file():
            print(f"{arm.name} seed {seed}: reusing {run_dir}", file=sys.stderr)
        else:
            print(f"{arm.name} seed {seed}: resuming {run_dir}", file=sys.stderr)
            resume_run(run_dir, cache_dir, options)
    else:
        train_run(data, arm.model, arm.options, run_dir, cache_dir, options, request["extra_meta"])
    return open_run(run_dir, cache_dir)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--runs DIR`` (keep the runs there and reuse them when the command runs again) and ``--pin``."""
    parser.add_argument("--runs", type=Path, help="keep the runs here, reused when run again (default: a temp dir)")
    parser.add_argument("--pin", type=int, nargs="+", metavar="CORE", help="pin the process to these CPU cores")


@contextmanager
def runs_root(path: Path | None, prefix: str = "lmrec-bench-") -> Iterator[Path]:
    """Where the runs go: ``path`` (kept, so a second run of the command reuses them) or a
    temporary directory removed afterwards."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def train(
    arm: Arm,
    seed: int,
    runs: Path,
    cache_dir: Path,
    dataset: str = DATASET,
    device: str = "cpu",
    **data: Any,
) -> Run:
    """:func:`train_arm` into ``runs/ARM-seedS`` on ``dataset`` (``data``: recipe fields, e.g. kcore)."""
    return train_arm(arm, seed, recipe(dataset, **data), runs / run_name(arm.name, seed), cache_dir, device)


def run_name(arm: str, seed: int) -> str:
    """A run directory's name: the arm's name made safe for a path, and the seed."""
    return re.sub(r"[^\w.=+-]+", "_", arm).strip("_") + f"-seed{seed}"


# -- one harness run -----------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_arms(
    arms: Sequence[Arm],
    seeds: Sequence[int],
    *,
    baseline: str,
    runs_dir: Path,
    out: Path,
    dataset: str = DATASET,
    data: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    part: str = "test",
    device: str = "cpu",
    argv: Sequence[str] | None = None,
    title: str = "Benchmark",
    threads: int = 1,
    pin: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train every arm for every seed, evaluate all users of ``part``, test each arm against the
    ``baseline`` arm (per seed and on the per-user mean over seeds), write ``out`` (JSON) and
    ``out`` with ``.md`` (the table); return what was written to the JSON. ``threads``: torch and
    BLAS threads, set here; ``pin``: CPU cores to pin the process to."""
    setup_threads(threads, pin)
    from lmrec.cache import default_cache
    from lmrec.evaluate.significance import paired_test

    names = [arm.name for arm in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f"arm names must be unique, got {names}")
    if baseline not in names:
        raise SystemExit(f"baseline {baseline!r} is not one of the arms {names}")
    if not seeds:
        raise SystemExit("no seeds")
    cache_dir = default_cache() if cache_dir is None else cache_dir
    base = recipe(dataset, **(data or {}))
    info = header(argv)
    results: dict[str, dict[str, Any]] = {}
    users: dict[str, list[Any]] = {}
    for arm in arms:
        per_seed = []
        for seed in seeds:
            run = train_arm(arm, seed, base, runs_dir / run_name(arm.name, seed), cache_dir, device)
            result = run.per_user(part)
            training = run.meta.get("training") or {}
            per_seed.append(
                {
                    "seed": seed,
                    "run": str(run.directory),
                    "metrics": {k: round(float(v), 6) for k, v in result.metrics.items()},
                    "fit_s": run.meta.get("train_seconds"),
                    "epochs": training.get("epochs"),
                    "per_user": [round(float(v), 6) for v in result.per_user[METRIC]],
                }
            )
            users.setdefault(arm.name, list(result.users))
            print(f"{arm.name} seed {seed}: {METRIC} {result.metrics[METRIC]:.4f}", file=sys.stderr)
        results[arm.name] = {
            "model": arm.model,
            "options": _jsonable(arm.options),
            "data": _jsonable(arm.data),
            "fit": _jsonable({k: _describe(v) for k, v in arm.fit.items()}),
            "seeds": per_seed,
        }
    base_runs = results[baseline]["seeds"]
    for name, arm_result in results.items():
        summary: dict[str, Any] = {}
        for metric in TABLE_METRICS:
            mean, std = _mean_std([s["metrics"][metric] for s in arm_result["seeds"]])
            summary[metric] = {"mean": round(mean, 6), "std": round(std, 6)}
        fits = [s["fit_s"] for s in arm_result["seeds"] if s["fit_s"] is not None]
        epochs = [s["epochs"] for s in arm_result["seeds"] if s["epochs"] is not None]
        summary["fit_s"] = round(statistics.fmean(fits), 3) if fits else None
        summary["epochs"] = round(statistics.fmean(epochs), 1) if epochs else None
        arm_result["summary"] = summary
        if name == baseline:
            continue
        if users[name] != users[baseline]:  # e.g. an arm with other filters: not the same users
            arm_result["vs_baseline"] = {"skipped": "evaluated on other users than the baseline"}
            continue
        tests = {
            f"seed {ours['seed']}": paired_test(theirs["per_user"], ours["per_user"])
            for ours, theirs in zip(arm_result["seeds"], base_runs, strict=True)
        }
        mean_of = lambda runs: [statistics.fmean(v) for v in zip(*(r["per_user"] for r in runs), strict=True)]  # noqa: E731
        tests["mean over seeds"] = paired_test(mean_of(base_runs), mean_of(arm_result["seeds"]))
        arm_result["vs_baseline"] = tests
    report = {
        "title": title,
        **info,
        "threads": info["machine"]["torch_threads"],
        "dataset": dataset,
        "data": asdict(base),
        "part": part,
        "seeds": list(seeds),
        "baseline": baseline,
        "metric": METRIC,
        "arms": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    table = render(report)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\nWrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return report


def render(report: dict[str, Any]) -> str:
    """The markdown table of a :func:`run_arms` report, headed by machine, command, commit and date."""
    m = report["machine"]
    seeds = report["seeds"]
    lines = [
        f"## {report['title']}",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} cores usable (cores {m['cores']}), {m['gpu']}; "
        f"torch {m['torch']}, {report['threads']} torch threads, Python {m['python']}.",
        f"Command: `{report['command']}`",
        f"Commit: {report['commit']}. Date: {report['date']}.",
        f"Data: {report['dataset']} ({report['data']['split']}), {report['part']} users; seeds {seeds}; "
        f"paired t-test of per-user {report['metric'].upper()} against `{report['baseline']}` "
        f"on the per-user mean over seeds.",
        "",
        "| arm | model | NDCG@10 | Recall@10 | vs baseline | p | fit s | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in report["arms"].items():
        s = arm["summary"]
        test = (arm.get("vs_baseline") or {}).get("mean over seeds")
        rel = DASH if test is None else f"{test['relative_change'] * 100:+.1f} %"
        p = DASH if test is None else f"{test['t_pvalue']:.3g}"
        cells = [
            name + (" (baseline)" if name == report["baseline"] else ""),
            arm["model"],
            f"{s['ndcg@10']['mean']:.4f} ± {s['ndcg@10']['std']:.4f}",
            f"{s['recall@10']['mean']:.4f} ± {s['recall@10']['std']:.4f}",
            rel,
            p,
            fmt(s["fit_s"], 1),
            fmt(s["epochs"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- the peer: RecBole on the same file, one process per model ------------------------------------------


def peer_data_dir(cache_dir: Path, dest: Path) -> Path:
    """A RecBole data directory (``dest/ml-100k/ml-100k.inter``) holding the interactions that
    lmrec read: the cached atomic file when the source came from the recbole wheel, else that
    file taken out of the wheel the way the source does (the cache then holds GroupLens files)."""
    from lmrec.data.sources import RECBOLE_ML100K, RECBOLE_WHEEL, Downloader

    target = dest / DATASET / f"{DATASET}.inter"
    target.parent.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / DATASET / f"{DATASET}.inter"
    if cached.is_file():
        shutil.copyfile(cached, target)
    else:
        wheel = Downloader().get_wheel(RECBOLE_WHEEL, dest)
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(f"{RECBOLE_ML100K}.inter"))
    return dest


def check_same_data(split: Any, inter_file: Path) -> dict[str, int]:
    """Interactions, users and items on both sides; an error when they differ."""
    import pandas as pd

    theirs = pd.read_csv(inter_file, sep="\t", usecols=[0, 1])
    ours = split.dataset.interactions
    counts = {
        "interactions": (len(ours), len(theirs)),
        "users": (ours["user"].nunique(), theirs.iloc[:, 0].nunique()),
        "items": (ours["item"].nunique(), theirs.iloc[:, 1].nunique()),
    }
    differ = {k: v for k, v in counts.items() if v[0] != v[1]}
    if differ:
        raise SystemExit(f"lmrec and RecBole data differ (lmrec, RecBole): {differ}")
    return {k: int(v[0]) for k, v in counts.items()}


def run_peer(
    names: list[str], data_dir: Path, threads: int, log_dir: Path, epochs: int | None = None
) -> list[dict[str, Any]]:
    """Set up RecBole's virtualenv if needed, then run each model in its own process, one at a time."""
    subprocess.run(["bash", str(BENCH / "recbole_env.sh")], check=True, stdout=sys.stderr)
    env = {**os.environ, **thread_env(threads), "THREADS": str(threads)}
    rows = []
    for name in names:
        log = log_dir / f"recbole-{name}.log"
        command = [str(PEER_PYTHON), str(BENCH / "recbole_run.py"), name, str(data_dir), DATASET]
        command += [str(epochs)] if epochs else []
        command += ["--checkpoint-dir", str(log_dir / f"ckpt-{name}")]
        t0 = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        wall_s = time.perf_counter() - t0
        text = log.read_text()
        results = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not results:
            tail = "\n".join(text.splitlines()[-20:])
            raise SystemExit(f"RecBole {name} failed (exit {done.returncode}):\n{tail}")
        record = json.loads(results[-1].removeprefix("RESULT "))
        row = {
            "model": name,
            "metrics": {m: record["test"][m] for m in METRICS},
            "wall_s": wall_s,
            "recbole_wall_s": record["wall_s"],  # inside run_recbole: data, fit, test
            "valid": record["valid"],
            # RecBole logs "epoch N training [time: S s, ...]" per epoch: training time alone
            "epoch_train_s": [float(s) for s in re.findall(r"training \[time: ([\d.]+)s", text)],
        }
        print(f"RecBole {name}: ndcg@10 {row['metrics']['ndcg@10']:.4f}, wall {wall_s:.1f} s", file=sys.stderr)
        rows.append(row)
    return rows


# -- as a command: any arms, e.g. every model before and after a change ---------------------------------


def parse_arm(text: str) -> Arm:
    """``NAME=MODEL[:KEY=VALUE,...]`` → an :class:`Arm` (values as ``lmrec train --set`` takes them)."""
    name, sep, rest = text.partition("=")
    model, _, sets = rest.partition(":")
    if not sep or not name or not model:
        raise SystemExit(f"--arm expects NAME=MODEL[:KEY=VALUE,...], got {text!r}")
    options = {}
    for pair in filter(None, sets.split(",")):
        key, eq, value = pair.partition("=")
        if not eq:
            raise SystemExit(f"--arm {text!r}: {pair!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return Arm(name, model, options)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Arms trained as `lmrec train` trains them, paired-tested.")
    parser.add_argument("--arm", action="append", required=True, type=parse_arm, help="NAME=MODEL[:K=V,...]")
    parser.add_argument("--baseline", help="the arm the others are tested against (default: the first)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dataset", default=DATASET, help="registered name or a file/directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None, help="dataset cache (default: lmrec's)")
    parser.add_argument("--title", default="Benchmark")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "harness.json")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    with runs_root(args.runs, "lmrec-harness-") as runs:
        return run_arms(
            args.arm,
            [int(s) for s in args.seeds.split(",") if s],
            baseline=args.baseline or args.arm[0].name,
            runs_dir=runs,
            out=args.out,
            dataset=args.dataset,
            cache_dir=args.cache_dir,
            device=args.device,
            argv=argv,
            title=args.title,
            threads=args.threads,
            pin=args.pin,
        )


if __name__ == "__main__":
    main()
