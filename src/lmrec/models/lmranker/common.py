"""What both language-model rankers share: the base model's top candidates, lifting them above the
rest of a row in the ranker's order (mixed with the base's), and the step schedule they train on."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from lmrec.data.batch import QueryBatch, mask_seen
from lmrec.errors import ConfigError
from lmrec.models.base import Recommender
from lmrec.train.trainer import TrainConfig, step_rounds

RANKERS = ("lm-ranker", "lm-list-ranker")  # models that re-rank a base model (never a base themselves)


def _zscore(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Standardise each row over its ``valid`` entries."""
    w = valid.to(x.dtype)
    n = w.sum(1, keepdim=True).clamp(min=1.0)
    xv = torch.where(valid, x, torch.zeros_like(x))
    mean = xv.sum(1, keepdim=True) / n
    var = (((xv - mean) * w) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / (var.sqrt() + 1e-6)


def top_candidates(base: Recommender, batch: QueryBatch, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``base``'s scores (B, n_items), its top ``n`` items outside each history (B, n) and which of
    those exist (B, n): fewer unseen items than ``n`` leave slots empty."""
    with torch.no_grad():
        scores = base.score(batch).float()
    masked = scores.clone()
    mask_seen(masked, batch)
    values, items = torch.topk(masked, min(n, scores.shape[1]), dim=1)
    return scores, items, torch.isfinite(values)


def fuse_orders(ranker: torch.Tensor, base: torch.Tensor, valid: torch.Tensor, mix: float) -> torch.Tensor:
    """The candidates' order: ``mix`` 1 is the ranker's scores, 0 the base's, between the blend
    ``mix · z(ranker) + (1 - mix) · z(base)`` of z-scores over each row's ``valid`` candidates."""
    if mix == 1.0:
        return ranker
    if mix == 0.0:
        return base
    return mix * _zscore(ranker, valid) + (1 - mix) * _zscore(base, valid)


def lift_candidates(
    base: torch.Tensor, items: torch.Tensor, valid: torch.Tensor, order: torch.Tensor, readable: torch.Tensor
) -> torch.Tensor:
    """``base`` (B, n_items) with the ``valid`` candidates ``items`` (B, c) of ``readable`` rows (B,)
    put above every other item of their row, in ``order`` (B, c); other rows keep the base scores."""
    finite = torch.where(torch.isfinite(base), base, torch.full_like(base, float("-inf")))
    top = finite.max(1).values.clamp(min=-1e30)  # above every finite base score of the row
    low = torch.where(valid, order, torch.full_like(order, float("inf"))).min(1).values
    offset = top - low.clamp(max=1e30) + 1.0
    lifted = offset.unsqueeze(1) + order
    keep = valid & readable.unsqueeze(1)
    out = base.clone()
    rows = torch.arange(len(base)).unsqueeze(1).expand_as(items)
    out[rows[keep], items[keep]] = lifted[keep]
    return out


def step_schedule(steps: int, lr: float, weight_decay: float, desc: str) -> TrainConfig:
    """The fine-tuning schedule of both rankers: ``steps`` optimizer steps (run as epochs of ten),
    AdamW, linear warm-up over a tenth of the steps then linear decay, gradients clipped at 1."""
    return TrainConfig(
        epochs=len(step_rounds(steps)),
        lr=lr,
        weight_decay=weight_decay,
        warmup=max(1, steps // 10),
        schedule="linear",
        clip=1.0,
        desc=desc,
    )


class HistoryPrefixes:
    """What both rankers fine-tune on: batches of users with at least two training items, each cut
    at a random point into a prefix and the item after it; ``steps`` split into ten-step "epochs"."""

    def __init__(self, histories: QueryBatch, steps: int, batch_size: int, model: str) -> None:
        self.histories, self.batch_size = histories, batch_size
        self.eligible = np.flatnonzero(histories.lengths() >= 2)
        if len(self.eligible) == 0:
            raise ConfigError(f"{model} needs users with at least two training interactions")
        self.seen = [set(histories.history(int(u)).tolist()) for u in range(len(histories))]
        self.rounds = step_rounds(steps)

    def batches(
        self, epoch: int, rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, list[np.ndarray], np.ndarray]]:
        """(users, their prefixes, the item after each prefix) for each step of ``epoch``."""
        h = self.histories
        for _ in range(self.rounds[epoch]):
            users = rng.choice(self.eligible, size=self.batch_size)
            cuts = [int(rng.integers(1, len(h.history(int(u))))) for u in users]
            prefixes = [h.history(int(u))[:t] for u, t in zip(users, cuts, strict=True)]
            positives = np.array([h.history(int(u))[t] for u, t in zip(users, cuts, strict=True)])
            yield users, prefixes, positives
