"""Federated learning on Flower: the user shards, FedAvg's arithmetic, local training from the
global weights, and 2 clients × 3 rounds through Flower's Simulation Engine and the CLI, without
and with DP-FedAvg."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.cli import main
from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import model_class
from lmrec.privacy.federated import (
    FederatedOptions,
    fedavg,
    federated_config,
    global_model,
    local_fit,
    shard_users,
)
from lmrec.runs import open_run
from lmrec.train.privacy import DPSpec
from tests.conftest import checkerboard

BPR = {"dim": 8, "batch_size": 32, "lr": 0.05}
SASREC = {"dim": 16, "layers": 1, "heads": 2, "inner": 32, "max_len": 8, "batch_size": 16}
CHILD_TIMEOUT = 300  # seconds; a federation here takes ~10 s


def lmrec_in_child(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``lmrec ARGS`` in a child process of its own session, NumPy's global generator seeded 0
    (Flower draws DP noise from it). The DP-FedAvg simulation now and then never returned in CI
    (OpenBLAS's threaded dot product in Flower's server thread, now run on one BLAS thread by
    :func:`lmrec.privacy.flower.federated_fit`); a child starts clean, and one that outlives
    ``CHILD_TIMEOUT`` is killed with the Ray processes it started and run once more."""
    code = "import sys, numpy; numpy.random.seed(0); from lmrec.cli import main; sys.exit(main(sys.argv[1:]))"
    for _ in range(2):
        child = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = child.communicate(timeout=CHILD_TIMEOUT)
            return subprocess.CompletedProcess(child.args, child.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
    pytest.fail(f"lmrec {' '.join(args[:4])} ... did not finish in {CHILD_TIMEOUT} s, twice")


def run_federation(args: list[str]) -> None:
    """A federation through the CLI in a child; skipped where Ray could not start its node."""
    done = lmrec_in_child(args)
    if done.returncode != 0 and "did not start in" in done.stderr:  # the machine, not the code
        pytest.skip("Ray could not start its node within its 30 s on this (loaded) machine")
    assert done.returncode == 0, done.stderr[-3000:]


def test_shards_are_disjoint_and_cover_every_user() -> None:
    train = leave_one_out(checkerboard(n_users=31)).train_dataset()
    shards = shard_users(train, 3, seed=0)
    users = [set(s.interactions["user"]) for s in shards]
    assert sorted(len(u) for u in users) == [10, 10, 11]
    assert not (users[0] & users[1]) and not (users[1] & users[2]) and not (users[0] & users[2])
    assert sum(len(s.interactions) for s in shards) == len(train.interactions)
    assert all(s.n_users == train.n_users and s.n_items == train.n_items for s in shards)
    with pytest.raises(ConfigError, match="only 31 users"):
        shard_users(train, 40)


def test_fedavg_weights_by_examples_and_takes_each_user_row_from_its_client() -> None:
    previous = {"items": torch.zeros(2, 2), "users": torch.zeros(3, 2)}
    a = {"items": torch.ones(2, 2), "users": torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])}
    b = {"items": torch.full((2, 2), 4.0), "users": torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]])}
    out = fedavg([(a, 1.0), (b, 3.0)], previous, per_user=("users",))
    assert torch.allclose(out["items"], torch.full((2, 2), (1 * 1 + 3 * 4) / 4))
    # row 0 trained by a, row 1 by b, row 2 by nobody: not shrunk by the other client's share
    assert torch.equal(out["users"], torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]))
    plain = fedavg([(a, 1.0), (b, 3.0)], previous)
    assert torch.allclose(plain["users"][0], torch.tensor([0.25, 0.25]))


