"""ALS: implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) by exact batched
least-squares solves; a user the model never saw is solved for from their history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.base import DotProductModel, FitOptions, ModelConfig, Queries, interaction_matrix
from lmrec.models.mf import check_positive
from lmrec.train.loop import fit_epochs


@dataclass
class ALSConfig(ModelConfig):
    dim: int = 64
    iterations: int = 15
    reg: float = 1.0  # λ, L2 weight on factors
    alpha: float = 2.0  # confidence of an observed interaction: c = 1 + alpha

    def validate(self) -> None:
        check_positive("als", dim=self.dim, iterations=self.iterations, reg=self.reg)
        if self.alpha < 0:
            raise ConfigError("als: alpha must be >= 0")


class ALS(DotProductModel):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008), exact batched solves per user and item."""

    name = "als"
    config_class = ALSConfig
    config: ALSConfig

    def _fit(self, train: Dataset, valid: EvalSet | None, options: FitOptions) -> None:
        from lmrec.train.validation import validation_ndcg

        cfg, gen = self.config, options.torch_generator()
        x = interaction_matrix(train)
        xt = x.T.tocsr()
        self.user_factors = torch.randn(self.n_users, cfg.dim, generator=gen) * 0.01
        self.item_factors = torch.randn(self.n_items, cfg.dim, generator=gen) * 0.01

        def run_epoch(epoch: int) -> float:
            self.user_factors = self._solve(x, self.item_factors)
            self.item_factors = self._solve(xt, self.user_factors)
            return 0.0

        # closed-form solves, no gradients: the iterations need early stopping, not the Trainer
        self.training_log = fit_epochs(
            run_epoch,
            epochs=cfg.iterations,
            validate=(lambda: validation_ndcg(self, valid)) if valid is not None else None,
            snapshot=self.state,
            restore=self.load_state,
            patience=3,
            progress=options.progress,
            desc="als",
        ).as_dict()

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

    def item_embeddings(self) -> torch.Tensor:
        return self.item_factors

    def query_embeddings(self, batch: QueryBatch) -> Queries:
        """Known users: their factor; others: their least-squares solve against the item factors."""
        known = self.known_users(batch)
        user_vecs = torch.empty(len(batch), self.config.dim)
        if known.any():
            user_vecs[torch.from_numpy(known)] = self.user_factors[torch.from_numpy(batch.users[known])]
        if (~known).any():
            unknown = np.flatnonzero(~known)
            new = batch.matrix(self.n_items)[unknown]
            user_vecs[torch.from_numpy(unknown)] = self._solve(new, self.item_factors)
        return Queries(user_vecs, torch.zeros(len(batch)), torch.ones(len(batch), dtype=torch.bool))

    def state(self) -> dict[str, torch.Tensor]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.user_factors, self.item_factors = tensors["user_factors"], tensors["item_factors"]
