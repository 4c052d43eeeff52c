"""Federated learning on Flower: clients that hold disjoint users train locally, a server averages.

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

DP-FedAvg (``dp``, a :class:`~lmrec.train.privacy.DPSpec`): Flower's own wrapper
(``DifferentialPrivacyServerSideFixedClipping``) clips every client's update to ``dp.clip`` and
adds Gaussian noise to their mean, which is then unweighted (weights by examples would let a big
client move the model by more than the clip). The noise multiplier for the target ε comes from the
same Opacus accountant as DP-SGD, with every client in every round (sampling rate 1) and a round
for a step. The guarantee is about a whole client, all the users it holds: user-level when each
client holds one user. It needs a model without per-user tables (their rows would be released) and
a server learning rate of 1, and it keeps the last round (choosing a round on validation would
spend privacy the accountant does not count).

After every round the server scores the global model on the validation users (full ranking,
NDCG@10) and keeps the best round's weights, as centralised training keeps its best epoch; the
result is a normal run directory (:func:`lmrec.runs.federated_run`, the layout of ``lmrec train
--out``), so ``lmrec evaluate``, ``recommend`` and ``serve`` read it.

It runs on Flower's Simulation Engine (``flwr.simulation.run_simulation``): the ServerApp in this
process, the ClientApps in one Ray actor limited to one CPU, so the clients of a round train one
after another and the same seed gives the same model. The same apps run on Flower's deployment
engine (a SuperLink and SuperNodes on other machines, :mod:`lmrec.flower_app`): see docs/federated.md.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError, LmrecError, MissingExtraError
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.registry import model_class
from lmrec.train.privacy import DPSpec, DPStrategy
from lmrec.train.trainer import Strategy
from lmrec.train.validation import validation_ndcg

Weights = dict[str, torch.Tensor]
LR_SCHEDULES = ("constant", "cosine")
START_ATTEMPTS = 3  # Flower's simulation is started again when Ray fails to start (nothing has run yet)


# -- what each model family shares ------------------------------------------------------------------
def _module_is_state(weights: Weights, train: Dataset) -> dict[str, torch.Tensor]:
    return dict(weights)


def _sequential_state(weights: Weights, train: Dataset) -> dict[str, torch.Tensor]:
    # popularity scores only empty histories; it is counted from the training data the run rebuilds
    popularity = torch.from_numpy(train.item_popularity().astype(np.float32))
    return {**{f"net.{k}": v for k, v in weights.items()}, "popularity": popularity}


@dataclass(frozen=True)
class Family:
    """How a model family federates: the per-user tables of its training module (aggregated row by
    row from the client holding the user) and how its saved state is made of the module's weights."""

    per_user: tuple[str, ...]
    state: Callable[[Weights, Dataset], dict[str, torch.Tensor]]


FAMILIES: dict[str, Family] = {
    "bpr": Family(per_user=("user_factors",), state=_module_is_state),
    "sasrec": Family(per_user=(), state=_sequential_state),
    "bert4rec": Family(per_user=(), state=_sequential_state),
}


def family(model: str) -> Family:
    if model not in FAMILIES:
        raise ConfigError(f"federated training supports {', '.join(FAMILIES)}, not {model!r}")
    return FAMILIES[model]


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
    recommender.load_state(family(model).state(weights, train))
    return recommender


# -- the Flower apps --------------------------------------------------------------------------------
def _flower() -> Any:
    try:
        import flwr.simulation  # noqa: F401
        from flwr import app, clientapp, serverapp
        from flwr.serverapp import strategy
    except ImportError:
        raise MissingExtraError("flwr", "privacy") from None
    return app, clientapp, serverapp, strategy


