"""Full-ranking evaluator: hand-computed metrics from a fake scorer with fixed scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lmrec.data.batch import EvalSet, QueryBatch
from lmrec.evaluate.evaluator import evaluate


class FixedScorer:
    """Scores every query with a fixed row per user (rows of ``table``); records batch sizes."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.n_items = self.table.shape[1]
        self.calls: list[int] = []

    def score(self, batch: QueryBatch) -> torch.Tensor:
        self.calls.append(len(batch))
        return self.table[torch.from_numpy(batch.users)].clone()


def eval_set(users: list[int], hist: list[list[int]], targets: list[list[int]]) -> EvalSet:
    t = QueryBatch.from_histories(users, targets)
    return EvalSet(QueryBatch.from_histories(users, hist), t.indptr, t.items)


def inv_log2(rank: int) -> float:
    return 1.0 / math.log2(rank + 1)


# Six items. After excluding seen items:
#   user 0 ranks 0 1 2 3 4 5, target 2 at rank 3
#   user 1 ranks 4 3 2 1 0 (item 5 has the top score but is seen), targets 3 (rank 2) and 0 (rank 5)
#   user 2 ranks 5 4 3 2 1 0, target 0 at rank 6
TABLE = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    ]
)
EVAL = eval_set([0, 1, 2], [[], [5], []], [[2], [3, 0], [0]])


def test_hand_computed_metrics_at_several_ks() -> None:
    r = evaluate(FixedScorer(TABLE), EVAL, ks=(2, 5), metrics=("ndcg", "recall", "mrr", "hit", "precision"))
    ideal2 = inv_log2(1) + inv_log2(2)
    expected_per_user = {
        "ndcg@2": [0.0, inv_log2(2) / ideal2, 0.0],
        "recall@2": [0.0, 0.5, 0.0],
        "mrr@2": [0.0, 0.5, 0.0],
        "hit@2": [0.0, 1.0, 0.0],
        "precision@2": [0.0, 0.5, 0.0],
        "ndcg@5": [inv_log2(3), (inv_log2(2) + inv_log2(5)) / ideal2, 0.0],
        "recall@5": [1.0, 1.0, 0.0],
        "mrr@5": [1 / 3, 0.5, 0.0],
        "hit@5": [1.0, 1.0, 0.0],
        "precision@5": [0.2, 0.4, 0.0],
    }
    assert set(r.per_user) == set(expected_per_user)
    for name, values in expected_per_user.items():
        np.testing.assert_allclose(r.per_user[name], values, err_msg=name)
        assert r.metrics[name] == pytest.approx(np.mean(values)), name
    assert r.users.tolist() == [0, 1, 2]
    assert r.n_users == 3
    np.testing.assert_array_equal(r.recommendations, [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [5, 4, 3, 2, 1]])
    assert r.protocol["ks"] == [2, 5]
    assert r.protocol["ranking"] == "full catalog"


def test_without_exclusion_the_seen_item_takes_the_first_slot() -> None:
    r = evaluate(FixedScorer(TABLE), EVAL, ks=(2,), metrics=("mrr", "recall"), exclude_seen=False)
    # user 1 now ranks 5 4 3 ...: target 3 falls to rank 3, out of the top 2
    np.testing.assert_allclose(r.per_user["mrr@2"], [0.0, 0.0, 0.0])
    assert r.recommendations[1].tolist() == [5, 4]


def test_seen_target_with_the_top_score_is_not_a_hit_and_takes_no_slot() -> None:
    # item 0 has the top score and is both seen and a target; item 1 is next.
    table = np.array([[9.0, 8.0, 1.0, 2.0]])
    ev = eval_set([0], [[0]], [[0, 1]])
    r = evaluate(FixedScorer(table), ev, ks=(2,), metrics=("ndcg", "recall", "mrr"))
    assert r.recommendations.tolist() == [[1, 3]]
    assert r.per_user["mrr@2"].tolist() == [1.0]  # item 1 is at rank 1, not 2
    assert r.per_user["recall@2"].tolist() == [0.5]  # 1 of 2 targets
    assert r.per_user["ndcg@2"][0] == pytest.approx(1.0 / (1.0 + inv_log2(2)))


def test_empty_slots_when_fewer_unseen_items_than_k() -> None:
    table = np.array([[5.0, 4.0, 3.0, 2.0]])
    ev = eval_set([0], [[0, 1, 3]], [[2]])
    r = evaluate(FixedScorer(table), ev, ks=(3,), metrics=("precision", "mrr"))
    assert r.recommendations.tolist() == [[2, -1, -1]]
    assert r.per_user["precision@3"].tolist() == pytest.approx([1 / 3])
    assert r.per_user["mrr@3"].tolist() == [1.0]


def random_case(n_users: int = 53, n_items: int = 30, seed: int = 0) -> tuple[FixedScorer, EvalSet]:
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((n_users, n_items))  # continuous: no ties
    hist, targets = [], []
    for _ in range(n_users):
        items = rng.permutation(n_items)
        n_h, n_t = int(rng.integers(0, 8)), int(rng.integers(1, 4))
        hist.append(items[:n_h].tolist())
        targets.append(items[n_h : n_h + n_t].tolist())
    return FixedScorer(table), eval_set(list(range(n_users)), hist, targets)


@pytest.mark.parametrize("max_cells", [30, 7 * 30 + 5, 1 << 24])
def test_chunking_does_not_change_results(max_cells: int) -> None:
    scorer, ev = random_case()
    reference = evaluate(FixedScorer(scorer.table.numpy()), ev, ks=(1, 5, 10))
    r = evaluate(scorer, ev, ks=(1, 5, 10), max_cells=max_cells)
    chunk = max(1, max_cells // 30)
    assert max(scorer.calls) <= chunk
    assert sum(scorer.calls) == len(ev)
    assert len(scorer.calls) == math.ceil(len(ev) / min(chunk, len(ev)))
    assert r.metrics == reference.metrics
    for name in reference.per_user:
        np.testing.assert_array_equal(r.per_user[name], reference.per_user[name])
    np.testing.assert_array_equal(r.recommendations, reference.recommendations)


def test_chunked_results_match_a_dense_reference() -> None:
    scorer, ev = random_case(seed=4)
    r = evaluate(scorer, ev, ks=(5,), metrics=("recall", "mrr"), max_cells=64)
    scores = scorer.table.numpy().copy()
    for i in range(len(ev)):
        scores[i, ev.queries.history(i)] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :5]
    for i in range(len(ev)):
        t = set(ev.targets(i).tolist())
        hit = [int(x) in t for x in top[i]]
        assert r.per_user["recall@5"][i] == pytest.approx(sum(hit) / len(t))
        first = next((k + 1 for k, h in enumerate(hit) if h), None)
        assert r.per_user["mrr@5"][i] == pytest.approx(0.0 if first is None else 1 / first)
    np.testing.assert_array_equal(r.recommendations, top)


def test_recall_with_more_targets_than_k() -> None:
    table = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    ev = eval_set([0], [[]], [[0, 1, 2, 5]])
    r = evaluate(FixedScorer(table), ev, ks=(2,), metrics=("recall", "ndcg", "precision"))
    assert r.per_user["recall@2"].tolist() == [0.5]
    assert r.per_user["ndcg@2"].tolist() == pytest.approx([1.0])
    assert r.per_user["precision@2"].tolist() == [1.0]


def test_k_larger_than_the_catalog_keeps_the_requested_key() -> None:
    r = evaluate(FixedScorer(TABLE), EVAL, ks=(10,), metrics=("ndcg",))
    assert set(r.metrics) == {"ndcg@10"}
