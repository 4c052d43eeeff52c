"""Score-level text fusion (fusion.*): nested options, the text profile, the fused dot product,
the weight chosen on validation, save/load and new items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lmrec.data.batch import QueryBatch
from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.models import FitOptions, load_model
from lmrec.models.sequential import SASRec, SequentialConfig
from lmrec.models.text_fusion import TextFusion, TextFusionConfig
from tests.conftest import KeywordEncoder, checkerboard


def parity_board():
    """The checkerboard with titles that say each item's parity (the keyword encoder reads it)."""
    data = checkerboard()
    data.catalog["title"] = [f"{'even' if i % 2 == 0 else 'odd'} item {i}" for i in range(len(data.catalog))]
    return data


def test_nested_options_from_dotted_keys_and_dicts() -> None:
    cfg = SequentialConfig.from_dict({"fusion.weight": "2", "fusion.choose": "0,1,4", "dim": "32"})
    assert cfg.fusion == TextFusionConfig(weight=2.0, choose=(0.0, 1.0, 4.0)) and cfg.dim == 32
    again = cfg.updated({"fusion.recent": "1"})  # the other fusion options are kept
    assert again.fusion.weight == 2.0 and again.fusion.recent == 1
    assert SequentialConfig.from_dict(again.to_dict()) == again  # JSON round trip (saved runs)
    with pytest.raises(ConfigError, match="fusion: TextFusionConfig has no option"):
        SequentialConfig.from_dict({"fusion.wieght": "2"})
    with pytest.raises(ConfigError, match="fusion weights must be >= 0"):
        SequentialConfig.from_dict({"fusion.weight": "-1"})
    with pytest.raises(ConfigError, match=r"takes fusion\.KEY=VALUE"):
        SequentialConfig.from_dict({"fusion": "2"})


def test_profile_is_the_recency_weighted_mean_of_the_last_items() -> None:
    text = torch.eye(4)
    fusion = TextFusion(TextFusionConfig(weight=1.0, recent=2, decay=0.5), text * 3)  # rows made unit
    batch = QueryBatch.from_histories([0, 1, 2], [np.array([0, 1, 2]), np.array([3]), np.array([], np.int64)])
    p = fusion.profiles(batch)
    assert torch.allclose(p[0], torch.tensor([0.0, 0.5, 1.0, 0.0]) / 1.5)  # item 2 counts 1, item 1 0.5
    assert torch.allclose(p[1], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(p[2], torch.zeros(4))
    unknown = QueryBatch.from_histories([0], [np.array([1, -1, 2, 9])])  # -1 and 9: not in this catalog
    assert torch.allclose(fusion.profiles(unknown)[0], torch.tensor([0.0, 0.5, 1.0, 0.0]) / 1.5)


def test_fused_scores_are_the_model_plus_weight_times_text_similarity(tmp_path: Path) -> None:
    split = leave_one_out(parity_board())
    options = FitOptions(seed=0, text_encoder=KeywordEncoder("even"))
    cfg = {"dim": 16, "inner": 16, "heads": 1, "max_len": 12, "epochs": 1, "batch_size": 16}
    plain = SASRec(SequentialConfig(**cfg)).fit(split.train_dataset(), None, options)
    fused = SASRec(SequentialConfig(**cfg, fusion=TextFusionConfig(weight=3.0, recent=1))).fit(
        split.train_dataset(), None, options
    )
    queries = split.eval_set("test").queries
    text = fused.fusion.text  # the item texts' unit embeddings: column 0 says "even"
    assert torch.equal(text[:, 0] > 0.9, torch.arange(len(text)) % 2 == 0)
    last = torch.from_numpy(np.array([queries.history(i)[-1] for i in range(len(queries))]))
    want = plain.score(queries) + 3.0 * text[last] @ text.T  # the same seed trains the same weights
    assert torch.allclose(fused.score(queries), want, atol=1e-4)
    fused.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded.score(queries), fused.score(queries))
    from lmrec.compress.model import CompressedConfig, compress_model

    with pytest.raises(ConfigError, match="text fusion"):  # its encoder would drop the text term
        compress_model(fused, CompressedConfig())


