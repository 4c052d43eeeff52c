"""Matrix factorisation: BPR (pairwise ranking), and the parts the factor models share.

All three factor models — BPR here, ALS (implicit feedback, :mod:`lmrec.models.als`) and SVD (rating
regression, :mod:`lmrec.models.svd`) — learn a user factor p_u and an item factor q_i and score by
their dot product. A user the model never saw is folded in from their history: BPR and SVD use the
mean factor of the history items (:func:`fold_in_mean`), ALS solves its least-squares problem for the
new user exactly. Shared here: :class:`Factors`, :class:`PairTask`, :class:`PositiveSet`,
:func:`sample_negatives` (also NCF's), :func:`check_positive` and :func:`training_pairs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, ModelConfig, Queries
from lmrec.train.loop import minibatches
from lmrec.train.losses import bpr_loss
from lmrec.train.privacy import DPSpec, DPStrategy
from lmrec.train.trainer import TrainConfig


def check_positive(model: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{model}: {key} must be > 0, got {value}")


def training_pairs(train: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    inter = train.interactions
    return torch.tensor(inter["user"].to_numpy()), torch.tensor(inter["item"].to_numpy())


class PositiveSet:
    """Fast membership test for (user, item) training pairs, used to reject sampled negatives."""

    def __init__(self, train: Dataset) -> None:
        self.n_items = train.n_items
        inter = train.interactions
        self.keys = np.unique(inter["user"].to_numpy() * self.n_items + inter["item"].to_numpy())

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys


def sample_negatives(
    users: torch.Tensor, positives: PositiveSet, generator: torch.Generator, n: int = 1
) -> torch.Tensor:
    """``n`` uniform negatives per user, resampled (a few rounds) where they hit a positive."""
    neg = torch.randint(0, positives.n_items, (len(users), n), generator=generator)
    u = users.numpy()[:, None].repeat(n, 1)
    for _ in range(3):
        clash = torch.from_numpy(positives.contains(u, neg.numpy()))
        if not clash.any():
            break
        neg[clash] = torch.randint(0, positives.n_items, (int(clash.sum()),), generator=generator)
    return neg


def fold_in_mean(batch: QueryBatch, item_factors: torch.Tensor) -> torch.Tensor:
    """Mean item factor of each history: the user vector of a user the model never saw."""
    n_items = item_factors.shape[0]
    rows = np.repeat(np.arange(len(batch)), batch.lengths())
    valid = (batch.items >= 0) & (batch.items < n_items)
    out = torch.zeros(len(batch), item_factors.shape[1])
    if valid.any():
        idx = torch.from_numpy(rows[valid])
        out.index_add_(0, idx, item_factors[torch.from_numpy(batch.items[valid])])
        counts = torch.bincount(idx, minlength=len(batch)).clamp(min=1).unsqueeze(1)
        out = out / counts
    return out


class Factors(nn.Module):
    """User and item factors (BPR), plus a global mean and user and item biases (SVD)."""

    global_mean: torch.Tensor

    def __init__(self, n_users: int, n_items: int, dim: int, gen: torch.Generator, biases: bool = False) -> None:
        super().__init__()
        self.user_factors = nn.Parameter(torch.randn(n_users, dim, generator=gen) * 0.01)
        self.item_factors = nn.Parameter(torch.randn(n_items, dim, generator=gen) * 0.01)
        if biases:
            self.user_bias = nn.Parameter(torch.zeros(n_users))
            self.item_bias = nn.Parameter(torch.zeros(n_items))
            self.register_buffer("global_mean", torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """p_u · q_i for aligned (user, item) pairs (plus the biases when the model has them)."""
        dot = (self.user_factors[users] * self.item_factors[items]).sum(-1)
        if not hasattr(self, "user_bias"):
            return dot
        return self.global_mean + self.user_bias[users] + self.item_bias[items] + dot


class PairTask:
    """Training rows (user, item[, rating]) in shuffled minibatches, for the Trainer."""

    def __init__(self, module: nn.Module, columns: tuple[torch.Tensor, ...], batch_size: int) -> None:
        self.module, self.columns, self.batch_size = module, columns, batch_size

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        for idx in minibatches(len(self.columns[0]), self.batch_size, gen):
            yield tuple(c[idx] for c in self.columns)


# ---------------------------------------------------------------------------------------------
# BPR


@dataclass
class BPRConfig(ModelConfig):
    dim: int = 64
    epochs: int = 200
    batch_size: int = 2048
    lr: float = 5e-3
    reg: float = 1e-5  # L2 on the embeddings used in a batch
    patience: int = 5  # validations without improvement before stopping

    def validate(self) -> None:
        check_positive("bpr", dim=self.dim, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


class BPR(DotProductModel):
    """Matrix factorisation trained with the BPR pairwise loss and uniform negatives."""

    name = "bpr"
    config_class = BPRConfig
    config: BPRConfig

    devices = ("cpu", "cuda", "mps")
    private = True
    federated_per_user = ("user_factors",)  # a user's row is trained by the client holding the user

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg, gen = self.config, options.torch_generator()
        self.net = Factors(self.n_users, self.n_items, cfg.dim, gen)
        if options.dp is not None:
            self._fit_private(train, options, options.dp, gen)
            return
        users, items = training_pairs(train)
        task = BPRTask(self.net, (users, items), cfg.batch_size, PositiveSet(train), cfg.reg)
        config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adam", patience=cfg.patience, desc="bpr")
        self.training_log = self._train(task, config, options, gen, valid=valid)
        self.net.cpu()

    def _fit_private(self, train: Dataset, options: FitOptions, spec: DPSpec, gen: torch.Generator) -> None:
        """User-level DP-SGD (:mod:`lmrec.train.privacy`) of the item factors (:class:`FoldInItems`):
        each step Poisson-samples users at rate batch_size / users, each gives one example; fixed
        epochs of users / batch_size steps, no early stopping (it would spend unaccounted privacy).
        The user rows saved are each user's fold-in over their training items — what scoring them
        from their history computes anyway; the private part, the item factors, is all that is
        learned."""
        cfg = self.config
        rate = min(1.0, cfg.batch_size / self.n_users)
        per_epoch = max(1, round(1 / rate))
        strategy = DPStrategy(spec, self.n_users, rate, cfg.epochs * per_epoch, seed=options.seed)
        module = FoldInItems(self.net.item_factors)
        task = UserBPRTask(module, train, rate, per_epoch, PositiveSet(train), cfg.reg)
        config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adam", desc="bpr (DP-SGD)")
        self.training_log = self._train(task, config, replace(options, strategy=strategy), gen)
        self.training_log["privacy"] = strategy.report()
        options.say("bpr: user-level DP " + ", ".join(f"{k} {v}" for k, v in self.training_log["privacy"].items()))
        with torch.no_grad():
            items = module.items.weight[: self.n_items].detach().cpu()
            self.net.item_factors.copy_(items)
            self.net.user_factors.copy_(fold_in_mean(task.histories, items))

    @property
    def user_factors(self) -> torch.Tensor:
        return self.net.user_factors.detach()

    @property
    def item_factors(self) -> torch.Tensor:
        return self.net.item_factors.detach()

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors.cpu()

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """Known users: their factor; others: the mean factor of their history's items."""
        with torch.no_grad():
            vecs = fold_in_mean(batch, self.item_factors.cpu())
            known = self.known_users(batch)
            if known.any():
                vecs[torch.from_numpy(known)] = self.user_factors.cpu()[torch.from_numpy(batch.users[known])]
        return Queries(vecs, torch.zeros(len(batch)), torch.ones(len(batch), dtype=torch.bool))

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net = Factors(self.n_users, self.n_items, tensors["user_factors"].shape[1], torch.Generator())
        self.net.load_state_dict(tensors)


