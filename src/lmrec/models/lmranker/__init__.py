"""The language-model rankers, two families over a fast base model's top candidates:

* ``lm-ranker`` (:mod:`.encoder`) — a sentence encoder fine-tuned as a bi-encoder of user histories
  and items;
* ``lm-list-ranker`` (:mod:`.lists`) — a causal LM that picks the next item from lettered candidates.

What they share (candidates, lifting them in a row, the step schedule) is :mod:`.common`.
"""

from lmrec.models.lmranker.common import RANKERS, fuse_orders, lift_candidates, step_schedule, top_candidates
from lmrec.models.lmranker.encoder import (
    LMRanker,
    LMRankerConfig,
    encoder_path,
    load_backbone,
    load_tokenizer,
    mean_pool,
)
from lmrec.models.lmranker.lists import (
    LABELS,
    LIST_CANDIDATES,
    LIST_HISTORY,
    LIST_QUESTION,
    LIST_SYSTEM,
    MIX_GRID,
    ListRanker,
    ListRankerConfig,
    candidate_ndcg,
)

__all__ = [
    "LABELS",
    "LIST_CANDIDATES",
    "LIST_HISTORY",
    "LIST_QUESTION",
    "LIST_SYSTEM",
    "MIX_GRID",
    "RANKERS",
    "LMRanker",
    "LMRankerConfig",
    "ListRanker",
    "ListRankerConfig",
    "candidate_ndcg",
    "encoder_path",
    "fuse_orders",
    "lift_candidates",
    "load_backbone",
    "load_tokenizer",
    "mean_pool",
    "step_schedule",
    "top_candidates",
]
