"""A run: a dataset recipe, a split, a trained model and its metrics, in one directory.

::

    RUN_DIR/
      run.json        what was trained on what (dataset, filters, split, model, seed, version, times)
      model/          config.json + weights.safetensors (no pickle)
      users.json      user vocabulary (raw IDs in row order)
      items.json      item vocabulary
      valid.json      validation metrics after training

``open_run`` rebuilds the dataset and split from the recipe and checks that the vocabularies
still match, so ``evaluate`` and ``recommend`` see exactly what training saw.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmrec import __version__
from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.filters import FilterReport, apply_filters
from lmrec.data.loaders import load
from lmrec.data.schema import Dataset, Vocab
from lmrec.data.sources import SOURCES, load_source
from lmrec.data.splits import Part, Split, split
from lmrec.errors import DataError, LmrecError
from lmrec.evaluate.beyond import beyond_accuracy
from lmrec.evaluate.evaluator import EvalResult, Reranker, evaluate
from lmrec.evaluate.fairness import evaluation_fairness
from lmrec.evaluate.metrics import mae, rmse
from lmrec.llm.explain import Explainer
from lmrec.llm.lm import ChatLM
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.registry import load_model, model_class
from lmrec.rerank import item_vectors_of
from lmrec.text import item_names

if TYPE_CHECKING:
    from lmrec.privacy.federated import FederatedOptions

RUN_FILE = "run.json"
TRAIN_FILE = "train.json"  # what `lmrec train` was asked, written before training starts


@dataclass
class DataRecipe:
    """How to get from raw files to a split: source, column map, filters, split method."""

    dataset: str
    columns: dict[str, str] | None = None
    kcore: int | None = None
    min_rating: float | None = None
    dedupe: bool = False
    split: str = "leave-one-out"
    split_params: dict[str, Any] = field(default_factory=dict)
    text_template: str | None = None  # how text models read the catalog (lmrec.text.templates); None: automatic

    def resolved(self) -> DataRecipe:
        """Paths made absolute, so a run still finds its data from another directory."""
        if self.dataset in SOURCES:
            return self
        return DataRecipe(**{**asdict(self), "dataset": str(Path(self.dataset).resolve())})

    def load(self, cache_dir: Path) -> tuple[Dataset, list[FilterReport]]:
        if self.dataset in SOURCES:
            ds = load_source(self.dataset, cache_dir)
        else:
            ds = load(Path(self.dataset), columns=self.columns)
        if self.text_template is not None:
            ds = replace(ds, meta={**ds.meta, "text_template": self.text_template})
        return apply_filters(ds, kcore=self.kcore, min_rating=self.min_rating, dedupe=self.dedupe)

    def make_split(self, cache_dir: Path) -> tuple[Split, list[FilterReport]]:
        ds, reports = self.load(cache_dir)
        return split(ds, self.split, **self.split_params), reports


@dataclass
class Run:
    directory: Path
    meta: dict[str, Any]
    model: Recommender
    split: Split

    @property
    def dataset(self) -> Dataset:
        return self.split.dataset

    def evaluate(
        self,
        part: Part = "test",
        ks: tuple[int, ...] = (10,),
        progress: bool = False,
        reranker: Reranker | None = None,
        candidates: int = 100,
        sample: int | None = None,
    ) -> dict[str, Any]:
        """Metrics on ``part`` as a JSON-ready dict: ranking, beyond-accuracy and (if any) rating.
        ``sample``: only that many users, drawn at random (seed 0; for slow models such as llm-gen)."""
        eval_set = self.split.eval_set(part)
        if sample is not None:
            eval_set = eval_set.sample(sample, seed=0)
        result = evaluate(self.model, eval_set, ks=ks, progress=progress, reranker=reranker, candidates=candidates)
        metrics = dict(result.metrics)
        metrics.update(self._beyond(result, max(ks), eval_set))
        fair, fairness = evaluation_fairness(result, self.dataset, self.split.train_dataset(), ks)
        metrics.update(fair)
        metrics.update(self._rating_metrics(part))
        return {
            "metrics": {k: round(v, 6) for k, v in metrics.items()},
            "n_users": result.n_users,
            **fairness,  # "groups" (user-side gaps) and, where the catalog names providers, "providers"
            "protocol": {
                **self.split.protocol,
                **result.protocol,
                "part": part,
                **({"users": f"a random {len(eval_set)} (seed 0)"} if sample is not None else {}),
            },
            "model": self.meta["model"],
            "dataset": self.meta["data"]["dataset"],
            # a DP-trained run's guarantee (ε spent, δ, accountant, clip) goes with every report of it
            **({"privacy": privacy} if (privacy := (self.meta.get("training") or {}).get("privacy")) else {}),
        }

    def per_user(self, part: Part = "test", ks: tuple[int, ...] = (10,)) -> EvalResult:
        return evaluate(self.model, self.split.eval_set(part), ks=ks)

    def _beyond(self, result: EvalResult, k: int, eval_set: EvalSet) -> dict[str, float]:
        ds = self.dataset
        cats = list(ds.catalog["categories"])
        histories = [eval_set.queries.history(i) for i in range(len(eval_set))] if any(cats) else None
        return beyond_accuracy(
            result.recommendations[:, :k],
            n_items=ds.n_items,
            item_popularity=self.split.train_dataset().item_popularity(),
            n_users=ds.n_users,
            item_vectors=ds.category_matrix(),
            item_categories=cats if any(cats) else None,
            histories=histories,
        )

    def _rating_metrics(self, part: Part) -> dict[str, float]:
        """RMSE/MAE on ``part``'s ratings, from a model that rates a user row (``predict(users, items)``,
        MF/SVD) or an item after a history (``rate_after(batch, items)``, mtl-sasrec: each row's query
        is its user's history before ``part``, as :meth:`evaluate` reads it)."""
        frame = self.split.frame(part)
        if "rating" not in frame.columns or len(frame) == 0:
            return {}
        users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
        pred = None
        if (rate_after := getattr(self.model, "rate_after", None)) is not None:
            queries = self.split.eval_set(part).queries  # one per user with a row in part, users sorted
            rows = np.searchsorted(queries.users, users)
            pred = rate_after(QueryBatch.from_histories(users, [queries.history(int(r)) for r in rows]), items)
        elif (predict := getattr(self.model, "predict", None)) is not None:
            pred = predict(users, items)
        if pred is None:  # the model predicts no ratings
            return {}
        true = frame["rating"].to_numpy()
        return {"rmse": rmse(pred, true), "mae": mae(pred, true)}

    def history_of(self, user: str) -> np.ndarray:
        """All known interactions of a raw user ID, time-ordered (empty for a new user)."""
        if user not in self.dataset.users:
            return np.zeros(0, np.int64)
        row = self.dataset.users.row(user)
        return QueryBatch.from_interactions(self.dataset.interactions, np.array([row])).items

    def recommend(
        self,
        user: str,
        history: list[str] | None = None,
        k: int = 10,
        reranker: Reranker | None = None,
        candidates: int = 100,
        explainer: Explainer | None = None,
    ) -> dict[str, Any]:
        """Top-k for a raw user ID (known or new) plus optional extra raw item IDs just consumed,
        optionally re-ranked from the top ``candidates``, optionally each with a grounded reason
        (``because``) citing items of the user's history (``cited``)."""
        ds = self.dataset
        extra = [] if history is None else history
        unknown = [i for i in extra if i not in ds.items]
        if unknown:
            raise DataError(f"unknown item id(s) {unknown[:5]} in --history")
        items = np.concatenate([self.history_of(user), ds.items.rows(extra)]).astype(np.int64)
        row = ds.users.row(user) if user in ds.users else -1
        if row < 0 and len(items) == 0:
            raise DataError(f"unknown user {user!r} and no --history: nothing to personalise from")
        batch = QueryBatch.from_histories([row], [items])
        top, scores = self.ranked(batch, k, reranker, candidates)
        keep = top[0] >= 0
        rows, values = top[0][keep], scores[0][keep]
        out = [
            {"item": raw, "score": round(float(s), 6), "title": title}
            for raw, s, title in zip(ds.items.raw(rows), values, ds.titles(rows), strict=True)
        ]
        if explainer is not None:
            for entry, item in zip(out, rows, strict=True):
                why = explainer.explain(items, int(item))
                entry.update(because=why.text, cited=ds.items.raw(why.cited))
        return {
            "user": user,
            "known_user": row >= 0,
            "history_length": len(items),
            **({"rerank": repr(reranker)} if reranker is not None else {}),
            "items": out,
        }

    def ranked(
        self, batch: QueryBatch, k: int = 10, reranker: Reranker | None = None, candidates: int = 100
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, scores) of each query's top-k, history items excluded (-1 where fewer than k
        are left), optionally re-ranked from the top ``candidates``: what :meth:`recommend` shows one
        user and ``lmrec recommend --all-users`` writes for every user."""
        top, scores = self.model.recommend(batch, k=max(k, candidates) if reranker else k)
        if reranker is None:
            return top, scores
        reranked = reranker(batch, top, scores, k)
        score_of = [dict(zip(t.tolist(), s.tolist(), strict=True)) for t, s in zip(top, scores, strict=True)]
        values = [[known.get(int(i), np.nan) for i in row] for known, row in zip(score_of, reranked, strict=True)]
        return reranked, np.array(values, dtype=np.float64).reshape(reranked.shape)

    def explainer(self, lm: ChatLM | None = None) -> Explainer:
        """Grounded explanations for this run: history items are cited by the model's own item
        vectors where it has them, else by co-occurrence in the training data."""
        from lmrec.rerank.similarity import CooccurrenceSimilarity, EmbeddingSimilarity, ItemSimilarity

        vectors = item_vectors_of(self.model)
        similarity: ItemSimilarity = (
            EmbeddingSimilarity(vectors)
            if vectors is not None
            else CooccurrenceSimilarity.from_interactions(self.split.train_dataset())
        )
        return Explainer(item_names(self.dataset), similarity, lm)  # titles, else the item text


def train_run(
    recipe: DataRecipe,
    model_name: str,
    overrides: dict[str, Any],
    out: Path,
    cache_dir: Path,
    options: FitOptions,
    extra_meta: dict[str, Any] | None = None,
) -> Run:
    """Load, filter, split, fit with early stopping on validation, save everything under ``out``.

    What was asked is written first (``train.json``) and the Trainer checkpoints every epoch under
    ``out/checkpoint``, so a stopped run continues with :func:`resume_run`. ``extra_meta`` is added
    to ``run.json`` (``lmrec retrain`` records there what it added)."""
    klass = model_class(model_name)
    config = klass.config_class.from_dict(overrides)
    recipe = recipe.resolved()
    main = options.strategy.is_main  # under DDP the other processes train and write nothing
    the_split, reports = recipe.make_split(cache_dir)  # bad data fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    request = {"model": model_name, "overrides": overrides, "data": asdict(recipe), "seed": options.seed}
    if main and not options.resume:
        (out / TRAIN_FILE).write_text(json.dumps({**request, "extra_meta": extra_meta}, indent=2))
    options = replace(options, checkpoint_dir=out / "checkpoint")
    for report in reports:
        options.say(str(report))
    train = the_split.train_dataset()
    valid = the_split.eval_set("valid")
    options.say(f"{the_split.dataset.name}: {the_split.dataset.summary()} split {the_split.sizes()}")
    started = time.perf_counter()
    try:
        model = klass(config).fit(train, valid if len(valid) else None, options)
    except LmrecError:
        if main and not options.resume and not (out / "checkpoint").exists():  # refused before training
            (out / TRAIN_FILE).unlink(missing_ok=True)
            if not any(out.iterdir()):
                out.rmdir()
        raise
    seconds = time.perf_counter() - started
    stopped = model.training_log.get("stopped")  # "epochs", "early_stopping", "max_time" (the Trainer's)
    if options.max_time is not None and stopped is None:
        options.say(f"{model_name} does not train in the Trainer's epochs: max_time did not bound it")
    if not main:
        return Run(out, {}, model, the_split)
    model.save(out / "model")
    the_split.dataset.users.save(out / "users.json")
    the_split.dataset.items.save(out / "items.json")
    fields = {
        "data": asdict(recipe),
        "filters": [str(r) for r in reports],
        "split_sizes": the_split.sizes(),
        "seed": options.seed,
        "train_seconds": round(seconds, 3),
        "training": model.training_log,
        # the item-text template the model chose (lmrec.text.choose_template); new items are read with it
        **({"text_template": t} if (t := getattr(model.config, "text_template", None)) is not None else {}),
        **({"max_time": options.max_time} if options.max_time is not None else {}),
        **({"stopped": stopped} if stopped is not None else {}),
        **(extra_meta or {}),
    }
    return write_run(out, model_name, config, model, the_split, fields, valid_sample=klass.report_users)


def write_run(
    out: Path,
    name: str,
    config: ModelConfig,
    model: Recommender,
    the_split: Split,
    fields: dict[str, Any],
    valid_sample: int | None = None,
) -> Run:
    """The one writer of a run's description (``lmrec train``, ``federated``, ``compress``):
    ``out/run.json`` with lmrec's version, the model's name and config, ``fields`` and the time, and
    ``out/valid.json``, the validation users' evaluation (``valid_sample`` of them, else all), where
    the split has any. The model and the user/item maps are the caller's to save."""
    meta = {
        "lmrec_version": __version__,
        "model": name,
        "config": config.to_dict(),
        **fields,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / RUN_FILE).write_text(json.dumps(meta, indent=2))
    run = Run(out, meta, model, the_split)
    if len(the_split.eval_set("valid")):
        (out / "valid.json").write_text(json.dumps(run.evaluate("valid", sample=valid_sample), indent=2))
    return run


