"""FA*IR-style fair exposure for long-tail items (lmrec.rerank.fair) on tiny cases with known answers."""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise
from math import comb

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.evaluate.evaluator import Reranker
from lmrec.evaluate.fairness import tail_items, tail_share
from lmrec.rerank import RERANKERS, FairExposure, make_reranker
from lmrec.rerank.fair import minimum_protected


def no_batch(n: int) -> QueryBatch:
    return QueryBatch.from_histories(np.arange(n), [[] for _ in range(n)])


def descending(items: np.ndarray) -> np.ndarray:
    """Scores that rank each row's items in the given order."""
    return np.tile(np.arange(items.shape[1], 0, -1, dtype=np.float64), (items.shape[0], 1))


def m_by_hand(i: int, p: Fraction, alpha: Fraction) -> int:
    """The smallest m with P(X ≤ m) ≥ α for X ~ Binomial(i, p), in exact arithmetic."""
    cdf = Fraction(0)
    for m in range(i + 1):
        cdf += comb(i, m) * p**m * (1 - p) ** (i - m)
        if cdf >= alpha:
            return m
    return i


# -- the table m(i) ------------------------------------------------------------------------------


def test_table_against_hand_computed_binomials() -> None:
    # p = 1/2, α = 0.1: P(X ≤ 0; 4) = 1/16 < 0.1 ≤ P(X ≤ 1; 4) = 5/16, so a prefix of 4 needs 1;
    # P(X ≤ 1; 7) = 8/128 < 0.1 ≤ P(X ≤ 2; 7) = 29/128, so 7 needs 2; P(X ≤ 2; 9) = 46/512 < 0.1, 9 needs 3.
    assert minimum_protected(12, 0.5, 0.1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4]
    # p = 0.3: 0.7^6 = 0.118 ≥ 0.1 but 0.7^7 = 0.082 < 0.1; P(X ≤ 1; 12) = 0.085 < 0.1.
    assert minimum_protected(12, 0.3, 0.1).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2]
    for p, alpha in (
        (Fraction(1, 5), Fraction(1, 10)),
        (Fraction(7, 10), Fraction(1, 20)),
        (Fraction(1, 2), Fraction(1, 3)),
    ):
        table = minimum_protected(20, float(p), float(alpha))
        assert table.tolist() == [m_by_hand(i, p, alpha) for i in range(1, 21)]
    assert minimum_protected(5, 0.0, 0.1).tolist() == [0] * 5  # p = 0 asks for nothing
    assert minimum_protected(5, 1.0, 0.1).tolist() == [1, 2, 3, 4, 5]  # p = 1 asks for every slot
    assert minimum_protected(0, 0.5, 0.1).shape == (0,)


def test_arguments_are_checked() -> None:
    tail = np.array([True, False])
    with pytest.raises(ValueError, match=r"p .* must be in \[0, 1\], got 1.5"):
        FairExposure(tail, p=1.5)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], got -0.1"):
        FairExposure(tail, p=-0.1)
    for alpha in (0.0, 1.0, -1.0):
        with pytest.raises(ValueError, match=r"alpha .* must be in \(0, 1\)"):
            FairExposure(tail, alpha=alpha)
    with pytest.raises(ValueError, match="1-D bool array"):
        FairExposure(np.array([[True, False]]))
    with pytest.raises(ValueError, match="1-D bool array"):
        FairExposure(np.array([1, 0]))
    with pytest.raises(ValueError, match="outside the 2 catalog items"):
        FairExposure(tail, p=0.5)(no_batch(1), np.array([[0, 5]]), np.array([[2.0, 1.0]]), 2)
    assert repr(FairExposure(tail, p=0.5)) == "FairExposure(p=0.5, alpha=0.1, 1 of 2 items in the tail)"


# -- the re-ranking ------------------------------------------------------------------------------


def test_p_zero_keeps_the_model_order() -> None:
    rng = np.random.default_rng(0)
    tail = rng.random(40) < 0.5
    items = np.stack([rng.permutation(40)[:25] for _ in range(6)])
    scores = rng.normal(size=items.shape)
    out = FairExposure(tail, p=0.0)(no_batch(6), items, scores, 10)
    by_score = np.take_along_axis(items, np.argsort(-scores, axis=1, kind="stable"), axis=1)[:, :10]
    assert out.tolist() == by_score.tolist()


def test_tail_items_are_pulled_up_exactly_where_the_table_asks() -> None:
    # 12 head items (0..11) score above 12 tail items (12..23); p = 1/2, α = 0.1 needs 1 tail item
    # by slot 4, 2 by slot 7, 3 by slot 9 and 4 by slot 12 — and no earlier.
    tail = np.arange(24) >= 12
    items = np.arange(24)[None, :]
    out = FairExposure(tail, p=0.5, alpha=0.1)(no_batch(1), items, descending(items), 12)
    assert out[0].tolist() == [0, 1, 2, 12, 3, 4, 13, 5, 14, 6, 7, 15]
    # Tail items that already score high enough are not moved: the model's order meets the table.
    mixed = np.array([[12, 0, 1, 13, 2, 3, 14, 4, 15, 5, 6, 16]])
    assert FairExposure(tail, p=0.5)(no_batch(1), mixed, descending(mixed), 12).tolist() == mixed.tolist()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 30),
    k=st.integers(1, 15),
    p=st.sampled_from([0.1, 0.3, 0.5, 0.8, 1.0]),
    alpha=st.sampled_from([0.05, 0.1, 0.3]),
)
def test_every_prefix_meets_the_table_while_tail_candidates_last(
    seed: int, n: int, k: int, p: float, alpha: float
) -> None:
    rng = np.random.default_rng(seed)
    tail = rng.random(50) < 0.4
    items = np.stack([rng.permutation(50)[:n] for _ in range(4)])
    scores = rng.normal(size=items.shape)
    out = FairExposure(tail, p=p, alpha=alpha)(no_batch(4), items, scores, k)
    need = minimum_protected(k, p, alpha)
    for row, cand, score in zip(out, items, scores, strict=True):
        picked = row[row >= 0]
        assert len(picked) == min(k, n) and len(set(picked.tolist())) == len(picked)
        supply = int(tail[cand].sum())
        got = np.cumsum(tail[picked])
        # each prefix holds what the table asks, or every tail candidate there is
        assert np.all(got >= np.minimum(need[: len(picked)], supply))
        # within each group the model's order is kept
        rank = {int(i): -s for i, s in zip(cand, score, strict=True)}
        for group in (picked[tail[picked]], picked[~tail[picked]]):
            assert [rank[int(i)] for i in group] == sorted(rank[int(i)] for i in group)


