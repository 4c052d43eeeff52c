"""Maximal marginal relevance (Carbonell & Goldstein 1998) over the shared candidate handling of
:mod:`lmrec.rerank.candidates`."""

from __future__ import annotations

import numpy as np

from lmrec.rerank.candidates import BlockReranker, Candidates, greedy_setup, take
from lmrec.rerank.similarity import ItemSimilarity

__all__ = ["MMR"]


class MMR(BlockReranker):
    """Maximal marginal relevance: greedily add ``argmax λ·rel(i) − (1−λ)·max_{j∈S} sim(i, j)``.

    ``lam`` = 1 keeps the model's order; lower values trade relevance for items unlike those
    already chosen; 0 ignores relevance after the first (best) item. The first pick has no
    chosen items to be unlike, so it is always the most relevant one.
    """

    def __init__(self, similarity: ItemSimilarity, lam: float = 0.7) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"MMR lam must be in [0, 1], got {lam}")
        self.similarity = similarity
        self.lam = float(lam)

    def __repr__(self) -> str:
        return f"MMR(lam={self.lam:g}, similarity={self.similarity!r})"

    def _rerank(self, cands: Candidates, k: int) -> np.ndarray:
        chosen, n_chosen, available = greedy_setup(cands, k)
        if cands.items.shape[1] == 0:
            return chosen
        sims = self.similarity.pairwise(cands.items) if self.lam < 1.0 else None
        # Max similarity to the chosen items; nothing chosen yet counts as 0 (cosines may be < 0).
        closest = np.full(cands.items.shape, -np.inf)
        rows = np.arange(len(cands))
        for slot in range(k):
            penalty = np.where(np.isfinite(closest), closest, 0.0)
            objective = self.lam * cands.relevance - (1.0 - self.lam) * penalty
            objective = np.where(available, objective, -np.inf)
            best = objective.argmax(axis=1)
            live = available[rows, best]
            if not live.any():
                break
            r, j = rows[live], best[live]
            take(cands, chosen, n_chosen, available, slot, r, j)
            if sims is not None:
                closest[r] = np.maximum(closest[r], sims[r, j])
        return chosen
