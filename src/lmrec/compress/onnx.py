"""ONNX export of a sequential encoder, run with ONNX Runtime on the CPU (``pip install 'lmrec[compress]'``).

:class:`QueryEncoder` wraps a ``SequenceEncoder`` as a tensor-only module: int64 shifted item ids
``seq`` (B, L) (0 pad, right-padded, as :func:`lmrec.compress.vectors.encode_histories` builds them)
and ``lengths`` (B,) in; the hidden state at each sequence's last position (B, dim) out, or with
``scores=True`` the (B, n_items) dot products with the item table. :func:`export_onnx` writes it
with batch and length as dynamic axes, :func:`quantize_int8` makes the weights int8 (dynamic
quantization: activations are quantized on the fly), and :class:`OnnxRunner` runs either file::

    path = export_onnx(QueryEncoder(model.net), "query.onnx")
    small = quantize_int8(path, "query.int8.onnx")
    queries = OnnxRunner(small)(seq, lengths)       # numpy (B, dim)

Exporter: torch 2.13's ``torch.export``-based exporter (``dynamo=True``, needs ``onnxscript``)
keeps batch and length dynamic through ``nn.MultiheadAttention``; the legacy TorchScript exporter
(``dynamo=False``) bakes the example batch size into the attention's reshapes, so it is not used.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lmrec.errors import ConfigError, MissingExtraError
from lmrec.models.sequential import SequenceEncoder

INPUTS = ("seq", "lengths")


class QueryEncoder(nn.Module):
    """``(seq, lengths) -> last hidden state`` (or catalog scores) of a ``SequenceEncoder``.

    The item table is computed once here (a buffer), so a text-based encoder does not run its
    adaptor over the whole catalog per request. ``causal``: the attention the encoder was trained
    with (True for SASRec, False for BERT4Rec, whose inputs end with the [MASK] token).
    """

    table: torch.Tensor

    def __init__(self, net: SequenceEncoder, causal: bool = True, scores: bool = False) -> None:
        super().__init__()
        self.net, self.causal, self.scores = net, causal, scores
        with torch.no_grad():
            self.register_buffer("table", net.item_table().detach().clone())
        self.training = net.training  # mirror the encoder's mode (the dropout in it is what counts)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.net(seq, causal=self.causal, table=self.table)
        last = hidden[torch.arange(seq.shape[0], device=seq.device), (lengths - 1).clamp(min=0)]
        if self.scores:
            return last @ self.table[1 : self.net.n_items + 1].T
        return last


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("onnxruntime", "compress") from exc
    return onnxruntime


def export_onnx(module: QueryEncoder, path: str | Path, batch: int = 2, length: int | None = None) -> Path:
    """Write ``module`` to ``path`` as ONNX with dynamic batch and length axes (length up to the
    encoder's ``max_len`` + 1). The example inputs are ``batch`` × ``length`` (≥ 2 each, so that
    neither axis is specialised to 1). Returns the path."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        raise MissingExtraError("onnxscript", "compress") from exc
    net = module.net
    longest = net.max_len + 1
    length = min(longest, 4) if length is None else length
    if batch < 2 or not 2 <= length <= longest:
        raise ConfigError(f"example inputs need batch >= 2 and 2 <= length <= {longest}, got {batch}, {length}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(1, net.n_items + 1, (batch, length), generator=gen)
    lengths = torch.full((batch,), length, dtype=torch.int64)
    b, n = torch.export.Dim("batch"), torch.export.Dim("length", min=1, max=longest)
    modes = [(m, m.training) for m in module.modules()]  # put back as found, module by module
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
            program = torch.onnx.export(
                module,
                (seq, lengths),
                input_names=list(INPUTS),
                output_names=["scores" if module.scores else "query"],
                dynamic_shapes={"seq": {0: b, 1: n}, "lengths": {0: b}},
                dynamo=True,
                verbose=False,
            )
            assert program is not None
            program.save(str(path))
    finally:
        for m, mode in modes:
            m.training = mode
    return path


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization of an exported model (weights int8, activations quantized at run
    time): ``onnxruntime.quantization.quantize_dynamic``. Returns ``dst``."""
    _ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


class OnnxRunner:
    """An ONNX Runtime CPU session over an exported :class:`QueryEncoder`; ``threads`` bounds the
    intra-op thread pool (None: ONNX Runtime's default)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @property
    def nbytes(self) -> int:
        """Size of the model file."""
        return self.path.stat().st_size

    def __call__(self, seq: torch.Tensor | np.ndarray, lengths: torch.Tensor | np.ndarray) -> np.ndarray:
        feed = {
            "seq": np.ascontiguousarray(np.asarray(seq, dtype=np.int64)),
            "lengths": np.ascontiguousarray(np.asarray(lengths, dtype=np.int64)),
        }
        return self.session.run(None, feed)[0]
