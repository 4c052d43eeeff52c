"""Re-rankers (MMR, DPP, calibration) and item similarities on tiny cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError, DataError
from lmrec.evaluate import evaluate
from lmrec.evaluate.beyond import intra_list_diversity, miscalibration
from lmrec.evaluate.evaluator import Reranker
from lmrec.models import FitOptions, model_class
from lmrec.rerank import (
    DPP,
    MMR,
    Calibrated,
    CategorySimilarity,
    CooccurrenceSimilarity,
    EmbeddingSimilarity,
    ItemSimilarity,
    item_vectors_of,
    make_reranker,
)
from lmrec.rerank.candidates import prepare
from tests.conftest import checkerboard

# Six items in 2-D: 0 and 1 point the same way, 2 is 0 turned by a little, 3 is orthogonal to
# 0, 4 is opposite to 0, 5 is the zero vector.
VECS = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
EMB = EmbeddingSimilarity(VECS)


def no_batch(n: int) -> QueryBatch:
    return QueryBatch.from_histories(np.arange(n), [[] for _ in range(n)])


def descending(items: np.ndarray) -> np.ndarray:
    """Scores that rank each row's items in the given order."""
    return np.tile(np.arange(items.shape[1], 0, -1, dtype=np.float64), (items.shape[0], 1))


# -- similarities --------------------------------------------------------------------------------


def test_embedding_similarity_values_and_padding() -> None:
    sims = EMB.pairwise(np.array([[0, 1, 3, 4, 5, -1]]))[0]
    assert sims[0, 1] == pytest.approx(1.0)  # same direction, other length
    assert sims[0, 2] == pytest.approx(0.0)  # orthogonal
    assert sims[0, 3] == pytest.approx(-1.0)  # opposite
    assert sims[0, 4] == 0.0  # the zero vector is unlike everything ...
    assert sims[4, 4] == 1.0  # ... but like itself
    assert np.all(sims[5] == 0.0) and np.all(sims[:, 5] == 0.0)  # empty slot
    assert np.allclose(sims, sims.T)
    assert isinstance(EMB, ItemSimilarity)


def catalog_dataset(categories: list[list[str]]) -> Dataset:
    n = len(categories)
    frame = pd.DataFrame({"user": ["a"] * n, "item": [f"i{i}" for i in range(n)]})
    catalog = pd.DataFrame({"item": [f"i{i}" for i in range(n)], "categories": categories})
    return Dataset.from_frame(frame, catalog)


def test_category_similarity_cosine_and_jaccard() -> None:
    ds = catalog_dataset([["a"], ["a", "b"], ["b"], ["a", "b", "c"], []])
    items = np.array([[0, 1, 2, 3, 4]])
    cos = CategorySimilarity.from_catalog(ds).pairwise(items)[0]
    assert cos[0, 1] == pytest.approx(1 / np.sqrt(2))
    assert cos[0, 2] == 0.0
    assert cos[1, 3] == pytest.approx(2 / np.sqrt(6))
    assert cos[4, 4] == 1.0 and cos[4, 0] == 0.0
    jac = CategorySimilarity.from_catalog(ds, metric="jaccard").pairwise(items)[0]
    assert jac[0, 1] == pytest.approx(1 / 2)
    assert jac[1, 3] == pytest.approx(2 / 3)
    assert np.linalg.eigvalsh(cos).min() > -1e-9  # positive semi-definite, as the DPP needs


def test_category_similarity_needs_categories() -> None:
    with pytest.raises(DataError, match="no item categories"):
        CategorySimilarity.from_catalog(catalog_dataset([[], []]))


def test_cooccurrence_similarity_by_hand() -> None:
    # users x items: item 0 by users {0, 1}, item 1 by {0, 1}, item 2 by {1, 2}, item 3 by nobody
    frame = pd.DataFrame(
        {"user": ["u0", "u0", "u1", "u1", "u1", "u2", "u1"], "item": ["i0", "i1", "i0", "i1", "i2", "i2", "i2"]}
    )
    catalog = pd.DataFrame({"item": ["i0", "i1", "i2", "i3"]})
    sim = CooccurrenceSimilarity.from_interactions(Dataset.from_frame(frame, catalog))
    sims = sim.pairwise(np.array([[0, 1, 2, 3], [2, 0, -1, -1]]))
    assert sims[0, 0, 1] == pytest.approx(1.0)
    assert sims[0, 0, 2] == pytest.approx(0.5)  # one common user of 2 x 2 (the repeat counts once)
    assert sims[0, 3, 3] == 1.0 and sims[0, 3, 0] == 0.0
    assert sims[1, 0, 1] == pytest.approx(0.5) and sims[1, 2, 2] == 0.0


