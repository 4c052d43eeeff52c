"""Item text: templates, sentence encoders and an on-disk embedding cache."""

from lmrec.text.cache import EmbeddingCache, encode_cached
from lmrec.text.encoders import SentenceTransformerEncoder, TextEncoder, load_encoder
from lmrec.text.templates import (
    DEFAULT_TEMPLATE,
    NoItemTextError,
    TemplateError,
    choose_template,
    item_names,
    item_texts,
)
from lmrec.text.whiten import mean_cosine, whiten

__all__ = [
    "DEFAULT_TEMPLATE",
    "EmbeddingCache",
    "NoItemTextError",
    "SentenceTransformerEncoder",
    "TemplateError",
    "TextEncoder",
    "choose_template",
    "encode_cached",
    "item_names",
    "item_texts",
    "load_encoder",
    "mean_cosine",
    "whiten",
]
