"""lmrec.compress: quantized and PQ item tables, ONNX export, pruning, distillation."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lmrec.compress.pq import PQTable, ProductQuantizer, kmeans, lloyd
from lmrec.compress.prune import PrunedEncoder, ffn_importance, prune, prune_ffn, state_nbytes
from lmrec.compress.quantize import QuantizedTable, codes, dequantize, quantize_rows, scores, top_k
from lmrec.compress.vectors import encode_histories, item_embeddings, query_embeddings
from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError
from lmrec.models.sequential import SASRec, SequenceEncoder, SequentialConfig
from lmrec.train.losses import distillation_loss


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean share of each row of ``b`` (the reference top-k) found in the same row of ``a``."""
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b, strict=True)) / b.numel()


def _table(n: int = 2000, d: int = 32, seed: int = 0) -> torch.Tensor:
    g = _gen(seed)  # rows of very different norms, like popular and rare items
    return torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3


# -- quantize ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4])
def test_round_trip_error_is_within_half_a_step_per_row(bits: int) -> None:
    x = _table(500, 33)  # odd dim: int4 pads the last byte
    qt = quantize_rows(x, bits)
    err = (dequantize(qt) - x).abs().max(dim=1).values
    assert (qt.scale > 0).all()
    assert (err <= qt.scale / 2 * (1 + 1e-5) + 1e-6).all()
    # a coarser grid: the int4 step is (2^8 - 1) / (2^4 - 1) = 17 times the int8 one
    assert torch.allclose(qt.scale * ((1 << bits) - 1), x.max(1).values - x.min(1).values, rtol=1e-5)


def test_int4_packs_two_codes_per_byte_low_nibble_first() -> None:
    x = torch.tensor([[0.0, 15.0, 3.0, 7.0, 15.0], [1.0, 1.0, 1.0, 1.0, 1.0]])  # row 0: scale 1, offset 0
    qt = quantize_rows(x, 4)
    assert qt.codes.dtype == torch.uint8 and qt.codes.shape == (2, 3)
    assert qt.codes[0].tolist() == [0 | 15 << 4, 3 | 7 << 4, 15]
    assert codes(qt)[0].tolist() == [0, 15, 3, 7, 15]
    assert torch.equal(dequantize(qt), x)  # row 0 lies on its grid, row 1 is constant (scale 0)
    assert qt.scale[1] == 0 and qt.offset[1] == 1


def test_sizes_in_bytes() -> None:
    x = _table(100, 64)
    assert quantize_rows(x, 8).nbytes == 100 * 64 + 100 * 8  # codes + float32 scale and offset
    assert quantize_rows(x, 4).nbytes == 100 * 32 + 100 * 8
    assert x.numel() * 4 / quantize_rows(x, 4).nbytes > 6


def test_scores_from_codes_equal_scores_of_the_dequantized_table() -> None:
    x, q = _table(300, 16), torch.randn(5, 16, generator=_gen(1))
    for bits in (8, 4):
        qt = quantize_rows(x, bits)
        assert torch.allclose(scores(q, qt, chunk=7), q @ dequantize(qt).T, atol=1e-4)
        assert torch.allclose(dequantize(qt, 10, 20), dequantize(qt)[10:20])


def test_chunked_top_k_is_the_top_k_of_all_scores() -> None:
    x, q = _table(257, 16), torch.randn(4, 16, generator=_gen(2))
    qt = quantize_rows(x, 8)
    values, rows = top_k(q, qt, k=10, chunk=16)
    full = scores(q, qt)
    ref_v, ref_i = torch.topk(full, 10)
    assert torch.equal(rows, ref_i) and torch.allclose(values, ref_v)
    assert top_k(q, qt, k=1000)[1].shape == (4, 257)  # k larger than the table: every row


