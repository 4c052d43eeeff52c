"""The number early stopping maximises: NDCG@k of a model on the validation users.

It takes any :class:`~lmrec.evaluate.evaluator.Scorer` (``n_items`` and ``score``), not a
``Recommender``: ``train/`` sits below ``models/`` and never imports it.
"""

from __future__ import annotations

from lmrec.data.batch import EvalSet
from lmrec.evaluate.evaluator import Scorer, evaluate


def validation_ndcg(model: Scorer, valid: EvalSet, k: int = 10) -> float:
    """NDCG@k on the validation set (full ranking, history items excluded)."""
    return evaluate(model, valid, ks=(k,), metrics=("ndcg",)).metrics[f"ndcg@{k}"]
