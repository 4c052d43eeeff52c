"""The one table that maps a model name to its class."""

from __future__ import annotations

from lmrec.errors import ConfigError
from lmrec.models.base import Recommender
from lmrec.models.ease import EASE
from lmrec.models.itemknn import ItemKNN
from lmrec.models.llmgen import GenerativeLLM
from lmrec.models.lmranker import LMRanker
from lmrec.models.mf import ALS, BPR, SVD
from lmrec.models.ncf import NCF
from lmrec.models.popularity import Popularity
from lmrec.models.sequential import BERT4Rec, SASRec, TextSASRec
from lmrec.models.tiger import Tiger

MODELS: dict[str, type[Recommender]] = {
    "pop": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "bpr": BPR,
    "als": ALS,
    "svd": SVD,
    "ncf": NCF,
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "text-sasrec": TextSASRec,
    "lm-ranker": LMRanker,
    "tiger": Tiger,
    "llm-gen": GenerativeLLM,
}


def model_class(name: str) -> type[Recommender]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
