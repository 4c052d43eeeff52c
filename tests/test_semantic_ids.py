"""Semantic IDs: unique, deterministic, and similar items share codes."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.llm.semantic_ids import code_usage, kmeans, semantic_ids


def clustered(n_clusters: int = 8, per: int = 25, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)) * 3
    labels = np.repeat(np.arange(n_clusters), per)
    return centers[labels] + rng.normal(size=(len(labels), dim)), labels


def test_shape_dtype_and_unique_rows() -> None:
    x, _ = clustered()
    codes = semantic_ids(x, levels=3, codebook=4)
    assert codes.shape == (len(x), 4) and codes.dtype == np.int64
    assert len(np.unique(codes, axis=0)) == len(x)
    assert codes[:, :3].min() >= 0 and codes[:, :3].max() < 4


def test_deterministic_given_seed() -> None:
    x, _ = clustered()
    assert np.array_equal(semantic_ids(x, seed=3), semantic_ids(x, seed=3))


def test_similar_vectors_share_first_code() -> None:
    x, labels = clustered()
    codes = semantic_ids(x, levels=2, codebook=8)
    rng = np.random.default_rng(1)
    a, b = rng.integers(len(x), size=(2, 5000))
    same_first = codes[a, 0] == codes[b, 0]
    similar = labels[a] == labels[b]
    assert same_first[similar].mean() > 0.9
    assert same_first[similar].mean() > same_first[~similar].mean() + 0.5


def test_collisions_numbered_in_last_column() -> None:
    x = np.repeat(np.eye(3), [4, 1, 2], axis=0)  # identical vectors must still get distinct codes
    codes = semantic_ids(x, levels=2, codebook=3)
    assert len(np.unique(codes, axis=0)) == len(x)
    assert sorted(codes[:4, -1].tolist()) == [0, 1, 2, 3] and codes[4, -1] == 0


@pytest.mark.parametrize("n", [0, 1, 3])
def test_fewer_items_than_codebook(n: int) -> None:
    x = np.random.default_rng(0).normal(size=(n, 5))
    codes = semantic_ids(x, levels=3, codebook=32)
    assert codes.shape == (n, 4)
    assert len(np.unique(codes, axis=0)) == n


def test_kmeans_uses_every_cluster() -> None:
    x, _ = clustered(n_clusters=3, per=10)
    centroids, assign = kmeans(x, 6, np.random.default_rng(0))
    assert centroids.shape == (6, x.shape[1])
    assert np.bincount(assign, minlength=6).min() > 0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        semantic_ids(np.zeros(4))
    with pytest.raises(ValueError):
        semantic_ids(np.zeros((4, 2)), levels=0)


def test_code_usage_counts_codewords_and_collisions() -> None:
    codes = np.array([[0, 1, 0], [0, 1, 1], [0, 1, 2], [2, 0, 0], [3, 1, 0]])  # 3 items share (0, 1)
    usage = code_usage(codes, codebook=4)
    assert usage["used_per_level"] == [3, 2]
    assert usage["usage_per_level"] == [0.75, 0.5]
    assert usage["distinct_prefixes"] == 3
    assert usage["items_in_collisions"] == 3 and usage["largest_collision"] == 3
    spread = code_usage(semantic_ids(clustered()[0], levels=2, codebook=4), codebook=4)
    assert spread["used_per_level"] == [4, 4]  # dead codes are restarted: every codeword is used
