"""Re-rankers that trade a little relevance for diversity, calibration or long-tail exposure: MMR,
DPP, calibration, FA*IR-style fair exposure.

Each one follows :class:`lmrec.evaluate.evaluator.Reranker`, so it plugs into
``evaluate(model, eval_set, reranker=..., candidates=100)``::

    from lmrec.rerank import MMR, CategorySimilarity

    mmr = MMR(CategorySimilarity.from_catalog(split.dataset), lam=0.7)
    result = evaluate(model, split.eval_set("test"), reranker=mmr)

:func:`make_reranker` makes one by name, for command lines and services.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.rerank.calibration import Calibrated
from lmrec.rerank.dpp import DPP
from lmrec.rerank.fair import FairExposure
from lmrec.rerank.mmr import MMR
from lmrec.rerank.similarity import (
    CategorySimilarity,
    CooccurrenceSimilarity,
    EmbeddingSimilarity,
    ItemSimilarity,
    item_vectors_of,
)

__all__ = [
    "DPP",
    "MMR",
    "RERANKERS",
    "SIMILARITIES",
    "Calibrated",
    "CategorySimilarity",
    "CooccurrenceSimilarity",
    "EmbeddingSimilarity",
    "FairExposure",
    "ItemSimilarity",
    "item_vectors_of",
    "make_reranker",
    "make_similarity",
]

if TYPE_CHECKING:
    from lmrec.models.base import Recommender

RERANKERS = ("mmr", "dpp", "calibration", "fair")
SIMILARITIES = ("genre", "embedding", "cooccurrence")


def make_similarity(name: str, dataset: Dataset, model: Recommender | None = None) -> ItemSimilarity:
    """An item similarity by name: ``genre`` (catalog categories), ``embedding`` (the model's
    learned item embeddings) or ``cooccurrence`` (``dataset``'s interactions — pass the training
    part so test interactions do not leak)."""
    if name == "genre":
        return CategorySimilarity.from_catalog(dataset)
    if name == "embedding":
        vectors = None if model is None else item_vectors_of(model)
        if model is None or vectors is None:
            raise ConfigError(
                f"{type(model).__name__} has no learned item embeddings; use the genre or cooccurrence similarity"
            )
        return EmbeddingSimilarity(vectors, name=f"{model.name} item embeddings")
    if name == "cooccurrence":
        return CooccurrenceSimilarity.from_interactions(dataset)
    raise ConfigError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")


def make_reranker(
    name: str,
    value: float,
    dataset: Dataset,
    *,
    model: Recommender | None = None,
    similarity_name: str = "genre",
) -> MMR | DPP | Calibrated | FairExposure:
    """A re-ranker by name with its one trade-off ``value``: MMR's λ, DPP's θ, calibration's λ or
    fair exposure's p (the target share of long-tail items).

    MMR and DPP compare items with :func:`make_similarity` ``similarity_name``; calibration reads the
    catalog's categories; fair exposure reads the long tail off ``dataset``'s interactions (pass the
    training part).
    """
    if name == "calibration":
        return Calibrated.from_catalog(dataset, lam=value)
    if name == "fair":
        return FairExposure.from_training(dataset, p=value)
    if name not in RERANKERS:
        raise ConfigError(f"unknown re-ranker {name!r}; choose one of {', '.join(RERANKERS)}")
    sim = make_similarity(similarity_name, dataset, model)
    if name == "mmr":
        return MMR(sim, lam=value)
    return DPP(sim, theta=value)
