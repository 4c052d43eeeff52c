"""Privacy: masked datasets, the PII scrubber measured on generated text, membership inference."""

from __future__ import annotations

import json
import math
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.cli import main
from lmrec.data.batch import QueryBatch
from lmrec.data.loaders import load
from lmrec.data.schema import Dataset
from lmrec.errors import ConfigError
from lmrec.models.ease import EASE, EASEConfig
from lmrec.models.itemknn import ItemKNN
from lmrec.models.popularity import Popularity
from lmrec.privacy import pii
from lmrec.privacy.attack import dp_auc_bound, epsilon_lower_bound, membership_inference, membership_scores
from lmrec.privacy.mask import MaskOptions, generalise_times, load_key, mask_dataset, pseudonym, write_masked
from lmrec.privacy.pii import luhn_complete, measure_scrubber, pii_corpus, scrub_text
from lmrec.privacy.split import membership_split
from lmrec.runs import open_run

DAY = 86_400
T0 = 1_614_816_000  # 2021-03-04 00:00 UTC, a Thursday


# -- a tiny MovieLens-100K-like directory ---------------------------------------------------------


def write_ml100k(directory: Path, n_users: int = 30, n_items: int = 20, per_user: int = 8) -> Path:
    """u.data / u.item / u.user as GroupLens ships them. User u prefers items of group u % 4;
    several interactions of a user fall on one day, so coarser times create ties."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    rows = []
    for u in range(1, n_users + 1):
        group = [i for i in range(1, n_items + 1) if i % 4 == u % 4]
        others = [i for i in range(1, n_items + 1) if i % 4 != u % 4]
        chosen = list(rng.choice(group, 4, replace=False)) + list(rng.choice(others, per_user - 4, replace=False))
        for k, i in enumerate(rng.permutation(chosen)):
            rows.append(f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{T0 + u * 7 * DAY + (k // 3) * DAY + k * 60}")
    (directory / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    items = []
    for i in range(1, n_items + 1):
        title = f"Movie {i} ({1980 + i})"
        if i == 3:
            title = "Call 555-123-4567 (1999)"
        if i == 5:
            title = "Mail jane.doe@example.com (1995)"
        flags = "|".join("1" if g == i % 19 else "0" for g in range(19))
        items.append(f"{i}|{title}|01-Jan-{1980 + i}||http://example.org/{i}|{flags}")
    (directory / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    users = [f"{u}|{17 + u * 2}|{'MF'[u % 2]}|student|{10000 + u * 137:05d}" for u in range(1, n_users + 1)]
    (directory / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
    return directory


@pytest.fixture
def ml(tmp_path: Path) -> Path:
    return write_ml100k(tmp_path / "ml-tiny")


def cli(cache: Path, *args: str) -> int:
    return main(["--cache-dir", str(cache), *args])


def test_masked_data_trains_to_the_same_metrics(ml: Path, tmp_path: Path) -> None:
    key, masked = tmp_path / "secret.key", tmp_path / "masked"
    assert cli(tmp_path, "mask", "--dataset", str(ml), "--out", str(masked), "--key-file", str(key), "--items") == 0
    metrics = {}
    for name, data in (("raw", ml), ("masked", masked)):
        for model in ("ease", "itemknn"):
            out = tmp_path / f"{name}-{model}"
            assert cli(tmp_path, "train", "--dataset", str(data), "--model", model, "--out", str(out), "--quiet") == 0
            metrics[name, model] = open_run(out, tmp_path).evaluate("test")["metrics"]
    for model in ("ease", "itemknn"):
        assert metrics["masked", model] == metrics["raw", model]
        assert metrics["raw", model]["ndcg@10"] > 0  # the comparison is not between two zeros

    ds, original = load(masked), load(ml)
    raw_users, raw_items = set(original.users.ids), set(original.items.ids)
    assert not raw_users & set(ds.users.ids) and not raw_items & set(ds.items.ids)
    assert all(len(u) == 16 and int(u, 16) >= 0 for u in ds.users.ids)
    titles = " ".join(ds.catalog["title"])
    assert "[phone]" in titles and "[email]" in titles and "jane.doe" not in titles and "555-123" not in titles
    users = ds.user_features
    assert users is not None and set(users["user"]) == set(ds.users.ids)
    assert set(users["age"]) <= {"10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70-79"}
    assert all(len(z) == 3 for z in users["zip_code"])
    report = json.loads((masked / "MASK.json").read_text())
    assert report["changed"]["items.title"] == 2 and report["changed"]["interactions.user"] == 30 * 8
    assert report["changed"]["users.age"] == 30 and report["changed"]["users.zip_code"] == 30


def test_day_granularity_keeps_each_users_order(ml: Path, tmp_path: Path) -> None:
    original = load(ml)
    key = load_key(tmp_path / "k")
    tables, report = mask_dataset(original, key, MaskOptions(time_granularity="day"))
    back = load(write_masked(tables, tmp_path / "out"))
    ts = back.interactions["timestamp"].to_numpy()
    assert (ts % DAY == 0).all()
    assert report.changed["interactions.timestamp"] == int((original.interactions["timestamp"] % DAY != 0).sum())
    assert len(np.unique(ts)) < len(np.unique(original.interactions["timestamp"]))  # ties were made
    name = {raw: pseudonym(key, "user", raw) for raw in original.users.ids}

    def sequences(ds: Dataset, rename: dict[str, str] | None = None) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for u, i in zip(ds.interactions["user"], ds.interactions["item"], strict=True):
            raw = ds.users.ids[u]
            out.setdefault(rename[raw] if rename else raw, []).append(ds.items.ids[i])
        return out

    assert sequences(back) == sequences(original, name)


def test_times_floor_to_day_monday_and_month() -> None:
    t = np.array([T0 + 13 * 3600 + 5, T0 + 5 * DAY + 1])  # Thursday 13:00, Tuesday after
    assert list(generalise_times(t, "day")) == [T0, T0 + 5 * DAY]
    assert list(generalise_times(t, "week")) == [T0 - 3 * DAY, T0 + 4 * DAY]  # Mondays 1 and 8 March
    assert list(generalise_times(t, "month")) == [T0 - 3 * DAY, T0 - 3 * DAY]  # 1 March 2021
    assert list(generalise_times(t, "none")) == list(t)
    with pytest.raises(ConfigError, match="not seconds"):
        generalise_times(np.array([1_614_816_000_000]), "day")  # milliseconds


def test_pseudonyms_are_stable_with_one_key_and_differ_with_another() -> None:
    a, b = b"a" * 32, b"b" * 32
    assert pseudonym(a, "user", "42") == pseudonym(a, "user", "42")
    assert pseudonym(a, "user", "42") != pseudonym(b, "user", "42")
    assert pseudonym(a, "user", "42") != pseudonym(a, "item", "42")
    assert pseudonym(a, "user", "42") != pseudonym(a, "user", "43")
    assert len(pseudonym(a, "user", "42", chars=24)) == 24


def test_key_file_is_private_stable_and_never_printed(
    ml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "keys" / "mask.key"
    args = ["mask", "--dataset", str(ml), "--key-file", str(key_file), "--json"]
    assert cli(tmp_path, *args, "--out", str(tmp_path / "one")) == 0
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    assert len(key) == 32
    assert cli(tmp_path, *args, "--out", str(tmp_path / "two"), "--drop", "occupation") == 0
    printed = capsys.readouterr()
    for secret in (key.hex(), key.hex().upper(), repr(key)):
        assert secret not in printed.out + printed.err
    assert "users.occupation" in json.loads(printed.out.splitlines()[-1])["dropped"]
    one, two = load(tmp_path / "one"), load(tmp_path / "two")
    assert one.users.ids == two.users.ids  # the same key, the same pseudonyms in both copies
    assert one.items.ids == load(ml).items.ids  # items kept without --items
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(key_file)


def test_mask_refuses_a_used_directory_and_dropping_ids(ml: Path, tmp_path: Path) -> None:
    key = load_key(tmp_path / "k")
    ds = load(ml)
    with pytest.raises(ConfigError, match="cannot drop"):
        mask_dataset(ds, key, MaskOptions(drop=("user",)))
    tables, _ = mask_dataset(ds, key, MaskOptions(quasi="drop"))
    assert tables.users is not None and "zip_code" not in tables.users and "age" not in tables.users
    write_masked(tables, tmp_path / "out")
    with pytest.raises(ConfigError, match="not an empty directory"):
        write_masked(tables, tmp_path / "out")
    new_key = tmp_path / "new.key"
    assert cli(tmp_path, "mask", "--dataset", str(ml), "--out", str(tmp_path / "out"), "--key-file", str(new_key)) == 2
    assert not new_key.exists()  # refused before a key was made


# -- PII: generated test set ----------------------------------------------------------------------


def test_scrubber_recall_and_precision_on_generated_pii() -> None:
    samples = pii_corpus(1000, seed=0)
    score = measure_scrubber(samples, lambda t: scrub_text(t, presidio=False))
    assert score.n_pii > 1000 and score.n_decoys > 1000
    assert score.recall >= 0.95, score.missed[:20]
    assert min(score.recall_by_kind.values()) >= 0.9, score.recall_by_kind
    assert score.precision >= 0.95
    assert score.decoys_kept >= 0.99, score.destroyed[:20]


def test_the_corpus_holds_what_it_says() -> None:
    samples = pii_corpus(300, seed=1)
    assert [s.text for s in samples] == [s.text for s in pii_corpus(300, seed=1)]
    cards = [v for s in samples for v in s.values("card")]
    assert cards and all(_luhn("".join(ch for ch in c if ch.isdigit())) for c in cards)
    assert any(" " in c for c in cards) and any("-" in c for c in cards)
    phones = [v for s in samples for v in s.values("phone")]
    assert any(p.startswith("+44") for p in phones) and any(p.startswith("(") for p in phones)
    assert all("@" in e for s in samples for e in s.values("email"))
    decoys = {v for s in samples for v in s.values("decoy")}
    assert any(v.startswith("$") for v in decoys) and any(v.isdigit() and len(v) == 4 for v in decoys)


def _luhn(digits: str) -> bool:
    return luhn_complete(digits[:-1]) == digits


def test_measure_scrubber_scores_scrubbers_that_fail() -> None:
    samples = pii_corpus(200, seed=2)
    nothing = measure_scrubber(samples, lambda t: t)
    assert nothing.recall == 0.0 and nothing.decoys_kept == 1.0
    import re

    every_number = measure_scrubber(samples, lambda t: re.sub(r"\S*\d\S*", "[phone]", t))
    assert every_number.recall_by_kind["card"] == 1.0
    assert every_number.decoys_kept < 0.1 and every_number.precision < 0.8


def test_presidio_recognisers_run_after_the_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    class Found:
        def __init__(self, start: int, end: int, entity: str) -> None:
            self.start, self.end, self.entity_type, self.score = start, end, entity, 0.9

    class Finder:
        def __init__(self, word: str, entity: str) -> None:
            self.word, self.entity = word, entity
            self.supported_entities = [entity]

        def analyze(self, text: str, entities: list[str], nlp_artifacts: object) -> list[Found]:
            at = text.find(self.word)
            return [] if at < 0 else [Found(at, at + len(self.word), self.entity)]

    module = types.ModuleType("presidio_analyzer.predefined_recognizers")
    module.EmailRecognizer = lambda: Finder("jane at example dot com", "EMAIL_ADDRESS")  # type: ignore[attr-defined]
    module.CreditCardRecognizer = lambda: Finder("no card", "CREDIT_CARD")  # type: ignore[attr-defined]
    module.PhoneRecognizer = lambda: Finder("five five five", "UK_PHONE_NUMBER")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "presidio_analyzer", types.ModuleType("presidio_analyzer"))
    monkeypatch.setitem(sys.modules, "presidio_analyzer.predefined_recognizers", module)
    pii._presidio_recognizers.cache_clear()
    try:
        text = "mail jane at example dot com or a@b.org, ring five five five"
        assert scrub_text(text, presidio=True) == "mail [email] or [email], ring [phone]"
        assert scrub_text(text, presidio=False) == "mail jane at example dot com or [email], ring five five five"
    finally:
        pii._presidio_recognizers.cache_clear()


# -- membership inference -------------------------------------------------------------------------


def uniform(n_users: int = 400, n_items: int = 60, per_user: int = 12, seed: int = 0) -> Dataset:
    """Every user picks items uniformly at random: there is nothing to generalise, so whatever a
    model knows about a user's later items it memorised."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"u{u}", f"i{i}", t)
        for u in range(n_users)
        for t, i in enumerate(rng.choice(n_items, per_user, replace=False))
    ]
    catalog = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)]})
    return Dataset.from_frame(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), catalog)