@dataclass
class _Outcome:
    """What the ServerApp leaves behind in this process."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    best: Weights | None = None
    best_round: int = 0
    best_valid: float = -1.0
    last: Weights | None = None
    error: str | None = None
    privacy: dict[str, Any] | None = None  # DP-FedAvg: the guarantee after the last round


def client_round(msg: Any, model: str, config: ModelConfig, shard: Dataset, partition: int, seed: int) -> Any:
    """A ClientApp's answer to a train message: ``shard`` trained from the global weights it carries
    (round r of partition k with seed + 1000·r + k; the learning rate times the message's
    ``lr-factor``), its weights and number of examples back."""
    app, _, _, _ = _flower()
    server_round = int(msg.content["config"]["server-round"])
    factor = float(msg.content["config"].get("lr-factor", 1.0))
    if factor != 1.0:
        config = config.updated({"lr": config.to_dict()["lr"] * factor})
    weights = msg.content["arrays"].to_torch_state_dict()
    trained, log = local_fit(model, config, shard, weights, seed + 1000 * server_round + partition)
    metrics = {
        "num-examples": len(shard.interactions),
        "partition": partition,
        "train-loss": float(log["losses"][-1]),
        "seconds": float(log["seconds"]),
    }
    content = app.RecordDict(
        {"arrays": app.ArrayRecord.from_torch_state_dict(trained), "metrics": app.MetricRecord(metrics)}
    )
    return app.Message(content, reply_to=msg)


def client_app(model: str, config: ModelConfig, shards: list[Dataset], seed: int) -> Any:
    """The Flower ClientApp of a simulation: partition k trains on ``shards[k]``."""
    _, clientapp, _, _ = _flower()
    client = clientapp.ClientApp()

    @client.train()
    def train(msg: Any, context: Any) -> Any:
        partition = int(context.node_config["partition-id"])
        return client_round(msg, model, config, shards[partition], partition, seed)

    return client


def _strategy_class() -> Any:
    app, _, _, strategy = _flower()
    fedavg_base: Any = strategy.FedAvg

    class UserFedAvg(fedavg_base):
        """Flower's FedAvg, aggregated by :func:`fedavg` (per-user tables row by row), in partition
        order (the same sums in the same order every run), and a failed client stops the run."""

        def __init__(self, per_user: tuple[str, ...], fed: FederatedOptions, outcome: _Outcome, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.per_user, self.fed, self.outcome = per_user, fed, outcome
            self.current: Weights = {}

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            self.current = arrays.to_torch_state_dict()
            config["lr-factor"] = self.fed.lr_factor(server_round)
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any) -> tuple[Any, Any]:
            replies = list(replies)
            failed = [msg.error.reason for msg in replies if msg.has_error()]
            if failed:
                raise LmrecError(f"round {server_round}: {len(failed)} client(s) failed: {failed[0]}")
            contents = sorted((msg.content for msg in replies), key=lambda c: int(c["metrics"]["partition"]))
            examples = [float(c["metrics"]["num-examples"]) for c in contents]
            weights = [1.0] * len(examples) if self.fed.dp else examples  # DP: unweighted, as the clip assumes
            pairs = [(c["arrays"].to_torch_state_dict(), w) for c, w in zip(contents, weights, strict=True)]
            aggregated = fedavg(pairs, self.current, self.per_user, self.fed.server_lr)
            losses = [float(c["metrics"]["train-loss"]) * n for c, n in zip(contents, examples, strict=True)]
            seconds = sum(float(c["metrics"]["seconds"]) for c in contents)
            total = sum(examples)
            self.outcome.rounds.append(
                {
                    "round": server_round,
                    "train_loss": round(sum(losses) / total, 6),
                    "client_seconds": round(seconds, 3),
                }
            )
            return app.ArrayRecord.from_torch_state_dict(aggregated), app.MetricRecord({"clients": len(pairs)})

    return UserFedAvg


def serve_rounds(
    grid: Any,
    model: str,
    config: ModelConfig,
    train: Dataset,
    valid: EvalSet | None,
    initial: Weights,
    fed: FederatedOptions,
    say: Callable[[str], None],
) -> _Outcome:
    """What a ServerApp does: ``fed.rounds`` rounds of FedAvg over all ``fed.clients`` clients on
    ``grid`` from ``initial``; after each, the global model's validation NDCG@10 (the best round is
    kept). An error is recorded in the outcome, not raised (the ServerApp runs in Flower's thread)."""
    app, _, _, strategies = _flower()
    outcome = _Outcome()
    started = time.perf_counter()
    privacy = None if fed.dp is None else DPStrategy(fed.dp, fed.clients, 1.0, fed.rounds, fed.seed, unit="client")

    def after_round(server_round: int, arrays: Any) -> Any:
        weights = arrays.to_torch_state_dict()
        outcome.last = weights
        if privacy is not None and server_round > 0:
            privacy.accountant.step(noise_multiplier=privacy.noise, sample_rate=1.0)
            outcome.privacy = privacy.report()
        if server_round == 0 or valid is None:
            return None
        score = validation_ndcg(global_model(model, config, weights, train), valid)
        outcome.rounds[-1].update(valid_ndcg10=round(score, 6), seconds=round(time.perf_counter() - started, 3))
        say(f"round {server_round}/{fed.rounds}: validation NDCG@10 {score:.4f}")
        if score > outcome.best_valid and privacy is None:
            outcome.best, outcome.best_round, outcome.best_valid = weights, server_round, score
        return app.MetricRecord({"valid-ndcg10": score})

    strategy = _strategy_class()(
        family(model).per_user,
        fed,
        outcome,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=fed.clients,
        min_available_nodes=fed.clients,
    )
    if privacy is not None:
        strategy = strategies.DifferentialPrivacyServerSideFixedClipping(
            strategy, privacy.noise, privacy.spec.clip, fed.clients
        )
    try:
        strategy.start(
            grid=grid,
            initial_arrays=app.ArrayRecord.from_torch_state_dict(initial),
            num_rounds=fed.rounds,
            evaluate_fn=after_round,  # also keeps each round's global weights
        )
    except Exception as err:
        outcome.error = f"{type(err).__name__}: {err}"
    return outcome


def finish(
    model: str, config: ModelConfig, train: Dataset, fed: FederatedOptions, outcome: _Outcome, sizes: list[int]
) -> tuple[Recommender, dict[str, Any]]:
    """The global model a federation ended with (its best round on validation, else the last) and
    its log; an error or a missing round is raised here."""
    if outcome.error is not None:
        raise LmrecError(f"federated {model}: {outcome.error}")
    if outcome.last is None or len(outcome.rounds) < fed.rounds:
        raise LmrecError(f"federated {model}: the federation ended after {len(outcome.rounds)} of {fed.rounds} rounds")
    spec = family(model)
    weights = outcome.best if outcome.best is not None else outcome.last
    strategy = "FedAvg weighted by training interactions"
    if fed.dp is not None:
        strategy = "DP-FedAvg (Flower's server-side fixed clipping), unweighted"
    if fed.server_lr != 1.0:
        strategy += f", server learning rate {fed.server_lr:g}"
    if fed.lr_schedule != "constant":
        strategy += f", clients' learning rate on a {fed.lr_schedule} over the rounds"
    if spec.per_user:
        strategy += f"; per-user rows ({', '.join(spec.per_user)}) from the client holding the user"
    log = {
        "strategy": strategy,
        "clients": fed.clients,
        "rounds": fed.rounds,
        "local_epochs": fed.local_epochs,
        "server_lr": fed.server_lr,
        "lr_schedule": fed.lr_schedule,
        "client_interactions": sizes,
        "kept_round": outcome.best_round if outcome.best is not None else fed.rounds,
        "per_round": outcome.rounds,
        **({"privacy": outcome.privacy} if outcome.privacy else {}),
    }
    return global_model(model, config, weights, train), log


def federated_config(model: str, overrides: dict[str, Any], fed: FederatedOptions) -> ModelConfig:
    """The model config each client trains: ``overrides`` with ``epochs`` = the local epochs."""
    if fed.dp is not None and family(model).per_user:
        raise ConfigError(f"DP-FedAvg cannot release {model}'s per-user rows; use sasrec or bert4rec")
    config = model_class(model).config_class.from_dict({**overrides, "epochs": fed.local_epochs})
    phases = getattr(config, "pretrain_epochs", 0) or getattr(config, "init_from", None)
    if phases or getattr(config, "item_repr", "id") != "id":
        raise ConfigError(
            "federated training runs ID-only models from scratch: no pretrain_epochs, init_from, item_repr"
        )
    return config


def _stop_ray(since: float) -> None:
    """End what a Ray that failed to start left running: the processes this one started since
    ``since`` (Ray's own shutdown knows only a node that came up)."""
    import psutil  # a dependency of Ray
    import ray

    ray.shutdown()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.create_time() >= since - 1 and any("ray" in part for part in child.cmdline()):
                child.kill()


def federated_fit(
    model: str,
    overrides: dict[str, Any],
    train: Dataset,
    valid: EvalSet | None,
    fed: FederatedOptions,
    options: FitOptions | None = None,
) -> tuple[Recommender, dict[str, Any]]:
    """Train ``model`` by FedAvg over ``fed.clients`` disjoint user shards of ``train`` on Flower's
    Simulation Engine (Ray, one CPU). Returns the global model (the best round on ``valid``, else
    the last) and the federation's log: per round the clients' mean loss and the validation NDCG."""
    options = options or FitOptions()
    config = federated_config(model, overrides, fed)
    _, _, serverapp, _ = _flower()
    from flwr.simulation import run_simulation

    shards = shard_users(train, fed.clients, fed.seed)
    initial, _ = local_fit(model, config, train, None, options.seed, stop_after=0)
    sizes = [len(s.interactions) for s in shards]
    options.say(
        f"federated {model}: {fed.clients} clients of {min(sizes)}–{max(sizes)} interactions,"
        f" {fed.rounds} rounds of {fed.local_epochs} local epoch(s)"
    )
    outcomes: list[_Outcome] = []
    client = client_app(model, config, shards, options.seed)
    server = serverapp.ServerApp()

    @server.main()
    def main(grid: Any, context: Any) -> None:
        kept = valid if fed.validate else None
        outcomes.append(serve_rounds(grid, model, config, train, kept, initial, fed, options.say))

    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "address": "local",  # a Ray instance of its own, never a cluster found on the machine
            "num_cpus": 1,
            "num_gpus": 0,
            "include_dashboard": False,
            "object_store_memory": fed.ray_memory_mb * 1024 * 1024,
        },
    }
    started = time.perf_counter()
    for attempt in range(1, START_ATTEMPTS + 1):
        attempt_started = time.time()
        try:
            run_simulation(server_app=server, client_app=client, num_supernodes=fed.clients, backend_config=backend)
            break
        except RuntimeError as err:
            # Ray gives its node 30 s to start; on a loaded machine it can miss that before any round
            if outcomes:
                raise LmrecError(f"federated {model}: Flower's simulation failed ({err})") from err
            if attempt == START_ATTEMPTS:
                raise LmrecError(
                    f"federated {model}: Flower's simulation did not start in {START_ATTEMPTS} attempts ({err});"
                    " Ray needs its node up within 30 s: try again on a less loaded machine"
                ) from err
            options.say(f"federated {model}: the simulation did not start ({err}); trying again")
            _stop_ray(since=attempt_started)
    seconds = time.perf_counter() - started
    if not outcomes:
        raise LmrecError(f"federated {model}: Flower's simulation did not run the ServerApp")
    recommender, log = finish(model, config, train, fed, outcomes[0], sizes)
    return recommender, {"engine": "flwr.simulation (ray, 1 CPU)", **log, "seconds": round(seconds, 3)}


__all__ = [
    "FAMILIES",
    "FederatedOptions",
    "StartFrom",
    "fedavg",
    "federated_fit",
    "global_model",
    "local_fit",
    "shard_users",
]
