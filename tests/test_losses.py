"""Loss functions against hand-computed values and against each other."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmrec.train.losses import (
    bce_loss,
    bce_one_negative,
    bpr_loss,
    chunked_softmax_ce,
    gbce_loss,
    logq_softmax_loss,
    mse_loss,
    sampled_softmax_loss,
    softmax_ce,
)


def test_bpr_equal_scores_is_log2() -> None:
    # −log σ(0) = log 2
    assert bpr_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_bpr_prefers_positive_above_negative() -> None:
    assert bpr_loss(torch.tensor([2.0]), torch.tensor([0.0])) < bpr_loss(torch.tensor([0.0]), torch.tensor([2.0]))


def test_bce_and_mse_values() -> None:
    # logit 0 → p = 0.5 → −log 0.5 whatever the label
    assert bce_loss(torch.zeros(2), torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log(2))
    assert mse_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() == pytest.approx(2.5)


def test_softmax_ce_uniform_logits_is_log_n() -> None:
    assert softmax_ce(torch.zeros(4, 10), torch.tensor([0, 3, 5, 9])).item() == pytest.approx(math.log(10))


def test_sampled_softmax_is_ce_over_positive_and_negatives() -> None:
    pos, neg = torch.tensor([1.0, 0.5]), torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    expected = F.cross_entropy(torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, -1.0]]), torch.tensor([0, 0]))
    assert sampled_softmax_loss(pos, neg).item() == pytest.approx(expected.item())


def test_gbce_with_t0_is_plain_bce() -> None:
    pos, neg = torch.tensor([0.3, -0.2]), torch.tensor([[0.1, 0.4, -1.0], [2.0, 0.0, 0.5]])
    plain = -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum(1)).mean()
    assert gbce_loss(pos, neg, n_items=100, t=0.0).item() == pytest.approx(plain.item())


def test_gbce_raises_positive_weight_below_one() -> None:
    # β < 1 for t > 0 and k < n−1: the positive term weighs less than in plain BCE
    pos, neg = torch.tensor([-1.0]), torch.tensor([[0.0]])
    assert gbce_loss(pos, neg, n_items=1000, t=0.75) < gbce_loss(pos, neg, n_items=1000, t=0.0)


def test_gbce_with_all_negatives_and_t1_is_bce() -> None:
    # k = n − 1 → α = 1 → β = 1 for any t
    pos, neg = torch.tensor([0.2]), torch.tensor([[0.1, -0.3]])
    assert gbce_loss(pos, neg, n_items=3, t=1.0).item() == pytest.approx(gbce_loss(pos, neg, 3, t=0.0).item())


def test_bce_one_negative() -> None:
    # pos 0 and neg 0: log 2 + log 2
    assert bce_one_negative(torch.zeros(2), torch.zeros(2)).item() == pytest.approx(2 * math.log(2))


def test_logq_correction_is_a_shift_of_the_logits() -> None:
    logits, labels = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 2])
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    expected = F.cross_entropy(logits - log_q, labels)
    assert logq_softmax_loss(logits, log_q, labels).item() == pytest.approx(expected.item())
    # a constant log-Q (uniform sampling) changes nothing
    assert logq_softmax_loss(logits, torch.full((3,), -2.0), labels).item() == pytest.approx(
        F.cross_entropy(logits, labels).item()
    )
    # a popular candidate is penalised less as a negative
    popular = logq_softmax_loss(logits, torch.log(torch.tensor([0.1, 0.8, 0.1])), torch.tensor([0, 0]))
    assert popular < F.cross_entropy(logits, torch.tensor([0, 0]))


@pytest.mark.parametrize("rows", [1, 3, 7])  # chunks of rows, one of which is ragged
def test_chunked_softmax_ce_is_full_cross_entropy(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from lmrec.train import losses

    torch.manual_seed(0)
    hidden, table = torch.randn(7, 5, requires_grad=True), torch.randn(11, 5, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    expected = F.cross_entropy(hidden @ table.T, targets)
    grads = torch.autograd.grad(expected, (hidden, table))
    monkeypatch.setattr(losses, "_rows_per_chunk", lambda n_items: rows)
    loss = chunked_softmax_ce(hidden, table, targets, torch.float32)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(torch.autograd.grad(loss, (hidden, table)), grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    # in bf16 the same to bf16's precision, and autocast picks bf16 by itself
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = chunked_softmax_ce(hidden, table, targets)
    assert low.item() == pytest.approx(expected.item(), rel=2e-2)
    for got, want in zip(torch.autograd.grad(low, (hidden, table)), grads, strict=True):
        assert (got - want).norm() < 0.02 * want.norm()
