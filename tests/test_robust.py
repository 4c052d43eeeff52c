"""lmrec.robust: fake-user injection, the text attack, writing datasets back, fake-profile detection
and the ``lmrec attack`` / ``lmrec detect`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lmrec.cli import main
from lmrec.data.loaders import load
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.data.synthetic import ml1m_shaped
from lmrec.errors import ConfigError, DataError
from lmrec.robust import (
    Attack,
    choose_targets,
    detect,
    detection_quality,
    inject,
    median_length,
    remove_users,
    robust_z,
    text_attack,
    text_column,
    user_features,
    write_dataset,
)
from lmrec.robust.attacks import TAIL


def small_log(n_users: int = 60, n_items: int = 40, seed: int = 0) -> Dataset:
    """A popularity-skewed log with ratings, timestamps, titles, categories and user features."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows, t = [], 0
    for u in range(n_users):
        for i in rng.choice(n_items, size=int(rng.integers(4, 12)), replace=False, p=weights / weights.sum()):
            rows.append((f"u{u}", f"i{i}", 1000 + 7 * t, float(rng.integers(1, 6))))
            t += 1
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"])
    frame = frame.sample(frac=1.0, random_state=seed)  # file order is not time order
    catalog = pd.DataFrame(
        {
            "item": [f"i{i}" for i in range(n_items)] + ["cold"],
            "title": [f"Game {i} {'Deluxe Edition' if i < 5 else 'Quest'}" for i in range(n_items)] + ["Cold Item"],
            "categories": [["Action", "RPG"] if i % 2 else ["Puzzle, Logic"] for i in range(n_items)] + [[]],
        }
    )
    users = pd.DataFrame({"user": [f"u{u}" for u in range(n_users)], "age": [20 + u % 30 for u in range(n_users)]})
    return Dataset.from_frame(frame, catalog, name="small", user_features=users)


@pytest.fixture(scope="module")
def small() -> Dataset:
    return small_log()


@pytest.fixture(scope="module")
def skewed() -> Dataset:
    """5,000 users of a 2,500-item log with topics and a popularity skew like Amazon Games' (the top
    1 % of items hold ~17 % of interactions), who mostly pick by popularity within their topics."""
    return ml1m_shaped(0, users=5000, items=2500, events=45_000, shortest=5, zipf=0.8, follow=0.2)


def sequences(ds: Dataset) -> dict[str, list[str]]:
    inter = ds.interactions
    users = ds.users.raw(inter["user"].to_numpy())
    items = ds.items.raw(inter["item"].to_numpy())
    out: dict[str, list[str]] = {}
    for u, i in zip(users, items, strict=True):
        out.setdefault(u, []).append(i)
    return out


def raw_rows(ds: Dataset) -> pd.DataFrame:
    """Interactions with raw IDs, in a canonical order (vocabulary rows may differ after a reload)."""
    inter = ds.interactions
    frame = inter.assign(user=ds.users.raw(inter["user"]), item=ds.items.raw(inter["item"]))
    return frame.sort_values(["user", "item", "timestamp"]).reset_index(drop=True)


