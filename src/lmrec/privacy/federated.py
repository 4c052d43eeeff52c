"""Federated learning, the part that does not depend on the engine: clients that hold disjoint users
train locally, a server averages.

The users of the training data are split into ``clients`` disjoint shards, one per Flower
SuperNode. Each round the server (a Flower ``ServerApp`` running the FedAvg strategy) sends the
global weights; every client trains its own model on its own users' interactions, *through the
model's own fit and the one Trainer* (:mod:`lmrec.train.trainer`), starting from those weights
(:class:`StartFrom`, a Trainer strategy that loads them into the task's module before the first
step) for ``local_epochs`` epochs, and sends its weights back with its number of training
interactions; the server averages them weighted by those numbers (FedAvg, McMahan et al. 2017).
With ``server_lr`` η ≠ 1 the server steps η times along the clients' mean change instead of to it
(FedAvg with a server learning rate, Reddi et al., ICLR 2021): each client moves a shared item row
only by its own users' share of the data, so the mean change is about 1/clients of the change one
pass over all the data makes, and η > 1 gives that back. ``lr_schedule="cosine"`` lowers the
clients' learning rate over the rounds (a cosine from the model's ``lr`` in round 1 towards 0 after
the last): every round a client starts a fresh optimizer, so at a constant rate the global model
keeps jumping by a full step's worth each round instead of settling.

Tables with one row per user (BPR's user factors) are the exception: a user's row is trained by
the one client that holds the user and left unchanged by every other (zero gradient, so Adam does
not move it), so averaging would shrink each update by that client's share of the data. Their
rows are aggregated as the global row plus the sum of the clients' changes — exactly the row of
the client holding the user (:func:`fedavg`). They reach the server so that the saved run can
score its known users as ``lmrec train``'s would; everything else that is learned is shared.

Here: the options (:class:`FederatedOptions`, which with ``dp`` refuse what DP-FedAvg cannot do),
which models federate (:func:`per_user_tables`, as each model class declares), the user shards, one
client's local fit, the aggregation and the global model a set of weights makes. What runs the rounds — the Flower
ClientApp and ServerApp, DP-FedAvg's clipping and noise, validation after every round, Flower's
Simulation Engine — is :mod:`lmrec.privacy.flower`; the same apps for Flower's deployment engine
are :mod:`lmrec.flower_app` (docs/federated.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError, LmrecError
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.registry import model_class
from lmrec.train.privacy import DPSpec
from lmrec.train.trainer import Strategy

Weights = dict[str, torch.Tensor]
LR_SCHEDULES = ("constant", "cosine")


# -- which models federate ---------------------------------------------------------------------------
def per_user_tables(model: str) -> tuple[str, ...]:
    """The tables with one row per user of the module ``model`` trains, as the model class declares
    (``Recommender.federated_per_user``); a model that declares none does not federate."""
    tables = model_class(model).federated_per_user
    if tables is None:
        raise ConfigError(
            f"federated training supports the models that declare it (sasrec, bert4rec, bpr), not {model!r}"
        )
    return tables


@dataclass
class FederatedOptions:
    """The federation: how many clients, rounds and local epochs, and the seed of the user split."""

    clients: int = 10
    rounds: int = 20
    local_epochs: int = 1  # each client's epochs over its own data per round
    server_lr: float = 1.0  # the server's step along the clients' mean change of the shared weights (1: FedAvg)
    lr_schedule: str = "constant"  # the clients' learning rate over the rounds: "constant" or "cosine"
    seed: int = 0  # the user split; round r of client k trains with seed + 1000·r + k
    validate: bool = True  # validation NDCG@10 of the global model after each round; the best round is kept
    ray_memory_mb: int = 256  # Ray's object store (Ray's minimum is 75 MB)
    dp: DPSpec | None = None  # DP-FedAvg to this client-level ε: clipped updates, noise on their mean

    def __post_init__(self) -> None:
        if self.clients < 2 or self.rounds < 1 or self.local_epochs < 1:
            raise ConfigError("federated training needs clients >= 2, rounds >= 1 and local_epochs >= 1")
        if not self.server_lr > 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.ray_memory_mb < 80:
            raise ConfigError("ray_memory_mb must be at least 80 (Ray needs 75 MB for its object store)")
        if self.dp is not None and self.server_lr != 1.0:
            raise ConfigError("DP-FedAvg needs server_lr 1: a larger step scales the clipped updates past the noise")

    def lr_factor(self, server_round: int) -> float:
        """The clients' learning rate in round ``server_round`` (1-based) over the model's own."""
        if self.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (server_round - 1) / self.rounds))


# -- the pieces -------------------------------------------------------------------------------------
def shard_users(train: Dataset, clients: int, seed: int = 0) -> list[Dataset]:
    """The training data split by user into ``clients`` disjoint shards of (nearly) equal numbers of
    users, drawn at random with ``seed``; every shard keeps the whole vocabularies and catalog."""
    inter = train.interactions
    users = np.unique(inter["user"].to_numpy())
    if clients > len(users):
        raise ConfigError(f"{clients} clients but only {len(users)} users with training interactions")
    order = np.random.default_rng(seed).permutation(users)
    owner = np.full(train.n_users, -1, dtype=np.int64)
    for k, part in enumerate(np.array_split(order, clients)):
        owner[part] = k
    row_owner = owner[inter["user"].to_numpy()]
    return [train.with_interactions(inter[row_owner == k]) for k in range(clients)]


class StartFrom(Strategy):
    """A Trainer strategy for local training: before the first step, the task's module gets the
    global weights (all of them: a name missing or extra is an error). It keeps the module, so
    the trained weights can be read back. A model that trains in phases starts only the first."""

    def __init__(self, weights: Weights | None) -> None:
        self.weights = weights
        self.module: nn.Module | None = None

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self.module is None:
            if self.weights is not None:
                with torch.no_grad():  # in place: the optimizer holds these very parameters
                    module.load_state_dict(self.weights, strict=True)
            self.module = module
        return module, optimizer

    def trained(self) -> Weights:
        if self.module is None:
            raise LmrecError("the model did not train through the Trainer")
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}


def local_fit(
    model: str, config: ModelConfig, data: Dataset, weights: Weights | None, seed: int, stop_after: int | None = None
) -> tuple[Weights, dict[str, Any]]:
    """One client's round: ``model`` with ``config`` fitted on ``data`` from ``weights`` (None: the
    model's own initialisation at ``seed``), without validation; its module's weights and log.
    ``stop_after=0`` stops before the first step: the initial weights."""
    strategy = StartFrom(weights)
    options = FitOptions(seed=seed, strategy=strategy, stop_after=stop_after)
    fitted = model_class(model)(config).fit(data, None, options)
    return strategy.trained(), fitted.training_log


def fedavg(
    replies: list[tuple[Weights, float]], previous: Weights, per_user: tuple[str, ...] = (), server_lr: float = 1.0
) -> Weights:
    """FedAvg of the clients' ``(weights, number of examples)``: the mean weighted by examples (with
    ``server_lr`` η ≠ 1, the previous weights plus η times the change to that mean); for the
    ``per_user`` tables the previous global table plus the sum of the clients' changes (each row
    changes on the one client that holds its user, so that is the row that client trained)."""
    if not replies:
        raise LmrecError("no client replied")
    total = float(sum(n for _, n in replies))
    if total <= 0:
        raise LmrecError("the clients hold no training examples")
    out: Weights = {}
    for name in replies[0][0]:
        if name in per_user:
            base = previous[name].double()
            out[name] = (base + sum(w[name].double() - base for w, _ in replies)).to(previous[name].dtype)
        else:
            mean = torch.as_tensor(sum(w[name].double() * (n / total) for w, n in replies))
            if server_lr != 1.0 and previous[name].is_floating_point():  # a count is averaged, never extrapolated
                base = previous[name].double()
                mean = base + server_lr * (mean - base)
            out[name] = mean.to(replies[0][0][name].dtype)
    return out


def global_model(model: str, config: ModelConfig, weights: Weights, train: Dataset) -> Recommender:
    """The model that ``weights`` (its training module's) make: sized like ``train``, loaded as a
    saved model is, ready to score, save and serve."""
    recommender = model_class(model)(config)
    recommender.n_users, recommender.n_items = train.n_users, train.n_items
    recommender.load_state(recommender.state_from_module(weights, train))
    return recommender


def federated_config(model: str, overrides: dict[str, Any], fed: FederatedOptions) -> ModelConfig:
    """The model config each client trains: ``overrides`` with ``epochs`` = the local epochs."""
    if fed.dp is not None and per_user_tables(model):
        raise ConfigError(f"DP-FedAvg cannot release {model}'s per-user rows; use sasrec or bert4rec")
    config = model_class(model).config_class.from_dict({**overrides, "epochs": fed.local_epochs})
    phases = getattr(config, "pretrain_epochs", 0) or getattr(config, "init_from", None)
    if phases or getattr(config, "item_repr", "id") != "id":
        raise ConfigError(
            "federated training runs ID-only models from scratch: no pretrain_epochs, init_from, item_repr"
        )
    return config


__all__ = [
    "FederatedOptions",
    "StartFrom",
    "fedavg",
    "global_model",
    "local_fit",
    "per_user_tables",
    "shard_users",
]
