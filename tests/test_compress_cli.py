"""Compressed runs: a tiny SASRec compressed by each method passes the conformance checks that
apply, its ONNX scores match PyTorch's, and `lmrec compress` writes a smaller run that evaluate
and recommend load like any other."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmrec.cli import build_parser, main
from lmrec.compress.model import (
    METHODS,
    CompressedConfig,
    CompressedSequential,
    compress_model,
    directory_bytes,
    source_parameter_count,
)
from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import FitOptions, load_model
from lmrec.models.sequential import SASRec, SequentialConfig
from tests.conftest import checkerboard
from tests.test_cli import write_shop

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript")), reason="needs lmrec[compress]"
)
TINY = {"dim": 16, "inner": 32, "layers": 1, "heads": 2, "max_len": 12, "epochs": 15, "batch_size": 16, "lr": 0.01}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "onnx": {},
    "int8": {},
    "pq": {"m": 4, "k": 16},
    "prune": {"heads": 1, "inner": 16, "finetune_epochs": 2},
}


@pytest.fixture(scope="module")
def tiny() -> tuple[SASRec, Any]:
    split = leave_one_out(checkerboard())
    model = SASRec(SequentialConfig(**TINY)).fit(split.train_dataset(), None, FitOptions(seed=1))
    return model, split


@pytest.fixture(scope="module")
def compressed(tiny: tuple[SASRec, Any]) -> dict[str, CompressedSequential]:
    source, split = tiny
    train, valid = split.train_dataset(), split.eval_set("valid")
    return {
        method: compress_model(source, CompressedConfig(method=method, **extra), train, valid)
        for method, extra in METHOD_SETTINGS.items()
    }


def _queries(split: Any) -> QueryBatch:
    return split.eval_set("test").queries


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_score_shape_seen_items_and_vectors(method: str, tiny: tuple[SASRec, Any], compressed: dict) -> None:
    _, split = tiny
    model = compressed[method]
    q = _queries(split)
    scores = model.score(q)
    assert scores.shape == (len(q), split.dataset.n_items) and torch.isfinite(scores).all()
    items, _ = model.recommend(q, k=10)
    for row in range(len(q)):
        assert not set(items[row]) & set(q.history(row).tolist())
    # the vectors protocol: query · item (dequantized) is the score read from the codes
    batch = QueryBatch.from_histories([0, -1, 5], [[0, 2], [1, 3, 5], []])
    vectors, exact = model.query_embeddings(batch).vectors, model.query_embeddings(batch).exact
    assert exact.tolist() == [True, True, False]
    full = model.score(batch)
    assert torch.allclose((vectors @ model.item_embeddings().T)[exact], full[exact], atol=1e-4)
    assert torch.equal(full[2], torch.log1p(model.popularity))  # an empty history: popularity
    candidates = np.array([[3, 0, -1], [7, 1, 2], [4, 4, 4]])
    want = torch.where(
        torch.from_numpy(candidates >= 0), full.gather(1, torch.from_numpy(candidates.clip(0))), -torch.inf
    )
    assert torch.allclose(model.score_candidates(batch, candidates), want, atol=1e-4)


@pytest.mark.parametrize("method", sorted(METHOD_SETTINGS))
def test_save_load_identical_scores_and_no_pickle(
    method: str, tiny: tuple[SASRec, Any], compressed: dict, tmp_path: Path
) -> None:
    _, split = tiny
    model = compressed[method]
    model.save(tmp_path / method)
    assert sorted(p.name for p in (tmp_path / method).iterdir()) == [
        "config.json",
        "encoder.onnx",
        "weights.safetensors",
    ]
    loaded = load_model(tmp_path / method)
    assert type(loaded) is CompressedSequential and loaded.config == model.config
    q = _queries(split)
    assert torch.equal(model.score(q), loaded.score(q))


@pytest.mark.parametrize("method", ["int8", "pq"])
def test_an_expanded_table_scores_as_its_codes_do(method: str, tiny: tuple[SASRec, Any], compressed: dict) -> None:
    """Small tables are expanded to float rows once (``table_cache_mb``) and handed to the encoder
    whole; the scores are those of the rows gathered and read from the codes, which a table over
    the budget (0 MB) still uses."""
    _, split = tiny
    q = _queries(split)
    model = compressed[method]
    codes = copy.copy(model)
    codes.config = dataclasses.replace(model.config, table_cache_mb=0)
    assert model._expanded() is not None and codes._expanded() is None
    assert torch.allclose(model.score(q), codes.score(q), atol=1e-4)


def test_unknown_users_and_items_are_handled(tiny: tuple[SASRec, Any], compressed: dict) -> None:
    _, split = tiny
    model, n = compressed["int8"], split.dataset.n_items
    plain = model.score(QueryBatch.from_histories([-1], [[0, 2, 4]]))
    noisy = model.score(QueryBatch.from_histories([10_000], [[-1, 0, 2, 4, n + 5]]))
    assert torch.allclose(plain, noisy)


def test_onnx_scores_match_pytorch(tiny: tuple[SASRec, Any], compressed: dict) -> None:
    source, split = tiny
    q = _queries(split)
    np.testing.assert_allclose(compressed["onnx"].score(q).numpy(), source.score(q).numpy(), atol=1e-4)


@pytest.mark.parametrize("method", ["int8", "pq"])
def test_quantized_models_keep_the_top_10_and_the_quality(
    method: str, tiny: tuple[SASRec, Any], compressed: dict
) -> None:
    source, split = tiny
    test = split.eval_set("test")
    ref, _ = source.recommend(test.queries, k=10)
    got, _ = compressed[method].recommend(test.queries, k=10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref, strict=True)])
    assert overlap >= (0.8 if method == "int8" else 0.5), overlap
    ndcg = evaluate(compressed[method], test, metrics=("ndcg",)).metrics["ndcg@10"]
    assert ndcg > 0.2, ndcg  # popularity cannot tell the checkerboard's halves apart; this still can


def test_prune_shrinks_the_encoder_and_fine_tunes(tiny: tuple[SASRec, Any], compressed: dict) -> None:
    source, _ = tiny
    pruned, full = compressed["prune"], compressed["onnx"]
    assert pruned.parameter_count() < full.parameter_count()
    assert pruned.parameter_count() < source_parameter_count(source)
    assert len(pruned.encoder_bytes) < len(full.encoder_bytes)
    assert pruned.training_log["pruned"] == {"heads": 1, "inner": 16}
    assert len(pruned.training_log["finetune"]["losses"]) >= 1


def test_bad_settings_are_refused(tiny: tuple[SASRec, Any]) -> None:
    source, _ = tiny
    with pytest.raises(ConfigError, match="method must be one of"):
        CompressedConfig(method="zip")
    with pytest.raises(ConfigError, match="divisible"):
        compress_model(source, CompressedConfig(method="pq", m=5))
    from lmrec.models.popularity import Popularity

    with pytest.raises(ConfigError, match="sequential"):
        compress_model(Popularity(), CompressedConfig())


def test_the_cli_offers_every_method() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    method = next(a for a in sub.choices["compress"]._actions if a.dest == "method")  # type: ignore[attr-defined]
    assert list(method.choices) == list(METHODS)


def test_lmrec_compress_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, cache = write_shop(tmp_path / "shop"), tmp_path / "cache"

    def lmrec(*args: str) -> str:
        capsys.readouterr()
        assert main(["--cache-dir", str(cache), *args]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    # wide enough that the weights, not the ONNX graph's few kB of structure, make most of the file
    sets = [f"--set={k}={v}" for k, v in {**TINY, "dim": 64, "inner": 128, "epochs": 3}.items()]
    lmrec("train", "--dataset", str(data), "--model", "sasrec", "--out", str(tmp_path / "sasrec"), "--quiet", *sets)
    small = tmp_path / "small"
    lmrec("compress", "--run", str(tmp_path / "sasrec"), "--method", "int8", "--set", "table=int4", "--out", str(small))
    meta = json.loads((small / "run.json").read_text())
    record = meta["compress"]
    assert meta["model"] == "compressed" and record["method"] == "int8"
    assert (record["encoder"], record["table"]) == ("int8", "int4")
    assert record["source_run"] == str((tmp_path / "sasrec").resolve()) and record["source_model"] == "sasrec"
    assert record["bytes_before"] == directory_bytes(tmp_path / "sasrec" / "model")
    assert record["bytes_after"] == directory_bytes(small / "model") < record["bytes_before"]
    assert record["parameters_after"] > 0 and record["parameters_before"] > 0
    assert (small / "valid.json").exists()
    report = json.loads(lmrec("evaluate", "--run", str(small), "--json"))
    assert report["model"] == "compressed" and 0 <= report["metrics"]["ndcg@10"] <= 1
    side = json.loads(lmrec("evaluate", "--run", str(tmp_path / "sasrec"), str(small), "--json"))
    assert len(side) == 2  # the same data and split as the source
    top = json.loads(lmrec("recommend", "--run", str(small), "--user", "u0", "--k", "5", "--json"))
    assert len(top["items"]) == 5
    assert main(["--cache-dir", str(cache), "compress", "--run", str(tmp_path / "sasrec"), "--method", "int8",
                 "--out", str(small)]) == 2  # fmt: skip
    assert "already holds a run" in capsys.readouterr().err


def test_a_compressed_run_is_served(tmp_path: Path, tiny: tuple[SASRec, Any], compressed: dict) -> None:
    """The service's model state loads a compressed run like any other (GET /recommend path)."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lmrec.serve.app import create_app

    data, cache = write_shop(tmp_path / "shop"), tmp_path / "cache"
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    base = ["--cache-dir", str(cache)]
    assert (
        main(
            [
                *base,
                "train",
                "--dataset",
                str(data),
                "--model",
                "sasrec",
                "--out",
                str(tmp_path / "r"),
                "--quiet",
                *sets,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                *base,
                "compress",
                "--run",
                str(tmp_path / "r"),
                "--method",
                "onnx",
                "--out",
                str(tmp_path / "c"),
                "--quiet",
            ]
        )
        == 0
    )
    app = create_app(tmp_path / "c", tmp_path / "events.db", cache, require_keys=False)
    with TestClient(app) as client:
        info = client.get("/health").json()
        assert info["model"] == "compressed", info
        body = client.post("/recommend", json={"user": "u0", "k": 3}).json()
        assert len(body["items"]) == 3, body