# -- attacks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "bandwagon", "sequence"])
def test_each_attack_adds_fakes_that_train_on_their_target(small: Dataset, kind: str) -> None:
    targets = choose_targets(small, 3, seed=1)
    attack = Attack(kind, 0.1, tuple(targets), seed=0)  # type: ignore[arg-type]
    poisoned, fakes = inject(small, attack)
    assert len(fakes) == round(0.1 * small.n_users) == 6
    assert fakes == [f"fake-{j}" for j in range(6)] and poisoned.n_users == small.n_users + 6
    assert poisoned.items == small.items and poisoned.catalog is small.catalog
    assert (poisoned.interactions.dtypes == small.interactions.dtypes).all()
    genuine = poisoned.interactions.iloc[: len(small.interactions)]
    pd.testing.assert_frame_equal(genuine, small.interactions)
    stamps = poisoned.interactions["timestamp"].to_numpy()
    assert (np.diff(stamps) >= 0).all()  # still in time order
    assert stamps[len(small.interactions) :].min() > small.interactions["timestamp"].max()  # after the genuine log
    profiles = sequences(poisoned)
    length = median_length(small)
    train = leave_one_out(poisoned)
    train_items = sequences(poisoned.with_interactions(train.frame("train")))
    pushed = []
    for j, fake in enumerate(fakes):
        profile = profiles[fake]
        target = targets[j % 3]
        assert len(profile) == length and profile[-1 - TAIL] == target and len(set(profile)) == length
        assert target in train_items[fake] and target not in profile[-TAIL:]
        pushed.append(target)
    assert sorted(pushed) == sorted(targets * 2)  # spread evenly


def test_filler_pools(small: Dataset) -> None:
    targets = choose_targets(small, 2, seed=0)
    popularity = small.item_popularity()
    top = set(small.items.raw(np.argsort(-popularity, kind="stable")[: max(5, median_length(small) + 1)]))
    bandwagon, fakes = inject(small, Attack("bandwagon", 0.05, tuple(targets), popular=5))
    for fake in fakes:
        profile = sequences(bandwagon)[fake]
        assert set(profile) - set(targets) <= top  # fillers from the popular pool (grown to fill a profile)
    genuine = sequences(small)
    seq, fakes = inject(small, Attack("sequence", 0.05, tuple(targets), length=5))
    for j, fake in enumerate(fakes):
        head = sequences(seq)[fake][: 5 - 1 - TAIL]
        cut = [[i for i in g if i != targets[j % 2]][: len(head)] for g in genuine.values()]
        assert head in cut  # a genuine user's history, cut short


def test_targets_are_unpopular_seeded_and_exist_in_training(small: Dataset) -> None:
    train = leave_one_out(small).frame("train")[["user", "item"]].drop_duplicates()
    counts = np.bincount(train["item"].to_numpy(), minlength=small.n_items)
    quartile = np.percentile(counts[counts > 0], 25)
    targets = choose_targets(small, 4, seed=3)
    assert len(set(targets)) == 4
    for t in targets:
        assert 2 <= counts[small.items.row(t)] <= max(2, quartile)
    assert choose_targets(small, 4, seed=3) == targets
    assert choose_targets(small, 4, seed=4) != targets
    with pytest.raises(DataError, match="targets asked for"):
        choose_targets(small, 500)


def test_inject_is_deterministic_by_seed(small: Dataset) -> None:
    targets = tuple(choose_targets(small, 2))
    for kind in ("random", "bandwagon", "sequence"):
        a, _ = inject(small, Attack(kind, 0.1, targets, seed=5))  # type: ignore[arg-type]
        b, _ = inject(small, Attack(kind, 0.1, targets, seed=5))  # type: ignore[arg-type]
        c, _ = inject(small, Attack(kind, 0.1, targets, seed=6))  # type: ignore[arg-type]
        pd.testing.assert_frame_equal(a.interactions, b.interactions)
        assert not a.interactions.equals(c.interactions)


