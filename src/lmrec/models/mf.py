"""Matrix factorisation: BPR (pairwise ranking), ALS (implicit feedback), SVD (rating regression).

All three learn a user factor p_u and an item factor q_i and score by their dot product. A user the
model never saw is folded in from their history: BPR and SVD use the mean factor of the history
items, ALS solves its least-squares problem for the new user exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import FitOptions, ModelConfig, Recommender, interaction_matrix
from lmrec.train.loop import minibatches
from lmrec.train.losses import bpr_loss, mse_loss


def _check_positive(model: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{model}: {key} must be > 0, got {value}")


def _training_pairs(train: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
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
        _check_positive("bpr", dim=self.dim, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)


class BPR(Recommender):
    """Matrix factorisation trained with the BPR pairwise loss and uniform negatives."""

    name = "bpr"
    config_class = BPRConfig
    config: BPRConfig

    def fit(self, train: Dataset, valid: EvalSet | None = None, options: FitOptions | None = None) -> BPR:
        options = self._start_fit(train, options)
        cfg, gen = self.config, options.torch_generator()
        self.user_factors = nn.Parameter(torch.randn(self.n_users, cfg.dim, generator=gen) * 0.01)
        self.item_factors = nn.Parameter(torch.randn(self.n_items, cfg.dim, generator=gen) * 0.01)
        optimizer = torch.optim.Adam([self.user_factors, self.item_factors], lr=cfg.lr)
        users, items = _training_pairs(train)
        positives = PositiveSet(train)

        def run_epoch(epoch: int) -> float:
            total = 0.0
            for idx in minibatches(len(users), cfg.batch_size, gen):
                u, i = users[idx], items[idx]
                j = sample_negatives(u, positives, gen)[:, 0]
                pu, qi, qj = self.user_factors[u], self.item_factors[i], self.item_factors[j]
                loss = bpr_loss((pu * qi).sum(1), (pu * qj).sum(1))
                loss = loss + cfg.reg * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(u)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(u)
            return total / len(users)

        self.history = self._run_epochs(
            run_epoch, epochs=cfg.epochs, patience=cfg.patience, options=options, desc="bpr", valid=valid
        )
        return self

    def score(self, batch: QueryBatch) -> torch.Tensor:
        with torch.no_grad():
            known = self.known_users(batch)
            user_vecs = fold_in_mean(batch, self.item_factors.detach())
            if known.any():
                user_vecs[torch.from_numpy(known)] = self.user_factors.detach()[torch.from_numpy(batch.users[known])]
            return user_vecs @ self.item_factors.detach().T

    def state(self) -> dict[str, torch.Tensor]:
        return {"user_factors": self.user_factors.data, "item_factors": self.item_factors.data}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.user_factors = nn.Parameter(tensors["user_factors"].clone())
        self.item_factors = nn.Parameter(tensors["item_factors"].clone())


# ---------------------------------------------------------------------------------------------
# ALS


@dataclass
class ALSConfig(ModelConfig):
    dim: int = 64
    iterations: int = 15
    reg: float = 1.0  # λ, L2 weight on factors
    alpha: float = 2.0  # confidence of an observed interaction: c = 1 + alpha

    def validate(self) -> None:
        _check_positive("als", dim=self.dim, iterations=self.iterations, reg=self.reg)
        if self.alpha < 0:
            raise ConfigError("als: alpha must be >= 0")


class ALS(Recommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008), exact batched solves per user and item."""

    name = "als"
    config_class = ALSConfig
    config: ALSConfig

    def fit(self, train: Dataset, valid: EvalSet | None = None, options: FitOptions | None = None) -> ALS:
        options = self._start_fit(train, options)
        cfg, gen = self.config, options.torch_generator()
        x = interaction_matrix(train)
        xt = x.T.tocsr()
        self.user_factors = torch.randn(self.n_users, cfg.dim, generator=gen) * 0.01
        self.item_factors = torch.randn(self.n_items, cfg.dim, generator=gen) * 0.01

        def run_epoch(epoch: int) -> float:
            self.user_factors = self._solve(x, self.item_factors)
            self.item_factors = self._solve(xt, self.user_factors)
            return 0.0

        self.history = self._run_epochs(
            run_epoch, epochs=cfg.iterations, patience=3, options=options, desc="als", valid=valid
        )
        return self

    def _solve(self, x: sp.csr_matrix, fixed: torch.Tensor) -> torch.Tensor:
        """Least squares for each row r of x: (FᵀF + α F_rᵀF_r + λI) p_r = (1 + α) F_rᵀ1.

        F_r holds the factors of the row's nonzeros, gathered into a zero-padded (rows, len, dim)
        block so a chunk of rows is one batched matmul and one batched solve. Rows go shortest
        first, so a chunk wastes little on padding.
        """
        cfg = self.config
        order = np.argsort(np.diff(x.indptr), kind="stable")
        x = x[order]
        padded = torch.cat([fixed, torch.zeros(1, cfg.dim)])  # row -1: the zero pad
        gram = fixed.T @ fixed + cfg.reg * torch.eye(cfg.dim)
        lengths = np.diff(x.indptr)
        out = torch.empty(x.shape[0], cfg.dim)
        start = 0
        while start < x.shape[0]:
            # as many rows as fit in 256k padded cells
            widest = np.maximum.accumulate(np.maximum(lengths[start:], 1))
            rows = max(1, int(np.sum(widest * np.arange(1, len(widest) + 1) <= 1 << 18)))
            stop, width = start + rows, int(widest[rows - 1])
            idx = np.full((rows, width), -1, dtype=np.int64)
            lo = x.indptr[start]
            n = lengths[start:stop]
            r = np.repeat(np.arange(rows), n)
            c = np.arange(x.indptr[stop] - lo) - np.repeat(x.indptr[start:stop] - lo, n)
            idx[r, c] = x.indices[lo : x.indptr[stop]]
            f = padded[torch.from_numpy(idx)]
            a = gram + cfg.alpha * f.transpose(1, 2) @ f
            out[start:stop] = torch.linalg.solve(a, (1 + cfg.alpha) * f.sum(1))
            start = stop
        result = torch.empty_like(out)
        result[torch.from_numpy(order)] = out
        return result

    def score(self, batch: QueryBatch) -> torch.Tensor:
        known = self.known_users(batch)
        user_vecs = torch.empty(len(batch), self.config.dim)
        if known.any():
            user_vecs[torch.from_numpy(known)] = self.user_factors[torch.from_numpy(batch.users[known])]
        if (~known).any():
            unknown = np.flatnonzero(~known)
            new = batch.matrix(self.n_items)[unknown]
            user_vecs[torch.from_numpy(unknown)] = self._solve(new, self.item_factors)
        return user_vecs @ self.item_factors.T

    def state(self) -> dict[str, torch.Tensor]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.user_factors, self.item_factors = tensors["user_factors"], tensors["item_factors"]


