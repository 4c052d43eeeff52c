"""Adversarial training of the item rows (adversarial.*, APR): the perturbation's size and
direction, the loss it adds, training through it, and where it is refused."""

from __future__ import annotations

import pytest
import torch

from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions
from lmrec.models.sequential import AdversarialConfig, SASRec, SequentialConfig, adversarial_loss
from tests.conftest import checkerboard


def quadratic(target: torch.Tensor, calls: list[torch.Tensor]):
    def loss_of(table: torch.Tensor) -> torch.Tensor:
        calls.append(table.detach().clone())
        return (table - target).square().sum()

    return loss_of


def test_off_is_the_clean_loss_in_one_forward() -> None:
    table = torch.randn(5, 3, requires_grad=True)
    calls: list[torch.Tensor] = []
    loss = adversarial_loss(quadratic(torch.zeros(5, 3), calls), table, AdversarialConfig())
    assert len(calls) == 1 and torch.allclose(loss, table.square().sum())


def test_perturbation_is_eps_of_each_rows_norm_along_its_gradient() -> None:
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [0.0, 1.0], [3.0, 4.0]])  # the last row is at its optimum
    calls: list[torch.Tensor] = []
    cfg = AdversarialConfig(eps=0.5, weight=2.0)
    loss = adversarial_loss(quadratic(target, calls), table, cfg)
    delta = calls[1] - calls[0]
    # the gradient 2(E - target) points away from the target: row 0 along +x, row 1 along +y, row 2 none
    assert torch.allclose(delta, torch.tensor([[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    clean, worse = 1.0 + 1.0, 1.5**2 + 2.0**2
    assert loss.item() == pytest.approx(clean + 2.0 * worse)
    loss.backward()  # both terms reach the table; the perturbation is a constant of the step
    assert table.grad is not None
    expected = 2 * (table.detach() - target) + 2.0 * 2 * (table.detach() + delta - target)
    assert torch.allclose(table.grad, expected)


def test_options_nest_and_are_checked() -> None:
    cfg = SequentialConfig.from_dict({"adversarial.eps": "0.3"})
    assert cfg.adversarial == AdversarialConfig(eps=0.3) and cfg.adversarial.on
    assert SequentialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="adversarial eps and weight must be >= 0"):
        SequentialConfig.from_dict({"adversarial.eps": "-1"})
    from lmrec.models.multitask import MultiTaskConfig

    with pytest.raises(ConfigError, match="fusion or adversarial training"):
        MultiTaskConfig.from_dict({"adversarial.eps": "0.5"})


def test_sasrec_trains_through_it_and_dp_refuses_it() -> None:
    split = leave_one_out(checkerboard())
    tiny = {"dim": 16, "inner": 16, "heads": 1, "max_len": 12, "epochs": 2, "batch_size": 16}
    plain = SASRec(SequentialConfig(**tiny)).fit(split.train_dataset(), None, FitOptions(seed=0))
    robust = SASRec(SequentialConfig(**tiny, adversarial=AdversarialConfig(eps=0.5))).fit(
        split.train_dataset(), None, FitOptions(seed=0)
    )
    a, b = plain.net.items.weight, robust.net.items.weight
    assert torch.isfinite(b).all() and not torch.allclose(a, b)  # the same seed, another objective
    with pytest.raises(ConfigError, match="no adversarial training"):
        SASRec(SequentialConfig(**tiny, adversarial=AdversarialConfig(eps=0.5)))._check_private()
