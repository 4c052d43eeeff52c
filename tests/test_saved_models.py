"""Saved models from before a refactor load and score identically.

``tests/fixtures/saved_models/<family>/model/`` holds one tiny model per registered family, saved by
``model.save`` and checked in; ``expected.npz`` next to it holds fixed query histories and the
float32 score rows that model gave them when it was saved. Each test loads a fixture with today's
:func:`lmrec.models.load_model` and scores the same histories.

Why: a user's run directory outlives the code that wrote it. A refactor that renames or reshapes a
state key, changes how a saved ``config.json`` is parsed (a renamed, removed or re-typed option) or
changes what a loaded model computes must fail here, not in someone's served model. The round trips
of ``tests/test_conformance.py`` cannot catch that: they save and load with the same code.

When one fails, the change broke old saved models: make loading read the old form (as
``lmrec.models.base._current_options`` does for ``item_features``) or decide the break is intended.
Only then regenerate, on purpose, with ``.venv/bin/python -m tests.fixtures.make_saved_models
[family ...]`` and say in the commit which fixtures were regenerated and why.

A new family needs a fixture (a config in the script's ``CONFIGS``) or an entry with its reason in
:data:`NOT_COVERED`; :func:`test_every_family_has_a_fixture_or_a_reason` fails otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.models import MODELS, load_model
from tests.fixtures.make_saved_models import CONFIGS, top_k

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_models"
FAMILIES = sorted(p.name for p in FIXTURES.iterdir() if (p / "model").is_dir())
# Registered families without a fixture, and why. Each reads its language model from the path or
# packaged name in its config when it loads, so its saved directory is not self-contained.
NOT_COVERED: dict[str, str] = {
    "lm-ranker": "fine-tunes the packaged all-MiniLM-L6-v2 (about 90 MB) and reloads it at load time",
    "lm-list-ranker": "saves only LoRA adapters; loading reads its causal LM from config.lm (a path, or SmolLM2)",
    "llm-gen": "saves only LoRA adapters and title tokens; loading reads its causal LM from config.lm",
}
# Python packages a fixture needs to load (an extra of lmrec), skipped without them.
NEEDS = {"compressed": "onnxruntime"}
RTOL = ATOL = 1e-5


@pytest.fixture(autouse=True)
def no_text_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text models (text-sasrec, tiger) read item text at fit only; loading and scoring a saved one
    must not load a sentence encoder (here one would be the packaged MiniLM, not the test's)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a saved model loaded a text encoder {args}")

    monkeypatch.setattr("lmrec.text.load_encoder", refuse)
    monkeypatch.setattr("lmrec.text.encoders.load_encoder", refuse)


def expected(family: str) -> tuple[QueryBatch, np.ndarray, np.ndarray]:
    """The stored queries, their score rows and their top 10 (unseen items, ties by item row)."""
    with np.load(FIXTURES / family / "expected.npz") as data:
        batch = QueryBatch(data["users"], data["indptr"], data["items"])
        return batch, data["scores"], data["top10"]


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_model_loads_and_scores_as_it_did(family: str) -> None:
    if family in NEEDS:
        pytest.importorskip(NEEDS[family])
    model = load_model(FIXTURES / family / "model")
    batch, scores, top10 = expected(family)
    assert model.name == family
    assert model.n_items == scores.shape[1]
    with torch.no_grad():
        got = model.score(batch).float().cpu().numpy()
    assert got.shape == scores.shape
    np.testing.assert_allclose(got, scores, rtol=RTOL, atol=ATOL, err_msg=f"{family}: scores changed")
    np.testing.assert_array_equal(top_k(got, batch), top10, err_msg=f"{family}: top-10 order changed")
    # recommend (seen items excluded, torch's top-k): the same ranking, up to the order of exact ties
    items, values = model.recommend(batch, k=10)
    want = np.take_along_axis(scores, top10, axis=1)
    np.testing.assert_allclose(values, want, rtol=RTOL, atol=ATOL, err_msg=f"{family}: recommend changed")
    for row in range(len(batch)):
        assert not set(items[row].tolist()) & set(batch.history(row).tolist())


def test_every_family_has_a_fixture_or_a_reason() -> None:
    """Every registered family is covered by a fixture or listed in NOT_COVERED (not both); every
    fixture is a registered family and has its config in the script that writes them."""
    registered = set(MODELS)
    assert not set(FAMILIES) & set(NOT_COVERED), "a family with a fixture is also listed in NOT_COVERED"
    missing = sorted(registered - set(FAMILIES) - set(NOT_COVERED))
    assert not missing, f"families with neither a saved-model fixture nor a reason in NOT_COVERED: {missing}"
    assert not set(NOT_COVERED) - registered, "NOT_COVERED names a family the registry no longer has"
    assert not set(FAMILIES) - registered, "a fixture of a family the registry no longer has"
    assert set(FAMILIES) == set(CONFIGS), "fixtures and tests/fixtures/make_saved_models.py's CONFIGS differ"
    manifest = json.loads((FIXTURES / "MANIFEST.json").read_text())
    assert manifest["families"] == FAMILIES
