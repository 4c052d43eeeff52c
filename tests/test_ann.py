"""The ANN index: exact search is brute force, faiss indexes find most of the exact top-k, and a
dot-product model answered through an index gives the model's own top-k."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import numpy as np
import pytest

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.models import FitOptions, Recommender, model_class
from lmrec.serve.ann import ANNRecommender, DotProduct, VectorIndex, exact_top_k, recall_at_k
from tests.conftest import checkerboard


def random_case(
    n: int = 3000, d: int = 32, queries: int = 200, clusters: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian item and query vectors; with ``clusters``, around that many centres, as learned
    embeddings tend to be (isotropic noise is the hardest case for a cell-based index)."""
    rng = np.random.default_rng(seed)
    if not clusters:
        return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((queries, d)).astype(np.float32)
    centres = 2 * rng.standard_normal((clusters, d))
    vectors = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d))
    return vectors.astype(np.float32), (
        centres[rng.integers(0, clusters, queries)] + rng.standard_normal((queries, d))
    ).astype(np.float32)


def test_exact_search_is_brute_force() -> None:
    vectors, queries = random_case(n=500, queries=50)
    ids, scores = VectorIndex(vectors, "exact").search(queries, 10)
    full = queries @ vectors.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_exact_top_k_handles_k_at_least_n_and_blocks() -> None:
    vectors, queries = random_case(n=7, d=4, queries=3)
    ids, scores = exact_top_k(queries, vectors, 50)
    assert ids.shape == (3, 7) and all(sorted(row) == list(range(7)) for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()
    assert recall_at_k(VectorIndex(vectors, "exact"), queries, 5) == 1.0


@pytest.mark.parametrize(
    ("kind", "clusters", "params"),
    [("hnsw", 0, {}), ("hnsw", 40, {}), ("ivf", 40, {}), ("ivf", 0, {"nlist": 32, "nprobe": 20})],
)
def test_faiss_index_recall(kind: Any, clusters: int, params: dict[str, Any]) -> None:
    pytest.importorskip("faiss")
    vectors, queries = random_case(clusters=clusters)
    index = VectorIndex(vectors, kind, **params)
    assert index.kind == kind and index.n_items == 3000
    assert recall_at_k(index, queries, 10) >= 0.9
    ids, scores = index.search(queries, 10)
    assert ids.shape == (200, 10) and (ids >= 0).all()
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, vectors[ids]), rtol=1e-4, atol=1e-4)


def test_a_crude_ivf_loses_recall() -> None:
    """recall_at_k can report a bad index: one probed cell of many misses most neighbours."""
    pytest.importorskip("faiss")
    vectors, queries = random_case()
    assert recall_at_k(VectorIndex(vectors, "ivf", nlist=64, nprobe=1), queries, 10) < 0.9


def test_bad_index_input() -> None:
    with pytest.raises(ConfigError, match="kind"):
        VectorIndex(np.ones((3, 2)), "lsh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="NaN"):
        VectorIndex(np.array([[1.0, np.nan]]), "exact")
    with pytest.raises(ConfigError, match="shape"):
        VectorIndex(np.ones(3), "exact")
    with pytest.raises(ValueError, match="queries"):
        VectorIndex(np.ones((3, 2)), "exact").search(np.ones((1, 5)), 2)


def test_missing_faiss_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)
    ann = importlib.import_module("lmrec.serve.ann")  # importing the module does not need faiss
    assert ann.VectorIndex(np.ones((3, 2)), "exact").kind == "exact"
    with pytest.raises(MissingExtraError, match=r"lmrec\[ann\]"):
        ann.VectorIndex(np.ones((3, 2)), "hnsw")


# -- models ---------------------------------------------------------------------------------------------
FAST: dict[str, dict[str, Any]] = {
    "bpr": {"dim": 16, "epochs": 10, "batch_size": 64, "lr": 0.02},
    "als": {"dim": 16, "iterations": 4},
    "svd": {"dim": 16, "epochs": 10, "batch_size": 64, "lr": 0.02, "holdout": 0.0},
    "sasrec": {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 3, "batch_size": 16},
    "bert4rec": {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 3, "batch_size": 16},
}


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[Recommender, QueryBatch]]:
    split = leave_one_out(checkerboard())
    train = split.train_dataset()
    queries = split.eval_set("test").queries
    # Plus users the models never saw: one with a history, one without (the sequential fallback).
    unseen = QueryBatch.from_histories([-1, -1], [np.array([0, 2, 4]), np.zeros(0, np.int64)])
    batch = QueryBatch.from_histories(
        np.concatenate([queries.users, unseen.users]),
        [queries.history(i) for i in range(len(queries))] + [unseen.history(0), unseen.history(1)],
    )
    out = {}
    for name, overrides in FAST.items():
        klass = model_class(name)
        out[name] = (klass(klass.config_class.from_dict(overrides)).fit(train, None, FitOptions(seed=0)), batch)
    return out


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_exact_index_reproduces_the_model(name: str, exclude_seen: bool, fitted: dict) -> None:
    model, batch = fitted[name]
    fast = ANNRecommender.for_model(model, kind="exact")
    assert fast is not None
    want_items, want_scores = model.recommend(batch, 10, exclude_seen)
    got_items, got_scores = fast.recommend(batch, 10, exclude_seen)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-4, atol=1e-4)
    # Same items, up to the order of ties: every item scoring clearly above the k-th is in both lists.
    for r in range(len(batch)):
        finite = np.isfinite(want_scores[r])
        above = want_items[r][finite & (want_scores[r] > want_scores[r][finite].min() + 1e-4)]
        assert set(above.tolist()) <= set(got_items[r].tolist())
    if exclude_seen:
        for r in range(len(batch)):
            assert not set(got_items[r].tolist()) & set(batch.history(r).tolist())


@pytest.mark.parametrize("name", ["bpr", "sasrec"])
def test_hnsw_index_finds_the_models_top_k(name: str, fitted: dict) -> None:
    pytest.importorskip("faiss")
    model, batch = fitted[name]
    fast = ANNRecommender.for_model(model, kind="hnsw")
    assert fast is not None and "hnsw" in repr(fast)
    want, _ = model.recommend(batch, 10)
    got, _ = fast.recommend(batch, 10)
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist(), strict=True)])
    assert overlap >= 0.9


def test_models_that_are_not_dot_products() -> None:
    split = leave_one_out(checkerboard())
    ease = model_class("ease")().fit(split.train_dataset(), None, FitOptions(seed=0))
    assert DotProduct.of(ease) is None and ANNRecommender.for_model(ease) is None
