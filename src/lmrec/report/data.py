"""What a report measures: every run evaluated on the same users, and the numbers derived from that.

:func:`collect` ranks the runs' test (or validation) users again here against the full catalog and
times them, and reads from each run's ``run.json`` (recipe, configs, fit time, the per-epoch training
log) and, when a run directory holds one, a diversity sweep (``diversity.json``). The rest are the
tables the report shows, computed from what :func:`collect` gathered: metric columns, bootstrap
intervals, history-length and item-popularity buckets, per-target hits, training logs.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmrec.data.batch import EvalSet
from lmrec.errors import LmrecError
from lmrec.evaluate.beyond import beyond_accuracy
from lmrec.evaluate.evaluator import PROTOCOL, EvalResult, evaluate
from lmrec.evaluate.fairness import evaluation_fairness
from lmrec.evaluate.report import metric_columns
from lmrec.evaluate.significance import bootstrap_ci
from lmrec.report.fairness import RunFairness
from lmrec.runs import Run

TABLE_METRICS = ("ndcg", "recall", "mrr", "precision", "map")
BEYOND = ("coverage", "ild", "novelty", "avg_popularity", "gini")
# History-length buckets: [low, high) interactions before the evaluated part.
HISTORY_EDGES = (1, 5, 10, 20, 50, 100, 200)
# Popularity buckets of a target item among items with training interactions, by the share of
# training interactions the most popular items make up: head = the first third, torso the second.
HEAD_SHARE, TORSO_SHARE = 1 / 3, 2 / 3
DIVERSITY_FILE = "diversity.json"
RESAMPLES = 2000  # bootstrap resamples for the confidence intervals and the paired tests
INTERVALS = f"95 % intervals: percentile bootstrap over users ({RESAMPLES} resamples, seed 0)"
LATENCY_USERS = 50  # single-user requests timed per run


@dataclass
class RunSection:
    """One run evaluated for the report."""

    label: str
    run: Run
    result: EvalResult
    eval_seconds: float  # scoring every evaluated user, in batches
    latency_ms: list[float]  # one model.recommend call per user, one user at a time
    beyond: dict[str, float]
    target_ranks: np.ndarray  # per (user, target) pair: 0-based rank in the top-k, -1 if not there
    sweep: list[dict[str, Any]] | None = None
    fairness: RunFairness | None = None  # tail share, provider exposure, user groups


@dataclass
class ReportData:
    runs: list[RunSection]
    part: str
    ks: tuple[int, ...]
    eval_set: EvalSet
    protocol: dict[str, Any]
    item_popularity: np.ndarray  # distinct training users per item row
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))


# -- measuring -------------------------------------------------------------------------------------


def collect(
    runs: list[Run],
    part: str = "test",
    ks: tuple[int, ...] = (10,),
    sample: int | None = None,
    labels: list[str] | None = None,
    latency_users: int = LATENCY_USERS,
) -> ReportData:
    """Evaluate ``runs`` on the same users (all of ``part``, or ``sample`` of them, seed 0).
    The runs must hold one dataset and split: the caller checks (``lmrec report`` does)."""
    if not runs:
        raise LmrecError("a report needs at least one run")
    if part not in ("valid", "test"):
        raise LmrecError(f"part must be valid or test, got {part!r}")
    first = runs[0]
    eval_set = first.split.eval_set(part)  # type: ignore[arg-type]
    if sample is not None:
        eval_set = eval_set.sample(sample, seed=0)
    if len(eval_set) == 0:
        raise LmrecError(f"the {part} part has no users to evaluate")
    names = labels or _labels(runs)
    train = first.split.train_dataset()
    popularity = train.item_popularity()
    sections = []
    for label, run in zip(names, runs, strict=True):
        started = time.perf_counter()
        result = evaluate(run.model, eval_set, ks=ks)
        seconds = time.perf_counter() - started
        fair, extras = evaluation_fairness(result, run.dataset, train, tuple(ks))
        sections.append(
            RunSection(
                label=label,
                run=run,
                result=result,
                eval_seconds=seconds,
                latency_ms=_latency(run, eval_set, max(ks), latency_users),
                beyond=_beyond(run, result, max(ks), eval_set, popularity),
                target_ranks=_target_ranks(result, eval_set, max(ks)),
                sweep=_stored_sweep(run.directory),
                fairness=RunFairness(label, fair, extras),
            )
        )
    protocol = {
        **first.split.protocol,
        **PROTOCOL,
        "part": part,
        "users": f"a random {len(eval_set)} (seed 0)" if sample is not None else f"all {len(eval_set)}",
    }
    return ReportData(sections, part, tuple(ks), eval_set, protocol, popularity)


def _labels(runs: list[Run]) -> list[str]:
    """The model name, with the directory name where two runs share a model."""
    models = [str(r.meta["model"]) for r in runs]
    return [m if models.count(m) == 1 else f"{m} ({r.directory.name})" for m, r in zip(models, runs, strict=True)]


def _latency(run: Run, eval_set: EvalSet, k: int, n: int) -> list[float]:
    """Milliseconds of one ``model.recommend`` per user, one user per call (the first ``n`` users,
    after one untimed warm-up call)."""
    queries = eval_set.queries
    count = min(n, len(queries))
    if count == 0:
        return []
    run.model.recommend(queries.slice(0, 1), k=k)
    out = []
    for i in range(count):
        batch = queries.slice(i, i + 1)
        started = time.perf_counter()
        run.model.recommend(batch, k=k)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _beyond(run: Run, result: EvalResult, k: int, eval_set: EvalSet, popularity: np.ndarray) -> dict[str, float]:
    ds = run.dataset
    cats = list(ds.catalog["categories"])
    has_cats = any(len(c) for c in cats)
    return beyond_accuracy(
        result.recommendations[:, :k],
        n_items=ds.n_items,
        item_popularity=popularity,
        n_users=ds.n_users,
        item_vectors=ds.category_matrix(),
        item_categories=cats if has_cats else None,
        histories=[eval_set.queries.history(i) for i in range(len(eval_set))] if has_cats else None,
    )


def _target_ranks(result: EvalResult, eval_set: EvalSet, k: int) -> np.ndarray:
    """For every (user, target) pair in eval-set order: where the target is in the user's top-k."""
    out = np.full(len(eval_set.target_items), -1, dtype=np.int64)
    for i in range(len(eval_set)):
        top = result.recommendations[i, :k]
        lo, hi = eval_set.target_indptr[i], eval_set.target_indptr[i + 1]
        for j in range(lo, hi):
            where = np.flatnonzero(top == eval_set.target_items[j])
            out[j] = int(where[0]) if len(where) else -1
    return out