def test_sparse_similarity_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    m = (rng.random((30, 50)) < 0.2).astype(float)
    items = np.array([rng.permutation(50)[:8] for _ in range(4)])
    items[1, 5:] = -1
    sims = [CooccurrenceSimilarity(m, metric) for metric in ("cosine", "jaccard")]
    dense = [sim.pairwise(items) for sim in sims]  # 30 users: few features, the dense path
    monkeypatch.setattr("lmrec.rerank.similarity._DENSE_FEATURES", 0)
    for sim, expected in zip(sims, dense, strict=True):
        assert np.allclose(sim.pairwise(items), expected)
    monkeypatch.setattr("lmrec.rerank.similarity._SHARED_GRAM_ITEMS", 0)
    for sim, expected in zip(sims, dense, strict=True):
        assert np.allclose(sim.pairwise(items), expected)
    assert not np.allclose(dense[0], dense[1])


def test_item_vectors_of_models() -> None:
    ds = checkerboard(n_users=8, n_items=10, per_user=4)
    seq = model_class("sasrec")(model_class("sasrec").config_class.from_dict({"epochs": 1, "dim": 8, "heads": 1}))
    seq.fit(ds, options=FitOptions(seed=0))
    vecs = item_vectors_of(seq)
    assert vecs is not None and vecs.shape == (10, 8)
    assert np.allclose(vecs, getattr(seq, "net").items.weight[1:11].detach().numpy())  # noqa: B009
    als = model_class("als")(model_class("als").config_class.from_dict({"dim": 4, "iterations": 1})).fit(ds)
    vecs = item_vectors_of(als)
    assert vecs is not None and vecs.shape == (10, 4)
    assert item_vectors_of(model_class("pop")().fit(ds)) is None


# -- MMR ---------------------------------------------------------------------------------------


def test_mmr_lambda_one_keeps_the_order() -> None:
    rng = np.random.default_rng(1)
    items = np.array([rng.permutation(6) for _ in range(5)])
    scores = np.sort(rng.random((5, 6)), axis=1)[:, ::-1]
    scores[0, 1:3] = scores[0, 0]  # ties keep their input order too
    out = MMR(EMB, lam=1.0)(no_batch(5), items, scores, 6)
    assert np.array_equal(out, items)


def test_mmr_lambda_zero_second_pick_is_least_similar() -> None:
    items = np.array([[0, 1, 2, 3, 4]])
    out = MMR(EMB, lam=0.0)(no_batch(1), items, descending(items), 3)
    assert out[0, 0] == 0  # first: the most relevant
    assert out[0, 1] == 4  # cosine -1 with item 0
    # third: the smallest max-similarity to {0, 4}: item 3 (max 0) beats 1 and 2 (max ~1)
    assert out[0, 2] == 3


def test_mmr_trades_relevance_for_diversity() -> None:
    items = np.array([[0, 1, 3]])
    scores = np.array([[1.0, 0.9, 0.0]])
    assert MMR(EMB, lam=0.9)(no_batch(1), items, scores, 2).tolist() == [[0, 1]]
    assert MMR(EMB, lam=0.3)(no_batch(1), items, scores, 2).tolist() == [[0, 3]]


# -- DPP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [0.0, 0.3, 0.7, 0.9, 0.99, 0.999])
def test_dpp_never_picks_two_identical_items(theta: float) -> None:
    # item 1 is item 0 again (same direction); it scores far above items 3 and 4. Item 4 points
    # the opposite way of 0: linearly dependent, so the DPP is out of directions in row 2 and
    # fills in model order, but items identical to a chosen one go last.
    items = np.array([[0, 1, 3], [1, 0, 4]])
    scores = np.array([[1.0, 0.99, 0.0], [1.0, 0.99, 0.0]])
    out = DPP(EMB, theta=theta)(no_batch(2), items, scores, 3)
    assert out.tolist() == [[0, 3, 1], [1, 4, 0]]


def test_dpp_low_theta_is_diversity_first_high_theta_relevance_first() -> None:
    # 2 is close to 0 (cosine ~0.995) and more relevant than 3, which is orthogonal to 0
    items = np.array([[0, 2, 3]])
    scores = np.array([[1.0, 0.9, 0.0]])
    assert DPP(EMB, theta=0.0)(no_batch(1), items, scores, 3).tolist() == [[0, 3, 2]]
    assert DPP(EMB, theta=0.99)(no_batch(1), items, scores, 3).tolist() == [[0, 2, 3]]