def test_a_server_learning_rate_scales_the_shared_change_and_leaves_user_rows_alone() -> None:
    previous = {"items": torch.ones(2, 2), "users": torch.zeros(2, 2), "step": torch.tensor(3)}
    a = {"items": torch.full((2, 2), 2.0), "users": torch.tensor([[1.0, 1.0], [0.0, 0.0]]), "step": torch.tensor(4)}
    b = {"items": torch.full((2, 2), 4.0), "users": torch.tensor([[0.0, 0.0], [2.0, 2.0]]), "step": torch.tensor(4)}
    out = fedavg([(a, 1.0), (b, 1.0)], previous, per_user=("users",), server_lr=3.0)
    assert torch.allclose(out["items"], torch.full((2, 2), 1.0 + 3.0 * (3.0 - 1.0)))  # mean change 2, three times
    assert torch.equal(out["users"], torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    assert out["step"].item() == 4  # a count is averaged, never extrapolated
    with pytest.raises(ConfigError, match="server_lr"):
        FederatedOptions(server_lr=0.0)


def test_a_cosine_schedule_lowers_the_clients_learning_rate_over_the_rounds() -> None:
    fed = FederatedOptions(rounds=4, lr_schedule="cosine")
    factors = [fed.lr_factor(r) for r in range(1, 5)]
    assert factors[0] == 1.0 and factors[2] == pytest.approx(0.5)
    assert all(a > b > 0 for a, b in itertools.pairwise(factors))
    assert FederatedOptions(rounds=4).lr_factor(4) == 1.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        FederatedOptions(lr_schedule="step")


@pytest.mark.parametrize(("name", "config"), [("bpr", BPR), ("sasrec", SASREC)])
def test_local_training_starts_from_the_weights_it_is_given(name: str, config: dict) -> None:
    train = leave_one_out(checkerboard(n_users=20)).train_dataset()
    cfg = model_class(name).config_class.from_dict({**config, "epochs": 1})
    start, _ = local_fit(name, cfg, train, None, seed=0, stop_after=0)
    other, _ = local_fit(name, cfg, train, None, seed=1, stop_after=0)
    assert any(not torch.equal(start[k], other[k]) for k in start)  # another seed, another init
    loaded, _ = local_fit(name, cfg, train, other, seed=0, stop_after=0)
    assert all(torch.equal(loaded[k], other[k]) for k in other)  # the given weights, not the seed's
    trained, log = local_fit(name, cfg, train, other, seed=0)
    assert len(log["losses"]) == 1 and any(not torch.equal(trained[k], other[k]) for k in other)
    model = global_model(name, cfg, trained, train)  # the weights make a model that scores
    assert torch.isfinite(model.score(evaluate_queries(train))).all()


def evaluate_queries(train: Dataset) -> QueryBatch:
    return QueryBatch.from_interactions(train.interactions, np.arange(4))


def test_federated_options_refuse_what_cannot_work() -> None:
    with pytest.raises(ConfigError, match="clients >= 2"):
        FederatedOptions(clients=1)
    with pytest.raises(ConfigError, match="ray_memory_mb"):
        FederatedOptions(ray_memory_mb=50)
    with pytest.raises(ConfigError, match="supports"):
        from lmrec.privacy.federated import per_user_tables

        per_user_tables("ease")
    with pytest.raises(ConfigError, match="server_lr"):  # it would scale the clipped updates past the noise
        FederatedOptions(dp=DPSpec(epsilon=8), server_lr=2.0)
    with pytest.raises(ConfigError, match="per-user rows"):  # BPR's user rows would be released
        federated_config("bpr", {}, FederatedOptions(dp=DPSpec(epsilon=8)))


def test_two_clients_three_rounds_through_flower_make_a_normal_run(tmp_path: Path) -> None:
    """The CLI on Flower's Simulation Engine; the saved global model is FedAvg of the clients'
    local training replayed here round by round, beats popularity, and `lmrec evaluate` reads it."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    from tests.test_cli import write_shop

    data = write_shop(tmp_path / "shop")
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["--cache-dir", str(cache), "federated", "--dataset", str(data), "--model", "bpr", "--quiet"]
    args += ["--clients", "2", "--rounds", "3", "--no-validate", "--out", str(out), "--seed", "3"]
    args += [f"--set={k}={v}" for k, v in BPR.items()]
    run_federation(args)
    meta = json.loads((out / "run.json").read_text())
    log = meta["training"]["federated"]
    assert meta["federated"]["clients"] == 2 and [r["round"] for r in log["per_round"]] == [1, 2, 3]
    run = open_run(out, cache)

    # replay: the same shards, the same local fits, FedAvg with user rows from their client
    train = run.split.train_dataset()
    cfg = model_class("bpr").config_class.from_dict({**BPR, "epochs": 1})
    shards = shard_users(train, 2, seed=3)
    weights, _ = local_fit("bpr", cfg, train, None, seed=3, stop_after=0)
    for server_round in (1, 2, 3):
        replies = [
            (local_fit("bpr", cfg, shard, weights, seed=3 + 1000 * server_round + k)[0], float(len(shard.interactions)))
            for k, shard in enumerate(shards)
        ]
        weights = fedavg(replies, weights, per_user=("user_factors",))
    saved = run.model.state()
    assert all(torch.allclose(saved[k], weights[k], atol=1e-6) for k in weights)

    test = run.split.eval_set("test")
    pop = model_class("pop")().fit(train)
    assert evaluate(run.model, test).metrics["ndcg@10"] > evaluate(pop, test).metrics["ndcg@10"] + 0.1
    assert main(["--cache-dir", str(cache), "evaluate", "--run", str(out)]) == 0


def test_dp_fedavg_through_flower_clips_adds_the_noise_and_states_the_guarantee(tmp_path: Path) -> None:
    """--dp-epsilon on `lmrec federated`: Flower's fixed-clipping wrapper around the FedAvg, the
    noise for the target ε from the Opacus accountant (every client every round), the guarantee in
    run.json and in every report of the run. One round replayed here: the saved model is the
    initial one plus the unweighted mean of the clients' updates, each clipped to norm 1, plus
    Gaussian noise of the accounted scale σ · clip / clients."""
    pytest.importorskip("flwr")
    pytest.importorskip("ray")
    pytest.importorskip("opacus")
    from tests.test_cli import write_shop

    data = write_shop(tmp_path / "shop")
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["--cache-dir", str(cache), "federated", "--dataset", str(data), "--model", "sasrec", "--quiet"]
    clip = 0.01  # below every client's update norm, so every update is clipped
    args += ["--clients", "2", "--rounds", "1", "--out", str(out), "--seed", "3", "--dp-epsilon", "8"]
    args += ["--dp-clip", str(clip)]
    args += [f"--set={k}={v}" for k, v in SASREC.items()]
    run_federation(args)
    meta = json.loads((out / "run.json").read_text())
    assert meta["training"]["federated"]["strategy"].startswith("DP-FedAvg")
    privacy = meta["training"]["privacy"]
    assert privacy["unit"] == "client" and privacy["steps"] == 1 and privacy["sample_rate"] == 1.0
    assert 7.5 < privacy["epsilon"] <= 8.0 and privacy["delta"] == 1 / 20
    assert json.loads((out / "valid.json").read_text())["privacy"] == privacy

    run = open_run(out, cache)
    train = run.split.train_dataset()
    config = federated_config("sasrec", SASREC, FederatedOptions(clients=2, rounds=1))
    initial, _ = local_fit("sasrec", config, train, None, seed=3, stop_after=0)
    updates = []
    for k, shard in enumerate(shard_users(train, 2, seed=3)):
        trained, _ = local_fit("sasrec", config, shard, initial, seed=3 + 1000 + k)
        change = {name: trained[name] - initial[name] for name in initial}
        norm = float(torch.sqrt(sum((c.double() ** 2).sum() for c in change.values())))
        assert norm > clip
        updates.append({name: c * clip / norm for name, c in change.items()})
    saved = run.model.state()
    mean = {n: (updates[0][n] + updates[1][n]) / 2 for n in initial}
    noise = torch.cat([(saved[f"net.{n}"] - initial[n] - mean[n]).flatten() for n in initial])
    # Gaussian of that scale: its sample mean and standard deviation within 5 standard errors
    expected, n = privacy["noise_multiplier"] * clip / 2, noise.numel()
    assert abs(float(noise.std()) / expected - 1) < 5 / (2 * n) ** 0.5
    assert abs(float(noise.mean())) < 5 * expected / n**0.5


def test_the_deployment_app_reads_dp_fedavg_from_its_run_config() -> None:
    pytest.importorskip("flwr")
    from lmrec.flower_app import settings

    config = {"dataset": "ml-100k", "model": "sasrec", "clients": 3, "rounds": 2, "out": "runs/x"}
    assert settings(config)[3].dp is None
    fed = settings({**config, "dp-epsilon": 4.0, "dp-clip": 0.5})[3]
    assert fed.dp == DPSpec(epsilon=4.0, delta=None, clip=0.5)
