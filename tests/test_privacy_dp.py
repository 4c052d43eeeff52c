"""User-level DP-SGD (Opacus) on the Trainer: the ε spent, the refusal of what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.cli import main
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions, model_class
from lmrec.models.sequential import PrivateSequenceEncoder, SequenceEncoder, SequentialConfig
from lmrec.train.losses import sequence_ce_per_example
from lmrec.train.privacy import DPSpec
from tests.conftest import checkerboard

pytest.importorskip("opacus")

BPR = {"dim": 8, "epochs": 5, "batch_size": 16, "lr": 0.05}


def fit(spec: DPSpec | None, name: str = "bpr") -> object:
    train = leave_one_out(checkerboard(n_users=80)).train_dataset()
    klass = model_class(name)
    config = BPR if name == "bpr" else {}
    return klass(klass.config_class.from_dict(config)).fit(train, None, FitOptions(seed=0, dp=spec))


def test_dp_bpr_spends_at_most_its_epsilon_and_states_it() -> None:
    model = fit(DPSpec(epsilon=4.0))
    report = model.training_log["privacy"]  # type: ignore[attr-defined]
    assert 3.5 < report["epsilon"] <= 4.0 * 1.01 and report["delta"] == pytest.approx(1 / 800)
    assert report["unit"] == "user" and report["noise_multiplier"] > 0 and report["steps"] == 5 * 5
    assert np.isfinite(model.training_log["losses"]).all()  # type: ignore[attr-defined]
    stronger = fit(DPSpec(epsilon=1.0)).training_log["privacy"]  # type: ignore[attr-defined]
    assert stronger["noise_multiplier"] > report["noise_multiplier"]


def test_models_without_dp_and_impossible_targets_are_refused() -> None:
    with pytest.raises(ConfigError, match="no differentially private training"):
        fit(DPSpec(epsilon=8.0), "ease")
    with pytest.raises(ConfigError, match="epsilon > 0"):
        DPSpec(epsilon=0.0)


def test_cli_records_the_guarantee_in_the_run(tmp_path: Path) -> None:
    from tests.test_cli import write_shop

    data = write_shop(tmp_path / "shop")
    args = ["--cache-dir", str(tmp_path / "cache"), "train", "--dataset", str(data), "--model", "bpr", "--quiet"]
    args += ["--set", "epochs=2", "--set", "dim=8", "--dp-epsilon", "8", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    privacy = json.loads((tmp_path / "run" / "run.json").read_text())["training"]["privacy"]
    assert privacy["epsilon"] <= 8.0 * 1.01 and privacy["accountant"] == "prv"


# -- sasrec / bert4rec -----------------------------------------------------------------------------
SASREC = {"dim": 16, "layers": 1, "heads": 2, "inner": 32, "max_len": 8, "epochs": 3, "batch_size": 16}


TINY = {"dim": 8, "layers": 2, "heads": 2, "inner": 16, "max_len": 6, "dropout": 0.0}


def _private_encoder(objective: str) -> tuple[PrivateSequenceEncoder, torch.Tensor]:
    torch.manual_seed(0)
    net = PrivateSequenceEncoder(10, SequentialConfig(**TINY, objective=objective)).double()  # type: ignore[arg-type]
    # right-padded windows of different lengths (shifted ids 1..10; 0 pads)
    seq = torch.tensor([[3, 5, 7, 2, 9, 4], [1, 2, 0, 0, 0, 0], [8, 8, 6, 10, 0, 0], [4, 0, 0, 0, 0, 0]])
    return net, seq


def _example_losses(net: torch.nn.Module, seq: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        inputs, targets = seq[:, :-1], seq[:, 1:]
    else:  # bidirectional: the last item of each sequence masked (row 11)
        lengths = (seq > 0).sum(1)
        last = torch.zeros_like(seq, dtype=torch.bool)
        last[torch.arange(len(seq)), lengths - 1] = True
        inputs, targets = seq.masked_fill(last, 11), seq.masked_fill(~last, 0)
    excluded = torch.zeros(12, dtype=torch.bool)
    excluded[[0, 11]] = True
    return sequence_ce_per_example(net(inputs, causal=causal), targets.masked_fill(targets == 0, -1), excluded)


@pytest.mark.parametrize("objective", ["causal", "masked"])
def test_per_example_gradients_match_a_loop_over_examples(objective: str) -> None:
    """Opacus's per-example gradients of the private encoder (tied item table, linear attention
    projections, per-sequence positions) equal each example's own gradient, one at a time."""
    from opacus import GradSampleModule

    net, seq = _private_encoder(objective)
    causal = objective == "causal"
    if causal:
        seq = seq[[0, 1, 2]]  # a lone item has no next-item target
    expected = []
    for i in range(len(seq)):
        net.zero_grad()
        _example_losses(net, seq[i : i + 1], causal).sum().backward()
        expected.append({n: torch.clone(p.grad) for n, p in net.named_parameters() if p.grad is not None})
    net.zero_grad()
    wrapped = GradSampleModule(net)
    _example_losses(wrapped, seq, causal).mean().backward()
    names = dict(net.named_parameters())
    assert "head.weight" not in names and len(names) == 2 + 4 + 12 * 2  # tied: one table
    for name, p in names.items():
        per_example = getattr(p, "grad_sample", None)  # Opacus's per-example gradients, (B, *p.shape)
        assert per_example is not None, name
        for i in range(len(seq)):
            torch.testing.assert_close(per_example[i], expected[i][name], rtol=1e-9, atol=1e-11, msg=name)
    assert float(names["items.weight"].grad_sample.abs().sum()) > 0  # type: ignore[attr-defined]


