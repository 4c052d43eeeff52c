"""Neural collaborative filtering: NeuMF (He et al., WWW 2017).

A generalised matrix factorisation branch (element-wise product of user and item embeddings) and
an MLP branch (concatenated embeddings through hidden layers) joined by a final linear layer,
trained with binary cross-entropy against sampled negatives. A user the model never saw gets the
mean user embedding: NeuMF has no principled fold-in, so use an item-based model for new users.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import FitOptions, ModelConfig, Recommender
from lmrec.models.mf import PairTask, PositiveSet, sample_negatives
from lmrec.train.losses import bce_loss
from lmrec.train.trainer import TrainConfig


@dataclass
class NCFConfig(ModelConfig):
    dim: int = 32  # GMF embedding size
    mlp: tuple[int, ...] = (64, 32, 16)  # MLP layer sizes; the first is the concatenated input
    dropout: float = 0.0
    negatives: int = 4  # sampled negatives per positive
    epochs: int = 100
    batch_size: int = 1024
    lr: float = 5e-3
    weight_decay: float = 0.0
    patience: int = 5

    def validate(self) -> None:
        if self.dim < 1 or not self.mlp or min(self.mlp) < 1 or self.mlp[0] % 2:
            raise ConfigError("ncf: dim >= 1 and mlp sizes >= 1 with an even first size")
        if self.negatives < 1 or self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("ncf: negatives, epochs, batch_size and lr must be positive")
        if not 0 <= self.dropout < 1:
            raise ConfigError("ncf: dropout must be in [0, 1)")


class NeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, cfg: NCFConfig) -> None:
        super().__init__()
        half = cfg.mlp[0] // 2
        self.user_gmf = nn.Embedding(n_users + 1, cfg.dim)  # row n_users: the mean user
        self.item_gmf = nn.Embedding(n_items, cfg.dim)
        self.user_mlp = nn.Embedding(n_users + 1, half)
        self.item_mlp = nn.Embedding(n_items, half)
        layers: list[nn.Module] = []
        for a, b in zip(cfg.mlp[:-1], cfg.mlp[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(cfg.dropout)]
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(cfg.dim + cfg.mlp[-1], 1)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(emb.weight, std=0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.user_gmf(users) * self.item_gmf(items)
        mlp = self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=-1))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def set_mean_user(self, n_users: int) -> None:
        with torch.no_grad():
            for emb in (self.user_gmf, self.user_mlp):
                emb.weight[n_users] = emb.weight[:n_users].mean(0)


class NCF(Recommender):
    name = "ncf"
    config_class = NCFConfig
    config: NCFConfig

    devices = ("cpu", "cuda", "mps")

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg, gen = self.config, options.torch_generator()
        self.net = NeuMF(self.n_users, self.n_items, cfg)
        inter = train.interactions
        users, items = torch.tensor(inter["user"].to_numpy()), torch.tensor(inter["item"].to_numpy())
        task = NCFTask(self.net, (users, items), cfg.batch_size, PositiveSet(train), cfg.negatives, self.n_users)
        config = TrainConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            optimizer="adam",
            patience=cfg.patience,
            desc="ncf",
        )
        self.training_log = self._train(task, config, options, gen, valid=valid)
        self.net.cpu()

    def score(self, batch: QueryBatch) -> torch.Tensor:
        self.net.eval()
        users = np.where(self.known_users(batch), batch.users, self.n_users)
        items = torch.arange(self.n_items)
        out = torch.empty(len(batch), self.n_items)
        step = max(1, (1 << 20) // self.n_items)  # bounded pair count per forward pass
        with torch.no_grad():
            for s in range(0, len(batch), step):
                u = torch.from_numpy(users[s : s + step])
                pairs_u = u.repeat_interleave(self.n_items)
                pairs_i = items.repeat(len(u))
                out[s : s + len(u)] = self.net(pairs_u, pairs_i).reshape(len(u), self.n_items)
        return out

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if not hasattr(self, "net"):
            self.net = NeuMF(self.n_users, self.n_items, self.config)
        self.net.load_state_dict({k: v.clone() for k, v in tensors.items()})


class NCFTask(PairTask):
    """Binary cross-entropy of each training pair against ``negatives`` sampled unobserved items."""

    def __init__(
        self,
        module: NeuMF,
        columns: tuple[torch.Tensor, ...],
        batch_size: int,
        positives: PositiveSet,
        negatives: int,
        n_users: int,
    ) -> None:
        super().__init__(module, columns, batch_size)
        self.net, self.positives, self.negatives, self.n_users = module, positives, negatives, n_users

    def batches(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        yield from super().batches(epoch, gen)
        self.net.set_mean_user(self.n_users)  # after the epoch's last step: the row unknown users get

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        u, i = batch
        neg = sample_negatives(u.cpu(), self.positives, gen, self.negatives).to(u.device)
        all_u = torch.cat([u, u.repeat_interleave(self.negatives)])
        all_i = torch.cat([i, neg.reshape(-1)])
        labels = torch.cat([torch.ones(len(u)), torch.zeros(neg.numel())]).to(u.device)
        return bce_loss(module(all_u, all_i), labels)
