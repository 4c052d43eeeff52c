"""Shared tiny datasets where the right answer is known."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from lmrec.data.schema import Dataset


class KeywordEncoder:
    """A stand-in sentence encoder: the vector says whether the text contains ``keyword``."""

    dim = 8

    def __init__(self, keyword: str = "even") -> None:
        self.keyword, self.name = keyword, f"fake:{keyword}"
        self.calls: list[int] = []

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            out[i, 0 if self.keyword in text else 1] = 1.0
            out[i, 2 + int(hashlib.md5(text.encode()).hexdigest(), 16) % 6] = 0.1  # a little identity
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def checkerboard(n_users: int = 40, n_items: int = 40, per_user: int = 12, seed: int = 0) -> Dataset:
    """User u likes only items of u's parity: popularity cannot tell them apart, any model
    that learns from co-occurrence can."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0
    for u in range(n_users):
        liked = np.arange(u % 2, n_items, 2)
        for i in rng.choice(liked, size=per_user, replace=False):
            rows.append((f"u{u}", f"i{i}", t))
            t += 1
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    catalog = pd.DataFrame(
        {
            "item": [f"i{i}" for i in range(n_items)],
            "title": [f"Item {i}" for i in range(n_items)],
            "categories": [["even"] if i % 2 == 0 else ["odd"] for i in range(n_items)],
        }
    )
    return Dataset.from_frame(frame, catalog, name="checkerboard")


@pytest.fixture
def board() -> Dataset:
    return checkerboard()