def test_quantized_top_k_agrees_with_float_top_k() -> None:
    x, q = _table(2000, 32), torch.randn(20, 32, generator=_gen(3))
    exact = torch.topk(q @ x.T, 10).indices
    assert _overlap(top_k(q, quantize_rows(x, 8), 10)[1], exact) >= 0.95  # measured 0.995
    assert _overlap(top_k(q, quantize_rows(x, 4), 10)[1], exact) >= 0.75  # measured 0.87


def test_quantized_table_state_round_trip_and_bad_input() -> None:
    qt = quantize_rows(_table(50, 9), 4)
    back = QuantizedTable.from_state(qt.state())
    assert torch.equal(dequantize(back), dequantize(qt)) and back.bits == 4 and back.dim == 9
    with pytest.raises(ConfigError):
        quantize_rows(_table(5, 4), 2)
    with pytest.raises(ConfigError):
        quantize_rows(torch.tensor([[1.0, float("nan")]]), 8)
    with pytest.raises(ConfigError):
        scores(torch.randn(2, 8), qt)  # query of the wrong width


# -- product quantization ------------------------------------------------------------------------------
def _clustered(n: int, d: int, clusters: int, seed: int) -> torch.Tensor:
    g = _gen(seed)
    centres = torch.randn(clusters, d, generator=g)
    return centres[torch.randint(0, clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


def test_kmeans_finds_well_separated_clusters() -> None:
    g = _gen(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(50)
    x = centres[truth] + 0.1 * torch.randn(200, 2, generator=g)
    c, labels = kmeans(x, 4, iters=5, generator=_gen(1))
    for j in range(4):  # each found cluster is exactly one true cluster
        assert len(set(truth[labels == j].tolist())) == 1 and (labels == j).sum() == 50
    assert torch.allclose(torch.sort(c.sum(1)).values, torch.tensor([0.0, 10.0, 10.0, 20.0]), atol=0.1)


def test_lloyd_reseeds_a_dead_centroid() -> None:
    x = torch.cat([torch.zeros(10, 2), torch.full((10, 2), 5.0), torch.tensor([[20.0, 20.0]])])
    start = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-100.0, -100.0]])  # the third wins no point
    c, labels = lloyd(x, start, iters=1)
    assert torch.equal(torch.bincount(labels, minlength=3), torch.tensor([10, 10, 1]))
    assert torch.equal(c[2], torch.tensor([20.0, 20.0]))  # moved to the worst-served point


def test_pq_is_exact_when_every_point_has_its_own_centroid() -> None:
    x = torch.randn(32, 8, generator=_gen(0))
    pq = ProductQuantizer.fit(x, m=4, k=32, iters=3, generator=_gen(1))
    table = pq.quantize(x)
    assert table.codes.dtype == torch.uint8 and table.codes.shape == (32, 4)
    assert torch.allclose(pq.decode(table.codes), x, atol=1e-6)
    q = torch.randn(3, 8, generator=_gen(2))
    assert torch.allclose(table.scores(q), q @ x.T, atol=1e-5)


def test_adc_scores_are_the_inner_products_with_the_decoded_items() -> None:
    x, q = _clustered(3000, 16, 40, seed=0), torch.randn(6, 16, generator=_gen(1))
    table = ProductQuantizer.fit(x, m=4, k=16, iters=4, generator=_gen(2)).quantize(x)
    decoded = table.pq.decode(table.codes)
    assert torch.allclose(table.scores(q, chunk=1000), q @ decoded.T, atol=1e-4)
    values, rows = table.top_k(q, k=7, chunk=500)  # items sharing codes tie: compare scores, not rows
    assert torch.allclose(values, torch.topk(q @ decoded.T, 7).values, atol=1e-4)
    assert torch.allclose(torch.gather(q @ decoded.T, 1, rows), values, atol=1e-4)
    back = PQTable.from_state(table.state())
    assert torch.equal(back.codes, table.codes) and torch.equal(back.pq.centroids, table.pq.centroids)