def test_weight_is_chosen_on_validation_and_recorded() -> None:
    """One epoch teaches the model little; the text says the parity, so fusion wins on validation."""
    split = leave_one_out(parity_board())
    cfg = SequentialConfig(
        dim=16, inner=16, heads=1, max_len=12, epochs=1, batch_size=16, fusion=TextFusionConfig(choose=(0, 4))
    )
    model = SASRec(cfg).fit(
        split.train_dataset(), split.eval_set("valid"), FitOptions(seed=0, text_encoder=KeywordEncoder("even"))
    )
    log = model.training_log["fusion"]
    assert log["valid_ndcg@10"]["4.0"] > log["valid_ndcg@10"]["0.0"]
    assert model.config.fusion.weight == 4.0 == log["weight"] and model.fused


def test_fusion_grows_with_new_items_and_is_refused_where_it_cannot_work() -> None:
    fusion = TextFusion(TextFusionConfig(weight=1.0), torch.eye(3))
    grown = fusion.grown(np.ones((2, 3), np.float32))
    assert grown.text.shape == (5, 3) and torch.allclose(grown.text.norm(dim=1), torch.ones(5))
    with pytest.raises(ConfigError, match="no teacher, pretraining, init_from, diversity_weight, fusion"):
        from lmrec.models.multitask import MultiTaskConfig

        MultiTaskConfig.from_dict({"fusion.weight": "1"})


def test_control_encoders_break_what_the_text_says() -> None:
    from lmrec.text import load_encoder
    from lmrec.text.controls import ShuffledEncoder

    rand = load_encoder("random:16")
    a, b = rand.encode(["x", "y"]), rand.encode(["x"])
    assert a.shape == (2, 16) and np.allclose(a[0], b[0]) and np.allclose(np.linalg.norm(a, axis=1), 1)
    with pytest.raises(ConfigError, match="random:DIM"):
        load_encoder("random:abc")
    inner = KeywordEncoder("even")
    texts = [f"{'even' if i % 2 == 0 else 'odd'} {i}" for i in range(20)]
    shuffled = ShuffledEncoder(inner).encode(texts)
    real = inner.encode(texts)
    assert sorted(map(tuple, shuffled.round(5))) == sorted(map(tuple, real.round(5)))  # the same vectors
    assert not np.allclose(shuffled, real)  # handed to other texts


def test_position_scores_are_the_served_text_term_at_every_prefix() -> None:
    """Distilling from a fused teacher: the text term at training position j is the one the
    teacher would serve after the history that ends there."""
    text = torch.randn(5, 4)
    fusion = TextFusion(TextFusionConfig(weight=2.0, recent=2, decay=0.5), text)
    histories = [np.array([0, 3, 1, 4]), np.array([2, 1])]
    inputs = torch.tensor([[1, 4, 2, 5], [3, 2, 0, 0]])  # net rows (item + 1), right-padded
    keep = inputs > 0
    got = fusion.position_scores(inputs, keep)
    prefixes = [h[: j + 1] for h in histories for j in range(len(h))]
    want = 2.0 * fusion.profiles(QueryBatch.from_histories(list(range(len(prefixes))), prefixes)) @ fusion.text.T
    assert got.shape == (6, 5) and torch.allclose(got, want, atol=1e-6)


def test_a_fused_teacher_passes_its_text_to_an_id_only_student(tmp_path: Path) -> None:
    split = leave_one_out(parity_board())
    options = FitOptions(seed=0, text_encoder=KeywordEncoder("even"))
    cfg = {"dim": 16, "inner": 16, "heads": 1, "max_len": 12, "epochs": 1, "batch_size": 16}
    teacher = SASRec(SequentialConfig(**cfg, fusion=TextFusionConfig(weight=3.0, recent=1)))
    teacher.fit(split.train_dataset(), None, options).save(tmp_path / "teacher")
    student = SASRec(SequentialConfig(**cfg, teacher=str(tmp_path / "teacher")))
    assert not student.fit(split.train_dataset(), None, FitOptions(seed=0)).fused  # reads no text itself
    assert np.isfinite(student.training_log["losses"]).all()
    with pytest.raises(ConfigError, match="causal students only"):
        SASRec(SequentialConfig(**cfg, objective="masked", teacher=str(tmp_path / "teacher"))).fit(
            split.train_dataset(), None, FitOptions(seed=0)
        )
