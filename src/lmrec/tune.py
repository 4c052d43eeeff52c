"""``lmrec tune``: a hyperparameter search over a model's declared search space, on validation.

Every trial trains through :func:`lmrec.runs.train_run`, the path ``lmrec train`` takes, and its
value is the validation NDCG@10 that ``lmrec train`` reports (``valid.json``). Optuna's TPE sampler
(seeded) proposes the options; its median pruner stops a trial whose validation NDCG@10 after an
epoch (the Trainer's ``on_epoch``) is below the median of earlier trials at that epoch. The first
trial of a new study trains the model's defaults, so the best config found is never worse on
validation than the defaults. The study lives in an Optuna storage (``sqlite:///study.db``), so a
search that was stopped continues where it stopped: ``trials`` is the size of the study, and only
finished (complete or pruned) trials count towards it. A time budget stops starting trials once
spent (the first trial of a call always starts), and the trial that is running stops at its first
epoch end past it: a search overruns its budget by at most an epoch and a validation.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmrec.errors import ConfigError, LmrecError
from lmrec.models.base import FitOptions
from lmrec.models.registry import model_class
from lmrec.runs import DataRecipe, train_run

if TYPE_CHECKING:
    import optuna

METRIC = "ndcg@10"  # what is maximised: validation NDCG@10, as lmrec train reports it
STUDY_NAME = "lmrec-tune"


@dataclass(frozen=True)
class Param:
    """One searched option: a float or int range (``log``: sampled on a log scale), or ``choices``."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.choices:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


_SEQUENTIAL = {
    "lr": Param(1e-4, 1e-2, log=True),
    "dropout": Param(0.0, 0.6),
    "weight_decay": Param(1e-3, 3.0, log=True),
    "dim": Param(choices=(32, 64, 128)),
    "layers": Param(choices=(1, 2, 3)),
    "max_len": Param(choices=(25, 50, 100)),
    "batch_size": Param(choices=(64, 128, 256)),
}
# Each model's search space: option → range. The ranges bracket the defaults, which the first
# trial of a study trains as they are.
SPACES: dict[str, dict[str, Param]] = {
    "sasrec": _SEQUENTIAL,
    "bert4rec": {**_SEQUENTIAL, "mask_prob": Param(0.1, 0.5)},
    "text-sasrec": {**_SEQUENTIAL, "id_dropout": Param(0.0, 0.5)},
    "bpr": {"dim": Param(choices=(32, 64, 128)), "lr": Param(1e-3, 3e-2, log=True), "reg": Param(1e-7, 1e-2, log=True)},
    "als": {
        "dim": Param(choices=(32, 64, 128)),
        "reg": Param(1e-2, 100.0, log=True),
        "alpha": Param(0.1, 50.0, log=True),
        "iterations": Param(5, 30, integer=True),
    },
    "ease": {"reg": Param(1.0, 5000.0, log=True)},
    "itemknn": {"k": Param(10, 500, log=True, integer=True), "shrink": Param(0.0, 100.0)},
    "svd": {"dim": Param(choices=(16, 32, 64, 128)), "lr": Param(1e-3, 3e-2, log=True)},
}


def search_space(model: str) -> dict[str, Param]:
    """The options ``lmrec tune`` searches for ``model``."""
    if model not in SPACES:
        raise ConfigError(f"no search space for {model!r}; lmrec tune searches {', '.join(SPACES)}")
    return SPACES[model]


def storage_url(study: str) -> str:
    """A storage URL as given (``sqlite:///...``, ``postgresql://...``), or a file path as SQLite."""
    return study if "://" in study else f"sqlite:///{Path(study).resolve()}"


