"""Whitening of text embeddings (the initial item table of text-initialised models)."""

from __future__ import annotations

import numpy as np
import pytest

from lmrec.errors import ConfigError
from lmrec.text.whiten import mean_cosine, whiten


def anisotropic(n: int = 400, d: int = 32, seed: int = 0) -> np.ndarray:
    """Unit vectors in a narrow cone: a shared direction plus small, correlated noise."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(1.0, 0.05, d)  # unequal, correlated spread
    x = 3.0 * np.ones(d) + rng.standard_normal((n, d)) @ mix.T * 0.3
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_whitened_columns_have_identity_covariance() -> None:
    x = anisotropic()
    out = whiten(x, 16, scale=1.0, normalize_rows=False)
    assert out.shape == (400, 16) and out.dtype == np.float32
    assert np.allclose(out.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(np.cov(out, rowvar=False), np.eye(16), atol=1e-4)


def test_kept_components_are_the_largest() -> None:
    x = anisotropic()
    centred = x - x.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:4]  # the 4 leading directions
    out = whiten(x, 4, scale=1.0, normalize_rows=False)
    # the whitened columns span the same space as the projections on the leading directions
    proj = centred @ top.T
    fitted = np.linalg.lstsq(out, proj, rcond=None)[0]
    assert np.allclose(out @ fitted, proj, atol=1e-5)


def test_scale_and_row_norms() -> None:
    x = anisotropic()
    rows = whiten(x, 16, scale=0.02)
    assert np.allclose(np.sqrt((rows**2).mean(axis=1)), 0.02, rtol=1e-5)  # every row's RMS
    columns = whiten(x, 16, scale=0.02, normalize_rows=False)
    assert np.allclose(columns.std(axis=0, ddof=1), 0.02, rtol=1e-4)


def test_mean_cosine_of_an_anisotropic_cloud_drops() -> None:
    x = anisotropic()
    before = mean_cosine(x)
    after = mean_cosine(whiten(x, 16))
    assert before > 0.8
    assert abs(after) < 0.05 < before


def test_mean_cosine_matches_the_pairwise_mean() -> None:
    x = np.random.default_rng(3).standard_normal((30, 5)) + 0.5
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    expected = (sims.sum() - np.trace(sims)) / (30 * 29)
    assert mean_cosine(x) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ConfigError, match="all zeros"):
        mean_cosine(np.zeros((3, 2)))


def test_deterministic_and_sign_fixed() -> None:
    x = anisotropic()
    assert np.array_equal(whiten(x, 8), whiten(x.copy(), 8))
    # the output depends on the data, not on the eigensolver's choice of signs: permuting the
    # features gives the same rows, and negating every vector negates them
    perm = np.random.default_rng(7).permutation(x.shape[1])
    plain = whiten(x, 8, scale=1.0, normalize_rows=False)
    assert np.allclose(whiten(x[:, perm], 8, scale=1.0, normalize_rows=False), plain, atol=1e-4)
    assert np.allclose(whiten(-x, 8, scale=1.0, normalize_rows=False), -plain, atol=1e-4)


def test_fewer_real_components_than_dim_are_padded_with_noise() -> None:
    x = np.random.default_rng(1).standard_normal((6, 3))  # 3 features: at most 3 text components
    out = whiten(x, 8, scale=1.0, normalize_rows=False, seed=5)
    assert out.shape == (6, 8)
    assert np.allclose(np.cov(out[:, :3], rowvar=False), np.eye(3), atol=1e-4)
    assert np.array_equal(out[:, 3:], whiten(x, 8, scale=1.0, normalize_rows=False, seed=5)[:, 3:])
    assert not np.array_equal(out[:, 3:], whiten(x, 8, scale=1.0, normalize_rows=False, seed=6)[:, 3:])
    few = np.random.default_rng(2).standard_normal((4, 10))  # 4 rows: only 3 real directions
    assert np.allclose(np.cov(whiten(few, 3, scale=1.0, normalize_rows=False), rowvar=False), np.eye(3), atol=1e-4)


def test_shrinkage_damps_the_small_directions() -> None:
    x = anisotropic(n=40)
    plain = whiten(x, 16, scale=1.0, normalize_rows=False)
    shrunk = whiten(x, 16, scale=1.0, normalize_rows=False, shrinkage=0.5)
    # shrinking lifts small eigenvalues, so their whitened columns come out with less variance
    assert shrunk.var(axis=0, ddof=1)[-1] < plain.var(axis=0, ddof=1)[-1]


def test_bad_input_is_named() -> None:
    with pytest.raises(ConfigError, match="at least 2 rows"):
        whiten(np.ones((1, 4)), 2)
    bad = np.ones((3, 4))
    bad[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"vectors\[2, 1\]"):
        whiten(bad, 2)
    with pytest.raises(ConfigError, match="shrinkage"):
        whiten(anisotropic(), 2, shrinkage=2.0)
