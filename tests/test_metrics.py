"""Accuracy metrics against hand-computed values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmrec.evaluate.metrics import (
    RANKING_METRICS,
    auc,
    average_precision,
    f1,
    hit_rate,
    log_loss,
    mae,
    mrr,
    ndcg,
    precision,
    precision_recall_curve,
    ranking_metrics,
    recall,
    rmse,
)


def row(*bits: int) -> np.ndarray:
    """One user's hit row as a (1, k) bool matrix."""
    return np.array([bits], dtype=bool)


# ---------------------------------------------------------------------------------------------
# Hand-computed ranking values


def test_single_hit_at_rank_3_of_one_relevant() -> None:
    hits, n_rel = row(0, 0, 1, 0, 0), np.array([1])
    # NDCG = (1/log2(4)) / (1/log2(2)) = 0.5
    assert ndcg(hits, n_rel) == pytest.approx([0.5])
    # MRR = 1/3; recall = 1/1; hit = 1; precision = 1/5
    assert mrr(hits) == pytest.approx([1 / 3])
    assert recall(hits, n_rel) == pytest.approx([1.0])
    assert hit_rate(hits) == pytest.approx([1.0])
    assert precision(hits) == pytest.approx([0.2])
    # AP = precision@3 * 1 / min(1, 5) = 1/3
    assert average_precision(hits, n_rel) == pytest.approx([1 / 3])
    # F1 = 2 * 0.2 * 1 / (0.2 + 1) = 1/3
    assert f1(hits, n_rel) == pytest.approx([1 / 3])


def test_two_hits_of_three_relevant() -> None:
    hits, n_rel = row(1, 0, 1, 0), np.array([3])
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3) + 1/log2(4) = 1.5 + 0.6309298
    assert ndcg(hits, n_rel) == pytest.approx([1.5 / (1.5 + 1 / math.log2(3))])
    # recall = 2/3 (standard definition, divides by n_relevant)
    assert recall(hits, n_rel) == pytest.approx([2 / 3])
    # AP = (P@1 + P@3) / min(3, 4) = (1 + 2/3) / 3 = 5/9
    assert average_precision(hits, n_rel) == pytest.approx([5 / 9])
    # P = 2/4 = 0.5, R = 2/3 -> F1 = 2 * 0.5 * (2/3) / (0.5 + 2/3) = 4/7
    assert f1(hits, n_rel) == pytest.approx([4 / 7])
    assert mrr(hits) == pytest.approx([1.0])


def test_n_relevant_above_k() -> None:
    hits, n_rel = row(1, 1, 1), np.array([10])
    # A full list of hits is ideal when there are more relevant items than slots ...
    assert ndcg(hits, n_rel) == pytest.approx([1.0])
    assert average_precision(hits, n_rel) == pytest.approx([1.0])
    # ... but recall still counts every relevant item: 3/10.
    assert recall(hits, n_rel) == pytest.approx([0.3])
    assert precision(hits) == pytest.approx([1.0])


def test_no_hits_gives_zero_everywhere() -> None:
    hits, n_rel = np.zeros((2, 4), dtype=bool), np.array([1, 5])
    for name, values in ranking_metrics(hits, n_rel).items():
        assert values.tolist() == [0.0, 0.0], name


def test_all_hits_gives_one_except_recall() -> None:
    hits, n_rel = np.ones((2, 4), dtype=bool), np.array([4, 8])
    out = ranking_metrics(hits, n_rel)
    for name in ("ndcg@4", "mrr@4", "hit@4", "precision@4", "map@4"):
        assert out[name] == pytest.approx([1.0, 1.0]), name
    assert out["recall@4"] == pytest.approx([1.0, 0.5])
    # F1 of (P=1, R=0.5) = 2/3
    assert out["f1@4"] == pytest.approx([1.0, 2 / 3])


def test_per_user_values_keep_user_order() -> None:
    hits = np.array([[0, 1], [1, 0], [0, 0]], dtype=bool)
    # MRR per user: 1/2, 1, 0
    assert mrr(hits).tolist() == [0.5, 1.0, 0.0]


def test_ranking_metrics_keys_and_registry() -> None:
    hits, n_rel = row(0, 1, 0), np.array([2])
    out = ranking_metrics(hits, n_rel, names=("ndcg", "hit"))
    assert list(out) == ["ndcg@3", "hit@3"]
    assert set(RANKING_METRICS) == {"ndcg", "recall", "hit", "mrr", "precision", "map", "f1"}
    # Every registry entry takes (hits, n_relevant) and returns one float per user.
    for name, fn in RANKING_METRICS.items():
        values = fn(hits, n_rel)
        assert values.shape == (1,) and values.dtype == np.float64, name


def test_ranking_metrics_accept_zero_one_ints() -> None:
    assert ndcg(np.array([[0, 1]]), [1]) == pytest.approx(ndcg(row(0, 1), [1]))


