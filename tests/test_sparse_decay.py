"""Weight decay of embedding tables reaches only the rows a step's gradient touches (row_decay)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lmrec.train.trainer import TrainConfig, Trainer

TOUCHED = torch.tensor([1, 4, 6])  # the rows the one batch reads


class TableTask:
    """An item table and a dense layer; the one batch reads rows 1, 4 and 6 of the table."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = nn.ModuleDict({"table": nn.Embedding(10, 4), "out": nn.Linear(4, 1)})

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        yield TOUCHED

    def loss(self, module: nn.Module, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return module["out"](module["table"](rows)).pow(2).mean()


def one_step(optimizer: str, row_decay: bool, decay_to: dict[str, torch.Tensor] | None = None) -> tuple:
    task = TableTask()
    if decay_to is not None:
        task.decay_to = decay_to  # type: ignore[attr-defined]
    before = {k: v.detach().clone() for k, v in task.module.state_dict().items()}
    config = TrainConfig(epochs=1, lr=0.1, weight_decay=0.5, optimizer=optimizer, row_decay=row_decay)
    Trainer(config).fit(task, torch.Generator().manual_seed(0))
    return before, {k: v.detach() for k, v in task.module.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_untouched_rows_keep_their_exact_values(optimizer: str) -> None:
    before, after = one_step(optimizer, row_decay=True)
    untouched = torch.ones(10, dtype=torch.bool)
    untouched[TOUCHED] = False
    assert torch.equal(after["table.weight"][untouched], before["table.weight"][untouched])
    assert not torch.equal(after["table.weight"][TOUCHED], before["table.weight"][TOUCHED])


def test_dense_decay_shrinks_every_row() -> None:  # the behaviour row_decay=False keeps (torch's)
    before, after = one_step("adamw", row_decay=False)
    untouched = torch.tensor([0, 2, 3, 5, 7, 8, 9])
    assert torch.allclose(after["table.weight"][untouched], before["table.weight"][untouched] * (1 - 0.1 * 0.5))


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_touched_rows_decay_as_the_optimizer_decays_them(optimizer: str) -> None:
    """Touched rows and the dense layer end where torch's own weight decay puts them."""
    _, sparse = one_step(optimizer, row_decay=True)
    _, dense = one_step(optimizer, row_decay=False)
    assert torch.allclose(sparse["table.weight"][TOUCHED], dense["table.weight"][TOUCHED], atol=1e-6)
    assert torch.allclose(sparse["out.weight"], dense["out.weight"], atol=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_touched_rows_decay_towards_decay_to(optimizer: str) -> None:
    target = torch.full((10, 4), 3.0)
    _, sparse = one_step(optimizer, row_decay=True, decay_to={"table.weight": target})
    _, dense = one_step(optimizer, row_decay=False, decay_to={"table.weight": target})
    before, _ = one_step(optimizer, row_decay=True)
    assert torch.allclose(sparse["table.weight"][TOUCHED], dense["table.weight"][TOUCHED], atol=1e-6)
    untouched = torch.tensor([0, 2, 3])
    assert torch.equal(sparse["table.weight"][untouched], before["table.weight"][untouched])


def test_no_decay_leaves_the_groups_alone() -> None:
    task = TableTask()
    trainer = Trainer(TrainConfig(weight_decay=0.0))
    assert len(trainer._optimizer(task.module).param_groups) == 1
    groups = Trainer(TrainConfig(weight_decay=0.1))._optimizer(task.module).param_groups
    assert [g.get("row_decay") for g in groups] == [None, 0.1]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]


def test_sequential_models_pass_row_decay_to_the_trainer() -> None:
    from lmrec.models.sequential import SASRec, SequentialConfig

    assert SASRec()._train_config(1, "x").row_decay
    assert not SASRec(SequentialConfig.from_dict({"row_decay": "false"}))._train_config(1, "x").row_decay
