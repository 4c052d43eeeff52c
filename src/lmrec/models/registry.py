"""The one table that maps a model name to its class.

Each entry is a ``"module:Class"`` string, imported only when :func:`model_class` asks for it:
importing the registry imports no model (and none of their extras), and a model module may itself
look names up here (``lm-ranker`` resolves its base model) without an import cycle. A family that
lives outside ``lmrec.models`` is one more line of the table.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from lmrec.errors import ConfigError
from lmrec.models.saved import read_model_meta

if TYPE_CHECKING:
    from lmrec.models.base import Recommender

# name → "module:Class"; iterating it gives the names (command-line choices, error messages)
MODELS: dict[str, str] = {
    "pop": "lmrec.models.popularity:Popularity",
    "itemknn": "lmrec.models.itemknn:ItemKNN",
    "ease": "lmrec.models.ease:EASE",
    "bpr": "lmrec.models.mf:BPR",
    "als": "lmrec.models.als:ALS",
    "svd": "lmrec.models.svd:SVD",
    "ncf": "lmrec.models.ncf:NCF",
    "sasrec": "lmrec.models.sequential.model:SASRec",
    "bert4rec": "lmrec.models.sequential.model:BERT4Rec",
    "text-sasrec": "lmrec.models.sequential.model:TextSASRec",
    "mtl-sasrec": "lmrec.models.multitask.model:MultiTaskSASRec",
    "lm-ranker": "lmrec.models.lmranker.encoder:LMRanker",
    "lm-list-ranker": "lmrec.models.lmranker.lists:ListRanker",  # SmolLM2 re-ranks lettered candidates
    "tiger": "lmrec.models.tiger:Tiger",
    "llm-gen": "lmrec.models.llmgen:GenerativeLLM",
    "compressed": "lmrec.compress.model:CompressedSequential",  # `lmrec compress`: ONNX encoder + quantized table
}


def model_class(name: str) -> type[Recommender]:
    """The class registered as ``name``, its module imported now."""
    try:
        target = MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    module, _, attr = target.partition(":")
    klass: type[Recommender] = getattr(importlib.import_module(module), attr)
    return klass


def load_model(directory: str | Path) -> Recommender:
    """Load a saved model of any registered class (its name is in its ``config.json``)."""
    return model_class(read_model_meta(Path(directory))["model"]).load(directory)
