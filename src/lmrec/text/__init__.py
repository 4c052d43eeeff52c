"""Item text: templates, sentence encoders and an on-disk embedding cache."""

from lmrec.text.cache import EmbeddingCache, encode_cached
from lmrec.text.encoders import SentenceTransformerEncoder, TextEncoder, load_encoder
from lmrec.text.templates import item_texts
from lmrec.text.whiten import mean_cosine, whiten

__all__ = [
    "EmbeddingCache",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "encode_cached",
    "item_texts",
    "load_encoder",
    "mean_cosine",
    "whiten",
]
