"""On-disk cache of text embeddings, keyed by encoder name and text hash.

Only texts the cache has not seen are encoded; the rest are read back. One folder per encoder
holds ``keys.json`` (text hashes in row order) and ``vectors.npy``; both are replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from lmrec.text.encoders import TextEncoder


class EmbeddingCache:
    def __init__(self, directory: str | Path, encoder_name: str, dim: int) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_name)
        self.directory = Path(directory) / slug
        self.dim = dim
        self.keys: list[str] = []
        self.vectors = np.zeros((0, dim), np.float32)
        if (self.directory / "keys.json").is_file():
            self.keys = json.loads((self.directory / "keys.json").read_text())
            self.vectors = np.load(self.directory / "vectors.npy", allow_pickle=False)
        self.index = {k: i for i, k in enumerate(self.keys)}

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def lookup(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Cached vectors (zeros where missing) and the positions of the missing texts."""
        out = np.zeros((len(texts), self.dim), np.float32)
        missing = []
        for pos, text in enumerate(texts):
            row = self.index.get(self.key(text))
            if row is None:
                missing.append(pos)
            else:
                out[pos] = self.vectors[row]
        return out, missing

    def add(self, texts: list[str], vectors: np.ndarray) -> None:
        new = [(self.key(t), v) for t, v in zip(texts, vectors, strict=True) if self.key(t) not in self.index]
        if not new:
            return
        for key, _ in new:
            self.index[key] = len(self.keys)
            self.keys.append(key)
        self.vectors = np.concatenate([self.vectors, np.stack([v for _, v in new]).astype(np.float32)])
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp_vec, tmp_keys = self.directory / "vectors.tmp.npy", self.directory / "keys.tmp.json"
        np.save(tmp_vec, self.vectors, allow_pickle=False)
        tmp_keys.write_text(json.dumps(self.keys))
        os.replace(tmp_vec, self.directory / "vectors.npy")
        os.replace(tmp_keys, self.directory / "keys.json")


def encode_cached(
    encoder: TextEncoder, texts: list[str], cache_dir: str | Path | None, progress: bool = False
) -> np.ndarray:
    """Embeddings of ``texts``, encoding only what the cache in ``cache_dir`` lacks."""
    if cache_dir is None:
        return encoder.encode(texts, progress=progress)
    cache = EmbeddingCache(cache_dir, encoder.name, encoder.dim)
    out, missing = cache.lookup(texts)
    if missing:
        todo = [texts[i] for i in missing]
        vectors = encoder.encode(todo, progress=progress)
        out[missing] = vectors
        cache.add(todo, vectors)
    return out
