"""QueryBatch and EvalSet: CSR histories, slicing, the binary matrix, padded sequences, seen-item masking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmrec.data.batch import EvalSet, QueryBatch, mask_seen


def histories(batch: QueryBatch) -> list[list[int]]:
    return [batch.history(i).tolist() for i in range(len(batch))]


def test_from_histories_builds_csr_arrays() -> None:
    b = QueryBatch.from_histories([5, -1, 2], [[1, 2], [], [3]])
    assert b.users.tolist() == [5, -1, 2]
    assert b.indptr.tolist() == [0, 2, 2, 3]
    assert b.items.tolist() == [1, 2, 3]
    assert b.users.dtype == b.indptr.dtype == b.items.dtype == np.int64
    assert len(b) == 3
    assert b.lengths().tolist() == [2, 0, 1]
    assert histories(b) == [[1, 2], [], [3]]


def test_from_histories_with_no_users_or_only_empty_histories() -> None:
    empty = QueryBatch.from_histories([], [])
    assert len(empty) == 0 and empty.indptr.tolist() == [0] and empty.items.tolist() == []
    blank = QueryBatch.from_histories([0, 1], [[], np.array([], dtype=np.int64)])
    assert blank.indptr.tolist() == [0, 0, 0] and blank.items.dtype == np.int64 and len(blank.items) == 0


def test_indptr_must_match_users() -> None:
    with pytest.raises(ValueError, match="indptr"):
        QueryBatch(np.array([0, 1]), np.array([0, 1]), np.array([4]))


def test_from_interactions_keeps_time_order_and_query_order() -> None:
    # time-ordered log of (user, item)
    log = pd.DataFrame({"user": [2, 0, 2, 1, 0, 2], "item": [10, 11, 12, 13, 14, 15]})
    b = QueryBatch.from_interactions(log, np.array([2, 0, 3]))
    assert b.users.tolist() == [2, 0, 3]
    assert histories(b) == [[10, 12, 15], [11, 14], []]  # user 3 has no interactions
    assert b.items.dtype == np.int64


def test_from_interactions_with_no_users() -> None:
    log = pd.DataFrame({"user": [0, 1], "item": [3, 4]})
    b = QueryBatch.from_interactions(log, np.array([], dtype=np.int64))
    assert len(b) == 0 and b.indptr.tolist() == [0] and b.items.tolist() == []


def test_slice_rebases_indptr() -> None:
    b = QueryBatch.from_histories([7, 8, 9, 10], [[1], [2, 3], [], [4, 5, 6]])
    s = b.slice(1, 4)
    assert s.users.tolist() == [8, 9, 10]
    assert s.indptr.tolist() == [0, 2, 2, 5]
    assert histories(s) == [[2, 3], [], [4, 5, 6]]
    assert len(b.slice(2, 2)) == 0


def test_matrix_is_binary_and_drops_duplicates_and_unknown_items() -> None:
    b = QueryBatch.from_histories([0, 1, 2], [[0, 0, 2], [-1, 5, 1, 4], []])
    m = b.matrix(4)
    assert m.shape == (3, 4)
    np.testing.assert_array_equal(m.toarray(), [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert m.nnz == 3 and set(m.data.tolist()) == {1.0}


def make_eval_set() -> EvalSet:
    q = QueryBatch.from_histories([3, 4, 5, 6], [[1], [2, 3], [], [4]])
    t = QueryBatch.from_histories([3, 4, 5, 6], [[7], [8, 9], [0], []])
    return EvalSet(q, t.indptr, t.items)


def test_eval_set_targets() -> None:
    ev = make_eval_set()
    assert len(ev) == 4
    assert [ev.targets(i).tolist() for i in range(4)] == [[7], [8, 9], [0], []]
    assert ev.n_targets().tolist() == [1, 2, 1, 0]


def test_eval_set_subset_keeps_histories_and_targets_of_kept_queries() -> None:
    sub = make_eval_set().subset(np.array([False, True, True, False]))
    assert sub.queries.users.tolist() == [4, 5]
    assert histories(sub.queries) == [[2, 3], []]
    assert [sub.targets(i).tolist() for i in range(len(sub))] == [[8, 9], [0]]
    assert sub.target_indptr.tolist() == [0, 2, 3]


def test_eval_set_subset_of_nothing() -> None:
    sub = make_eval_set().subset(np.zeros(4, dtype=bool))
    assert len(sub) == 0 and sub.target_indptr.tolist() == [0] and len(sub.target_items) == 0


def test_eval_set_sample_is_a_seeded_subset_in_order() -> None:
    ev = make_eval_set()
    two = ev.sample(2, seed=3)
    assert len(two) == 2 and two.queries.users.tolist() == sorted(two.queries.users.tolist())
    users = ev.queries.users.tolist()
    for i, user in enumerate(two.queries.users.tolist()):
        assert two.targets(i).tolist() == ev.targets(users.index(user)).tolist()
    assert ev.sample(2, seed=3).queries.users.tolist() == two.queries.users.tolist()
    assert {tuple(ev.sample(2, seed=s).queries.users.tolist()) for s in range(20)} != {tuple(two.queries.users)}
    assert ev.sample(4) is ev and ev.sample(9) is ev


def test_mask_seen_sets_history_items_to_minus_inf_and_ignores_unknown_ones() -> None:
    torch = pytest.importorskip("torch")
    b = QueryBatch.from_histories([0, 1, -1], [[2, 0], [], [-1, 3, 7]])  # 7 and -1 are outside 4 items
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    mask_seen(scores, b)
    inf = float("-inf")
    assert scores.tolist() == [[inf, 1.0, inf, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, inf]]


def test_known_leaves_out_the_items_a_model_does_not_have() -> None:
    batch = QueryBatch.from_histories([0, 1, 2], [[1, -1, 2, 9], [-1], [3]])
    known = batch.known(5)
    assert [known.history(i).tolist() for i in range(3)] == [[1, 2], [], [3]]
    assert known.users.tolist() == [0, 1, 2]
    assert batch.known(10).items.tolist() == [1, 2, 9, 3]
    whole = QueryBatch.from_histories([0], [[0, 4]])
    assert whole.known(5) is whole  # nothing to leave out