class RandomScorer:
    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.generator = torch.Generator().manual_seed(0)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return torch.rand(len(batch), self.n_items, generator=self.generator)


def test_membership_split_is_user_disjoint() -> None:
    ds = uniform(n_users=41)
    split = membership_split(ds, seed=3)
    assert not set(split.members) & set(split.non_members)
    assert len(split.members) + len(split.non_members) == 41 and abs(len(split.members) - 20.5) <= 0.5
    assert list(membership_split(ds, seed=3).members) == list(split.members)
    train = split.train_dataset()
    assert train.users == ds.users and train.items == ds.items
    assert set(train.interactions["user"]) == set(split.members)
    with pytest.raises(ConfigError):
        membership_split(ds, member_share=1.0)


def test_attack_tells_members_of_a_memorising_model() -> None:
    ds = uniform()
    split = membership_split(ds, seed=0)
    for model in (EASE(EASEConfig(reg=1.0)), ItemKNN()):
        model.fit(split.train_dataset())
        result = membership_inference(model, split)
        assert result.auc > 0.8, (model.name, result.auc)
        assert result.member_scores.mean() > result.non_member_scores.mean()
        assert result.epsilon_lower_bound > 1.0
        assert membership_inference(model, split, signal="loglik").auc > 0.8


def test_attack_is_at_chance_against_models_that_did_not_see_the_members() -> None:
    ds = uniform()
    split = membership_split(ds, seed=0)
    assert abs(membership_inference(RandomScorer(ds.n_items), split).auc - 0.5) < 0.1
    # popularity counted on another draw of the same users: nothing of the members is in it
    other = uniform(seed=1)
    other_pop = Popularity().fit(other.with_interactions(other.interactions))
    assert other.items == ds.items
    assert abs(membership_inference(other_pop, split).auc - 0.5) < 0.1