def test_pq_on_a_synthetic_catalog_keeps_the_exact_top_k_in_its_top_100() -> None:
    n, d, m = 20_000, 32, 8
    x = _clustered(n, d, 256, seed=0)
    g = _gen(1)
    queries = x[torch.randint(0, n, (50,), generator=g)] + 0.1 * torch.randn(50, d, generator=g)
    table = ProductQuantizer.fit(x, m=m, k=64, iters=8, sample=8192, generator=_gen(2)).quantize(x)
    assert table.codes.numel() * table.codes.element_size() == n * m  # vs n * d * 4 bytes in float32
    assert table.nbytes < x.numel() * 4 / 14
    exact = torch.topk(queries @ x.T, 10).indices
    assert _overlap(table.top_k(queries, 100)[1], exact) >= 0.95  # measured 1.0 (re-rank 100 exactly)
    assert _overlap(table.top_k(queries, 10)[1], exact) >= 0.2  # measured 0.29; chance is 10 / 20000


def test_pq_rejects_bad_shapes() -> None:
    with pytest.raises(ConfigError):
        ProductQuantizer.fit(torch.randn(300, 10), m=4)  # 10 is not divisible by 4
    with pytest.raises(ConfigError):
        ProductQuantizer.fit(torch.randn(300, 8), m=4, k=300)  # codes are uint8
    with pytest.raises(ConfigError):
        ProductQuantizer.fit(torch.randn(10, 8), m=4, k=16)  # fewer points than centroids


# -- distillation -----------------------------------------------------------------------------------------
def test_distillation_loss_by_hand() -> None:
    student, teacher = [1.0, 2.0, 0.5], [2.0, 0.0, 1.0]
    t, alpha, target = 2.0, 0.3, 1

    def softmax(z: list[float]) -> list[float]:
        e = [math.exp(v / t) for v in z]
        return [v / sum(e) for v in e]

    p_s, p_t = softmax(student), softmax(teacher)
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
    ce = -math.log(math.exp(student[target]) / sum(math.exp(v) for v in student))
    expected = alpha * t * t * kl + (1 - alpha) * ce
    got = distillation_loss(torch.tensor([student]), torch.tensor([teacher]), torch.tensor([target]), t, alpha)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_limits_and_gradients() -> None:
    g = _gen(0)
    s, te, y = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g), torch.tensor([0, 5, 2, 2])
    ce = torch.nn.functional.cross_entropy(s, y)
    assert torch.allclose(distillation_loss(s, te, y, 3.0, 0.0), ce)
    assert distillation_loss(s, s.clone(), y, 3.0, 1.0).abs() < 1e-6  # same distribution: no KL
    masked = te.clone()
    masked[:, 0] = float("-inf")  # an item the teacher rules out adds nothing
    assert torch.isfinite(distillation_loss(s, masked, y, 2.0, 0.5))
    s.requires_grad_(True)
    te.requires_grad_(True)
    distillation_loss(s, te, y, 2.0, 0.5).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and te.grad is None
    with pytest.raises(ConfigError):
        distillation_loss(s, te, y, 0.0, 0.5)


# -- sequential encoders: vectors, pruning, ONNX --------------------------------------------------------------
N_ITEMS = 50


def _tiny_cfg(**kw: object) -> SequentialConfig:
    return replace(SequentialConfig(dim=16, layers=1, heads=1, max_len=8), **kw)  # type: ignore[arg-type]


def _net(cfg: SequentialConfig, seed: int = 0) -> SequenceEncoder:
    torch.manual_seed(seed)  # the encoder draws its init from torch's global generator
    net = SequenceEncoder(N_ITEMS, cfg)
    with torch.no_grad():  # trained-looking weights: a non-trivial spread in every layer
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=_gen(seed + 1)))
    return net.eval()


