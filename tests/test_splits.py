"""Splits: which rows go where, on hand-made logs where the answer is known row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lmrec.data.schema import Dataset
from lmrec.data.splits import cold_items, leave_one_out, ratio, split, temporal
from lmrec.errors import ConfigError

# (user, item, timestamp) in file order. User a has a timestamp tie (y and z at t=2, y first in
# the file), b has two interactions, c has one, d has three that all tie at t=6.
LOG = [
    ("a", "x", 1),
    ("b", "y", 1),
    ("a", "y", 2),
    ("c", "z", 3),
    ("a", "z", 2),
    ("b", "x", 5),
    ("a", "w", 4),
    ("d", "x", 6),
    ("d", "y", 6),
    ("d", "z", 6),
]


def make(rows: list[tuple[str, str, int]]) -> Dataset:
    return Dataset.from_frame(pd.DataFrame(rows, columns=["user", "item", "timestamp"]))


def raw_rows(ds: Dataset, frame: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(user, item, timestamp) raw values of ``frame``'s rows, in frame order."""
    return list(
        zip(
            ds.users.raw(frame["user"]),
            ds.items.raw(frame["item"]),
            frame["timestamp"].astype(int).tolist(),
            strict=True,
        )
    )


def raw_eval(ds: Dataset, eval_set) -> dict[str, tuple[list[str], list[str]]]:
    """user → (history, targets) as raw IDs."""
    q = eval_set.queries
    return {
        ds.users.ids[int(u)]: (ds.items.raw(q.history(i)), ds.items.raw(eval_set.targets(i)))
        for i, u in enumerate(q.users)
    }


# -- leave-one-out --------------------------------------------------------------------------------


def test_leave_one_out_puts_each_row_in_the_right_part() -> None:
    ds = make(LOG)
    s = leave_one_out(ds)
    assert raw_rows(ds, s.frame("train")) == [("a", "x", 1), ("b", "y", 1), ("a", "y", 2), ("c", "z", 3), ("d", "x", 6)]
    # a: y and z tie at t=2; z comes later in the file, so z is a's second-last interaction.
    assert raw_rows(ds, s.frame("valid")) == [("a", "z", 2), ("d", "y", 6)]
    assert raw_rows(ds, s.frame("test")) == [("a", "w", 4), ("b", "x", 5), ("d", "z", 6)]
    assert s.sizes() == {"train": 5, "valid": 2, "test": 3}
    assert s.protocol["split"] == "leave-one-out"


def test_leave_one_out_user_with_one_interaction_stays_in_train_and_is_not_evaluated() -> None:
    ds = make(LOG)
    s = leave_one_out(ds)
    assert set(raw_eval(ds, s.eval_set("test"))) == {"a", "b", "d"}
    assert set(raw_eval(ds, s.eval_set("valid"))) == {"a", "d"}  # b has two: train + test only
    assert "c" in set(ds.users.raw(s.train_dataset().interactions["user"]))


def test_eval_set_test_history_is_train_and_valid_in_time_order() -> None:
    ds = make(LOG)
    s = leave_one_out(ds)
    assert raw_eval(ds, s.eval_set("test")) == {
        "a": (["x", "y", "z"], ["w"]),
        "b": (["y"], ["x"]),
        "d": (["x", "y"], ["z"]),
    }


def test_eval_set_valid_history_excludes_valid_and_test_rows() -> None:
    ds = make(LOG)
    s = leave_one_out(ds)
    assert raw_eval(ds, s.eval_set("valid")) == {"a": (["x", "y"], ["z"]), "d": (["x"], ["y"])}


def test_eval_set_targets_deduplicate_repeated_items() -> None:
    rows = [("u", "p", 1), ("u", "q", 2), ("u", "r", 3), ("u", "s", 4), ("u", "r", 5), ("u", "t", 6), ("u", "r", 7)]
    s = ratio(make(rows), valid=0.0, test=0.5)  # floor(7 · 0.5) = 3 test rows: r, t, r
    ds = s.dataset
    assert raw_rows(ds, s.frame("test")) == [("u", "r", 5), ("u", "t", 6), ("u", "r", 7)]
    assert raw_eval(ds, s.eval_set("test")) == {"u": (["p", "q", "r", "s"], ["r", "t"])}


def test_train_dataset_keeps_vocabularies_and_only_train_rows() -> None:
    ds = make(LOG)
    s = leave_one_out(ds)
    train = s.train_dataset()
    assert train.users == ds.users and train.items == ds.items
    assert raw_rows(train, train.interactions) == raw_rows(ds, s.frame("train"))


def test_unknown_split_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown split 'random'"):
        split(make(LOG), "random")


# -- ratio ----------------------------------------------------------------------------------------


def interleaved(lengths: dict[str, int]) -> list[tuple[str, str, int]]:
    """Users' interactions interleaved in time; item names record the user and position."""
    rows, t = [], 0
    for pos in range(max(lengths.values())):
        for user, n in lengths.items():
            if pos < n:
                rows.append((user, f"{user}{pos}", t))
                t += 1
    return rows