@pytest.mark.parametrize(
    ("hits", "n_rel", "message"),
    [
        (np.zeros(3, dtype=bool), np.array([1]), "2-D"),
        (np.zeros((2, 0), dtype=bool), np.array([1, 1]), "k >= 1"),
        (np.zeros((2, 3), dtype=bool), np.array([1]), "shape"),
        (np.zeros((1, 3), dtype=bool), np.array([0]), ">= 1"),
        (np.ones((1, 3), dtype=bool), np.array([2]), "cannot exceed"),
        (np.array([[0, 2]]), np.array([1]), "boolean"),
        (np.zeros((1, 3), dtype=bool), np.array([1.5]), "whole numbers"),
    ],
)
def test_ranking_input_errors(hits: np.ndarray, n_rel: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ndcg(hits, n_rel)


def test_unknown_metric_name() -> None:
    with pytest.raises(ValueError, match="unknown ranking metric"):
        ranking_metrics(row(1), [1], names=("ndcg", "nope"))


# ---------------------------------------------------------------------------------------------
# Ranking properties

k_sizes = st.integers(min_value=1, max_value=8)


@st.composite
def hit_rows(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A random hit matrix with consistent n_relevant (>= hits per user, >= 1)."""
    n_users = draw(st.integers(min_value=1, max_value=6))
    k = draw(k_sizes)
    hits = draw(hnp.arrays(bool, (n_users, k)))
    extra = draw(hnp.arrays(np.int64, n_users, elements=st.integers(0, 10)))
    n_rel = np.maximum(hits.sum(axis=1), 1) + extra
    return hits, n_rel


@given(hit_rows())
def test_metrics_lie_in_unit_interval(data: tuple[np.ndarray, np.ndarray]) -> None:
    hits, n_rel = data
    for name, values in ranking_metrics(hits, n_rel).items():
        assert values.shape == (hits.shape[0],), name
        assert np.all(values >= 0.0) and np.all(values <= 1.0 + 1e-12), name


@given(hit_rows())
def test_ndcg_is_one_iff_top_positions_are_hits(data: tuple[np.ndarray, np.ndarray]) -> None:
    hits, n_rel = data
    k = hits.shape[1]
    values = ndcg(hits, n_rel)
    for u in range(hits.shape[0]):
        ideal = bool(hits[u, : min(n_rel[u], k)].all())
        assert math.isclose(values[u], 1.0) == ideal


@given(hit_rows(), st.data())
def test_moving_a_hit_up_never_lowers_ndcg_or_mrr(data: tuple[np.ndarray, np.ndarray], draw: st.DataObject) -> None:
    hits, n_rel = data
    hits = np.concatenate([hits, np.zeros((hits.shape[0], 1), dtype=bool)], axis=1)  # k >= 2
    k = hits.shape[1]
    # Put a miss at rank i and a hit at a lower rank j > i, then swap them: the hit moves up.
    u = draw.draw(st.integers(0, hits.shape[0] - 1))
    i = draw.draw(st.integers(0, k - 2))
    j = draw.draw(st.integers(i + 1, k - 1))
    hits[u, i], hits[u, j] = False, True
    n_rel = np.maximum(n_rel, hits.sum(axis=1))
    better = hits.copy()
    better[u, i], better[u, j] = True, False
    assert ndcg(better, n_rel)[u] > ndcg(hits, n_rel)[u]
    assert mrr(better)[u] >= mrr(hits)[u]
    assert average_precision(better, n_rel)[u] > average_precision(hits, n_rel)[u]


# ---------------------------------------------------------------------------------------------
# Rating and click metrics


def test_rmse_and_mae_by_hand() -> None:
    pred, true = [3.0, 4.0, 1.0], [2.0, 4.0, 3.0]
    # errors 1, 0, -2: RMSE = sqrt((1 + 0 + 4) / 3), MAE = (1 + 0 + 2) / 3 = 1
    assert rmse(pred, true) == pytest.approx(math.sqrt(5 / 3))
    assert mae(pred, true) == pytest.approx(1.0)


def test_rating_errors() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        rmse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        mae([], [])
    with pytest.raises(ValueError, match="NaN"):
        rmse([math.nan], [1.0])


def test_auc_by_hand() -> None:
    # Pairs (pos, neg): (0.35, 0.1) win, (0.35, 0.4) lose, (0.8, 0.1) win, (0.8, 0.4) win -> 3/4
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # One tie between the positive and one of two negatives counts one half: (1 + 0.5) / 2
    assert auc([0.5, 0.5, 0.1], [True, False, False]) == pytest.approx(0.75)
    # All scores equal: every pair is a tie -> 0.5
    assert auc([1.0, 1.0, 1.0, 1.0], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_auc_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="one class"):
        auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="binary"):
        auc([0.1, 0.2], [1, 2])


@given(
    st.integers(min_value=2, max_value=30).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1))),
            hnp.arrays(bool, n),
        )
    )
)
def test_auc_flips_with_negated_scores(data: tuple[np.ndarray, np.ndarray]) -> None:
    scores, labels = data
    labels[0], labels[1] = True, False  # both classes present
    assert auc(scores, labels) == pytest.approx(1.0 - auc(-scores, labels))
    assert 0.0 <= auc(scores, labels) <= 1.0


def test_log_loss_by_hand() -> None:
    # -(ln 0.9 + ln(1 - 0.2)) / 2
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert log_loss([0.9, 0.2], [1, 0]) == pytest.approx(expected)
    # A confident wrong answer is clipped at eps instead of being infinite: -ln(1e-7)
    assert log_loss([0.0], [1]) == pytest.approx(-math.log(1e-7))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1.5], [1])


def test_precision_recall_curve_by_hand() -> None:
    scores = [0.1, 0.4, 0.35, 0.8, 0.8]
    labels = [0, 0, 1, 1, 0]
    precision_, recall_, thresholds = precision_recall_curve(scores, labels)
    # t = 0.8: predict {0.8 pos, 0.8 neg} -> P = 1/2, R = 1/2
    # t = 0.4: + 0.4 neg -> P = 1/3, R = 1/2
    # t = 0.35: + 0.35 pos -> P = 2/4, R = 2/2
    # t = 0.1: + 0.1 neg -> P = 2/5, R = 1
    assert thresholds.tolist() == [0.8, 0.4, 0.35, 0.1]
    assert precision_ == pytest.approx([1 / 2, 1 / 3, 1 / 2, 2 / 5])
    assert recall_ == pytest.approx([1 / 2, 1 / 2, 1.0, 1.0])


def test_precision_recall_curve_needs_a_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        precision_recall_curve([0.2, 0.1], [0, 0])
