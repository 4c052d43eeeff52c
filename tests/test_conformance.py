"""Every registered model passes the same contract. Adding a model means adding a fast config here;
an option that changes what a model is gets one too, keyed "model:variant"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.evaluate import evaluate
from lmrec.models import MODELS, FitOptions, Recommender, load_model, model_class
from tests.conftest import KeywordEncoder

# The small sequential encoder several fast configs share.
SEQUENTIAL = {"dim": 16, "inner": 32, "layers": 1, "max_len": 12, "epochs": 15, "batch_size": 16, "lr": 0.01}
# The small TIGER its two fast configs share.
TIGER = {
    "levels": 2,
    "codebook": 4,
    "dim": 32,
    "inner": 64,
    "layers": 1,
    "max_len": 12,
    "epochs": 30,
    "batch_size": 16,
    "lr": 0.005,
    "dropout": 0.0,
    "beams": 10,
}
# Small settings so the whole suite runs in seconds; defaults are for real data.
FAST: dict[str, dict[str, Any]] = {
    "pop": {},
    "itemknn": {"k": 20},
    "ease": {"reg": 10.0},
    "bpr": {"dim": 16, "epochs": 40, "batch_size": 64, "lr": 0.02},
    "als": {"dim": 16, "iterations": 8},
    "svd": {"dim": 16, "epochs": 40, "batch_size": 64, "lr": 0.02, "holdout": 0.0},
    "ncf": {"dim": 8, "mlp": (16, 8), "epochs": 30, "batch_size": 64, "lr": 0.01},
    "sasrec": SEQUENTIAL,
    # its ID rows start from the (whitened) item text and decay towards it; and late fusion
    "sasrec:text-init": {**SEQUENTIAL, "item_init": "text", "item_decay_to": "text"},
    "sasrec:late": {**SEQUENTIAL, "item_repr": "late"},
    "bert4rec": {**SEQUENTIAL, "epochs": 25},
    "text-sasrec": SEQUENTIAL,
    # next item + rating + like through MMoE; fitted on the checkerboard with a rating per interaction
    "mtl-sasrec": {
        **SEQUENTIAL,
        "experts": 2,
        "expert_inner": 16,
        "head_hidden": 16,
    },
    # fine-tunes the packaged MiniLM for 3 steps (needs lmrec[text])
    "lm-ranker": {
        "base": "itemknn",
        "base_config": {"k": 20},
        "candidates": 5,
        "steps": 3,
        "batch_size": 4,
        "max_length": 64,
    },
    "tiger": TIGER,
    # codes from the fitted sasrec's item rows, and that sasrec guiding the beam search
    "tiger:collab-hybrid": {**TIGER, "ids_from": "collab", "hybrid_weight": 1.0},
    # `lmrec compress`: the sasrec above, then an int8 ONNX encoder and int8 table (needs lmrec[compress])
    "compressed": {
        "method": "int8",
        "source": "sasrec",
        "source_config": SEQUENTIAL,
    },
    # a toy causal LM built on the spot (tests/llm_toy.py) writes item titles; needs lmrec[llm]
    "llm-gen": {"lora_r": 8, "steps": 200, "batch_size": 16, "lr": 0.003, "beams": 10, "max_history": 8},
    # the same LM writes semantic IDs, new tokens of its vocabulary, instead of titles (the new
    # embedding rows start untrained and need the larger step)
    "llm-gen:codes": {
        "lora_r": 8,
        "steps": 200,
        "batch_size": 16,
        "lr": 0.01,
        "beams": 10,
        "max_history": 8,
        "item_ids": "codes",
        "levels": 2,
        "codebook": 4,
    },
    # the list ranker reads a retriever's lettered candidates with a toy LM that knows the letters
    "lm-list-ranker": {
        "base": "itemknn",
        "base_config": {"k": 20},
        "candidates": 5,
        "history_items": 4,
        "steps": 3,
        "batch_size": 4,
        "lora_r": 4,
        "valid_users": 0,
    },
}
RATED = {"mtl-sasrec"}  # models that also learn ratings: their checkerboard has one (1-5, by item)


def registered(key: str) -> str:
    """The registry name of a FAST key ("llm-gen:codes" → "llm-gen")."""
    return key.split(":")[0]


def test_every_registered_model_has_a_fast_config() -> None:
    assert {registered(key) for key in FAST} == set(MODELS)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Recommender, Any]]:
    from lmrec.models.lmranker import LABELS
    from tests.conftest import checkerboard
    from tests.llm_toy import toy_lm_dir

    split = leave_one_out(checkerboard())
    train = split.train_dataset()
    titles = train.titles(list(range(train.n_items)))
    toy = toy_lm_dir(tmp_path_factory.mktemp("toy-lm"), titles)
    lettered = toy_lm_dir(tmp_path_factory.mktemp("toy-list-lm"), [*titles, *[f"{x} {x}." for x in LABELS]])
    sasrec_dir = tmp_path_factory.mktemp("sasrec") / "model"  # the tiger variant reads it
    out = {}
    for name, overrides in FAST.items():
        if registered(name) == "llm-gen":
            overrides = {**overrides, "lm": str(toy)}
        if name == "lm-list-ranker":
            overrides = {**overrides, "lm": str(lettered)}
        if name == "tiger:collab-hybrid":
            overrides = {**overrides, "collab_run": str(sasrec_dir), "hybrid_run": str(sasrec_dir)}
        klass = model_class(registered(name))
        options = FitOptions(seed=1, text_encoder=KeywordEncoder())  # text models read item text through it
        data = train
        if name in RATED:
            data = train.with_interactions(train.interactions.assign(rating=1.0 + train.interactions["item"] % 5))
        model = klass(klass.config_class.from_dict(overrides)).fit(data, None, options)
        out[name] = (model, split)
        if name == "sasrec":
            model.save(sasrec_dir)
    return out


def _queries(split: Any) -> QueryBatch:
    return split.eval_set("test").queries


@pytest.mark.parametrize("name", sorted(FAST))
def test_score_shape_and_finite(name: str, fitted: dict) -> None:
    model, split = fitted[name]
    q = _queries(split)
    scores = model.score(q)
    assert scores.shape == (len(q), split.dataset.n_items)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(FAST))
def test_vectors_protocol_agrees_with_score(name: str, fitted: dict) -> None:
    """Where a model has vectors, query · item + offset is its score (rows marked exact); and
    every model scores given candidates as ``score`` does."""
    model, split = fitted[name]
    q = QueryBatch.from_histories([0, -1, 5], [[0, 2], [1, 3, 5], []])
    scores = model.score(q).float()
    items = model.item_embeddings()
    if items is not None:
        queries = model.query_embeddings(q)
        assert items.shape[0] == split.dataset.n_items and queries.vectors.shape == (3, items.shape[1])
        dot = queries.vectors @ items.T + queries.offsets.unsqueeze(1)
        exact = queries.exact.numpy()
        assert exact[:2].all()  # histories to read: a dot product
        assert torch.allclose(dot[exact], scores[exact], atol=1e-4)
    candidates = np.array([[3, 0, -1], [7, 1, 2], [4, 4, 4]])
    got = model.score_candidates(q, candidates)
    want = torch.where(
        torch.from_numpy(candidates >= 0), scores.gather(1, torch.from_numpy(candidates.clip(0))), -torch.inf
    )
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAST))
def test_recommend_excludes_seen(name: str, fitted: dict) -> None:
    model, split = fitted[name]
    q = _queries(split)
    items, _ = model.recommend(q, k=10)
    for row in range(len(q)):
        assert not set(items[row]) & set(q.history(row).tolist())


@pytest.mark.parametrize("name", sorted(FAST))
def test_save_load_identical_scores(name: str, fitted: dict, tmp_path: Path) -> None:
    model, split = fitted[name]
    model.save(tmp_path / name)
    loaded = load_model(tmp_path / name)
    assert type(loaded) is type(model)
    q = _queries(split)
    assert torch.equal(model.score(q), loaded.score(q))
    assert loaded.config == model.config


@pytest.mark.parametrize("name", sorted(FAST))
def test_unknown_user_and_items(name: str, fitted: dict) -> None:
    model, split = fitted[name]
    n = split.dataset.n_items
    history = [0, 2, 4]  # even items: a new user who likes even items
    plain = model.score(QueryBatch.from_histories([-1], [history]))
    noisy = model.score(QueryBatch.from_histories([-1], [[-1, *history, n + 5]]))
    assert plain.shape == (1, n) and torch.isfinite(plain).all()
    assert torch.allclose(plain, noisy)  # unknown item rows are ignored
    beyond = model.score(QueryBatch.from_histories([10_000], [history]))  # user row past the table
    assert torch.isfinite(beyond).all()


@pytest.mark.parametrize("name", sorted(set(FAST) - {"pop"}))
def test_beats_popularity_on_checkerboard(name: str, fitted: dict) -> None:
    model, split = fitted[name]
    pop, _ = fitted["pop"]
    test = split.eval_set("test")
    ours = evaluate(model, test, metrics=("ndcg",)).metrics["ndcg@10"]
    baseline = evaluate(pop, test, metrics=("ndcg",)).metrics["ndcg@10"]
    assert ours > baseline * 1.2 and ours > 0.2, (ours, baseline)


@pytest.mark.parametrize("name", ["bpr", "ncf"])
def test_same_seed_same_scores(name: str, board: Dataset) -> None:
    train = leave_one_out(board).train_dataset()
    klass = model_class(name)
    cfg = klass.config_class.from_dict({**FAST[name], "epochs": 3})
    a = klass(cfg).fit(train, None, FitOptions(seed=7))
    b = klass(cfg).fit(train, None, FitOptions(seed=7))
    q = QueryBatch.from_histories([0, 1], [[0], [1]])
    assert torch.equal(a.score(q), b.score(q))


def test_early_stopping_restores_best(board: Dataset) -> None:
    split = leave_one_out(board)
    cfg = model_class("bpr").config_class.from_dict({**FAST["bpr"], "epochs": 30, "patience": 2})
    model = model_class("bpr")(cfg).fit(split.train_dataset(), split.eval_set("valid"), FitOptions(seed=0))
    log = model.training_log
    assert len(log["valid"]) == log["epochs"]
    best = int(np.argmax(log["valid"]))
    assert log["best_epoch"] == best
    final = evaluate(model, split.eval_set("valid"), metrics=("ndcg",)).metrics["ndcg@10"]
    assert final == pytest.approx(max(log["valid"]))