@dataclass
class TuneOptions:
    """What to search and for how long; ``fixed`` options are set on every trial, not searched."""

    trials: int = 20  # the size of the study: finished (complete or pruned) trials to reach
    time_budget: float | None = None  # seconds of this call
    seed: int = 0  # the sampler's and every trial's
    study: str | None = None  # storage URL or SQLite file; None: in memory, not resumable
    fixed: dict[str, Any] = field(default_factory=dict)
    runs_dir: Path | None = None  # every trial's run directory (None: a temporary one, removed)
    prune_warmup: int = 5  # epochs a trial trains before it can be pruned
    prune_startup: int = 3  # finished trials before any is pruned
    defaults_first: bool = True  # a new study's first trial trains the defaults


@dataclass
class TuneResult:
    study: optuna.Study
    config: dict[str, Any]  # the best trial's options, as the YAML `lmrec train --config` takes
    best: dict[str, Any]  # the best trial's row of the table
    rows: list[dict[str, Any]]  # one per trial
    ran: int  # trials this call ran


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("lmrec tune needs Optuna: pip install 'lmrec[tune]'") from None
    return optuna


def open_study(model: str, recipe: DataRecipe, options: TuneOptions, pruner: Any = None) -> optuna.Study:
    """The study of ``options.study`` (created, or loaded to go on), checked to be a search of this
    model on this data with these fixed options; trials a killed process left running are failed."""
    optuna = _optuna()
    pruner = pruner or optuna.pruners.MedianPruner(
        n_startup_trials=options.prune_startup, n_warmup_steps=options.prune_warmup
    )
    storage = storage_url(options.study) if options.study else None
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    what = {"model": model, "data": asdict(recipe), "fixed": options.fixed, "seed": options.seed, "metric": METRIC}
    what = json.loads(json.dumps(what))  # as the storage gives it back
    if not study.trials and not study.user_attrs:
        for key, value in what.items():
            study.set_user_attr(key, value)
    else:
        differ = [k for k, v in what.items() if study.user_attrs.get(k) != v]
        if differ:
            held = ", ".join(f"{k}={study.user_attrs.get(k)!r}" for k in differ)
            raise ConfigError(f"{options.study} holds another search ({held}); give a new --study file")
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # its process was stopped
    # a resumed study's sampler is seeded past the trials it has, so it does not repeat its first draws
    study.sampler = optuna.samplers.TPESampler(seed=options.seed + len(study.trials))
    return study


