"""Control encoders: what a text model scores with no language understanding in its item vectors.

A text model's gain over an ID model is the language model's only where it beats the same model fed

- ``random:DIM`` — a fixed random unit vector per text (seeded by the text), of the encoder's
  dimension: vectors that tell items apart and carry nothing else;
- ``shuffled:SPEC`` — the vectors of encoder ``SPEC`` (e.g. ``shuffled:minilm``) handed to other
  items (a fixed permutation of each batch of texts): real language-model vectors with the
  item→text map broken.

Both are ``text_encoder`` values like any other (``--set text_encoder=shuffled:minilm``).
"""

from __future__ import annotations

import hashlib

import numpy as np

from lmrec.errors import ConfigError

RANDOM_PREFIX, SHUFFLED_PREFIX = "random:", "shuffled:"


class RandomTextEncoder:
    """A unit vector per text from a generator seeded by the text's hash."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ConfigError(f"random:DIM needs a dimension >= 1, got {dim}")
        self.dim, self.name = dim, f"random:{dim}"

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        out = np.empty((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class ShuffledEncoder:
    """Another encoder's vectors, each text given the vector of another text in the same call
    (a permutation seeded by the number of texts: the same catalog is shuffled the same way)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.dim, self.name = inner.dim, f"shuffled:{inner.name}"  # type: ignore[attr-defined]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        vectors = self.inner.encode(texts, progress=progress)  # type: ignore[attr-defined]
        return vectors[np.random.default_rng(len(texts)).permutation(len(texts))]


def parse_random_dim(spec: str) -> int:
    try:
        return int(spec[len(RANDOM_PREFIX) :])
    except ValueError:
        raise ConfigError(f"text encoder {spec!r}: random:DIM needs an integer dimension") from None