# ---------------------------------------------------------------------------------------------
# SVD (biased MF for ratings)


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
        _check_positive("svd", dim=self.dim, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        if not 0 <= self.holdout < 0.5:
            raise ConfigError("svd: holdout must be in [0, 0.5)")


class SVD(Recommender):
    """Biased matrix factorisation r̂ = μ + b_u + b_i + p_u·q_i with squared loss (Koren 2009).

    Trained on explicit ratings; on data without ratings every interaction is a 1 and one sampled
    unobserved item per interaction a 0. Scores are predicted ratings.
    """

    name = "svd"
    config_class = SVDConfig
    config: SVDConfig

    def fit(self, train: Dataset, valid: EvalSet | None = None, options: FitOptions | None = None) -> SVD:
        options = self._start_fit(train, options)
        cfg, gen = self.config, options.torch_generator()
        users, items = _training_pairs(train)
        explicit = train.has_ratings
        if explicit:
            ratings = torch.from_numpy(train.interactions["rating"].to_numpy().astype(np.float32))
        else:
            ratings = torch.ones(len(users))
        n_hold = int(len(users) * cfg.holdout)
        perm = torch.randperm(len(users), generator=gen)
        hold, fit_idx = perm[:n_hold], perm[n_hold:]
        positives = PositiveSet(train)

        self.global_mean = torch.tensor(float(ratings[fit_idx].mean()) if explicit else 0.5)
        self.user_bias = nn.Parameter(torch.zeros(self.n_users))
        self.item_bias = nn.Parameter(torch.zeros(self.n_items))
        self.user_factors = nn.Parameter(torch.randn(self.n_users, cfg.dim, generator=gen) * 0.01)
        self.item_factors = nn.Parameter(torch.randn(self.n_items, cfg.dim, generator=gen) * 0.01)
        params = [self.user_bias, self.item_bias, self.user_factors, self.item_factors]
        optimizer = torch.optim.Adam(params, lr=cfg.lr)

        def run_epoch(epoch: int) -> float:
            total = 0.0
            for idx in minibatches(len(fit_idx), cfg.batch_size, gen):
                rows = fit_idx[idx]
                u, i, r = users[rows], items[rows], ratings[rows]
                if not explicit:  # implicit data: add sampled zeros
                    j = sample_negatives(u, positives, gen)[:, 0]
                    u, i, r = torch.cat([u, u]), torch.cat([i, j]), torch.cat([r, torch.zeros_like(r)])
                pred = self._predict(u, i)
                loss = mse_loss(pred, r)
                pu, qi = self.user_factors[u], self.item_factors[i]
                penalty = pu.pow(2).sum() + qi.pow(2).sum() + self.user_bias[u].pow(2).sum()
                loss = loss + cfg.reg * (penalty + self.item_bias[i].pow(2).sum()) / len(u)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(u)
            return total / max(1, len(fit_idx))

        def holdout_score() -> float:  # negative RMSE: the loop maximises
            with torch.no_grad():
                err = self._predict(users[hold], items[hold]) - ratings[hold]
            return -float(err.pow(2).mean().sqrt())

        self.history = self._run_epochs(
            run_epoch,
            epochs=cfg.epochs,
            patience=cfg.patience,
            options=options,
            desc="svd",
            validate=holdout_score if n_hold > 0 else None,
        )
        return self

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user_factors[users] * self.item_factors[items]).sum(1)
        return self.global_mean + self.user_bias[users] + self.item_bias[items] + dot

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user, item) row pairs; unknown users get μ + b_i."""
        users, items = np.asarray(users), np.asarray(items)
        known = (users >= 0) & (users < self.n_users)
        with torch.no_grad():
            i = torch.from_numpy(items)
            out = self.global_mean + self.item_bias[i]
            if known.any():
                k = torch.from_numpy(known)
                out[k] = self._predict(torch.from_numpy(users[known]), i[k])
        return out.numpy()

    def score(self, batch: QueryBatch) -> torch.Tensor:
        with torch.no_grad():
            known = self.known_users(batch)
            vecs = fold_in_mean(batch, self.item_factors.detach())
            bias = torch.zeros(len(batch))
            if known.any():
                k, u = torch.from_numpy(known), torch.from_numpy(batch.users[known])
                vecs[k] = self.user_factors.detach()[u]
                bias[k] = self.user_bias.detach()[u]
            base = self.global_mean + bias.unsqueeze(1) + self.item_bias.detach().unsqueeze(0)
            return base + vecs @ self.item_factors.detach().T

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "global_mean": self.global_mean.reshape(1),
            "user_bias": self.user_bias.data,
            "item_bias": self.item_bias.data,
            "user_factors": self.user_factors.data,
            "item_factors": self.item_factors.data,
        }

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.global_mean = tensors["global_mean"].reshape(())
        for key in ("user_bias", "item_bias", "user_factors", "item_factors"):
            setattr(self, key, nn.Parameter(tensors[key].clone()))