def test_bad_attacks_are_errors(small: Dataset) -> None:
    with pytest.raises(ConfigError, match="unknown attack kind"):
        Attack("shill", 0.01, ("i1",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="fraction"):
        Attack("random", 1.5, ("i1",))
    with pytest.raises(ConfigError, match="length"):
        Attack("random", 0.1, ("i1",), length=2)
    with pytest.raises(ConfigError, match="not in small"):
        inject(small, Attack("random", 0.1, ("nope",)))


def test_text_attack_rewrites_only_the_targets(small: Dataset) -> None:
    assert text_column(small) == "title"
    targets = choose_targets(small, 2, seed=2)
    attacked = text_attack(small, targets, n_words=3)
    assert attacked.items == small.items and attacked.interactions is small.interactions
    rows = {small.items.row(t) for t in targets}
    before, after = list(small.catalog["title"]), list(attacked.catalog["title"])
    for r, (old, new) in enumerate(zip(before, after, strict=True)):
        if r in rows:
            assert new.startswith(old) and len(new.split()) > len(old.split())
        else:
            assert new == old
    # the words added are the popular items' commonest that the target lacks ("game" it has already)
    old = before[small.items.row(targets[0])]
    added = after[small.items.row(targets[0])][len(old) :].split()
    assert "deluxe" in added and len(added) == 3 and not {w.lower() for w in old.split()} & set(added)
    copied = text_attack(small, targets, mode="title", seed=1)
    assert copied.catalog["title"].iat[small.items.row(targets[0])] != before[small.items.row(targets[0])]


def test_text_column_follows_the_template() -> None:
    frame = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"]})
    catalog = pd.DataFrame({"item": ["x", "y"], "keywords": ["fast cars", "slow boats"]})
    ds = Dataset.from_frame(frame, catalog)
    assert text_column(ds) == "keywords"  # no titles: the first text column
    ds = Dataset.from_frame(frame, catalog.assign(title=["X", "Y"], blurb=["b1", "b2"]))
    assert text_column(ds) == "title"
    from dataclasses import replace

    assert text_column(replace(ds, meta={"text_template": "{blurb} | {title}"})) == "blurb"


# -- writing a dataset back -----------------------------------------------------------------------


def test_write_dataset_round_trip(small: Dataset, tmp_path: Path) -> None:
    poisoned, _ = inject(small, Attack("bandwagon", 0.1, tuple(choose_targets(small, 2))))
    for name, ds in (("plain", small), ("poisoned", poisoned)):
        back = load(write_dataset(ds, tmp_path / name))
        assert set(back.users.ids) == set(ds.users.ids)
        assert back.items == ds.items  # same items in the same rows, the catalog-only one included
        assert sequences(back) == sequences(ds)
        assert back.titles(range(back.n_items)) == ds.titles(range(ds.n_items))
        assert list(back.catalog["categories"]) == list(ds.catalog["categories"])  # "Puzzle, Logic" stays one
        pd.testing.assert_frame_equal(raw_rows(back), raw_rows(ds), check_dtype=False)
        assert back.user_features is not None and len(back.user_features) == small.n_users
    with pytest.raises(ConfigError, match="not an empty directory"):
        write_dataset(small, tmp_path / "plain")


# -- detection ------------------------------------------------------------------------------------


def test_robust_z_and_quality_by_hand() -> None:
    np.testing.assert_allclose(
        robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0])), [-2 / 1.4826, -1 / 1.4826, 0, 1 / 1.4826, 97 / 1.4826]
    )
    assert not robust_z(np.ones(4)).any()
    q = detection_quality(["a", "b", "fake-0", "fake-1"], ["fake-0", "fake-1", "fake-2"], n_genuine=100)
    assert q["precision"] == 0.5 and q["recall"] == pytest.approx(2 / 3)
    assert q["genuine_removed"] == 2 and q["genuine_removed_share"] == 0.02


def run_attack(ds: Dataset, kind: str, seed: int = 0, fraction: float = 0.01) -> dict[str, float | int]:
    attack = Attack(kind, fraction, tuple(choose_targets(ds, 3, seed)), seed=seed)  # type: ignore[arg-type]
    poisoned, fakes = inject(ds, attack)
    result = detect(poisoned, fraction)
    assert len(result.flagged) == round(fraction * poisoned.n_users)
    return detection_quality(result.flagged, fakes, ds.n_users)


