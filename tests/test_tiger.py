"""TIGER: learns the checkerboard, never generates history items, and its beam search is exact when wide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions, load_model
from lmrec.models.sequential import SASRec, SequentialConfig
from lmrec.models.tiger import BOS, Tiger, TigerConfig
from tests.conftest import KeywordEncoder, checkerboard
from tests.test_conformance import FAST


@pytest.fixture(scope="module")
def fitted() -> tuple[Tiger, Any]:
    split = leave_one_out(checkerboard())
    model = Tiger(TigerConfig.from_dict(FAST["tiger"]))
    model.fit(split.train_dataset(), None, FitOptions(seed=0, text_encoder=KeywordEncoder()))
    return model, split


def test_recommends_same_parity(fitted: tuple[Tiger, Any]) -> None:
    model, split = fitted
    queries = split.eval_set("test").queries
    items, _ = model.recommend(queries, k=5)
    same = (items % 2) == (queries.users[:, None] % 2)  # user u and item i are rows u and i
    assert same.mean() >= 0.8, same.mean()


def test_generated_list_never_holds_history(fitted: tuple[Tiger, Any]) -> None:
    model, split = fitted
    queries = split.eval_set("test").queries
    scores = model.score(queries)
    top = torch.topk(scores, model.config.beams, dim=1).indices.numpy()  # the generated list, unmasked
    for row in range(len(queries)):
        history = queries.history(row)
        assert not set(top[row]) & set(history.tolist())
        assert scores[row, history].max() < scores[row, top[row]].min()


def test_codes_are_unique_and_tokens_index_the_vocabulary(fitted: tuple[Tiger, Any]) -> None:
    model, _ = fitted
    levels = model.config.levels
    assert model.codes.shape == (model.n_items, levels + 1)
    assert len(torch.unique(model.codes, dim=0)) == model.n_items
    tokens = model.item_tokens[1:]
    assert (tokens[:, 0] == BOS).all() and tokens.max() < model.vocab
    assert len(model.trie) > model.n_items


@pytest.fixture(scope="module")
def sasrec_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = leave_one_out(checkerboard())
    model = SASRec(SequentialConfig.from_dict(FAST["sasrec"])).fit(split.train_dataset(), None, FitOptions(seed=0))
    path = tmp_path_factory.mktemp("sasrec")
    model.save(path)
    return path


def widened(model: Tiger, **overrides: Any) -> Tiger:
    """``model``'s weights and codes with a beam as wide as the catalog (and ``overrides``)."""
    wide = Tiger(model.config.updated({"beams": model.n_items, **overrides}))
    wide.n_users, wide.n_items = model.n_users, model.n_items
    wide.load_state(model.state())
    return wide


def exact_logprobs(model: Tiger, history: np.ndarray) -> torch.Tensor:
    """Every item's teacher-forced code log-prob after ``history`` (history items -inf)."""
    net, tokens = model.net.eval(), model.item_tokens
    prefix = torch.cat([tokens[torch.from_numpy(history + 1)].reshape(-1), torch.tensor([BOS])])
    codes = tokens[1:, 1:]  # (n_items, levels + 1) code tokens
    seq = torch.cat([prefix.expand(len(codes), -1), codes], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(net.logits(net(seq[:, :-1])), -1)
    steps = codes.shape[1]
    per_token = logp[:, -steps:].gather(2, codes.unsqueeze(2)).squeeze(2)
    exact = per_token.sum(1).double()
    exact[history] = float("-inf")
    return exact


def test_wide_beam_is_exact(fitted: tuple[Tiger, Any]) -> None:
    """With a beam as wide as the catalog, the generated list is the top of every item's
    teacher-forced sequence log-prob, and its scores are those log-probs."""
    wide = widened(fitted[0])
    history = np.array([0, 2, 4, 6])
    scores = wide.score(QueryBatch.from_histories([-1], [history]))[0]
    exact = exact_logprobs(wide, history)
    unseen = wide.n_items - len(history)
    expected = torch.topk(exact, unseen).indices
    got = torch.topk(scores, unseen).indices
    assert got.tolist() == expected.tolist()
    assert torch.allclose(scores[got].double(), exact[expected], atol=1e-4)


def test_hybrid_decoding_adds_the_weighted_sequential_distribution(fitted: tuple[Tiger, Any], sasrec_run: Path) -> None:
    """Hybrid decoding with a wide beam: every unseen item scores log p_tiger + w · log p_sasrec,
    the sequential model's distribution renormalised over the items not in the history."""
    wide = widened(fitted[0], hybrid_run=str(sasrec_run), hybrid_weight=2.0)
    history = np.array([1, 3, 5])
    scores = wide.score(QueryBatch.from_histories([-1], [history]))[0].double()
    guide = load_model(sasrec_run)
    prior = guide.score(QueryBatch.from_histories([-1], [history]))[0].double()
    prior[history] = float("-inf")
    expected = exact_logprobs(wide, history) + 2.0 * torch.log_softmax(prior, 0)
    unseen = wide.n_items - len(history)
    top = torch.topk(expected, unseen).indices
    assert torch.topk(scores, unseen).indices.tolist() == top.tolist()
    assert torch.allclose(scores[top], expected[top], atol=1e-4)


@pytest.mark.parametrize("source", ["collab", "both"])
def test_collaborative_codes_are_unique_and_their_usage_reported(source: str, sasrec_run: Path) -> None:
    split = leave_one_out(checkerboard())
    config = {**FAST["tiger"], "epochs": 2, "ids_from": source, "collab_run": str(sasrec_run)}
    model = Tiger(TigerConfig.from_dict(config))
    model.fit(split.train_dataset(), None, FitOptions(seed=0, text_encoder=KeywordEncoder()))
    assert len(torch.unique(model.codes, dim=0)) == model.n_items
    usage = model.training_log["codes"]
    levels = model.config.levels
    _, sizes = np.unique(model.codes[:, :levels].numpy(), axis=0, return_counts=True)
    assert usage["items_in_collisions"] == int(sizes[sizes > 1].sum())
    assert all(1 <= used <= model.config.codebook for used in usage["used_per_level"])


def test_empty_history_scores_popularity(fitted: tuple[Tiger, Any]) -> None:
    model, _ = fitted
    scores = model.score(QueryBatch.from_histories([3], [[]]))
    assert torch.equal(scores[0], torch.log1p(model.popularity))


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        TigerConfig(dim=10, heads=3)
    with pytest.raises(ConfigError, match="beams"):
        TigerConfig(beams=0)
    with pytest.raises(ConfigError, match="levels"):
        TigerConfig(levels=0)
    with pytest.raises(ConfigError, match="collab_run"):
        TigerConfig(ids_from="collab")
    with pytest.raises(ConfigError, match="hybrid"):
        TigerConfig(hybrid_weight=1.0)
