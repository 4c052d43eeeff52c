"""Score-level text fusion, a part of the sequential family: the model's score of an item plus a
weight × the text similarity between the item and what the user looked at last.

    score(u, i) = q_u · e_i + w · p_u · t_i

``t_i`` is item i's text embedding scaled to unit length, ``p_u`` the recency-weighted mean of the
text vectors of the user's last ``recent`` items (each older item counts ``decay`` times the next),
and ``w`` the weight. It is the dot product of ``[q_u, w·p_u]`` and ``[e_i, t_i]``, so everything
that reads a model's vectors (the service, the ANN index, batch scoring, compression) reads the
fused model like any other. Nothing is trained: ``w`` is chosen among ``choose`` by validation
NDCG@10 after the model is fitted (the score-level hybrid of Harte et al. 2023, "LLMSeqSim &
Sequential"; on sparse catalogs the items a user buys in a row share brand and product line).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError
from lmrec.models.base import ModelConfig, Queries


@dataclass
class TextFusionConfig(ModelConfig):
    """``fusion.*`` options of a sequential model."""

    weight: float = 0.0  # w; 0: off (the model's own scores)
    # weights tried on validation after fitting; the best (0 included: fusion that does not help is
    # switched off) becomes ``weight``. Empty: ``weight`` as given
    choose: tuple[float, ...] = ()
    recent: int = 3  # the user's last items the text profile reads
    decay: float = 0.5  # weight of each older item relative to the one after it

    def validate(self) -> None:
        if self.weight < 0 or any(w < 0 for w in self.choose):
            raise ConfigError(f"fusion weights must be >= 0, got {self.weight} and {self.choose}")
        if self.recent < 1 or not 0 < self.decay <= 1:
            raise ConfigError(f"fusion needs recent >= 1 and 0 < decay <= 1, got {self.recent}, {self.decay}")

    @property
    def on(self) -> bool:
        """Whether the model reads text for fusion (a weight given or to be chosen)."""
        return self.weight > 0 or any(w > 0 for w in self.choose)


class TextFusion:
    """The fusion of one fitted model: its unit text rows and the options."""

    def __init__(self, config: TextFusionConfig, text: torch.Tensor) -> None:
        self.config = config
        self.text = text / text.norm(dim=1, keepdim=True).clamp(min=1e-12)  # (n_items, d)
        self._by_row: torch.Tensor | None = None  # the text by net row (row 0: pad), for position_scores

    @property
    def weight(self) -> float:
        return self.config.weight

    def profiles(self, batch: QueryBatch) -> torch.Tensor:
        """(B, d): each history's last ``recent`` known items' text, recency-weighted, as a weighted
        mean (items the model does not know, -1 or past its catalog, are skipped, as the sequence
        model skips them)."""
        recent, decay = self.config.recent, self.config.decay
        batch = batch.known(len(self.text))
        lengths = torch.from_numpy(batch.lengths())
        ends = torch.from_numpy(batch.indptr[1:].astype(np.int64))
        out = torch.zeros(len(batch), self.text.shape[1])
        total = torch.zeros(len(batch), 1)
        items = torch.from_numpy(batch.items.astype(np.int64))
        for back in range(recent):  # the item `back` places before the end of each history
            has = lengths > back
            if not bool(has.any()):
                break
            rows = items[ends[has] - 1 - back]
            out[has] += decay**back * self.text[rows]
            total[has] += decay**back
        return out / total.clamp(min=1e-12)

    def position_scores(self, inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``w · p · t_i`` for every item at the kept positions of right-padded training inputs
        (B, L) of net rows (0 pad, item i at row i + 1): the profile at position j reads the items
        at j, j − 1, … as :meth:`profiles` reads a history's end. (N, n_items), N = keep.sum()."""
        recent, decay = self.config.recent, self.config.decay
        if self._by_row is None or self._by_row.device != inputs.device:  # once, not every training step
            self._by_row = torch.cat([torch.zeros(1, self.text.shape[1]), self.text]).to(inputs.device)
        text = self._by_row
        out = torch.zeros(*inputs.shape, self.text.shape[1], device=inputs.device)
        total = torch.zeros(*inputs.shape, 1, device=inputs.device)
        for back in range(min(recent, inputs.shape[1])):  # the item `back` places before each position
            rows = torch.nn.functional.pad(inputs, (back, 0))[:, : inputs.shape[1]]
            out += decay**back * text[rows]
            total += decay**back * (rows > 0).unsqueeze(-1)
        profiles = (out / total.clamp(min=1e-12))[keep]
        return self.weight * profiles @ text[1:].T

    def queries(self, queries: Queries, batch: QueryBatch) -> Queries:
        """The model's query vectors with ``weight`` × the text profile appended."""
        fused = torch.cat([queries.vectors, self.weight * self.profiles(batch)], dim=1)
        return Queries(fused, queries.offsets, queries.exact)

    def items(self, rows: torch.Tensor) -> torch.Tensor:
        """The model's item rows with the unit text rows appended."""
        return torch.cat([rows, self.text[: len(rows)].to(rows)], dim=1)

    def grown(self, vectors: np.ndarray) -> TextFusion:
        """The same fusion over ``len(vectors)`` more items (their text embeddings)."""
        return TextFusion(self.config, torch.cat([self.text, torch.from_numpy(np.asarray(vectors, np.float32))]))

    def chosen(self, validate: Callable[[], float]) -> dict[str, float]:
        """Set ``weight`` to the one of ``choose`` that ``validate`` (run with each weight in place)
        scores highest; returns every weight's score. Ties go to the smaller weight."""
        scores: dict[str, float] = {}
        for w in sorted(set(self.config.choose)):
            self.config.weight = w
            scores[str(w)] = validate()
        self.config.weight = float(max(scores, key=lambda w: (scores[w], -float(w))))
        return scores