def test_membership_scores_are_percentiles_of_the_later_items() -> None:
    ds = Dataset.from_frame(pd.DataFrame({"user": ["a"] * 4, "item": ["x", "y", "z", "w"], "timestamp": range(4)}))

    class Fixed:
        n_items = 4

        def score(self, batch: QueryBatch) -> torch.Tensor:
            return torch.tensor([[9.0, 3.0, 2.0, 1.0]]).expand(len(batch), -1)

    # query x, y; targets z (beats w: 1.0 of the 1 other) and w (0.0); mean 0.5
    assert membership_scores(Fixed(), ds, np.array([0]), prefix=0.5).tolist() == [0.5]
    logp = torch.log_softmax(torch.tensor([2.0, 1.0]), 0).mean().item()
    assert math.isclose(membership_scores(Fixed(), ds, np.array([0]), signal="loglik")[0], logp, rel_tol=1e-6)


def test_dp_bound() -> None:
    assert dp_auc_bound(0.0) == 0.5
    assert math.isclose(dp_auc_bound(1.0), math.e / (1 + math.e))
    assert dp_auc_bound(2.0) > dp_auc_bound(1.0)
    assert math.isclose(epsilon_lower_bound(dp_auc_bound(1.5)), 1.5)
    assert epsilon_lower_bound(0.4) == 0.0
    with pytest.raises(ConfigError):
        dp_auc_bound(-1.0)