def test_the_private_encoder_computes_what_the_plain_one_does() -> None:
    net, seq = _private_encoder("causal")
    net.eval()
    plain = SequenceEncoder(10, SequentialConfig(**TINY)).double().eval()  # type: ignore[arg-type]
    plain.load_state_dict(net.plain_state())
    with torch.no_grad():
        torch.testing.assert_close(net(seq, causal=True), plain(seq, causal=True) @ plain.items.weight.T)
        net.load_plain(plain.state_dict())
        torch.testing.assert_close(net.head.weight, plain.items.weight)


def test_dp_sasrec_spends_at_most_its_epsilon_deterministically() -> None:
    train, valid = _shop_split()
    model = fit_sasrec(DPSpec(epsilon=4.0, clip=0.5, accountant="rdp"), train, valid)
    report = model.training_log["privacy"]  # type: ignore[attr-defined]
    assert 3.5 < report["epsilon"] <= 4.0 * 1.01 and report["unit"] == "user" and report["steps"] == 3 * 5
    assert report["accountant"] == "rdp" and report["clip"] == 0.5 and report["delta"] == pytest.approx(1 / 800)
    assert np.isfinite(model.training_log["losses"]).all() and len(model.training_log["losses"]) == 3  # type: ignore[attr-defined]
    assert model.training_log["valid"] == []  # type: ignore[attr-defined]  # no early stopping on validation
    again = fit_sasrec(DPSpec(epsilon=4.0, clip=0.5, accountant="rdp"), train, valid)
    torch.testing.assert_close(model.item_embeddings(), again.item_embeddings())  # type: ignore[attr-defined]


def test_dp_sasrec_refuses_what_it_cannot_do() -> None:
    train, _ = _shop_split()
    with pytest.raises(ConfigError, match=r"cannot reach ε = 0\.001 in 15 steps"):
        fit_sasrec(DPSpec(epsilon=1e-3), train)
    with pytest.raises(ConfigError, match="differential privacy needs item_repr=id, pretrain_epochs=0"):
        fit_sasrec(DPSpec(epsilon=8.0), train, item_repr="text", pretrain_epochs=1)


def test_cli_trains_dp_sasrec_and_every_report_states_the_guarantee(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from tests.test_cli import write_shop

    data = write_shop(tmp_path / "shop")
    cache, run = ["--cache-dir", str(tmp_path / "cache")], str(tmp_path / "run")
    args = [*cache, "train", "--dataset", str(data), "--model", "sasrec", "--quiet", "--out", run]
    args += [f"--set={k}={v}" for k, v in SASREC.items()] + ["--dp-epsilon", "8", "--dp-accountant", "rdp"]
    assert main(args) == 0
    privacy = json.loads((tmp_path / "run" / "run.json").read_text())["training"]["privacy"]
    assert privacy["epsilon"] <= 8.0 * 1.01 and privacy["accountant"] == "rdp" and privacy["clip"] == 1.0
    assert json.loads((tmp_path / "run" / "valid.json").read_text())["privacy"] == privacy
    capsys.readouterr()
    assert main([*cache, "evaluate", "--run", run]) == 0
    assert f"ε = {privacy['epsilon']} (target 8.0)" in capsys.readouterr().out


def _shop_split() -> tuple[object, object]:
    split = leave_one_out(checkerboard(n_users=80))
    return split.train_dataset(), split.eval_set("valid")


def fit_sasrec(spec: DPSpec, train: object, valid: object = None, **extra: object) -> object:
    klass = model_class("sasrec")
    model = klass(klass.config_class.from_dict(SASREC | extra))
    return model.fit(train, valid, FitOptions(seed=0, dp=spec))  # type: ignore[arg-type]


def test_sgd_is_an_optimizer_choice_without_per_coordinate_scaling() -> None:
    from lmrec.train.trainer import TrainConfig, Trainer

    optimizer = Trainer(TrainConfig(optimizer="sgd", lr=0.5))._optimizer(torch.nn.Linear(2, 1))
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        TrainConfig(optimizer="lamb")
