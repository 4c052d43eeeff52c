"""Fairness: tail items and tail share, provider exposure and user groups against hand-computed values,
then ``Run.evaluate``, ``lmrec evaluate`` and ``lmrec report`` on a tiny run with brands and a user table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmrec.cli import main
from lmrec.evaluate.fairness import (
    MIN_GROUP_USERS,
    history_lengths,
    provider_column,
    provider_exposure,
    tail_items,
    tail_share,
    user_attributes,
    user_groups,
)
from lmrec.runs import Run, open_run
from tests.test_cli import N_ITEMS, N_USERS, write_shop

# -- tail items and tail share --------------------------------------------------------------------


def test_tail_items_by_hand() -> None:
    # 10 interactions; item 0 alone holds the first half: the head is {0}
    assert tail_items([5, 3, 2, 0]).tolist() == [False, True, True, True]
    # 4 of 10 is not yet half: the head takes item 1 as well (holding 7 of 10)
    assert tail_items([4, 3, 3]).tolist() == [False, False, True]
    # the ranking is by popularity, not by row
    assert tail_items([2, 5, 0, 3]).tolist() == [True, False, True, True]
    # ties go by item row
    assert tail_items([1, 1, 1, 1]).tolist() == [False, False, True, True]


def test_tail_items_edges() -> None:
    assert tail_items([5, 3, 2, 0], head_share=0).all()
    assert tail_items([5, 3, 2, 0], head_share=1).tolist() == [False, False, False, True]  # unseen stays tail
    assert tail_items([0, 0, 0]).all()
    assert tail_items([5, 3, 2], head_share=0.8).tolist() == [False, False, True]
    for bad in ([[1, 2]], [1, -1], [1, math.nan]):
        with pytest.raises(ValueError):
            tail_items(bad)
    with pytest.raises(ValueError, match="head_share"):
        tail_items([1, 2], head_share=1.5)


@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.floats(0.0, 1.0))
def test_the_head_is_the_shortest_prefix_holding_the_share(pop: list[int], share: float) -> None:
    tail = tail_items(pop, share)
    arr = np.array(pop, dtype=float)
    head = arr[~tail]
    assert (head > 0).all()
    if arr.sum() > 0 and share > 0:
        assert head.sum() >= share * arr.sum() - 1e-9  # holds the share...
        assert head.sum() - head.min() < share * arr.sum() + 1e-9  # ...and no item less would
    if head.size and tail.any():
        assert head.min() >= arr[tail].max()  # nothing in the tail is more popular than the head


def test_tail_share_by_hand() -> None:
    is_tail = np.array([False, True, True, True])
    # filled slots 0, 1, 2, 0, 3: three of five are tail items
    assert tail_share([[0, 1, -1], [2, 0, 3]], is_tail) == pytest.approx(3 / 5)
    assert tail_share([[0, 0]], is_tail) == 0.0
    with pytest.raises(ValueError, match="no recommended items"):
        tail_share([[-1, -1]], is_tail)
    with pytest.raises(ValueError):
        tail_share([[4]], is_tail)


# -- providers ------------------------------------------------------------------------------------


def test_provider_exposure_by_hand() -> None:
    providers = ["a", "a", "b", None, "c"]
    # slots: 0 (a), 1 (a), 3 (no provider), 0 (a), 2 (b): exposure a 3, b 1, c 0
    out = provider_exposure([[0, 1, 3], [0, 2, -1]], providers)
    assert out["exposed"] == 2 and out["providers"] == 3
    assert out["coverage"] == pytest.approx(2 / 3)
    # sorted (0, 1, 3): sum((2i - n - 1) x_i) / (n * total) = (0 + 0 + 2 * 3) / (3 * 4)
    assert out["gini"] == pytest.approx(0.5)
    assert provider_exposure([[0, 1]], ["a", "b"])["gini"] == 0.0
    assert provider_exposure([[0, 0, 0]], ["a", "b"])["gini"] == pytest.approx(0.5)  # all on one of two


def test_provider_exposure_without_providers() -> None:
    out = provider_exposure([[0, 1]], [None, "  "])
    assert out["providers"] == 0 and out["exposed"] == 0 and math.isnan(out["gini"])
    assert math.isnan(provider_exposure([[1]], ["a", None])["gini"])  # the one slot has no provider


def test_provider_column() -> None:
    assert provider_column(pd.DataFrame(columns=["item", "title", "Seller", "brand"])) == "brand"
    assert provider_column(pd.DataFrame(columns=["item", "Author"])) == "Author"
    assert provider_column(pd.DataFrame(columns=["item", "title", "categories"])) is None


# -- user groups ----------------------------------------------------------------------------------


def test_history_lengths() -> None:
    assert history_lengths([0, 0, 1, 3], [0, 1, 2, 3, -1]).tolist() == [2, 1, 0, 1, 0]


def test_user_groups_by_history_by_hand() -> None:
    values = [0.0, 0.5, 1.0, 0.3, 0.7]
    lengths = [1, 4, 5, 50, 0]
    out = user_groups(values, lengths, min_users=1)
    assert out["metric"] == "ndcg@10" and out["min_users"] == 1
    history = out["by"]["history"]
    assert history["groups"] == {
        "0": {"users": 1, "ndcg@10": 0.7},
        "1–4": {"users": 2, "ndcg@10": 0.25},
        "5–9": {"users": 1, "ndcg@10": 1.0},
        "50+": {"users": 1, "ndcg@10": 0.3},
    }  # 10–19 and 20–49 have no users: left out
    assert history["gap"] == pytest.approx(0.75) and history["gap_between"] == ["5–9", "1–4"]
    # with the default, no group has 20 users: groups shown, no gap
    plain = user_groups(values, lengths)["by"]["history"]
    assert plain["gap"] is None and "gap_between" not in plain and len(plain["groups"]) == 4


def test_the_gap_counts_only_groups_with_enough_users() -> None:
    n = MIN_GROUP_USERS
    values = [0.2] * n + [0.6] * n + [1.0] * 3
    lengths = [3] * n + [12] * n + [60] * 3
    history = user_groups(values, lengths)["by"]["history"]
    assert history["groups"]["50+"] == {"users": 3, "ndcg@10": 1.0}
    assert history["gap"] == pytest.approx(0.4) and history["gap_between"] == ["10–19", "1–4"]


def test_user_groups_by_attribute() -> None:
    n = 12
    attributes = pd.DataFrame(
        {
            "gender": ["F", "M"] * 5 + [None, "F"],
            "age": [str(a) for a in range(1, n + 1)],  # read as text, binned as numbers
            "level": ["10", "9"] * 6,  # few numbers: one group each, in numeric order
            "zip": [f"Z{i}" for i in range(n)],
        }
    )
    values = np.arange(n, dtype=float) / 10
    out = user_groups(values, [3] * n, attributes, min_users=1)
    gender = out["by"]["gender"]["groups"]
    # F: users 0, 2, 4, 6, 8, 11 → (0 + .2 + .4 + .6 + .8 + 1.1) / 6; M: 1, 3, 5, 7, 9; user 10 has none
    assert gender["F"] == {"users": 6, "ndcg@10": pytest.approx(3.1 / 6)}
    assert gender["M"] == {"users": 5, "ndcg@10": pytest.approx(0.5)}
    assert gender["(missing)"] == {"users": 1, "ndcg@10": pytest.approx(1.0)}
    assert out["by"]["gender"]["gap_between"] == ["(missing)", "M"]
    age = out["by"]["age"]
    assert age["bins"] == "4 quantile bins"
    assert list(age["groups"]) == ["1–3", "4–6", "7–9", "10–12"]
    assert age["groups"]["1–3"] == {"users": 3, "ndcg@10": pytest.approx(0.1)}
    assert list(out["by"]["level"]["groups"]) == ["9", "10"]
    assert "skipped" not in out and len(out["by"]["zip"]["groups"]) == n  # 12 values: within the limit
    many = pd.DataFrame({"zip": [f"Z{i}" for i in range(40)]})
    skipped = user_groups(np.zeros(40), [3] * 40, many)
    assert "zip" not in skipped["by"] and "40 distinct values" in skipped["skipped"]["zip"]
    json.dumps(out)  # JSON-ready


def test_user_groups_checks_shapes() -> None:
    with pytest.raises(ValueError, match="one length"):
        user_groups([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="rows"):
        user_groups([0.1], [1], pd.DataFrame({"g": ["a", "b"]}))


def test_user_attributes_follow_the_users() -> None:
    table = pd.DataFrame({"user": ["a", "b", "b"], "g": ["x", "y", "z"]})
    out = user_attributes(table, ["b", "c", "a"])
    assert out is not None and list(out.columns) == ["g"]
    assert out["g"].iloc[0] == "y" and pd.isna(out["g"].iloc[1]) and out["g"].iloc[2] == "x"
    assert user_attributes(None, ["a"]) is None
    assert user_attributes(pd.DataFrame({"user": ["a"]}), ["a"]) is None


# -- in every evaluation and report --------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pop run on the shop of tests/test_cli.py, its items with brands (i16..i19 without one) and
    its users with an age and a gender."""
    root = tmp_path_factory.mktemp("fairness")
    data = write_shop(root / "shop")
    brands = "".join(f"i{i},Title {i},{f'b{i % 4}' if i < 16 else ''}\n" for i in range(N_ITEMS))
    (data / "items.csv").write_text("item,title,Brand\n" + brands)
    users = "".join(f"u{u},{18 + u},{'F' if u % 3 else 'M'}\n" for u in range(N_USERS))
    (data / "users.csv").write_text("user,age,gender\n" + users)
    cache = root / "cache"
    args = ["train", "--dataset", str(data), "--model", "pop", "--out", str(root / "pop"), "--quiet"]
    assert main(["--cache-dir", str(cache), *args]) == 0
    return {"root": root, "cache": cache, "run": root / "pop"}