def _stored_sweep(directory: Path) -> list[dict[str, Any]] | None:
    """A relevance/diversity sweep the run directory holds (``diversity.json``: ``{"rows": [{"method",
    "value", "metrics": {"ndcg@10", "ild", ...}}, ...]}``, as ``benchmarks/diversity.py`` writes), or None."""
    path = Path(directory) / DIVERSITY_FILE
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text()).get("rows", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise LmrecError(f"{path}: not a diversity sweep ({exc})") from None
    usable = [r for r in rows if isinstance(r.get("metrics"), dict) and {"ndcg@10", "ild"} <= set(r["metrics"])]
    return usable or None


# -- derived tables --------------------------------------------------------------------------------


def metric_names(ks: tuple[int, ...], result: EvalResult) -> list[str]:
    names = {f"{m}@{k}" for m in TABLE_METRICS for k in ks if f"{m}@{k}" in result.per_user}
    return metric_columns(names)


def confidence(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of per-user values."""
    low, high = bootstrap_ci(values, n_resamples=RESAMPLES, seed=0)
    return float(np.mean(values)), low, high


def history_buckets(eval_set: EvalSet) -> list[tuple[str, np.ndarray]]:
    """(label, user mask) per history-length bucket that has users."""
    lengths = eval_set.queries.lengths()
    edges = [0, *HISTORY_EDGES[1:], math.inf]
    out = []
    for lo, hi in itertools.pairwise(edges):
        mask = (lengths >= lo) & (lengths < hi)
        if mask.any():
            label = f"{int(lo)}+" if math.isinf(hi) else f"{int(lo)}–{int(hi) - 1}"
            out.append((label, mask))
    return out


def popularity_buckets(popularity: np.ndarray, targets: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, target mask) for head, torso, tail and cold target items (those that have targets)."""
    order = np.argsort(-popularity, kind="stable")
    share = np.cumsum(popularity[order]) / max(1, popularity.sum())
    bucket = np.full(len(popularity), 3, dtype=np.int8)  # 3: cold (no training interaction)
    warm = popularity[order] > 0
    before = share - popularity[order] / max(1, popularity.sum())  # share held by more popular items
    bucket[order[warm & (before < HEAD_SHARE)]] = 0
    bucket[order[warm & (before >= HEAD_SHARE) & (before < TORSO_SHARE)]] = 1
    bucket[order[warm & (before >= TORSO_SHARE)]] = 2
    of_target = bucket[targets]
    names = ("head", "torso", "tail", "cold (no training interaction)")
    return [(names[b], of_target == b) for b in range(4) if (of_target == b).any()]


def bucket_items(popularity: np.ndarray) -> dict[str, int]:
    """How many catalog items each popularity bucket holds (for the report's legend)."""
    labels = popularity_buckets(popularity, np.arange(len(popularity)))
    return {name: int(mask.sum()) for name, mask in labels}


def target_scores(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per target: found in the top-k (0/1), and its DCG (1/log2(rank + 2), 0 when not found)."""
    hit = (ranks >= 0).astype(np.float64)
    dcg = np.where(ranks >= 0, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    return hit, dcg


def training_log(run: Run) -> dict[str, Any] | None:
    """The run's per-epoch training log (``losses``, ``valid``), or None for a model without epochs."""
    log = run.meta.get("training") or {}
    if not isinstance(log, dict) or not log.get("losses"):
        return None
    return log


def valid_epochs(log: dict[str, Any], eval_every: int) -> list[int]:
    """The 1-based epochs the validation scores in ``log`` were taken at. The Trainer validates
    every ``eval_every`` epochs and after the last; other counts are numbered 1, 2, ..."""
    n, count = len(log["losses"]), len(log.get("valid") or [])
    every = [e for e in range(1, n + 1) if e % eval_every == 0 or e == n]
    return every if len(every) == count else list(range(1, count + 1))
