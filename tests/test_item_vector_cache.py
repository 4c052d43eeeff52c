"""A text model's item table is computed once per model state for scoring (inference_table)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import leave_one_out
from lmrec.models import FitOptions, model_class
from lmrec.models.sequential import SequentialRecommender
from tests.conftest import KeywordEncoder

TINY = {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 12, "batch_size": 16, "lr": 0.01}
QUERIES = QueryBatch.from_histories([-1, -1, -1], [[0, 2, 4], [1, 3], [5]])


def fit(board: Dataset, epochs: int = 2, valid: bool = False, **overrides: object) -> SequentialRecommender:
    klass = model_class("text-sasrec")
    model = klass(klass.config_class.from_dict({**TINY, "epochs": epochs, **overrides}))
    split = leave_one_out(board)
    assert isinstance(model, SequentialRecommender)
    return model.fit(
        split.train_dataset(), split.eval_set("valid") if valid else None, FitOptions(text_encoder=KeywordEncoder())
    )


class Counter:
    """Counts the text adaptor's passes over the catalog."""

    def __init__(self, model: SequentialRecommender) -> None:
        self.calls = 0
        model.net.adaptor.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.calls += 1


def uncached_scores(model: SequentialRecommender) -> torch.Tensor:
    """The scores as computed before the cache: the table built afresh (on a copy)."""
    fresh = copy.deepcopy(model)
    fresh._table_cache = None
    fresh.inference_table = lambda: fresh.net.item_table()  # type: ignore[method-assign]
    with torch.no_grad():
        return fresh.score(QUERIES)


@pytest.mark.parametrize("item_repr", ["fused", "text", "aligned", "late"])
def test_scores_are_the_same_and_the_adaptor_runs_once(board: Dataset, item_repr: str) -> None:
    model = fit(board, item_repr=item_repr)
    counter = Counter(model)
    first = model.score(QUERIES)
    for _ in range(3):
        assert torch.equal(model.score(QUERIES), first)
    model.recommend(QUERIES, k=5)
    assert counter.calls == 1  # was two per call (query and item vectors)
    assert torch.equal(first, uncached_scores(model))


def test_a_parameter_change_recomputes(board: Dataset) -> None:
    model = fit(board, item_repr="fused")  # every item read through the adaptor
    before = model.score(QUERIES)
    with torch.no_grad():
        model.net.adaptor[0].weight.mul_(-1.0)  # in place: the version counter moves
    after = model.score(QUERIES)
    assert not torch.allclose(after, before)
    assert torch.equal(after, uncached_scores(model))


def test_load_state_recomputes(board: Dataset) -> None:
    model, other = fit(board, epochs=1), fit(board, epochs=3)
    model.score(QUERIES)  # cached
    model.load_state(other.state())
    assert torch.equal(model.score(QUERIES), other.score(QUERIES))


def test_new_item_text_recomputes(board: Dataset) -> None:
    model = fit(board, item_repr="fused")  # every item read through its text
    before = model.item_embeddings().clone()
    grown = model.with_new_items(np.eye(1, KeywordEncoder.dim, dtype=np.float32))
    assert grown.item_embeddings().shape == (board.n_items + 1, 16)
    assert torch.equal(model.item_embeddings(), before)  # the original keeps its own
    with torch.no_grad():  # new text for item 3, written into the buffer in place
        model.net.text[4] = torch.from_numpy(np.eye(1, KeywordEncoder.dim, 7, dtype=np.float32)[0])
    assert not torch.allclose(model.item_embeddings()[3], before[3])
    assert torch.equal(model.item_embeddings()[4], before[4])


def test_validation_during_training_never_reads_a_stale_table(board: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    # no weight decay: nothing but the (fused) optimizer step moves the weights, and a fused step
    # leaves their version counters alone, so the cache must see training some other way
    cached = fit(board, epochs=4, valid=True, weight_decay=0.0).training_log["valid"]
    monkeypatch.setattr(SequentialRecommender, "inference_table", lambda self: self.net.item_table().detach())
    assert fit(board, epochs=4, valid=True, weight_decay=0.0).training_log["valid"] == cached
    assert len(set(cached)) > 1  # the epochs scored differently: the table did change between them