@pytest.fixture(scope="module")
def opened(shop_run: dict[str, Path]) -> Run:
    return open_run(shop_run["run"], shop_run["cache"])


def test_run_evaluate_reports_tail_share_providers_and_groups(opened: Run) -> None:
    report = opened.evaluate()
    metrics = report["metrics"]
    train = opened.split.train_dataset()
    recs = opened.per_user().recommendations[:, :10]
    is_tail = tail_items(train.item_popularity())
    filled = recs[recs >= 0]
    assert metrics["tail_share@10"] == pytest.approx(is_tail[filled].mean(), abs=1e-6)
    brands = np.array([f"b{int(i[1:]) % 4}" if int(i[1:]) < 16 else "" for i in opened.dataset.items.ids])
    exposed = {b for b in brands[filled] if b}
    assert report["providers"] == {"column": "Brand", "exposed": len(exposed), "total": 4}
    assert metrics["provider_coverage"] == pytest.approx(len(exposed) / 4, abs=1e-6)
    assert 0 <= metrics["provider_gini"] < 1
    groups = report["groups"]
    assert groups["metric"] == "ndcg@10"
    history = groups["by"]["history"]["groups"]
    assert sum(g["users"] for g in history.values()) == report["n_users"] == N_USERS
    mean = sum(g["users"] * g["ndcg@10"] for g in history.values()) / N_USERS
    assert mean == pytest.approx(metrics["ndcg@10"], abs=1e-5)
    assert list(history) == ["5–9"]  # every shop user has 6 training interactions
    assert groups["by"]["gender"]["groups"]["F"]["users"] == 20 and groups["by"]["gender"]["groups"]["M"]["users"] == 10
    assert list(groups["by"]["age"]["groups"]) == ["18–25", "26–32", "33–39", "40–47"]
    assert json.loads(json.dumps(report)) == report


