"""Determinantal point process re-ranking: fast greedy MAP inference (Chen, Zhang & Zhou,
"Fast Greedy MAP Inference for Determinantal Point Process to Improve Recommendation Diversity",
NeurIPS 2018).

The kernel is ``L = diag(q) · S · diag(q)``: S the candidates' similarity (positive semi-definite:
cosines of item vectors, plus a tiny jitter on the diagonal) and ``q_i = exp(α · rel_i)`` their
quality, with ``α = θ / (2 (1 − θ))``. Then ``log det L_Y = θ/(1−θ) · Σ_{i∈Y} rel_i + log det S_Y``:
θ → 0 asks only for a diverse list, θ → 1 only for a relevant one.

Greedy MAP adds the item with the largest ``det L_{Y∪{i}} / det L_Y = q_i² · d_i²``, where d_i² is
the part of item i's similarity vector not explained by the items already in Y, kept up to date
by one incremental Cholesky step per pick. The quality factor is handled in the log domain
(``log q_i² = 2 α rel_i``), so a θ near 1 does not overflow, and the Cholesky runs on S alone,
whose entries stay in [-1, 1]. An item whose residual d_i² is ≤ ``epsilon`` lies (numerically) in
the span of the chosen ones — an exact duplicate of a chosen item, for one — and can add nothing:
it is never picked. When no candidate is left with a positive residual (a list already as diverse
as the similarity can tell: for example every genre combination among the candidates is used up),
the DPP stops and the remaining slots are filled in the model's order, except that items identical
to one already chosen (similarity 1) come after all others.
"""

from __future__ import annotations

import numpy as np

from lmrec.rerank.candidates import BlockReranker, Candidates, fill_in_order, greedy_setup, take
from lmrec.rerank.similarity import ItemSimilarity

__all__ = ["DPP"]

# Similarity from which two items count as the same when the leftover slots are filled.
_SAME = 1e-9


class DPP(BlockReranker):
    """Greedy MAP of a DPP with quality ``exp(α·rel)``, α = θ/(2(1−θ)), θ ∈ [0, 1).

    ``jitter`` is added to the similarity's diagonal so S is strictly positive definite under
    rounding; it must stay below ``epsilon``, the smallest residual that still counts as new.
    """

    def __init__(
        self, similarity: ItemSimilarity, theta: float = 0.7, *, epsilon: float = 1e-10, jitter: float = 1e-12
    ) -> None:
        if not 0.0 <= theta < 1.0:
            raise ValueError(f"DPP theta must be in [0, 1), got {theta}")
        if not 0.0 <= jitter < epsilon:
            raise ValueError(f"need 0 <= jitter < epsilon, got jitter={jitter}, epsilon={epsilon}")
        self.similarity = similarity
        self.theta = float(theta)
        self.epsilon = float(epsilon)
        self.jitter = float(jitter)

    @property
    def alpha(self) -> float:
        return self.theta / (2.0 * (1.0 - self.theta))

    def __repr__(self) -> str:
        return f"DPP(theta={self.theta:g}, similarity={self.similarity!r})"

    def _rerank(self, cands: Candidates, k: int) -> np.ndarray:
        chosen, n_chosen, available = greedy_setup(cands, k)
        b, n = cands.items.shape
        if n == 0 or k == 0:
            return chosen
        sims = self.similarity.pairwise(cands.items)
        log_quality = 2.0 * self.alpha * cands.relevance  # log q_i²
        residual = np.where(cands.valid, np.einsum("bii->bi", sims) + self.jitter, 0.0)  # d_i²
        factors = np.zeros((b, min(k, n), n))  # rows of the incremental Cholesky factor, c_i
        rows = np.arange(b)
        live = np.ones(b, dtype=bool)  # queries whose DPP has not stopped
        closest = np.full((b, n), -np.inf)  # max similarity to a chosen item
        for slot in range(min(k, n)):
            usable = available & (residual > self.epsilon) & live[:, None]
            with np.errstate(divide="ignore"):
                gain = np.where(usable, log_quality + np.log(np.where(usable, residual, 1.0)), -np.inf)
            best = gain.argmax(axis=1)
            live &= usable[rows, best]
            if not live.any():
                break
            r, j = rows[live], best[live]
            take(cands, chosen, n_chosen, available, slot, r, j)
            # e_i = (S_ji − <c_j, c_i>) / d_j ; d_i² −= e_i²  (Chen et al., Algorithm 1)
            c_j = factors[r, :slot, j]  # (m, slot)
            dot = np.einsum("ms,msn->mn", c_j, factors[r, :slot, :])
            e = (sims[r, j, :] - dot) / np.sqrt(residual[r, j])[:, None]
            factors[r, slot, :] = e
            residual[r] = residual[r] - e**2
            closest[r] = np.maximum(closest[r], sims[r, j, :])
        # Out of directions: the rest in model order, copies of a chosen item last.
        return fill_in_order(chosen, n_chosen, cands, available, last=closest >= 1.0 - _SAME)
