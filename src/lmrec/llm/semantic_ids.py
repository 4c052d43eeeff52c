"""Semantic item IDs: a short code per item, shared by items whose content is similar.

TIGER (Rajput et al. 2023) names each item by a tuple of codewords from a residual quantiser of
its content embedding, and a sequence model generates those tuples. Items with similar text share
code prefixes, so what the model learns about one item carries over to its neighbours, and the
output vocabulary is ``levels × codebook`` tokens instead of one per item.

The paper trains an RQ-VAE; residual k-means (quantise, subtract the centroid, quantise the
remainder) gives the same coarse-to-fine structure without a second model to train, and is what
later work found about as good ("RQ-KMeans"). A last column makes the codes unique: items that
fall into the same cell at every level are numbered 0, 1, 2, ... within that cell.
"""

from __future__ import annotations

import numpy as np


def semantic_ids(vectors: np.ndarray, levels: int = 3, codebook: int = 32, seed: int = 0) -> np.ndarray:
    """Codes (n_items, levels + 1) int64 by residual k-means; every row is unique.

    Column ``l < levels`` is the cluster of the level-``l`` residual among ``codebook`` centroids
    (fewer when there are fewer distinct items); the last column tells apart items with equal
    first ``levels`` codes, in catalog order. Deterministic given ``seed``.
    """
    if levels < 1 or codebook < 1:
        raise ValueError(f"need levels >= 1 and codebook >= 1, got {levels} and {codebook}")
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"vectors must be (n_items, dim), got shape {x.shape}")
    n = len(x)
    codes = np.zeros((n, levels + 1), dtype=np.int64)
    if n == 0:
        return codes
    residual = x - x.mean(0)
    rng = np.random.default_rng(seed)
    for level in range(levels):
        centroids, assign = kmeans(residual, codebook, rng)
        codes[:, level] = assign
        residual = residual - centroids[assign]
    codes[:, levels] = _rank_within_groups(codes[:, :levels])
    return codes


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: (centroids (k', dim), assignment (n,)).

    ``k' = min(k, distinct points)`` so that no centroid starts on a duplicate of another. An
    emptied cluster is restarted on the point farthest from its centroid, which keeps all ``k'``
    codes in use.
    """
    n = len(x)
    k = min(k, len(np.unique(x, axis=0)))
    centroids = _kmeans_plus_plus(x, k, rng)
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        distances = _squared_distances(x, centroids)
        new = distances.argmin(1)
        for empty in np.setdiff1d(np.arange(k), new):
            far = int(distances[np.arange(n), new].argmax())
            new[far] = empty
            distances[far] = 0.0  # do not move the same point twice
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k).astype(np.float64)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        # a cluster emptied again by a move above keeps its old centroid
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1.0)[:, None], centroids)
    return centroids, assign


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Centroids drawn with probability proportional to the squared distance to the nearest one."""
    chosen = [int(rng.integers(len(x)))]
    nearest = _squared_distances(x, x[chosen])[:, 0]
    for _ in range(1, k):
        total = nearest.sum()
        pick = int(rng.choice(len(x), p=nearest / total)) if total > 0 else int(rng.integers(len(x)))
        chosen.append(pick)
        nearest = np.minimum(nearest, _squared_distances(x, x[[pick]])[:, 0])
    return x[chosen].copy()


def _squared_distances(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _rank_within_groups(keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... over the rows of each group of equal ``keys`` rows, in row order."""
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank


def code_sizes(codes: np.ndarray) -> np.ndarray:
    """How many values each column of ``codes`` takes (its largest value + 1; 1 for no items):
    the tokens a model needs per code position."""
    codes = np.asarray(codes)
    return codes.max(0) + 1 if len(codes) else np.ones(codes.shape[1], dtype=np.int64)


def code_usage(codes: np.ndarray, codebook: int) -> dict[str, object]:
    """How well ``codes`` (from :func:`semantic_ids`) use their codebooks: per level the codewords
    in use (of ``codebook``), and the collisions the last column resolves — the items that share
    all ``levels`` codewords with another item, and the largest such group."""
    codes = np.asarray(codes)
    levels = codes.shape[1] - 1
    used = [len(np.unique(codes[:, level])) for level in range(levels)]
    _, sizes = np.unique(codes[:, :levels], axis=0, return_counts=True)
    return {
        "codebook": codebook,
        "used_per_level": used,
        "usage_per_level": [round(u / codebook, 4) for u in used],
        "distinct_prefixes": len(sizes),
        "items_in_collisions": int(sizes[sizes > 1].sum()),
        "largest_collision": int(sizes.max()) if len(sizes) else 0,
    }