def test_without_providers_or_user_table_there_are_no_provider_metrics(tmp_path: Path) -> None:
    data = tmp_path / "tiny.txt"
    data.write_text("".join(f"u{u} i{(u + k) % 6}\n" for u in range(6) for k in range(4)))
    cache = tmp_path / "cache"
    args = ["train", "--dataset", str(data), "--model", "pop", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(["--cache-dir", str(cache), *args]) == 0
    report = open_run(tmp_path / "run", cache).evaluate(ks=(5,))
    assert "tail_share@5" in report["metrics"] and "provider_gini" not in report["metrics"]
    assert "providers" not in report
    assert report["groups"]["metric"] == "ndcg@5" and list(report["groups"]["by"]) == ["history"]


def test_lmrec_evaluate_prints_the_fairness_lines(
    shop_run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--cache-dir", str(shop_run["cache"]), "evaluate", "--run", str(shop_run["run"])]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "tail_share@10" in out and "provider_gini" in out
    assert "providers (Brand): " in out and " of 4 exposed" in out
    assert "ndcg@10 by history (training interactions): 5–9 " in out
    assert "ndcg@10 by gender: F " in out and "; gap " in out
    assert main([*base, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "groups" in report and "tail_share@10" in report["metrics"] and "providers" in report


def test_the_report_has_a_fairness_section(shop_run: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib", reason="the report needs matplotlib: pip install 'lmrec[plot]'")
    out = shop_run["root"] / "report.html"
    args = ["--cache-dir", str(shop_run["cache"]), "report", "--run", str(shop_run["run"]), "--out", str(out)]
    # In a child process: rendering the report in this one left state (matplotlib's) that made a later
    # Flower simulation in the same pytest process hang (tests/test_federated.py runs after this file).
    done = subprocess.run([sys.executable, "-m", "lmrec", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    html = out.read_text()
    assert 'id="fairness"' in html and 'id="fairness-table"' in html
    section = html[html.index('id="fairness"') : html.index('id="timing"')]
    assert "tail_share@10" in section and "provider_gini" in section and "Brand" in section
    assert "users by history" in section and "users by gender" in section and "<strong>gap</strong>" in section
