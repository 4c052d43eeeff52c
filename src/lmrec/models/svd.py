"""SVD: biased matrix factorisation for ratings (Koren 2009), trained on squared error; on data
without ratings, on observed 1s and sampled 0s. Its factors and fold-in are those of
:mod:`lmrec.models.mf`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, ModelConfig, Queries
from lmrec.models.mf import (
    Factors,
    PairTask,
    PositiveSet,
    check_positive,
    fold_in_mean,
    sample_negatives,
    training_pairs,
)
from lmrec.train.losses import mse_loss
from lmrec.train.trainer import TrainConfig


@dataclass
class SVDConfig(ModelConfig):
    dim: int = 64
    epochs: int = 60
    batch_size: int = 1024
    lr: float = 5e-3
    reg: float = 0.05  # L2 on the factors and biases used in a batch
    holdout: float = 0.05  # share of training ratings held out to stop early on RMSE
    patience: int = 3

    def validate(self) -> None:
        check_positive("svd", dim=self.dim, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if not 0 <= self.holdout < 0.5:
            raise ConfigError("svd: holdout must be in [0, 0.5)")


class SVD(DotProductModel):
    """Biased matrix factorisation r̂ = μ + b_u + b_i + p_u·q_i with squared loss (Koren 2009).

    Trained on explicit ratings; on data without ratings every interaction is a 1 and one sampled
    unobserved item per interaction a 0. Scores are predicted ratings.
    """

    name = "svd"
    config_class = SVDConfig
    config: SVDConfig

    devices = ("cpu", "cuda", "mps")

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        cfg, gen = self.config, options.torch_generator()
        users, items = training_pairs(train)
        explicit = train.has_ratings
        if explicit:
            ratings = torch.from_numpy(train.interactions["rating"].to_numpy().astype(np.float32))
        else:
            ratings = torch.ones(len(users))
        n_hold = int(len(users) * cfg.holdout)
        perm = torch.randperm(len(users), generator=gen)
        hold, fit_idx = perm[:n_hold], perm[n_hold:]

        self.net = Factors(self.n_users, self.n_items, cfg.dim, gen, biases=True)
        self.net.global_mean.fill_(float(ratings[fit_idx].mean()) if explicit else 0.5)
        columns = (users[fit_idx], items[fit_idx], ratings[fit_idx])
        task = SVDTask(self.net, columns, cfg.batch_size, None if explicit else PositiveSet(train), cfg.reg)
        held = (users[hold].to(self.device), items[hold].to(self.device), ratings[hold].to(self.device))

        def holdout_score() -> float:  # negative RMSE: the Trainer maximises
            with torch.no_grad():
                err = self.net(held[0], held[1]) - held[2]
            return -float(err.pow(2).mean().sqrt())

        config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adam", patience=cfg.patience, desc="svd")
        self.training_log = self._train(task, config, options, gen, validate=holdout_score if n_hold > 0 else None)
        self.net.cpu()

    @property
    def global_mean(self) -> torch.Tensor:
        return self.net.global_mean

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.net(users, items).detach()

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user, item) row pairs; unknown users get μ + b_i."""
        users, items = np.asarray(users), np.asarray(items)
        known = (users >= 0) & (users < self.n_users)
        with torch.no_grad():
            i = torch.from_numpy(items)
            out = self.global_mean + self.net.item_bias.detach()[i]
            if known.any():
                k = torch.from_numpy(known)
                out[k] = self._predict(torch.from_numpy(users[known]), i[k])
        return out.numpy()

    def item_embeddings(self) -> torch.Tensor:
        """[q_i, b_i]: with the query [p_u, 1] and the offset μ + b_u, the dot product is r̂."""
        net = self.net
        return torch.cat([net.item_factors, net.item_bias.unsqueeze(1)], 1).detach().cpu()

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """[p_u, 1] and μ + b_u for known users; an unknown user's history mean factor and μ."""
        net = self.net
        with torch.no_grad():
            known = self.known_users(batch)
            vecs = fold_in_mean(batch, net.item_factors.detach().cpu())
            offsets = torch.full((len(batch),), float(net.global_mean))
            if known.any():
                k, u = torch.from_numpy(known), torch.from_numpy(batch.users[known])
                vecs[k] = net.user_factors.detach().cpu()[u]
                offsets[k] += net.user_bias.detach().cpu()[u]
        vecs = torch.cat([vecs, torch.ones(len(batch), 1)], 1)
        return Queries(vecs, offsets, torch.ones(len(batch), dtype=torch.bool))

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.reshape(1) if k == "global_mean" else v for k, v in self.net.state_dict().items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        dim = tensors["user_factors"].shape[1]
        self.net = Factors(self.n_users, self.n_items, dim, torch.Generator(), biases=True)
        self.net.load_state_dict({k: v.reshape(()) if k == "global_mean" else v for k, v in tensors.items()})


class SVDTask(PairTask):
    """Squared error of the predicted rating, with L2 on the rows used; on implicit data every
    interaction is a 1 and one sampled unobserved item per interaction a 0."""

    def __init__(
        self,
        module: Factors,
        columns: tuple[torch.Tensor, ...],
        batch_size: int,
        positives: PositiveSet | None,
        reg: float,
    ) -> None:
        super().__init__(module, columns, batch_size)
        self.factors, self.positives, self.reg = module, positives, reg

    def loss(self, module: nn.Module, batch: tuple[torch.Tensor, ...], gen: torch.Generator) -> torch.Tensor:
        u, i, r = batch
        if self.positives is not None:  # implicit data: add sampled zeros
            j = sample_negatives(u.cpu(), self.positives, gen)[:, 0].to(u.device)
            u, i, r = torch.cat([u, u]), torch.cat([i, j]), torch.cat([r, torch.zeros_like(r)])
        f = self.factors
        loss = mse_loss(module(u, i), r)
        penalty = f.user_factors[u].pow(2).sum() + f.item_factors[i].pow(2).sum() + f.user_bias[u].pow(2).sum()
        return loss + self.reg * (penalty + f.item_bias[i].pow(2).sum()) / len(u)
