"""block=sasrec: the original SASRec block and input, beside the default pre-norm block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from lmrec.data.splits import leave_one_out
from lmrec.errors import ConfigError
from lmrec.evaluate import evaluate
from lmrec.models import FitOptions, load_model, model_class
from lmrec.models.sequential import SASRec, SequenceEncoder, SequentialConfig, transformer_blocks
from tests.conftest import checkerboard

CFG = {"dim": 16, "inner": 16, "layers": 2, "heads": 1, "max_len": 12, "block": "sasrec", "dropout": 0.0}


def test_sasrec_block_computes_kang_and_mcauleys_block() -> None:
    """Queries q = LayerNorm(x) attend over the raw x (keys and values), q is the residual (as
    in Kang & McAuley's code and the CE-SASRec baselines); the sum is normalised and goes through
    a ReLU feed-forward with its own residual — written out by hand with nn.MultiheadAttention on
    the same weights."""
    torch.manual_seed(0)
    blocks = transformer_blocks(16, 2, 24, 0.0, 1, "sasrec").eval()
    block = blocks.layers[0]
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    mha.load_state_dict(block.self_attn.state_dict(), strict=False)
    x = torch.randn(3, 5, 16)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    q = block.norm1(x)
    attended = mha(q, x, x, attn_mask=causal, need_weights=False)[0]
    h = block.norm2(q + attended)
    want = h + block.linear2(torch.relu(block.linear1(h)))
    assert torch.allclose(blocks(x, causal[None, None]), want, atol=1e-5)
    prenorm = transformer_blocks(16, 2, 24, 0.0, 1).eval()
    prenorm.load_state_dict(blocks.state_dict())  # the same parameters and names
    assert not torch.allclose(prenorm(x, causal[None, None]), want, atol=1e-3)


def test_sasrec_input_scales_item_rows_and_skips_the_input_norm() -> None:
    torch.manual_seed(0)
    net = SequenceEncoder(20, SequentialConfig(**CFG)).eval()
    items, positions = torch.randn(2, 4, 16), torch.randn(4, 16)
    assert torch.allclose(net.embed(items, positions), items * math.sqrt(16) + positions)
    default = SequenceEncoder(20, SequentialConfig(**{**CFG, "block": "prenorm"})).eval()
    assert torch.allclose(default.embed(items, positions), default.norm(items + positions))


def test_sasrec_block_learns_saves_and_loads(tmp_path: Path) -> None:
    board = checkerboard()
    split = leave_one_out(board)
    model = SASRec(SequentialConfig(**{**CFG, "epochs": 15, "batch_size": 16, "lr": 0.01}))
    model.fit(split.train_dataset(), None, FitOptions(seed=0))
    test = split.eval_set("test")
    ours = evaluate(model, test, metrics=("ndcg",)).metrics["ndcg@10"]
    pop = evaluate(model_class("pop")().fit(split.train_dataset()), test, metrics=("ndcg",)).metrics["ndcg@10"]
    assert ours > 1.2 * pop
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.block == "sasrec"
    assert torch.equal(loaded.score(test.queries), model.score(test.queries))


def test_unknown_block_is_refused() -> None:
    with pytest.raises(ConfigError, match="block must be one of"):
        SequentialConfig(block="postnorm").validate()


def test_pruning_refuses_the_sasrec_block() -> None:
    """The pruner rebuilds pre-norm blocks: a SASRec-block model would silently change what it computes."""
    from lmrec.compress.prune import PrunedEncoder

    with pytest.raises(ConfigError, match="cannot be pruned"):
        PrunedEncoder(20, SequentialConfig(**CFG), [(1, 8), (1, 8)])