def test_ratio_takes_the_last_shares_of_each_user() -> None:
    ds = make(interleaved({"long": 10, "short": 5, "one": 1}))
    s = ratio(ds, valid=0.2, test=0.3)

    def items(part: str, user: str) -> list[str]:
        return [i for u, i, _ in raw_rows(ds, s.frame(part)) if u == user]

    # long: floor(10·0.3) = 3 test, floor(10·0.2) = 2 valid
    assert items("test", "long") == ["long7", "long8", "long9"]
    assert items("valid", "long") == ["long5", "long6"]
    assert items("train", "long") == [f"long{i}" for i in range(5)]
    # short: floor(5·0.3) = 1 test, floor(5·0.2) = 1 valid
    assert items("test", "short") == ["short4"]
    assert items("valid", "short") == ["short3"]
    assert items("train", "short") == ["short0", "short1", "short2"]
    # one interaction: floor(0.3) = floor(0.2) = 0, all train
    assert items("train", "one") == ["one0"]
    assert s.sizes() == {"train": 9, "valid": 3, "test": 4}
    assert s.protocol == {"split": "ratio", "valid": 0.2, "test": 0.3, "order": "time"}


@pytest.mark.parametrize(("valid", "test"), [(0.5, 0.5), (-0.1, 0.2), (0.2, 1.0), (0.9, 0.2)])
def test_ratio_rejects_bad_shares(valid: float, test: float) -> None:
    with pytest.raises(ConfigError, match="shares"):
        ratio(make(LOG), valid=valid, test=test)


def test_ratio_share_of_100_is_exact() -> None:
    s = ratio(make([("u", f"i{k}", k) for k in range(100)]), valid=0.0, test=0.29)
    assert s.sizes()["test"] == 29


# -- temporal -------------------------------------------------------------------------------------


def test_temporal_cuts_the_global_timeline_by_share() -> None:
    # 20 interactions written to the file out of time order; timestamps 100..119.
    rng = np.random.default_rng(3)
    order = rng.permutation(20)
    rows = [(f"u{t % 4}", f"i{t}", 100 + int(t)) for t in order]
    ds = make(rows)
    s = temporal(ds, valid=0.1, test=0.2)  # 2 valid, 4 test
    assert [ts for _, _, ts in raw_rows(ds, s.frame("test"))] == [116, 117, 118, 119]
    assert [ts for _, _, ts in raw_rows(ds, s.frame("valid"))] == [114, 115]
    assert [ts for _, _, ts in raw_rows(ds, s.frame("train"))] == list(range(100, 114))
    assert s.protocol["valid_from"] == 114.0
    assert s.protocol["test_from"] == 116.0


def test_temporal_user_first_seen_after_the_cut_is_a_new_user_with_empty_history() -> None:
    rows = [("old", f"i{t}", t) for t in range(8)] + [("new", "i0", 8), ("new", "i1", 9)]
    ds = make(rows)
    s = temporal(ds, valid=0.0, test=0.2)  # the last 2 rows, both by "new"
    assert s.protocol["valid_from"] is None
    assert raw_eval(ds, s.eval_set("test")) == {"new": ([], ["i0", "i1"])}
    assert len(s.eval_set("valid")) == 0


# -- cold items -----------------------------------------------------------------------------------


@pytest.fixture
def dense() -> Dataset:
    rng = np.random.default_rng(0)
    rows, t = [], 0
    for _ in range(6):
        for u in range(12):
            rows.append((f"u{u}", f"i{int(rng.integers(20))}", t))
            t += 1
    return make(rows)


def test_cold_items_are_only_in_test_with_all_their_interactions(dense: Dataset) -> None:
    s = cold_items(dense, share=0.25, seed=1)
    items = dense.interactions["item"].to_numpy()
    test_items = set(s.frame("test")["item"].tolist())
    n_seen = len(np.unique(items))
    assert len(test_items) == round(n_seen * 0.25) == s.protocol["cold_items"]
    warm = set(s.frame("train")["item"]) | set(s.frame("valid")["item"])
    assert not (test_items & warm)
    assert len(s.frame("test")) == int(np.isin(items, list(test_items)).sum())
    assert s.sizes()["train"] + s.sizes()["valid"] + s.sizes()["test"] == len(items)


def test_cold_items_valid_is_each_users_last_warm_interaction(dense: Dataset) -> None:
    s = cold_items(dense, share=0.25, seed=1)
    inter = dense.interactions
    warm = inter[s.part != 2]
    counts = warm["user"].value_counts()
    last = warm.groupby("user").tail(1)
    expected_valid = last[last["user"].map(counts) >= 2].index.tolist()
    assert expected_valid  # the fixture has users with several warm interactions
    assert sorted(s.frame("valid").index.tolist()) == sorted(expected_valid)


def test_cold_items_test_history_holds_no_cold_item(dense: Dataset) -> None:
    s = cold_items(dense, share=0.25, seed=1)
    cold = set(s.frame("test")["item"].tolist())
    ev = s.eval_set("test")
    assert len(ev) > 0
    assert not (set(ev.queries.items.tolist()) & cold)
    assert set(ev.target_items.tolist()) <= cold


def test_cold_items_is_seeded(dense: Dataset) -> None:
    a, b = cold_items(dense, share=0.25, seed=7), cold_items(dense, share=0.25, seed=7)
    np.testing.assert_array_equal(a.part, b.part)
    others = [cold_items(dense, share=0.25, seed=k).part for k in range(8, 12)]
    assert any(not np.array_equal(a.part, p) for p in others)


@pytest.mark.parametrize("share", [0.0, 1.0, -0.5])
def test_cold_items_rejects_bad_share(dense: Dataset, share: float) -> None:
    with pytest.raises(ConfigError, match="share"):
        cold_items(dense, share=share)
