"""Item text: templates, sentence encoders and an on-disk embedding cache."""

from lmrec.text.cache import EmbeddingCache, encode_cached
from lmrec.text.encoders import SentenceTransformerEncoder, TextEncoder, load_encoder
from lmrec.text.templates import item_texts

__all__ = ["EmbeddingCache", "SentenceTransformerEncoder", "TextEncoder", "encode_cached", "item_texts", "load_encoder"]
