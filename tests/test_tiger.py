"""TIGER: learns the checkerboard, never generates history items, and its beam search is exact when wide."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions
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


def test_wide_beam_is_exact(fitted: tuple[Tiger, Any]) -> None:
    """With a beam as wide as the catalog, the generated list is the top of every item's
    teacher-forced sequence log-prob, and its scores are those log-probs."""
    model, _ = fitted
    wide = Tiger(model.config.updated({"beams": model.n_items}))
    wide.n_users, wide.n_items = model.n_users, model.n_items
    wide.load_state(model.state())
    history = np.array([0, 2, 4, 6])
    scores = wide.score(QueryBatch.from_histories([-1], [history]))[0]

    net, tokens = wide.net.eval(), wide.item_tokens
    prefix = torch.cat([tokens[torch.from_numpy(history + 1)].reshape(-1), torch.tensor([BOS])])
    codes = tokens[1:, 1:]  # (n_items, levels + 1) code tokens
    seq = torch.cat([prefix.expand(len(codes), -1), codes], dim=1)
    with torch.no_grad():
        logp = torch.log_softmax(net.logits(net(seq[:, :-1])), -1)
    steps = codes.shape[1]
    per_token = logp[:, -steps:].gather(2, codes.unsqueeze(2)).squeeze(2)
    exact = per_token.sum(1).double()
    exact[history] = float("-inf")
    unseen = wide.n_items - len(history)
    expected = torch.topk(exact, unseen).indices
    got = torch.topk(scores, unseen).indices
    assert got.tolist() == expected.tolist()
    assert torch.allclose(scores[got].double(), exact[expected], atol=1e-4)


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