def test_detector_finds_bandwagon_and_random_fakes(skewed: Dataset) -> None:
    """1 % fakes (50, three targets). Measured: bandwagon precision = recall = 1.0, random 0.66.
    Random fakes stand out only as far as genuine users prefer popular items, and these users pick
    20 % of their items by a walk along the item line that ignores popularity."""
    bandwagon = run_attack(skewed, "bandwagon")
    assert bandwagon["recall"] >= 0.9 and bandwagon["precision"] >= 0.9
    random = run_attack(skewed, "random")
    assert random["recall"] >= 0.5 and random["precision"] >= 0.5


def test_detector_finds_a_few_fakes_per_target_on_a_dense_log() -> None:
    """ml-100k's shape: 1,000 users with long histories (median 68 items), so 1 % is ten fakes
    pushing three targets, three or four each. Measured over attack seeds 0-3: bandwagon precision
    1.0 every time, random 0.9 (the detector before the per-direction group test: 0.2-0.3)."""
    dense = ml1m_shaped(0, users=1000, items=1600, events=100_000, shortest=20, zipf=0.9, follow=0.2)
    assert run_attack(dense, "bandwagon")["precision"] >= 0.9
    random = run_attack(dense, "random")
    assert random["precision"] >= 0.7 and random["recall"] >= 0.7


def test_sequence_aware_fakes_mostly_get_through(skewed: Dataset) -> None:
    """Fakes made of genuine history prefixes look genuine on every feature; measured recall 0.0.
    This records the limitation: if a detector change catches them, update the numbers here."""
    sequence = run_attack(skewed, "sequence")
    assert sequence["recall"] < run_attack(skewed, "bandwagon")["recall"] - 0.5


def test_deviation_measures_each_side_by_its_own_tail(skewed: Dataset) -> None:
    """This log leans popular (robust z: 5 % quantile -1.55, 95 % +1.96); ``deviation`` puts both
    5 % tails at a normal's ±1.645, so neither side outranks the other by its shape alone."""
    frame = user_features(skewed)
    active = frame["length"].to_numpy() > 0
    z = robust_z(frame["pop_mean"].to_numpy()[active])
    assert np.quantile(z, 0.95) > -np.quantile(z, 0.05) + 0.3  # asymmetric, so the test can fail
    np.testing.assert_allclose(
        np.quantile(frame["deviation"].to_numpy()[active], [0.05, 0.95]), [-1.645, 1.645], atol=1e-3
    )
    assert ((frame["deviation"] > 0) == (frame["pop_mean"] > frame["pop_mean"][active].median())).all()
    with pytest.raises(ConfigError, match="tail"):
        user_features(skewed, tail=0.3)


@pytest.mark.parametrize(("kind", "column"), [("bandwagon", "group_popular"), ("random", "group_niche")])
def test_group_evidence_is_the_fakes_and_in_their_direction(skewed: Dataset, kind: str, column: str) -> None:
    """Measured: every bandwagon fake ≥ 7.4 (genuine users: median 0, 99th percentile 4.4), every
    random fake ≥ 3.6 (genuine: median 0, 99th percentile 2.2); the other direction is quiet."""
    poisoned, fakes = inject(skewed, Attack(kind, 0.01, tuple(choose_targets(skewed, 3))))  # type: ignore[arg-type]
    frame = user_features(poisoned)
    is_fake = frame["user"].isin(fakes).to_numpy()
    evidence = frame[column].to_numpy()
    assert evidence[is_fake].min() > np.quantile(evidence[~is_fake], 0.99) + 1.0
    assert np.median(evidence[~is_fake]) == 0.0
    other = "group_niche" if column == "group_popular" else "group_popular"
    assert np.median(frame[other].to_numpy()[is_fake]) < 1.0
    sign = 1 if kind == "bandwagon" else -1
    assert (sign * frame["deviation"].to_numpy()[is_fake] > 0).mean() > 0.8  # fakes lean the same way
    assert (frame["group"].to_numpy()[is_fake] == evidence[is_fake]).all()  # and are scored that way