def tune(
    model: str,
    recipe: DataRecipe,
    options: TuneOptions,
    cache_dir: Path,
    fit: FitOptions | None = None,
    say: Callable[[str], None] = lambda _: None,
    pruner: Any = None,
) -> TuneResult:
    """Run trials until the study has ``options.trials`` finished ones or the time budget is spent;
    each trains ``model`` on ``recipe`` through :func:`train_run` with ``fit`` (seed: the options')."""
    lib = _optuna()
    space = {k: p for k, p in search_space(model).items() if k not in options.fixed}  # fixed: not searched
    typed = model_class(model).config_class.from_dict(options.fixed).to_dict()  # a bad option fails here
    options = replace(options, fixed={k: _plain(typed[k]) for k in options.fixed})
    recipe = recipe.resolved()
    recipe.make_split(cache_dir)  # data that cannot be read fails here, not in every trial
    study = open_study(model, recipe, options, pruner)
    finished = (lib.trial.TrialState.COMPLETE, lib.trial.TrialState.PRUNED)
    to_run = max(0, options.trials - len(study.get_trials(deepcopy=False, states=finished)))
    before = len(study.trials)  # an enqueued trial is one of the study's before it runs
    if options.defaults_first and not study.trials and to_run:
        study.enqueue_trial({}, user_attrs={"defaults": True})
    base = replace(fit or FitOptions(), seed=options.seed, progress=False, log=None)
    deadline = None if options.time_budget is None else time.monotonic() + options.time_budget
    temporary = tempfile.TemporaryDirectory(prefix="lmrec-tune-") if options.runs_dir is None else None
    runs_dir = Path(temporary.name) if temporary is not None else Path(options.runs_dir or ".")

    def objective(trial: optuna.Trial) -> float:
        searched = {} if trial.user_attrs.get("defaults") else {n: p.suggest(trial, n) for n, p in space.items()}
        scores: list[float] = []

        def on_epoch(value: float) -> None:  # every validation of the Trainer, each phase's in turn
            trial.report(value, len(scores))
            scores.append(value)
            if trial.should_prune():
                trial.set_user_attr("epochs", len(scores))
                raise lib.TrialPruned(f"validation {METRIC} {value:.4f} after epoch {len(scores)}")

        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        out = runs_dir / f"trial-{trial.number:03d}"
        shutil.rmtree(out, ignore_errors=True)  # a trial number a stopped process had begun
        run = train_run(
            recipe,
            model,
            {**options.fixed, **searched},
            out,
            cache_dir,
            replace(base, on_epoch=on_epoch, max_time=left),
        )
        chosen = run.model.config.to_dict()  # as the model resolved it (a None default filled from the data)
        trial.set_user_attr("config", {k: _plain(chosen[k]) for k in space if k in chosen})
        trial.set_user_attr("epochs", run.meta["training"].get("epochs"))
        trial.set_user_attr("stopped", run.meta.get("stopped"))
        return float(json.loads((out / "valid.json").read_text())["metrics"][METRIC])

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        say(_line(_row(trial)))

    try:
        for started in range(to_run):  # the first trial always runs (bounded by the budget, if any): a best
            if deadline is not None and started and time.monotonic() >= deadline:
                break
            study.optimize(objective, n_trials=1, catch=(LmrecError,), callbacks=[report])
    finally:
        if temporary is not None:
            temporary.cleanup()
    ran = len(study.trials) - before
    rows = [_row(t) for t in study.trials]
    complete = [t for t in study.trials if t.state == lib.trial.TrialState.COMPLETE]
    if not complete:
        raise LmrecError(f"no trial of {model} finished (see the table): nothing to write")
    best = study.best_trial
    config = {**options.fixed, **best.user_attrs.get("config", {})}
    return TuneResult(study, config, _row(best), rows, ran)


def _plain(value: Any) -> Any:
    """A config value YAML writes plainly (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    start, end = trial.datetime_start, trial.datetime_complete
    seconds = (end - start).total_seconds() if start is not None and end is not None else None
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        METRIC: trial.value,
        "epochs": trial.user_attrs.get("epochs"),
        "stopped": trial.user_attrs.get("stopped"),
        "seconds": None if seconds is None else round(seconds, 1),
        "options": "defaults"
        if trial.user_attrs.get("defaults")
        else ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items()),
    }


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _line(row: dict[str, Any]) -> str:
    value = "–" if row[METRIC] is None else f"{row[METRIC]:.4f}"
    return f"trial {row['trial']}: {row['state']}, valid {METRIC} {value}, {row['epochs']} epochs ({row['options']})"


def markdown_table(rows: list[dict[str, Any]], best: int | None = None) -> str:
    """The trials as a markdown table, the best one marked."""
    lines = [
        f"| trial | state | valid {METRIC} | epochs | stopped | seconds | options |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = "–" if r[METRIC] is None else f"{r[METRIC]:.4f}" + (" (best)" if r["trial"] == best else "")
        cells = [
            r["trial"],
            r["state"],
            value,
            r["epochs"] or "–",
            r["stopped"] or "–",
            r["seconds"] or "–",
            r["options"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_config(path: Path, result: TuneResult, model: str, dataset: str) -> Path:
    """The best trial's options as the YAML ``lmrec train --config`` takes, headed by where they came from."""
    best = result.best
    head = (
        f"# lmrec tune: {model} on {dataset}, trial {best['trial']} of {len(result.rows)},"
        f" validation {METRIC} {best[METRIC]:.4f}\n"
        f"# lmrec train --dataset {dataset} --model {model} --config {path.name} --out RUN\n"
    )
    path = Path(path)
    path.write_text(head + yaml.safe_dump(result.config, sort_keys=False))
    return path