def _inputs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    seq = torch.randint(1, N_ITEMS + 1, (batch, length), generator=g)
    seq[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    return seq, lengths


def _last(net: SequenceEncoder, seq: torch.Tensor, lengths: torch.Tensor, causal: bool = True) -> torch.Tensor:
    with torch.no_grad():
        return net(seq, causal=causal)[torch.arange(len(seq)), lengths - 1]


def _sasrec(cfg: SequentialConfig) -> SASRec:
    model = SASRec(cfg)
    model.n_items = N_ITEMS
    net = _net(cfg)
    model.load_state({**{f"net.{k}": v for k, v in net.state_dict().items()}, "popularity": torch.ones(N_ITEMS)})
    return model


def test_sequential_vectors_reproduce_the_models_scores() -> None:
    model = _sasrec(_tiny_cfg())
    batch = QueryBatch.from_histories([0, 1, 2], [[3, 4, 5], [7], list(range(20))])
    items, queries = item_embeddings(model), query_embeddings(model, batch)
    assert items.shape == (N_ITEMS, 16) and queries.shape == (3, 16)
    assert torch.allclose(queries @ items.T, model.score(batch), atol=1e-5)
    seq, lengths = encode_histories(model, batch)
    assert lengths.tolist() == [3, 1, 8] and seq[0, :4].tolist() == [4, 5, 6, 0]  # shifted, capped at max_len


def test_prune_ffn_to_full_width_is_an_identical_copy() -> None:
    cfg = _tiny_cfg(layers=2, inner=32)
    net = _net(cfg)
    same, same_cfg = prune_ffn(net, cfg, inner=32)
    assert same_cfg == cfg
    own = net.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in same.state_dict().items())


def test_prune_ffn_shrinks_the_state_and_drops_the_least_important_units(tmp_path: Path) -> None:
    cfg = _tiny_cfg(layers=2, inner=32)
    net = _net(cfg)
    with torch.no_grad():  # units 8.. of every block carry nothing out: pruning them changes nothing
        for layer in net.blocks.layers:
            layer.linear2.weight[:, 8:] = 0
    small, small_cfg = prune_ffn(net, cfg, inner=8)
    assert small_cfg.inner == 8 and small.blocks.layers[0].linear1.out_features == 8
    assert (ffn_importance(net.blocks.layers[0])[8:] == 0).all()
    seq, lengths = _inputs(5, 8)
    assert torch.allclose(_last(small, seq, lengths), _last(net, seq, lengths), atol=1e-6)
    save_file(net.state_dict(), tmp_path / "big.safetensors")
    save_file(small.state_dict(), tmp_path / "small.safetensors")
    assert (tmp_path / "small.safetensors").stat().st_size < 0.8 * (tmp_path / "big.safetensors").stat().st_size
    reloaded = SequenceEncoder(N_ITEMS, small_cfg)  # a plain encoder of the new config loads it strictly
    reloaded.load_state_dict(small.state_dict())
    tighter, _ = prune_ffn(net, cfg, inner=3)  # now real units go: outputs change but stay finite
    assert torch.isfinite(_last(tighter, seq, lengths)).all()
    assert state_nbytes(tighter) < state_nbytes(small) < state_nbytes(net)
    with pytest.raises(ConfigError):
        prune_ffn(net, cfg, inner=33)


@pytest.mark.parametrize("causal", [True, False])
def test_pruned_encoder_at_full_size_computes_the_same(causal: bool) -> None:
    cfg = _tiny_cfg(layers=2, heads=2, inner=32)
    net = _net(cfg)
    full = prune(net, cfg)
    assert isinstance(full, PrunedEncoder) and full.spec == [(2, 32), (2, 32)]
    seq, lengths = _inputs(6, 8, seed=3)
    assert torch.allclose(_last(full, seq, lengths, causal), _last(net, seq, lengths, causal), atol=1e-5)


