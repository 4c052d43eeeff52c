"""The model contract: a typed config plus a class that fits, scores, recommends, saves and loads.

Every model scores a :class:`~lmrec.data.batch.QueryBatch` (users and their histories) against the
whole catalog. Seen-item exclusion, top-k and evaluation live outside the model, so each model
file only says what is special about it.
"""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from lmrec.data.batch import EvalSet, QueryBatch, mask_seen
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.saved import CONFIG_FILE, WEIGHTS_FILE, read_model_meta
from lmrec.train.privacy import DPSpec
from lmrec.train.trainer import Strategy, Task, TrainConfig, Trainer, TrainerOptions, seeded

if TYPE_CHECKING:
    from lmrec.features import FeatureSchema
    from lmrec.text import TextEncoder

C = TypeVar("C", bound="ModelConfig")
R = TypeVar("R", bound="Recommender")


@dataclass
class ModelConfig:
    """Base of every model config: a dataclass with typed fields, validated, JSON round-trip."""

    def __post_init__(self) -> None:
        features = getattr(self, "item_features", "text")  # configs of models that read item text
        if features != "text":
            from lmrec.features import parse_spec

            parse_spec(features)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work. Subclasses extend it."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict (JSON, YAML or ``--set key=value`` strings), converting types. A field
        that is itself a config (a part's) takes a dict, or dotted keys: ``fusion.weight=2``."""
        values = _nested(values)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no option {unknown}; options are {sorted(names)}")
        return cls(**{k: _coerce(v, hints[k], k) for k, v in values.items()})

    def updated(self: C, values: dict[str, Any]) -> C:
        return type(self).from_dict({**self.to_dict(), **values})


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"fusion.weight": 2}`` → ``{"fusion": {"weight": 2}}``, the dotted keys laid over a dict
    (or a part's config) the same field already has."""
    out = {k: v for k, v in values.items() if "." not in k}
    for key, value in values.items():
        if "." in key:
            head, rest = key.split(".", 1)
            part = out.get(head) or {}
            out[head] = {**(part.to_dict() if isinstance(part, ModelConfig) else part), rest: value}
    return out


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert ``value`` to the field's type; strings from the command line are parsed."""
    if isinstance(hint, type) and issubclass(hint, ModelConfig):  # a part's own config
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"option {name!r} takes {name}.KEY=VALUE options, got {value!r}")
        try:
            return hint.from_dict(value)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], name)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(hint) or (str,)
        if isinstance(value, str):
            value = [  # "a,b", "[a, b]" or Python's "('a', 'b')"
                v.strip().strip("'\"")
                for v in value.replace("[", "").replace("]", "").replace("(", "").replace(")", "").split(",")
                if v.strip()
            ]
        return origin(_coerce(v, inner, name) for v in value)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name!r} needs a {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


@dataclass
class FitOptions:
    """Everything about *how* to fit that is not the model: seed, device, threads, progress."""

    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    log: Callable[[str], None] | None = None
    cache_dir: Path | None = None  # lmrec's cache: text embeddings (None: not cached), converted LMs
    text_encoder: Any = None  # a lmrec.text.TextEncoder to use instead of loading the configured one
    image_encoder: Any = None  # a lmrec.features.images.ImageEncoder instead of the packaged EfficientNet-Lite0
    checkpoint_dir: Path | None = None  # the Trainer writes a checkpoint here after every epoch
    resume: bool = False  # continue from the checkpoint in checkpoint_dir
    stop_after: int | None = None  # stop each training phase after this many epochs (resume later)
    strategy: Strategy = dataclasses.field(default_factory=Strategy)  # one process, or DDP (train/distributed.py)
    dp: DPSpec | None = None  # user-level differential privacy (DP-SGD), for models that support it
    threads: int | None = None  # torch threads while training; None: the cores no other process uses
    max_time: float | None = None  # seconds: the Trainer stops at the first epoch end past them
    deadline: float | None = None  # the time.monotonic() reading that max_time gives, set by fit()
    on_epoch: Callable[[float], None] | None = None  # gets each validation score; may raise to stop (tuning)

    def torch_generator(self) -> torch.Generator:
        return torch.Generator(device="cpu").manual_seed(self.seed)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def say(self, message: str) -> None:
        if self.log is not None and self.strategy.is_main:
            self.log(message)


class Recommender(ABC):
    """Base of every model. Subclasses set ``name`` and ``config_class`` and implement
    ``_fit``, ``score``, ``state`` and ``load_state``. A torch model's ``_fit`` builds a
    :class:`~lmrec.train.trainer.Task` and hands it to :meth:`_train`: models say what they learn,
    the one Trainer decides how."""

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    # The validation report written after training reads this many random users (None: all);
    # set by models that take seconds per user.
    report_users: ClassVar[int | None] = None
    # Devices the model can train and score on: models that are not torch modules run on the CPU.
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    private: ClassVar[bool] = False  # trains with user-level DP-SGD when FitOptions.dp is set
    # Federated learning (lmrec.privacy.federated) averages the module this model's fit trains.
    # None: the model does not federate; else that module's tables with one row per user, which the
    # server takes from the client holding the user instead of averaging.
    federated_per_user: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}")
        self.n_users = 0
        self.n_items = 0
        self.device = torch.device("cpu")
        self.training_log: dict[str, Any] = {}  # losses and validation scores per epoch, seconds

    def state_from_module(self, weights: dict[str, torch.Tensor], train: Dataset) -> dict[str, torch.Tensor]:
        """The saved state (:meth:`state`) that the weights of the module its fit trains make, for a
        model sized like ``train`` (federated learning's global model); by default the same."""
        return dict(weights)

    # -- the contract -----------------------------------------------------------------------------
    def fit(self: R, train: Dataset, valid: EvalSet | None = None, options: FitOptions | None = None) -> R:
        """Learn from ``train.interactions``; ``valid`` is used for early stopping where it applies.
        Torch's global random state (weight init, dropout) is seeded for the fit and restored after."""
        options = options or FitOptions()
        device = torch.device(options.device)
        if device.type not in self.devices:
            raise ConfigError(f"{self.name} runs on {' or '.join(self.devices)}, not on {options.device!r}")
        if len(train.interactions) == 0:
            raise ConfigError("no training interactions")
        if options.dp is not None and not self.private:
            raise ConfigError(f"{self.name} has no differentially private training; bpr, sasrec and bert4rec have")
        self.n_users, self.n_items, self.device = train.n_users, train.n_items, device
        if options.max_time is not None and options.deadline is None:  # one budget for every phase
            options = dataclasses.replace(options, deadline=time.monotonic() + options.max_time)
        with seeded(options.seed):
            self._fit(train, valid if valid is not None and len(valid) else None, options)
        return self

    @abstractmethod
    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        """The model's own part of :meth:`fit` (sizes and device are set, the seed is in place)."""

    @abstractmethod
    def score(self, batch: QueryBatch) -> torch.Tensor:
        """Scores of shape (len(batch), n_items); higher is better. Seen items are not masked here."""

    @abstractmethod
    def state(self) -> dict[str, torch.Tensor]:
        """Everything learned, as named tensors (saved as safetensors)."""

    @abstractmethod
    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state`."""

    # -- shared behaviour -------------------------------------------------------------------------
    def _train(
        self,
        task: Task,
        config: TrainConfig,
        options: FitOptions,
        generator: torch.Generator,
        *,
        valid: EvalSet | None = None,
        validate: Callable[[], float] | None = None,
        total_steps: int | None = None,
        phase: str = "train",
    ) -> dict[str, Any]:
        """Train ``task`` with the one :class:`~lmrec.train.trainer.Trainer`: early stopping on
        validation NDCG@10 (or on ``validate``), the best epoch's weights restored. ``phase`` names
        the checkpoint of a model that trains in several phases. Returns the training log."""
        from lmrec.train.validation import validation_ndcg

        if validate is None and valid is not None:
            validate = lambda: validation_ndcg(self, valid)  # noqa: E731
        trainer_options = TrainerOptions(
            device=options.device,
            progress=options.progress and options.strategy.is_main,
            checkpoint_dir=options.checkpoint_dir / phase if options.checkpoint_dir is not None else None,
            resume=options.resume,
            stop_after=options.stop_after,
            strategy=options.strategy,
            threads=options.threads,
            deadline=options.deadline,
            on_epoch=options.on_epoch,
        )
        return Trainer(config, trainer_options).fit(task, generator, validate, total_steps)

    # -- vectors: what re-rankers, the ANN index, compression and the service ask of a model ------
    def item_embeddings(self) -> torch.Tensor | None:
        """(n_items, d) item vectors that :meth:`query_embeddings` scores by dot product, or None
        for a model that does not score that way (EASE, item-kNN, NCF, generators)."""
        return None

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """The batch's query vectors: ``score = vectors @ item_embeddings().T + offsets`` on rows
        where ``exact`` is true (other rows, e.g. empty histories, are scored by :meth:`score`)."""
        raise ConfigError(f"{self.name} does not score by a dot product of query and item vectors")

    def score_candidates(self, batch: QueryBatch, items: np.ndarray) -> torch.Tensor:
        """Scores of given item rows (B, k) for each query; entries of -1 score -inf."""
        scores = self.score(batch).float()
        rows = torch.from_numpy(np.clip(items, 0, None))
        return torch.where(torch.from_numpy(items >= 0), scores.gather(1, rows), float("-inf"))

    @property
    def scores_new_items(self) -> bool:
        """Whether items unknown at training time can be scored from their text (``with_new_items``)."""
        return False

    def with_new_items(self: R, vectors: np.ndarray) -> R:
        """A copy that also scores ``len(vectors)`` new items (rows ``n_items`` onwards) from their
        text embeddings; only models whose :attr:`scores_new_items` is true can."""
        raise ConfigError(f"{self.name} cannot score items from their text")

    def known_users(self, batch: QueryBatch) -> np.ndarray:
        """Mask of batch rows whose user the model learned an embedding for."""
        return (batch.users >= 0) & (batch.users < self.n_users)

    def recommend(self, batch: QueryBatch, k: int = 10, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows and their scores per query; items in the history are excluded."""
        with torch.no_grad():
            scores = self.score(batch).float()
        if exclude_seen:
            mask_seen(scores, batch)
        k = min(k, self.n_items)
        top = torch.topk(scores, k, dim=1)
        items = top.indices.cpu().numpy()
        values = top.values.cpu().numpy()
        items[~np.isfinite(values)] = -1  # fewer than k unseen items left
        return items, values

    def save(self, directory: str | Path) -> Path:
        from lmrec import __version__

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": self.name,
            "config": self.config.to_dict(),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "lmrec_version": __version__,
        }
        schema = getattr(self, "item_feature_schema", None)
        if schema is not None:  # what the item feature table was fitted on, to build new rows alike
            meta["item_features"] = schema.to_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state().items()}, path / WEIGHTS_FILE)
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls: type[R], directory: str | Path) -> R:
        """Load a model of this class saved by :meth:`save`; safetensors and JSON only, no pickle.
        A model of any class: :func:`lmrec.models.registry.load_model`."""
        path = Path(directory)
        meta = read_model_meta(path)
        if meta["model"] != getattr(cls, "name", None):
            raise ConfigError(f"{path} holds a {meta['model']!r} model, not {getattr(cls, 'name', cls.__name__)!r}")
        model = cls(cls.config_class.from_dict(_current_options(cls.config_class, meta["config"])))
        model.n_users, model.n_items = int(meta["n_users"]), int(meta["n_items"])
        model.load_state(load_file(path / WEIGHTS_FILE))
        if "item_features" in meta:
            from lmrec.features import FeatureSchema

            model.item_feature_schema = FeatureSchema.from_dict(meta["item_features"])  # type: ignore[attr-defined]
        return model


def _current_options(config_class: type[ModelConfig], saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config as today's class reads it. Runs saved before ``item_features`` moved to the
    models that read item text carry ``"item_features": "text"`` (then every config's default,
    meaning nothing) on every model; that key is dropped where the class has no such option."""
    names = {f.name for f in dataclasses.fields(config_class)}
    if "item_features" not in names and saved.get("item_features") == "text":
        saved = {k: v for k, v in saved.items() if k != "item_features"}
    return saved


@dataclass(frozen=True)
class Queries:
    """Query vectors of a batch, for dot-product scoring (:meth:`Recommender.query_embeddings`)."""

    vectors: torch.Tensor  # (B, d), CPU float32
    offsets: torch.Tensor  # (B,) added to every item's score (a user bias, a global mean)
    exact: torch.Tensor  # (B,) bool: rows the dot product scores exactly as ``score`` does


class DotProductModel(Recommender):
    """A model that scores by query · item vectors: ``score`` is written once, from
    :meth:`query_embeddings` and :meth:`item_embeddings`; rows the dot product cannot score
    (:attr:`Queries.exact` false) get :meth:`fallback_scores`."""

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor: ...

    @abstractmethod
    def query_embeddings(self, batch: QueryBatch) -> Queries: ...

    def fallback_scores(self, batch: QueryBatch) -> torch.Tensor:
        raise NotImplementedError(f"{self.name}: every query is a dot product")

    def score(self, batch: QueryBatch) -> torch.Tensor:
        with torch.no_grad():
            q = self.query_embeddings(batch)
            out = q.vectors @ self.item_embeddings().T + q.offsets.unsqueeze(1)
            if not bool(q.exact.all()):
                rest = np.flatnonzero(~q.exact.numpy())
                sub = QueryBatch.from_histories(batch.users[rest], [batch.history(int(r)) for r in rest])
                out[torch.from_numpy(rest)] = self.fallback_scores(sub)
        return out

    def score_candidates(self, batch: QueryBatch, items: np.ndarray) -> torch.Tensor:
        q = self.query_embeddings(batch)
        if not bool(q.exact.all()):
            return super().score_candidates(batch, items)
        with torch.no_grad():
            emb = self.item_embeddings()[torch.from_numpy(np.clip(items, 0, None))]  # (B, k, d)
            scores = torch.einsum("bd,bkd->bk", q.vectors, emb) + q.offsets.unsqueeze(1)
        return torch.where(torch.from_numpy(items >= 0), scores, float("-inf"))


def interaction_matrix(train: Dataset) -> sp.csr_matrix:
    """Binary users × items matrix of the training interactions (repeats count once)."""
    users = train.interactions["user"].to_numpy()
    items = train.interactions["item"].to_numpy()
    x = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(train.n_users, train.n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


class ReadsItemText:
    """For models that read item text through a sentence encoder: their config names the encoder
    (``text_encoder``) and the item-text template (``text_template``). With ``item_features`` other
    than "text" their item vectors are the feature table of :mod:`lmrec.features` (text,
    attributes, images, presence columns), fitted on the training catalog; the fitted schema is
    saved with the model, so items added later get rows built the same way."""

    config: Any
    item_feature_schema: FeatureSchema | None = None

    def text_encoder(self, device: str = "cpu") -> TextEncoder:
        """The sentence encoder this model's config names (loaded from local files)."""
        from lmrec.text import load_encoder

        return load_encoder(self.config.text_encoder, device)

    def _text_vectors(self, train: Dataset, options: FitOptions) -> np.ndarray:
        embeddings = options.cache_dir / "embeddings" if options.cache_dir is not None else None
        spec = self.config.item_features
        from lmrec.features import needs
        from lmrec.text import choose_template

        if needs(spec, "text"):  # chosen once (or refused: no item text) and saved, so new items read the same
            self.config.text_template = choose_template(train, self.config.text_template)
        if spec == "text":
            self.item_feature_schema = None
            encoder = options.text_encoder or self.text_encoder(options.device)
            options.say(f"encoding {train.n_items} item texts with {encoder.name}")
            return self.encode_items(train.catalog, encoder, embeddings, options.progress)
        from lmrec.features import image_loader, item_features

        text = (options.text_encoder or self.text_encoder(options.device)) if needs(spec, "text") else None
        options.say(f"building item features {spec!r} for {train.n_items} items")
        table = item_features(
            train.catalog,
            spec,
            text_encoder=text,
            text_template=self.config.text_template,
            image_encoder=options.image_encoder or image_loader(spec, self._device_name(), options.cache_dir),
            cache_dir=embeddings,
            progress=options.progress,
        )
        self.item_feature_schema = table.schema
        options.say(table.summary())
        return table.values

    def _device_name(self) -> str:
        return str(getattr(self, "device", "cpu"))

    def encode_items(
        self, catalog: pd.DataFrame, encoder: TextEncoder, cache_dir: Path | None = None, progress: bool = False
    ) -> np.ndarray:
        """Item vectors of catalog rows: text embeddings built with this model's item-text template,
        or, for a model fitted with ``item_features``, feature rows built as the fitted schema says
        (``cache_dir`` is the embeddings folder of lmrec's cache, ``<cache>/embeddings``)."""
        from lmrec.text import encode_cached, item_texts

        schema = self.item_feature_schema
        if schema is None:
            return encode_cached(encoder, item_texts(catalog, self.config.text_template), cache_dir, progress)
        from lmrec.features import image_loader, item_features

        root = Path(cache_dir).parent if cache_dir is not None else None  # <cache>/embeddings → <cache>
        return item_features(
            catalog,
            schema,
            text_encoder=encoder,
            text_template=self.config.text_template,
            image_encoder=image_loader(schema, self._device_name(), root),
            cache_dir=cache_dir,
            progress=progress,
        ).values