def test_features_and_threshold(skewed: Dataset) -> None:
    poisoned, fakes = inject(skewed, Attack("bandwagon", 0.01, tuple(choose_targets(skewed, 3))))
    frame = user_features(poisoned)
    assert list(frame["user"]) == poisoned.users.ids
    assert {"deviation", "group_popular", "group_niche", "score"} <= set(frame.columns)
    is_fake = frame["user"].isin(fakes).to_numpy()
    assert (frame["length"].to_numpy()[is_fake] == median_length(skewed) - 2).all()  # training items
    assert frame["pop_mean"][is_fake].median() > frame["pop_mean"][~is_fake].median()
    assert frame["top_share"][is_fake].median() > frame["top_share"][~is_fake].median()
    high = detect(poisoned, 0.01, threshold=float(frame["score"].quantile(0.995)))
    assert 0 < len(high.flagged) <= 0.006 * poisoned.n_users
    assert detect(poisoned, 0.01).scores.equals(frame)  # deterministic
    with pytest.raises(ConfigError, match="expected_fraction"):
        detect(poisoned, 0.0)


@pytest.mark.realdata
def test_detector_on_ml100k() -> None:
    """The case the per-direction scores were made for: nine bandwagon fakes pushing three targets
    on ml-100k, the most popular-leaning users of all, outranked before (precision 0) by genuine
    users deep in the catalogue. Measured (attack seed 0): 1 % precision 0.70, recall 0.78; 2 % 1.0."""
    from lmrec.cache import default_cache
    from lmrec.data.sources import load_source

    if not (default_cache() / "ml-100k").is_dir():
        pytest.skip("ml-100k is not in the local cache")
    ml100k = load_source("ml-100k", default_cache())
    assert run_attack(ml100k, "bandwagon")["precision"] >= 0.5
    assert run_attack(ml100k, "bandwagon", fraction=0.02)["precision"] >= 0.9


def test_remove_users(small: Dataset) -> None:
    gone = ["u3", "u10"]
    out = remove_users(small, gone)
    assert out.n_users == small.n_users - 2 and not set(gone) & set(out.users.ids)
    assert out.items == small.items and out.catalog is small.catalog
    kept = {u: s for u, s in sequences(small).items() if u not in gone}
    assert sequences(out) == kept
    assert out.user_features is not None and not out.user_features["user"].isin(gone).any()
    with pytest.raises(ConfigError, match="not in small"):
        remove_users(small, ["nobody"])


# -- the commands ---------------------------------------------------------------------------------


def test_cli_attack_then_detect(skewed: Dataset, tmp_path: Path) -> None:
    source = write_dataset(skewed, tmp_path / "data")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["attack", "--dataset", str(source), "--kind", "bandwagon", "--fraction", "0.01", "--targets", "3"]
    assert main([*cache, *args, "--seed", "0", "--text-words", "2", "--out", str(tmp_path / "poisoned")]) == 0
    record = json.loads((tmp_path / "poisoned" / "attack.json").read_text())
    assert record["attack"]["kind"] == "bandwagon" and len(record["targets"]) == 3
    assert len(record["fake_users"]) == 50 and record["text_attack"]["column"] == "title"
    poisoned = load(tmp_path / "poisoned")
    assert poisoned.n_users == skewed.n_users + 50

    fakes = str(tmp_path / "poisoned" / "attack.json")
    args = ["detect", "--dataset", str(tmp_path / "poisoned"), "--fraction", "0.01", "--fakes", fakes]
    assert main([*cache, *args, "--out", str(tmp_path / "clean")]) == 0
    report = json.loads((tmp_path / "clean" / "detect.json").read_text())
    assert report["quality"]["recall"] >= 0.8 and report["quality"]["precision"] >= 0.7
    clean = load(tmp_path / "clean")
    assert clean.n_users == poisoned.n_users - len(report["flagged"])
    assert not set(report["flagged"]) & set(clean.users.ids)
    assert main([*cache, *args, "--out", str(tmp_path / "clean")]) == 2  # the directory is taken