def test_dpp_orthogonal_items_keep_relevance_order() -> None:
    eye = EmbeddingSimilarity(np.eye(6))
    rng = np.random.default_rng(2)
    items = np.array([rng.permutation(6) for _ in range(4)])
    scores = np.sort(rng.random((4, 6)), axis=1)[:, ::-1]
    for theta in (0.5, 0.9, 0.99):
        assert np.array_equal(DPP(eye, theta=theta)(no_batch(4), items, scores, 6), items)


def test_dpp_fills_in_model_order_once_the_span_is_used_up() -> None:
    # only two directions among the candidates: after 0 and 3 nothing new, the rest in input order
    items = np.array([[0, 1, 2, 3]])
    sims = CategorySimilarity([["a"], ["a"], ["a"], ["b"]])
    out = DPP(sims, theta=0.5)(no_batch(1), items, descending(items), 4)
    assert out.tolist() == [[0, 3, 1, 2]]


def test_dpp_matches_brute_force_greedy_log_det() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(12, 5))
    sim = EmbeddingSimilarity(vecs)
    items = rng.permutation(12)[None, :10]
    scores = np.sort(rng.random((1, 10)))[:, ::-1]
    theta = 0.6
    out = DPP(sim, theta=theta)(no_batch(1), items, scores, 5)[0]
    # reference: greedy argmax of det(L_Y) with L = diag(q) S diag(q), computed directly
    rel = prepare(items, scores, 5).relevance[0]
    q = np.exp(theta / (2 * (1 - theta)) * rel)
    s = sim.pairwise(items)[0]
    kernel = q[:, None] * s * q[None, :]
    chosen: list[int] = []
    for _ in range(5):
        dets = [np.linalg.det(kernel[np.ix_([*chosen, i], [*chosen, i])]) if i not in chosen else -1 for i in range(10)]
        chosen.append(int(np.argmax(dets)))
    assert out.tolist() == items[0, chosen].tolist()


def test_dpp_rejects_bad_theta() -> None:
    with pytest.raises(ValueError, match="theta"):
        DPP(EMB, theta=1.0)


# -- calibration ---------------------------------------------------------------------------------


def test_calibration_lowers_miscalibration() -> None:
    # items 0..9 are "a", 10..19 "b" (the candidates); the history 20..29 is 7 "a" and 3 "b"
    cats = [["a"]] * 10 + [["b"]] * 10 + [["a"]] * 7 + [["b"]] * 3
    history = list(range(20, 30))
    batch = QueryBatch.from_histories([0], [history])
    items = np.arange(20)[None, :]
    scores = np.linspace(1.0, 0.5, 20)[None, :]
    raw = items[:, :10]
    assert miscalibration([history], raw, cats) > 1.0
    out = Calibrated(cats, lam=0.9)(batch, items, scores, 10)
    assert miscalibration([history], out, cats) < 0.05
    assert out[0, 0] == 0  # the best item still leads
    out = Calibrated(cats, lam=0.99)(batch, items, scores, 10)
    assert sorted(cats[i][0] for i in out[0]) == ["a"] * 7 + ["b"] * 3  # exactly the history's mix
    # lam = 0 ignores calibration
    assert np.array_equal(Calibrated(cats, lam=0.0)(batch, items, scores, 10), raw)


def test_calibration_without_history_keeps_order() -> None:
    cats = [["a"], ["b"], ["a"]]
    items = np.array([[2, 0, 1]])
    out = Calibrated(cats, lam=0.9)(no_batch(1), items, descending(items), 3)
    assert out.tolist() == [[2, 0, 1]]


# -- shared contract -----------------------------------------------------------------------------

CAT_SIM = CategorySimilarity([["a"], ["a", "b"], ["b"], ["c"], ["a"], ["b", "c"], [], ["a", "c"]])
RERANKERS: list[Reranker] = [  # annotated: mypy checks that each one meets the evaluator's protocol
    MMR(EMB, lam=0.5),
    MMR(CAT_SIM, lam=0.2),
    DPP(EMB, theta=0.5),
    DPP(CAT_SIM, theta=0.1),
    Calibrated([["a"], ["a", "b"], ["b"], ["c"], ["a"], ["b", "c"], [], ["a", "c"]], lam=0.7),
]