_META_TYPES: dict[str, Any] = {"model": str, "data": dict, "config": dict, "seed": int, "retrain": (dict, type(None))}
_RECIPE_TYPES: dict[str, Any] = {
    "dataset": str, "columns": (dict, type(None)), "kcore": (int, type(None)), "min_rating": (int, float, type(None)),
    "dedupe": bool, "split": str, "split_params": dict, "text_template": (str, type(None)),
}  # fmt: skip


def resume_run(out: Path, cache_dir: Path, options: FitOptions) -> Run:
    """Continue a run that stopped before it finished (killed, or ``stop_after``) from its last
    checkpoint: the same data, model, config and seed, to the same result as an uninterrupted run."""
    path = Path(out)
    if not (path / TRAIN_FILE).is_file():
        raise LmrecError(f"{path}: nothing to resume (no {TRAIN_FILE}); start it with `lmrec train --out {path}`")
    asked = json.loads((path / TRAIN_FILE).read_text())
    options = replace(options, seed=int(asked["seed"]), resume=True)
    recipe = DataRecipe(**asked["data"])
    return train_run(recipe, asked["model"], asked["overrides"], path, cache_dir, options, asked.get("extra_meta"))


def federated_run(
    recipe: DataRecipe,
    model: str,
    overrides: dict[str, Any],
    out: Path,
    cache_dir: Path,
    fed: FederatedOptions,
    options: FitOptions | None = None,
) -> Run:
    """Load, split, train by FedAvg on Flower (:func:`lmrec.privacy.flower.federated_fit`: clients
    holding disjoint users) and save the global model as :func:`train_run` saves a run."""
    from lmrec.privacy.flower import federated_fit

    options = options or FitOptions()
    recipe = recipe.resolved()
    the_split, reports = recipe.make_split(cache_dir)
    for report in reports:
        options.say(str(report))
    train, valid = the_split.train_dataset(), the_split.eval_set("valid")
    options.say(f"{the_split.dataset.name}: {the_split.dataset.summary()} split {the_split.sizes()}")
    started = time.perf_counter()
    model_, log = federated_fit(model, overrides, train, valid if len(valid) else None, fed, options)
    return save_federated_run(
        out, recipe, the_split, [str(r) for r in reports], model_, log, fed, options.seed, started
    )


