"""One training phase of a sequential model as the Trainer sees it: batches of history windows and
their loss (plain, and per user under DP-SGD)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from lmrec.data.batch import QueryBatch
from lmrec.data.sequences import pad_right, random_batches, sequence_windows
from lmrec.errors import ConfigError
from lmrec.models.sequential.adversarial import adversarial_loss
from lmrec.models.sequential.config import SequentialConfig
from lmrec.models.sequential.encoder import PrivateSequenceEncoder, SequenceEncoder
from lmrec.train.losses import sequence_ce_per_example


class SequenceModel(Protocol):
    """What a task reads of the model it trains (:class:`lmrec.models.sequential.model.SequentialRecommender`)."""

    @property
    def name(self) -> str: ...

    config: SequentialConfig
    net: SequenceEncoder
    n_items: int
    device: torch.device
    init_rows: torch.Tensor | None
    teacher: Any
    unseen: torch.Tensor

    def _loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, table: torch.Tensor
    ) -> torch.Tensor: ...

    def _mask(self, seq: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _id_drop(self, gen: torch.Generator) -> torch.Tensor | None: ...

    def _distill(
        self,
        inputs: torch.Tensor,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        keep: torch.Tensor,
        table: torch.Tensor,
        causal: bool,
    ) -> torch.Tensor: ...


class SequenceTask:
    """One training phase of a sequential model, for the Trainer: windows of each history batched
    by length; the loss of the objective (next item at every position, or masked items) over the
    supervised positions, plus the alignment term for ``item_repr=aligned``."""

    def __init__(self, model: SequenceModel, histories: QueryBatch, objective: str) -> None:
        self.model, self.module, self.causal = model, model.net, objective == "causal"
        cfg = model.config
        # next-item windows hold max_len inputs and one more target; a lone item has no target
        self.histories = histories
        self.size, self.shortest = (cfg.max_len + 1, 2) if self.causal else (cfg.max_len, 1)
        self.windows = sequence_windows(histories, self.size, min_length=self.shortest)
        if not self.windows:
            raise ConfigError(f"{model.name}: no training sequence has a target (every history has one item?)")
        self.decay_to: dict[str, torch.Tensor] = {}  # the Trainer's weight decay pulls these rows here, not to 0
        if cfg.item_decay_to == "text":
            assert model.init_rows is not None
            anchor = torch.zeros_like(model.net.items.weight)  # pad and mask rows: to zero, as before
            anchor[1 : model.n_items + 1] = model.init_rows
            self.decay_to["items.weight"] = anchor

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        windows = self.windows
        if self.model.config.shift_windows and self.size > 2:  # window boundaries drawn afresh
            shifts = torch.randint(0, self.size - 1, (len(self.histories),), generator=gen).numpy()
            windows = sequence_windows(self.histories, self.size, min_length=self.shortest, shifts=shifts)
        # random batches; the encoder runs each in chunks of similar length (SequenceEncoder.forward)
        for batch in random_batches(windows, self.model.config.batch_size, gen):
            yield pad_right(batch)[0]

    def loss(self, module: nn.Module, seq: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        model, net = self.model, self.model.net
        table = net.item_table(model._id_drop(gen))
        if self.causal:
            inputs, targets = seq[:, :-1], seq[:, 1:]
        else:
            inputs, targets = model._mask(seq, gen)
        keep = targets > 0

        def loss_of(table: torch.Tensor) -> torch.Tensor:
            hidden = module(inputs, causal=self.causal, table=table)
            if model.teacher is not None:
                return model._distill(inputs, hidden[keep], targets[keep] - 1, keep, table, self.causal)
            return model._loss(hidden[keep], targets[keep] - 1, gen, table)

        loss = adversarial_loss(loss_of, table, model.config.adversarial)
        if model.teacher is not None:
            return loss
        if model.config.item_repr == "aligned":
            loss = loss + net.alignment_loss()
        if model.config.item_init_pull > 0:  # a prior: rows stay near their text start unless data says otherwise
            assert model.init_rows is not None
            rows = net.items.weight[1 : model.n_items + 1]
            loss = loss + model.config.item_init_pull * (rows - model.init_rows).square().sum(1).mean()
        return loss


class PrivateSequenceTask:
    """DP-SGD's batches and loss: each step every user (with a target) is drawn with probability
    ``rate`` and contributes one of their training windows, chosen at random — one example per
    user, so clipping it bounds what a user's whole history changes. The loss of an example is the
    mean cross-entropy over its supervised positions (the full softmax over the items seen in
    training), and the batch's loss their mean."""

    def __init__(
        self,
        model: SequenceModel,
        module: PrivateSequenceEncoder,
        histories: QueryBatch,
        rate: float,
        steps: int,
    ) -> None:
        self.model, self.module, self.rate, self.steps = model, module, rate, steps
        self.causal = model.config.objective == "causal"
        size, shortest = (model.config.max_len + 1, 2) if self.causal else (model.config.max_len, 1)
        self.windows = [
            sequence_windows(QueryBatch.from_histories([u], [histories.history(u)]), size, min_length=shortest)
            for u in range(len(histories))
        ]
        if not any(self.windows):
            raise ConfigError(f"{model.name}: no training sequence has a target (every history has one item?)")
        # never predicted: the pad row, the mask row and items without training interactions
        n = model.n_items
        self.excluded = torch.cat([torch.ones(1), model.unseen.float().cpu(), torch.ones(1)]).bool().to(model.device)
        assert len(self.excluded) == n + 2

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
        has = torch.tensor([len(w) > 0 for w in self.windows])
        for _ in range(self.steps):
            users = torch.nonzero((torch.rand(len(self.windows), generator=gen) < self.rate) & has).squeeze(1)
            if len(users) == 0:  # probability (1 - q)^users: negligible at the rates used
                continue
            picks = torch.rand(len(users), generator=gen)
            pairs = zip(users.tolist(), picks.tolist(), strict=True)
            chosen = [self.windows[u][int(p * len(self.windows[u]))] for u, p in pairs]
            yield pad_right(chosen)[0]

    def loss(self, module: nn.Module, seq: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.causal:
            inputs, targets = seq[:, :-1], seq[:, 1:]
        else:
            inputs, targets = self.model._mask(seq, gen)
        logits = module(inputs, causal=self.causal)
        return sequence_ce_per_example(logits, targets.masked_fill(targets == 0, -1), self.excluded).mean()