def test_head_pruning_drops_a_silent_head_exactly_and_shrinks_the_state() -> None:
    cfg = _tiny_cfg(layers=2, heads=2, inner=32)
    net = _net(cfg)
    with torch.no_grad():  # head 0 of every block writes nothing (its output columns are zero)
        for layer in net.blocks.layers:
            layer.self_attn.out_proj.weight[:, :8] = 0
    one = prune(net, cfg, heads=1, inner=16)
    assert one.spec == [(1, 16), (1, 16)] and one.blocks[0].qkv.out_features == 3 * 8
    assert state_nbytes(one) < state_nbytes(net)
    seq, lengths = _inputs(6, 8, seed=4)
    heads_only = prune(net, cfg, heads=1)
    assert torch.allclose(_last(heads_only, seq, lengths), _last(net, seq, lengths), atol=1e-5)
    assert torch.isfinite(_last(one, seq, lengths)).all()
    rebuilt = PrunedEncoder(N_ITEMS, cfg, one.spec).eval()  # from its spec and state alone
    rebuilt.load_state_dict(one.state_dict())
    assert torch.equal(_last(rebuilt, seq, lengths), _last(one, seq, lengths))


# ONNX: one export per test module (the exporter takes seconds)
@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[SequenceEncoder, Path, Path]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lmrec.compress.onnx import QueryEncoder, export_onnx, quantize_int8

    net = _net(_tiny_cfg())
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(QueryEncoder(net), folder / "query.onnx")
    return net, fp32, quantize_int8(fp32, folder / "query.int8.onnx")


def test_query_encoder_is_the_last_hidden_state_or_the_scores() -> None:
    from lmrec.compress.onnx import QueryEncoder

    net = _net(_tiny_cfg())
    seq, lengths = _inputs(4, 8)
    with torch.no_grad():
        assert torch.allclose(QueryEncoder(net)(seq, lengths), _last(net, seq, lengths))
        scored = QueryEncoder(net, scores=True)(seq, lengths)
    assert torch.allclose(scored, _last(net, seq, lengths) @ net.items.weight[1 : N_ITEMS + 1].T, atol=1e-5)


def test_onnx_fp32_matches_pytorch_at_any_batch_and_length(exported: tuple[SequenceEncoder, Path, Path]) -> None:
    from lmrec.compress.onnx import OnnxRunner

    net, fp32, _ = exported
    runner = OnnxRunner(fp32, threads=1)
    for batch, length, seed in [(1, 8, 0), (3, 5, 1), (17, 8, 2), (2, 1, 3), (4, 9, 4)]:
        seq, lengths = _inputs(batch, length, seed)
        out = runner(seq, lengths)
        assert out.shape == (batch, 16) and out.dtype == np.float32
        np.testing.assert_allclose(out, _last(net, seq, lengths).numpy(), atol=1e-4)


def test_onnx_int8_is_smaller_and_close_in_top_k(exported: tuple[SequenceEncoder, Path, Path]) -> None:
    from lmrec.compress.onnx import OnnxRunner

    net, fp32, int8 = exported
    small, full = OnnxRunner(int8, threads=1), OnnxRunner(fp32, threads=1)
    assert small.nbytes < full.nbytes
    seq, lengths = _inputs(64, 8, seed=5)
    items = net.items.weight[1 : N_ITEMS + 1].detach()
    ref = torch.topk(torch.from_numpy(full(seq, lengths)) @ items.T, 10).indices
    got = torch.topk(torch.from_numpy(small(seq, lengths)) @ items.T, 10).indices
    assert _overlap(got, ref) >= 0.8
    assert not np.allclose(small(seq, lengths), full(seq, lengths), atol=1e-6)  # really a different model


def test_onnx_runs_a_models_histories(exported: tuple[SequenceEncoder, Path, Path]) -> None:
    from lmrec.compress.onnx import OnnxRunner

    net, fp32, _ = exported
    cfg = _tiny_cfg()
    model = _sasrec(cfg)
    model.net.load_state_dict(net.state_dict())
    batch = QueryBatch.from_histories([0, 1], [[3, 4, 5, 6], [9, 9]])
    seq, lengths = encode_histories(model, batch)
    np.testing.assert_allclose(OnnxRunner(fp32)(seq, lengths), query_embeddings(model, batch).numpy(), atol=1e-4)
