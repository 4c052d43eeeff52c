"""Federated learning on Flower: the Flower Simulation Engine side of :mod:`lmrec.privacy.federated`.

The ClientApp (:func:`client_app`, each round :func:`client_round`) trains a client's shard from
the global weights with :func:`~lmrec.privacy.federated.local_fit`; the ServerApp
(:func:`serve_rounds`) runs Flower's FedAvg strategy with its aggregation replaced by
:func:`~lmrec.privacy.federated.fedavg` (per-user tables row by row); :func:`finish` makes the
global model and the federation's log; :func:`federated_fit` runs it all in this process.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lmrec.data.batch import EvalSet
from lmrec.data.schema import Dataset
from lmrec.errors import LmrecError, MissingExtraError
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.privacy.federated import (
    FederatedOptions,
    Weights,
    fedavg,
    federated_config,
    global_model,
    local_fit,
    per_user_tables,
    shard_users,
)
from lmrec.train.privacy import DPStrategy
from lmrec.train.validation import validation_ndcg

START_ATTEMPTS = 3  # Flower's simulation is started again when Ray fails to start (nothing has run yet)


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
        per_user_tables(model),
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
    per_user = per_user_tables(model)
    weights = outcome.best if outcome.best is not None else outcome.last
    strategy = "FedAvg weighted by training interactions"
    if fed.dp is not None:
        strategy = "DP-FedAvg (Flower's server-side fixed clipping), unweighted"
    if fed.server_lr != 1.0:
        strategy += f", server learning rate {fed.server_lr:g}"
    if fed.lr_schedule != "constant":
        strategy += f", clients' learning rate on a {fed.lr_schedule} over the rounds"
    if per_user:
        strategy += f"; per-user rows ({', '.join(per_user)}) from the client holding the user"
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
    from threadpoolctl import threadpool_limits

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
            # One BLAS thread: Flower's DP wrapper takes update norms with NumPy in the ServerApp's
            # thread, and OpenBLAS's threaded dot product called there waited for its workers forever
            # (exec_blas, seen in CI); the vectors are small, so nothing is lost.
            with threadpool_limits(limits=1, user_api="blas"):
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


__all__ = ["client_app", "client_round", "federated_fit", "finish", "serve_rounds"]
