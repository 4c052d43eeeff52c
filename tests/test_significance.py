"""Paired significance tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmrec.evaluate.significance import bootstrap_ci, paired_test

KEYS = {
    "n",
    "mean_a",
    "mean_b",
    "mean_diff",
    "relative_change",
    "t_pvalue",
    "wilcoxon_pvalue",
    "ci_low",
    "ci_high",
}


def test_means_and_relative_change_by_hand() -> None:
    a = np.array([0.2, 0.4, 0.6, 0.8])
    b = np.array([0.3, 0.4, 0.9, 0.8])
    out = paired_test(a, b, n_resamples=200)
    assert set(out) == KEYS
    # mean_a = 2.0 / 4 = 0.5, mean_b = 2.4 / 4 = 0.6, diff = 0.1, relative = 0.1 / 0.5 = 0.2
    assert out["n"] == 4
    assert out["mean_a"] == pytest.approx(0.5)
    assert out["mean_b"] == pytest.approx(0.6)
    assert out["mean_diff"] == pytest.approx(0.1)
    assert out["relative_change"] == pytest.approx(0.2)
    # Bootstrap means of the differences [0.1, 0, 0.3, 0] lie within [0, 0.3].
    assert 0.0 <= out["ci_low"] <= out["mean_diff"] <= out["ci_high"] <= 0.3


def test_pvalues_match_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    a = rng.random(40)
    b = a + rng.normal(0.05, 0.1, size=40)
    out = paired_test(a, b, n_resamples=500)
    assert out["t_pvalue"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert out["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(b - a).pvalue)


def test_clear_improvement_is_significant_and_ci_excludes_zero() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(300)
    b = a + 0.1 + rng.normal(0, 0.05, size=300)
    out = paired_test(a, b, n_resamples=2000)
    assert out["t_pvalue"] < 1e-6
    assert out["wilcoxon_pvalue"] < 1e-6
    assert 0.0 < out["ci_low"] < 0.1 < out["ci_high"]


def test_identical_systems() -> None:
    a = np.array([0.0, 0.5, 1.0])
    out = paired_test(a, a.copy(), n_resamples=100)
    assert out["mean_diff"] == 0.0
    assert out["wilcoxon_pvalue"] == 1.0
    assert out["t_pvalue"] == 1.0
    assert out["ci_low"] == out["ci_high"] == 0.0


def test_constant_nonzero_shift_has_zero_t_pvalue() -> None:
    a = np.array([0.1, 0.2, 0.3])
    out = paired_test(a, a + 0.25, n_resamples=100)
    assert out["t_pvalue"] == 0.0
    assert out["mean_diff"] == pytest.approx(0.25)


def test_zero_baseline_gives_nan_relative_change() -> None:
    out = paired_test([0.0, 0.0], [0.5, 1.0], n_resamples=50)
    assert math.isnan(out["relative_change"])


def test_single_user_has_no_t_test() -> None:
    out = paired_test([0.2], [0.4], n_resamples=50)
    assert math.isnan(out["t_pvalue"])
    assert out["ci_low"] == pytest.approx(0.2) and out["ci_high"] == pytest.approx(0.2)


def test_same_seed_same_interval_and_other_seed_differs() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    first = paired_test(a, b, n_resamples=300, seed=7)
    assert paired_test(a, b, n_resamples=300, seed=7) == first
    other = paired_test(a, b, n_resamples=300, seed=8)
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])


def test_bootstrap_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    d = np.random.default_rng(4).normal(size=30)
    whole = bootstrap_ci(d, n_resamples=101, seed=5)
    monkeypatch.setattr("lmrec.evaluate.significance._BOOTSTRAP_CHUNK_CELLS", 30 * 7)
    assert bootstrap_ci(d, n_resamples=101, seed=5) == pytest.approx(whole)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([0.1, 0.2], [0.1], "same users"),
        ([], [], "empty"),
        ([[0.1]], [[0.2]], "1-D"),
        ([0.1, math.nan], [0.1, 0.2], "NaN"),
    ],
)
def test_input_errors(a: list, b: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_test(a, b)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=2, max_value=25).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=st.floats(0, 1)),
            hnp.arrays(np.float64, n, elements=st.floats(0, 1)),
        )
    )
)
def test_pvalues_are_probabilities_and_ci_is_ordered(data: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = data
    out = paired_test(a, b, n_resamples=100)
    for key in ("t_pvalue", "wilcoxon_pvalue"):
        assert 0.0 <= out[key] <= 1.0, key
    # The interval is made of resampled means, so it lies within the range of the differences.
    d = b - a
    assert d.min() - 1e-12 <= out["ci_low"] <= out["ci_high"] <= d.max() + 1e-12


def test_the_t_test_does_not_depend_on_the_scale_of_the_differences() -> None:
    a = np.zeros(3)
    b = np.array([1.0, 0.0, 2.0])
    p = paired_test(a, b, n_resamples=10)["t_pvalue"]
    assert 0 < p < 1
    for scale in (1e-300, 1e-320):  # variances this small underflow to 0
        assert paired_test(a, b * scale, n_resamples=10)["t_pvalue"] == pytest.approx(p, rel=1e-6)
