"""Beyond-accuracy metrics against hand-computed values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmrec.evaluate.beyond import (
    average_popularity,
    beyond_accuracy,
    catalog_coverage,
    category_coverage,
    gini_index,
    intra_list_diversity,
    intra_list_diversity_per_user,
    miscalibration,
    miscalibration_per_user,
    novelty,
)

# Three users, k = 3, five items; -1 is an empty slot.
RECS = np.array([[0, 1, 2], [0, 1, -1], [3, -1, -1]])
# Items 0 and 1 point the same way, item 2 is orthogonal, item 3 is the zero vector.
VECS = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
CATS = [["a"], ["a", "b"], ["c"], [], ["d"]]
POP = np.array([4, 2, 1, 0, 0])


def test_catalog_coverage() -> None:
    # items {0, 1, 2, 3} of 5 appear
    assert catalog_coverage(RECS, 5) == pytest.approx(4 / 5)
    assert catalog_coverage(np.full((2, 3), -1), 5) == 0.0


def test_intra_list_diversity_by_hand() -> None:
    per_user = intra_list_diversity_per_user(RECS, VECS)
    # user 0: pairs (0,1) sim 1, (0,2) sim 0, (1,2) sim 0 -> mean dissimilarity (0 + 1 + 1) / 3
    # user 1: pair (0,1) sim 1 -> 0
    # user 2: one item, no pairs -> NaN
    assert per_user[:2] == pytest.approx([2 / 3, 0.0])
    assert math.isnan(per_user[2])
    # mean over users with pairs: (2/3 + 0) / 2
    assert intra_list_diversity(RECS, VECS) == pytest.approx(1 / 3)


def test_intra_list_diversity_zero_vector_and_angle() -> None:
    # zero vector: similarity 0 -> dissimilarity 1; items 0 and 4 at 45 degrees: 1 - 1/sqrt(2)
    assert intra_list_diversity_per_user([[3, 0], [0, 4]], VECS) == pytest.approx([1.0, 1 - 1 / math.sqrt(2)])


def test_intra_list_diversity_needs_pairs() -> None:
    assert math.isnan(intra_list_diversity([[0], [1]], VECS))


def test_intra_list_diversity_blocks_match_unblocked(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    recs = rng.integers(-1, 5, size=(50, 4))
    expected = intra_list_diversity_per_user(recs, VECS)
    monkeypatch.setattr("lmrec.evaluate.beyond._ILD_BLOCK", 7)
    np.testing.assert_allclose(intra_list_diversity_per_user(recs, VECS), expected)


@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=2, max_value=6),
    hnp.arrays(np.float64, 3, elements=st.integers(-1000, 1000).map(lambda v: v / 10)),
)
def test_ild_of_identical_items_is_zero(n_users: int, k: int, vec: np.ndarray) -> None:
    if not np.any(vec):
        vec = vec + 1.0  # a zero vector has similarity 0 by definition
    item_vectors = np.stack([vec, 3.5 * vec])  # same direction, different length
    recs = np.zeros((n_users, k), dtype=np.int64)
    recs[:, 1::2] = 1
    assert intra_list_diversity(recs, item_vectors) == pytest.approx(0.0, abs=1e-9)


def test_novelty_by_hand() -> None:
    # n_users = 8; self-information -log2(pop / 8): item0 = 1, item1 = 2, item2 = 3, item3 (pop 0 -> 1) = 3
    # lists: (1 + 2 + 3) / 3 = 2, (1 + 2) / 2 = 1.5, 3 / 1 = 3 -> mean 6.5 / 3
    assert novelty(RECS, POP, n_users=8) == pytest.approx(6.5 / 3)


def test_novelty_rejects_popularity_above_n_users() -> None:
    with pytest.raises(ValueError, match="distinct users"):
        novelty(RECS, POP, n_users=3)


def test_average_popularity_by_hand() -> None:
    # lists: (4 + 2 + 1) / 3, (4 + 2) / 2 = 3, 0 / 1 = 0
    assert average_popularity(RECS, POP) == pytest.approx((7 / 3 + 3 + 0) / 3)


def test_gini_by_hand() -> None:
    # counts per item [2, 2, 1, 1, 0] sorted [0, 1, 1, 2, 2], n = 5, total 6
    # G = sum((2i - n - 1) c_i) / (n * total) = (-4*0 - 2*1 + 0*1 + 2*2 + 4*2) / 30 = 10 / 30
    assert gini_index(RECS, 5) == pytest.approx(1 / 3)
    # Everything on one item of four: G = (n - 1) / n = 3/4
    assert gini_index(np.zeros((3, 2), dtype=int), 4) == pytest.approx(0.75)


@given(st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=5), st.data())
def test_gini_of_uniform_distribution_is_zero(n_items: int, repeats: int, data: st.DataObject) -> None:
    # Every item recommended exactly `repeats` times, in shuffled lists.
    flat = np.repeat(np.arange(n_items), repeats)
    flat = np.asarray(data.draw(st.permutations(flat.tolist())))
    assert gini_index(flat.reshape(-1, 1), n_items) == pytest.approx(0.0, abs=1e-12)
    assert gini_index(flat.reshape(repeats, n_items), n_items) == pytest.approx(0.0, abs=1e-12)


@given(hnp.arrays(np.int64, (4, 3), elements=st.integers(-1, 5)))
def test_gini_and_coverage_lie_in_unit_interval(recs: np.ndarray) -> None:
    recs[0, 0] = 0  # at least one item
    assert 0.0 <= gini_index(recs, 6) < 1.0
    assert 0.0 < catalog_coverage(recs, 6) <= 1.0


def test_category_coverage_by_hand() -> None:
    # catalog categories {a, b, c, d} = 4
    # lists: {a, b, c} = 3/4, {a, b} = 2/4, item 3 has none = 0 -> mean 1.25 / 3
    assert category_coverage(RECS, CATS) == pytest.approx(1.25 / 3)


def test_category_coverage_rejects_bare_strings() -> None:
    with pytest.raises(ValueError, match="list of category names"):
        category_coverage(RECS, ["a", "ab", "c", "", "d"])


def test_miscalibration_by_hand() -> None:
    histories = [np.array([2]), np.array([1]), np.array([], dtype=np.int64)]
    per_user = miscalibration_per_user(histories, RECS, CATS, alpha=0.01)
    # user 0: p = {c: 1}; list {0, 1, 2}: a 1 + 0.5, b 0.5, c 1 -> q(c) = 1/3
    #   q~(c) = 0.99/3 + 0.01 = 0.34 -> KL = ln(1 / 0.34)
    # user 1: p = {a: .5, b: .5}; list {0, 1}: q = {a: .75, b: .25}
    #   q~ = {a: .7475, b: .2525} -> KL = .5 ln(.5/.7475) + .5 ln(.5/.2525)
    # user 2: empty history -> NaN
    user1 = 0.5 * math.log(0.5 / 0.7475) + 0.5 * math.log(0.5 / 0.2525)
    assert per_user[:2] == pytest.approx([math.log(1 / 0.34), user1])
    assert math.isnan(per_user[2])
    assert miscalibration(histories, RECS, CATS) == pytest.approx((math.log(1 / 0.34) + user1) / 2)


def test_miscalibration_is_zero_when_list_matches_history() -> None:
    recs = np.array([[0, 2], [4, -1]])
    histories = [np.array([2, 0, 0, 2]), np.array([4])]
    assert miscalibration_per_user(histories, recs, CATS) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_miscalibration_checks_inputs() -> None:
    with pytest.raises(ValueError, match="alpha"):
        miscalibration([np.array([0])] * 3, RECS, CATS, alpha=0.0)
    with pytest.raises(ValueError, match="histories has 1 users"):
        miscalibration([np.array([0])], RECS, CATS)
    with pytest.raises(ValueError, match=r"histories\[1\]"):
        miscalibration([np.array([0]), np.array([9]), np.array([0])], RECS, CATS)


@pytest.mark.parametrize(
    "recs",
    [np.array([0, 1, 2]), np.array([[0, 5]]), np.array([[0, -2]]), np.array([[0.0, 1.0]])],
)
def test_bad_recs_are_rejected(recs: np.ndarray) -> None:
    with pytest.raises(ValueError, match="recs"):
        catalog_coverage(recs, 5)


def test_all_empty_recs_are_rejected_where_undefined() -> None:
    empty = np.full((2, 2), -1)
    with pytest.raises(ValueError, match="no recommended items"):
        gini_index(empty, 5)
    with pytest.raises(ValueError, match="no recommended items"):
        novelty(empty, POP, n_users=8)


def test_beyond_accuracy_collects_what_it_can() -> None:
    out = beyond_accuracy(RECS, n_items=5, item_popularity=POP, n_users=8)
    assert set(out) == {"coverage", "novelty", "avg_popularity", "gini"}
    assert out["coverage"] == pytest.approx(4 / 5)

    full = beyond_accuracy(
        RECS,
        n_items=5,
        item_popularity=POP,
        n_users=8,
        item_vectors=VECS,
        item_categories=CATS,
        histories=[np.array([2]), np.array([1]), np.array([0])],
    )
    assert set(full) == {
        "coverage",
        "novelty",
        "avg_popularity",
        "gini",
        "ild",
        "category_coverage",
        "miscalibration",
    }
    assert full["ild"] == pytest.approx(1 / 3)
    assert full["category_coverage"] == pytest.approx(1.25 / 3)
    assert all(isinstance(v, float) for v in full.values())


def test_beyond_accuracy_checks_catalog_size() -> None:
    with pytest.raises(ValueError, match="item_vectors"):
        beyond_accuracy(RECS, n_items=5, item_popularity=POP, n_users=8, item_vectors=VECS[:4])