@pytest.mark.parametrize("reranker", RERANKERS, ids=repr)
def test_padding_and_short_lists(reranker: Reranker) -> None:
    items = np.array([[3, -1, 0, -1], [-1, -1, -1, -1], [5, 2, 1, 4]])
    scores = np.array([[2.0, -np.inf, 1.0, -np.inf], [-np.inf] * 4, [4.0, 3.0, 2.0, 1.0]])
    batch = QueryBatch.from_histories([0, 1, 2], [[0], [], [1, 2]])
    out = reranker(batch, items, scores, 3)
    assert out.shape == (3, 3)
    assert sorted(out[0, :2].tolist()) == [0, 3] and out[0, 2] == -1
    assert np.all(out[1] == -1)
    assert np.all(out[2] >= 0)
    assert reranker(batch, items, scores, 0).shape == (3, 0)
    assert reranker(batch, items[:, :0], scores[:, :0], 2).tolist() == [[-1, -1]] * 3


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 8),
    k=st.integers(1, 8),
    which=st.integers(0, len(RERANKERS) - 1),
)
def test_output_is_distinct_candidates(seed: int, n: int, k: int, which: int) -> None:
    rng = np.random.default_rng(seed)
    items = rng.integers(-1, 6, size=(3, n))  # repeats and padding included
    scores = np.sort(rng.normal(size=(3, n)), axis=1)[:, ::-1].copy()
    batch = QueryBatch.from_histories([0, 1, 2], [rng.integers(0, 8, size=3) for _ in range(3)])
    out = RERANKERS[which](batch, items, scores, k)
    assert out.shape == (3, k)
    for row, cand in zip(out, items, strict=True):
        picked = row[row >= 0]
        assert len(set(picked.tolist())) == len(picked)
        assert set(picked.tolist()) <= set(cand[cand >= 0].tolist())
        # as many as there are distinct candidates (up to k), and the padding at the end
        assert len(picked) == min(k, len(set(cand[cand >= 0].tolist())))
        assert np.all(row[len(picked) :] == -1)


def test_reprs_name_the_parameters() -> None:
    assert repr(MMR(CAT_SIM, lam=0.7)) == "MMR(lam=0.7, similarity=CategorySimilarity(cosine, 3 categories))"
    assert repr(DPP(EMB, theta=0.9)).startswith("DPP(theta=0.9, similarity=EmbeddingSimilarity(")
    assert repr(Calibrated([["a"], ["b"]], lam=0.5)) == "Calibrated(lam=0.5, alpha=0.01, 2 categories)"


def test_make_reranker() -> None:
    ds = checkerboard(n_users=4, n_items=6, per_user=2)
    assert isinstance(make_reranker("mmr", 0.5, ds), MMR)
    dpp = make_reranker("dpp", 0.8, ds, similarity_name="cooccurrence")
    assert isinstance(dpp, DPP) and dpp.theta == 0.8
    assert isinstance(make_reranker("calibration", 0.3, ds), Calibrated)
    with pytest.raises(ConfigError, match="no learned item embeddings"):
        make_reranker("mmr", 0.5, ds, model=model_class("pop")().fit(ds), similarity_name="embedding")
    with pytest.raises(ConfigError, match="unknown re-ranker"):
        make_reranker("xyz", 0.5, ds)


# -- with the evaluator --------------------------------------------------------------------------


def test_evaluate_with_mmr_is_at_least_as_diverse(board: Dataset) -> None:
    split = leave_one_out(board)
    model = model_class("itemknn")().fit(split.train_dataset())
    test = split.eval_set("test")
    # genre vectors: two items alike if both even or both odd, plus a per-item direction
    n = board.n_items
    vectors = np.hstack([np.eye(n), 3 * np.array([[i % 2 == 0, i % 2 == 1] for i in range(n)], dtype=float)])
    plain = evaluate(model, test, ks=(5,))
    mmr = MMR(EmbeddingSimilarity(vectors), lam=0.3)
    reranked = evaluate(model, test, ks=(5,), reranker=mmr, candidates=20)
    assert "MMR(lam=0.3" in reranked.protocol["rerank"]
    assert reranked.recommendations.shape == plain.recommendations.shape
    ild_plain = intra_list_diversity(plain.recommendations, vectors)
    ild_mmr = intra_list_diversity(reranked.recommendations, vectors)
    assert ild_mmr >= ild_plain
    assert ild_mmr > ild_plain + 0.05  # the checkerboard model recommends one parity only
    for row, hist in zip(reranked.recommendations, (test.queries.history(i) for i in range(len(test))), strict=True):
        assert not set(row.tolist()) & set(hist.tolist())  # seen items stay excluded