def save_federated_run(
    out: Path,
    recipe: DataRecipe,
    the_split: Split,
    filters: list[str],
    model: Recommender,
    log: dict[str, Any],
    fed: FederatedOptions,
    seed: int,
    started: float,
) -> Run:
    """A federation's global model as a run directory (``train_run``'s layout, validation metrics
    included); ``run.json`` records the federation under ``federated`` and its log under ``training``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model")
    the_split.dataset.users.save(out / "users.json")
    the_split.dataset.items.save(out / "items.json")
    fields = {
        "data": asdict(recipe),
        "filters": filters,
        "split_sizes": the_split.sizes(),
        "seed": seed,
        "train_seconds": round(time.perf_counter() - started, 3),
        "training": {"federated": log, **({"privacy": log["privacy"]} if "privacy" in log else {})},
        "federated": {**asdict(fed), "engine": log["engine"], "strategy": log["strategy"]},
    }
    return write_run(out, model.name, model.config, model, the_split, fields)


def read_meta(directory: Path) -> dict[str, Any]:
    """The ``run.json`` of a run directory; a directory that is not a run, or a ``run.json`` of another
    shape than ``lmrec train`` writes (what each part of it must be is checked), is an error."""
    path = Path(directory)
    if not (path / RUN_FILE).is_file():
        raise LmrecError(f"{path} is not a run directory (no {RUN_FILE}); create one with `lmrec train`")
    try:
        meta = json.loads((path / RUN_FILE).read_bytes())
    except (ValueError, RecursionError) as err:
        raise DataError(f"{path / RUN_FILE} is not JSON ({err}); rewrite it with `lmrec train`") from None
    data = meta.get("data") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or not isinstance(data, dict) or "model" not in meta or "dataset" not in data:
        wrong = ["not an object with 'model' and 'data' (an object with 'dataset')"]
    else:
        wrong = [
            f"{k!r} is a {type(v).__name__}" for k, v in meta.items() if not isinstance(v, _META_TYPES.get(k, object))
        ]
        wrong += [f"'data.{k}' is unknown" for k in data if k not in _RECIPE_TYPES]
        wrong += [
            f"'data.{k}' is a {type(v).__name__}"
            for k, v in data.items()
            if not isinstance(v, _RECIPE_TYPES.get(k, object))
        ]
    if wrong:
        raise DataError(
            f"{path / RUN_FILE} is not a run's description: {'; '.join(wrong)}; rewrite it with `lmrec train`"
        )
    return meta


def run_version(directory: Path) -> str:
    """A short hash of ``run.json``: it changes whenever the run is (re)written."""
    return hashlib.sha256((Path(directory) / RUN_FILE).read_bytes()).hexdigest()[:12]


def run_dataset(directory: Path, cache_dir: Path) -> Dataset:
    """The whole dataset a run was trained on (filtered, before the split), rebuilt from its recipe
    and checked against the run's vocabularies."""
    path = Path(directory)
    return _rebuild(path, DataRecipe(**read_meta(path)["data"]), cache_dir)


def _rebuild(path: Path, recipe: DataRecipe, cache_dir: Path) -> Dataset:
    ds, _ = recipe.load(cache_dir)
    for name, vocab in (("users", ds.users), ("items", ds.items)):
        if Vocab.load(path / f"{name}.json") != vocab:
            raise DataError(f"the {name} of {recipe.dataset} changed since this run was trained; retrain it")
    return ds


def open_run(directory: Path, cache_dir: Path) -> Run:
    """Load a run directory; the data is rebuilt from its recipe and checked against the vocabularies."""
    path = Path(directory)
    meta = read_meta(path)
    recipe = DataRecipe(**meta["data"])
    the_split = split(_rebuild(path, recipe, cache_dir), recipe.split, **recipe.split_params)
    model = load_model(path / "model")
    return Run(path, meta, model, the_split)
