"""The Flower App of ``lmrec federated`` for Flower's deployment engine (docs/federated.md).

``flwr run`` starts :data:`server` next to the SuperLink and :data:`client` on every SuperNode;
both are the pieces :mod:`lmrec.privacy.flower` runs in its simulation. It sits beside the
CLI (it writes a run directory, :mod:`lmrec.runs`), imported only by Flower. They read the run
config (``[tool.flwr.app.config]`` of the app's ``pyproject.toml``, or ``flwr run --run-config``):
``dataset``, ``model``, ``clients``, ``rounds``, ``local-epochs``, ``server-lr``, ``lr-schedule``,
``seed``, ``overrides`` (model options as JSON), ``out`` (the run directory the ServerApp writes),
``cache-dir`` (empty: the default cache) and, for DP-FedAvg, ``dp-epsilon`` (with ``dp-delta`` and
``dp-clip``; 0 or absent: no DP). A SuperNode's ``--node-config "partition-id=K"``
says which shard of the users it trains on: every machine reads the same dataset recipe and keeps
the users of its shard.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lmrec.cache import default_cache
from lmrec.data.splits import Split
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.privacy.federated import FederatedOptions, federated_config, local_fit, shard_users
from lmrec.privacy.flower import client_round, finish, serve_rounds
from lmrec.runs import DataRecipe, save_federated_run
from lmrec.train.privacy import DPSpec

try:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
except ImportError:
    raise MissingExtraError("flwr", "privacy") from None

ENGINE = "flwr deployment (SuperLink + SuperNodes)"


def settings(run_config: Any) -> tuple[DataRecipe, str, dict[str, Any], FederatedOptions, Path, Path]:
    """What the run config asks: recipe, model, model overrides, federation, run directory, cache."""
    try:
        overrides = json.loads(str(run_config.get("overrides", "{}")))
        fed = FederatedOptions(
            clients=int(run_config["clients"]),
            rounds=int(run_config["rounds"]),
            local_epochs=int(run_config.get("local-epochs", 1)),
            server_lr=float(run_config.get("server-lr", 1.0)),
            lr_schedule=str(run_config.get("lr-schedule", "constant")),
            seed=int(run_config.get("seed", 0)),
            dp=_dp(run_config),
        )
        recipe = DataRecipe(dataset=str(run_config["dataset"])).resolved()
        model, out = str(run_config["model"]), Path(str(run_config["out"]))
    except KeyError as err:
        raise ConfigError(f"the Flower run config lacks {err}") from None
    except ValueError as err:
        raise ConfigError(f"the Flower run config: {err}") from None
    cache = Path(str(run_config["cache-dir"])) if run_config.get("cache-dir") else default_cache()
    return recipe, model, overrides, fed, out, cache


def _dp(run_config: Any) -> DPSpec | None:
    """DP-FedAvg's target from ``dp-epsilon`` (> 0), ``dp-delta`` (0: the default) and ``dp-clip``."""
    epsilon = float(run_config.get("dp-epsilon", 0.0))
    if epsilon <= 0:
        return None
    delta = float(run_config.get("dp-delta", 0.0)) or None
    return DPSpec(epsilon=epsilon, delta=delta, clip=float(run_config.get("dp-clip", 1.0)))


def _split(recipe: DataRecipe, cache: Path) -> tuple[Split, list[str]]:
    the_split, reports = recipe.make_split(cache)
    return the_split, [str(r) for r in reports]


client = ClientApp()


@client.train()
def train(msg: Any, context: Any) -> Any:
    recipe, model, overrides, fed, _, cache = settings(context.run_config)
    partition = int(context.node_config["partition-id"])
    if not 0 <= partition < fed.clients:
        raise ConfigError(f"partition-id {partition} is not one of the {fed.clients} clients' (0 … {fed.clients - 1})")
    the_split, _ = _split(recipe, cache)
    shard = shard_users(the_split.train_dataset(), fed.clients, fed.seed)[partition]
    return client_round(msg, model, federated_config(model, overrides, fed), shard, partition, fed.seed)


server = ServerApp()


@server.main()
def main(grid: Any, context: Any) -> None:
    recipe, model, overrides, fed, out, cache = settings(context.run_config)
    started = time.perf_counter()
    the_split, filters = _split(recipe, cache)
    train_data, valid = the_split.train_dataset(), the_split.eval_set("valid")
    config = federated_config(model, overrides, fed)
    initial, _ = local_fit(model, config, train_data, None, fed.seed, stop_after=0)
    outcome = serve_rounds(grid, model, config, train_data, valid if len(valid) else None, initial, fed, print)
    sizes = [len(s.interactions) for s in shard_users(train_data, fed.clients, fed.seed)]
    recommender, log = finish(model, config, train_data, fed, outcome, sizes)
    log = {"engine": ENGINE, **log, "seconds": round(time.perf_counter() - started, 3)}
    save_federated_run(out, recipe, the_split, filters, recommender, log, fed, fed.seed, started)
    print(f"federated {model}: kept round {log['kept_round']} → {out}")
