"""Whitening: text embeddings made isotropic and cut to a model's width, to initialise an ID table.

Sentence and language-model embeddings are anisotropic: they crowd into a narrow cone (a mean
pairwise cosine near 1), so a few directions carry most of the variance and dot products between
items say little. PCA whitening (BERT-whitening, Su et al. 2021; WhitenRec, Zhang et al. 2024)
centres the vectors, rotates them onto the covariance's eigenvectors, keeps the top ``dim``
components and divides each by its standard deviation, so every kept direction carries equal
variance. The rows are then scaled to the spread of the table they replace: an embedding table
initialised as normal(0, 0.02) has entries of standard deviation 0.02.

:func:`mean_cosine` measures the anisotropy before and after.
"""

from __future__ import annotations

import numpy as np

from lmrec.errors import ConfigError

DEFAULT_SCALE = 0.02  # std of the entries of a normal(0, 0.02) embedding table


def whiten(
    vectors: np.ndarray,
    dim: int | None = None,
    *,
    scale: float = DEFAULT_SCALE,
    normalize_rows: bool = True,
    shrinkage: float = 0.0,
    eps: float = 1e-6,
    seed: int = 0,
) -> np.ndarray:
    """PCA-whitened ``vectors`` (n, d) → (n, dim) float32, ready to initialise an item table.

    * centre on the mean row, take the covariance, shrink it towards a multiple of the identity
      (``shrinkage`` in [0, 1]: ``(1 - s)·C + s·(tr C / d)·I``; it damps the smallest, noisiest
      directions when there are few rows), and eigendecompose it;
    * keep the ``dim`` largest components (None: all of them), each eigenvector's sign fixed so
      that its largest entry is positive (the same input gives the same output), and divide each
      by the square root of its eigenvalue: the kept columns have unit variance and no correlation;
    * components whose eigenvalue is at most ``eps`` times the largest are noise, not text
      (``n <= d`` rows leave at most ``n - 1`` real ones); if fewer than ``dim`` real components
      remain, the missing columns are drawn from normal(0, 1) with ``seed``, as the table's own
      initialisation would have been, and are written after the text ones;
    * multiply by ``scale``; with ``normalize_rows`` each row is then rescaled so that its root
      mean square is ``scale`` (every item starts with the same norm, ``scale·sqrt(dim)``, as a
      normal(0, scale) row has on average), else the columns keep standard deviation ``scale``.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError(f"whiten needs a (rows, features) matrix with at least 2 rows, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ConfigError(f"whiten: vectors[{bad[0]}, {bad[1]}] is {x[bad[0], bad[1]]}; embeddings must be finite")
    n, d = x.shape
    dim = d if dim is None else dim
    if dim < 1:
        raise ConfigError(f"whiten: dim must be >= 1, got {dim}")
    if not 0.0 <= shrinkage <= 1.0 or scale <= 0 or eps <= 0:
        raise ConfigError(f"whiten needs 0 <= shrinkage <= 1, scale > 0 and eps > 0; got {shrinkage}, {scale}, {eps}")

    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / (n - 1)
    if shrinkage > 0:
        cov = (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / d) * np.eye(d)
    values, vecs = np.linalg.eigh(cov)  # ascending
    values, vecs = values[::-1], vecs[:, ::-1]
    real = int(np.sum(values > eps * max(values[0], np.finfo(np.float64).tiny)))
    keep = min(dim, real)
    vecs = vecs[:, :keep]
    # sign fix: the entry of largest magnitude of each eigenvector is positive
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(keep)])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    out = centred @ vecs / np.sqrt(values[:keep])
    if keep < dim:
        out = np.concatenate([out, np.random.default_rng(seed).standard_normal((n, dim - keep))], axis=1)
    if normalize_rows:
        rms = np.sqrt((out**2).mean(axis=1, keepdims=True))
        out = out / np.maximum(rms, np.finfo(np.float64).tiny)
    return (out * scale).astype(np.float32)


def mean_cosine(vectors: np.ndarray) -> float:
    """Mean cosine similarity over all pairs of distinct rows: near 1 for an anisotropic cloud
    (every vector points the same way), near 0 for an isotropic one. Exact and O(n·d): the sum of
    the unit rows, squared, is the sum of all pairwise cosines plus the n self-similarities."""
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    if x.ndim != 2 or n < 2:
        raise ConfigError(f"mean_cosine needs a (rows, features) matrix with at least 2 rows, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigError(f"mean_cosine: row {int(np.argmax(norms[:, 0] == 0))} is all zeros; its cosine is undefined")
    units = x / norms
    total = units.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


__all__ = ["DEFAULT_SCALE", "mean_cosine", "whiten"]