def test_too_few_tail_candidates_fill_what_they_can() -> None:
    tail = np.zeros(10, dtype=bool)
    tail[7] = True
    items = np.arange(10)[None, :]
    out = FairExposure(tail, p=0.95)(no_batch(1), items, descending(items), 6)  # 1 tail item in slot 1, 5 by slot 6
    assert out[0].tolist() == [7, 0, 1, 2, 3, 4]
    no_tail = np.zeros(10, dtype=bool)
    assert FairExposure(no_tail, p=1.0)(no_batch(1), items, descending(items), 4).tolist() == [[0, 1, 2, 3]]


def test_padding_and_short_lists() -> None:
    reranker: Reranker = FairExposure(np.array([True, False, True, False, True, False, False, True]), p=0.5)
    items = np.array([[3, -1, 0, -1], [-1, -1, -1, -1], [5, 2, 1, 4], [6, 6, 2, 1]])
    scores = np.array([[2.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4, [4.0, 3.0, 2.0, 1.0], [3.0, 2.0, np.nan, 1.0]])
    batch = no_batch(4)
    out = reranker(batch, items, scores, 3)
    assert out.shape == (4, 3)
    assert out[0].tolist() == [3, 0, -1]
    assert np.all(out[1] == -1)
    assert out[2].tolist() == [5, 2, 1]  # m = 0, 0, 0: the model's order
    assert out[3].tolist() == [6, 1, -1]  # the repeat and the NaN-scored candidate are dropped
    assert reranker(batch, items, scores, 0).shape == (4, 0)
    assert reranker(batch, items[:, :0], scores[:, :0], 2).tolist() == [[-1, -1]] * 4


def test_tail_share_rises_with_p() -> None:
    rng = np.random.default_rng(1)
    n_items, n_queries = 200, 300
    tail = np.arange(n_items) >= 40  # 40 head items, 160 tail items
    popularity_bonus = np.where(tail, 0.0, 3.0)  # the model prefers head items: ~10 % tail in its top 10
    items = np.stack([rng.permutation(n_items)[:60] for _ in range(n_queries)])
    scores = popularity_bonus[items] + rng.normal(size=items.shape)
    shares = []
    for p in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0):
        recs = FairExposure(tail, p=p)(no_batch(n_queries), items, scores, 10)
        shares.append(tail_share(recs, tail))
    assert all(b >= a for a, b in pairwise(shares))
    # p = 0.5 asks for 3 of 10 (m(10) = 3), p = 0.6 for 4: about what the lists then hold
    assert shares[0] < 0.15 and 0.28 < shares[5] < 0.35 and 0.38 < shares[6] < 0.45 and shares[-1] == 1.0


# -- by name -------------------------------------------------------------------------------------


def tiny_dataset() -> Dataset:
    """Item a is liked by every user, b by three, the rest by one each: a and b are the head."""
    pairs = [(f"u{u}", "a") for u in range(6)] + [(f"u{u}", "b") for u in range(3)]
    pairs += [("u0", "c"), ("u1", "d"), ("u2", "e"), ("u3", "f")]
    return Dataset.from_frame(pd.DataFrame(pairs, columns=["user", "item"]), name="tiny")


def test_make_reranker_by_name() -> None:
    ds = tiny_dataset()
    assert "fair" in RERANKERS
    fair = make_reranker("fair", 0.3, ds)
    assert isinstance(fair, FairExposure) and fair.p == 0.3 and fair.alpha == 0.1
    assert fair.is_tail.tolist() == tail_items(ds.item_popularity()).tolist()
    head = set(ds.items.raw(np.flatnonzero(~fair.is_tail).tolist()))
    assert head == {"a", "b"}  # 6 + 3 of 13 users' items: the first half of the interactions
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        make_reranker("fair", 1.2, ds)
    rows = np.array([ds.items.rows(["a", "b", "c", "d"])])
    out = make_reranker("fair", 1.0, ds)(no_batch(1), rows, descending(rows), 4)
    assert ds.items.raw(out[0]) == ["c", "d", "a", "b"]


def test_every_list_of_rerankers_names_the_same_ones() -> None:
    """The re-rankers are listed where they are made, in the service's request schema and in the CLI's
    defaults; a new one must reach all three."""
    from typing import get_args

    from lmrec.cli.options import RERANK_DEFAULTS
    from lmrec.serve.schemas import RerankRequest

    assert set(get_args(RerankRequest.model_fields["method"].annotation)) == set(RERANKERS) == set(RERANK_DEFAULTS)