class BPRTask(PairTask):
    """BPR's loss: −log σ(p_u·q_i − p_u·q_j) for a sampled unobserved j, with L2 on the rows used."""

    def __init__(
        self, module: Factors, columns: tuple[torch.Tensor, ...], batch_size: int, positives: PositiveSet, reg: float
    ) -> None:
        super().__init__(module, columns, batch_size)
        self.factors, self.positives, self.reg = module, positives, reg

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        u, i = batch
        j = sample_negatives(u.cpu(), self.positives, gen)[:, 0].to(u.device)
        f = self.factors
        pu, qi, qj = f.user_factors[u], f.item_factors[i], f.item_factors[j]
        loss = bpr_loss(module(u, i), module(u, j))
        return loss + self.reg * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(u)


class FoldInItems(nn.Module):
    """The private BPR: item factors only. A user is the mean factor of their other items (the
    fold-in BPR already uses for unknown users), so the model holds no per-user row for noise to
    drown, and its forward is the whole per-example loss, which Opacus needs for each example's
    gradient. Row ``n_items`` is padding."""

    def __init__(self, item_factors: torch.Tensor) -> None:
        super().__init__()
        table = torch.cat([item_factors.detach(), torch.zeros(1, item_factors.shape[1])])
        self.items = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=len(item_factors))

    def forward(self, history: torch.Tensor, i: torch.Tensor, j: torch.Tensor, reg: float) -> torch.Tensor:
        """(B,) BPR losses: history (B, L) padded item rows, i positives, j negatives (B,)."""
        real = (history != self.items.padding_idx).unsqueeze(-1).float()
        pu = (self.items(history) * real).sum(1) / real.sum(1).clamp(min=1.0)
        qi, qj = self.items(i), self.items(j)
        diff = (pu * (qi - qj)).sum(1)
        return -nn.functional.logsigmoid(diff) + reg * (qi.pow(2) + qj.pow(2)).sum(1)


class UserBPRTask:
    """One example per Poisson-sampled user and step — a random item of theirs as the positive,
    up to ``history`` of their other items as the user, a sampled negative: the unit of privacy
    is the user."""

    def __init__(
        self, module: FoldInItems, train: Dataset, rate: float, steps: int, positives: PositiveSet, reg: float
    ) -> None:
        self.module, self.rate, self.steps, self.positives, self.reg = module, rate, steps, positives, reg
        self.histories = QueryBatch.from_interactions(train.interactions, np.arange(train.n_users))
        self.n_users, self.pad, self.history = train.n_users, train.n_items, 50

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        lengths = torch.from_numpy(self.histories.lengths())
        for _ in range(self.steps):
            u = torch.nonzero((torch.rand(self.n_users, generator=gen) < self.rate) & (lengths > 1)).squeeze(1)
            if len(u) == 0:  # probability (1 - q)^users: negligible at the rates used
                continue
            picks = (torch.rand(len(u), generator=gen) * lengths[u]).long()
            rows = torch.full((len(u), self.history), self.pad, dtype=torch.long)
            positives = torch.empty(len(u), dtype=torch.long)
            for r, (user, pick) in enumerate(zip(u.tolist(), picks.tolist(), strict=True)):
                h = self.histories.history(user)
                positives[r] = int(h[pick])
                rest = np.delete(h, pick)[-self.history :]
                rows[r, : len(rest)] = torch.from_numpy(rest)
            yield rows, positives, sample_negatives(u, self.positives, gen)[:, 0]

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        history, i, j = batch
        return module(history, i, j, self.reg).mean()
