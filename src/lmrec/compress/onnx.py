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

:class:`RowsQueryEncoder` leaves the item table out of the graph: its third input ``rows`` (U, dim)
holds the table rows of the items in the batch and ``seq`` indexes them (0 the padding, row 0 of
``rows``). A compressed model keeps one quantized table for both the inputs and the scores and
dequantizes only the rows a batch reads (:mod:`lmrec.compress.model`).

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
ROWS_INPUTS = ("seq", "lengths", "rows")


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


class RowsQueryEncoder(nn.Module):
    """``(seq, lengths, rows) -> last hidden state``: the item table is an input, not a weight.

    ``rows`` (U, dim) are the table rows a batch reads and ``seq`` (B, L) indexes them (0: padding,
    whose row is expected to be zeros). Works for any ``SequenceEncoder`` (pruned ones too), since
    their ``forward`` takes the table to read from.
    """

    scores = False

    def __init__(self, net: SequenceEncoder, causal: bool = True) -> None:
        super().__init__()
        self.net, self.causal = net, causal
        self.training = net.training

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        hidden = self.net(seq, causal=self.causal, table=rows)
        return hidden[torch.arange(seq.shape[0], device=seq.device), (lengths - 1).clamp(min=0)]


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingExtraError("onnxruntime", "compress") from exc
    return onnxruntime


def export_onnx(
    module: QueryEncoder | RowsQueryEncoder, path: str | Path, batch: int = 2, length: int | None = None
) -> Path:
    """Write ``module`` to ``path`` as ONNX with dynamic batch and length axes (length up to the
    encoder's ``max_len`` + 1; for a :class:`RowsQueryEncoder` the number of rows too). The example
    inputs are ``batch`` × ``length`` (≥ 2 each, so that neither axis is specialised to 1).
    Weights the graph never reads (a :class:`RowsQueryEncoder`'s own item table) and the
    exporter's per-node debugging metadata (source lines, FX nodes: a third of a small model's
    file) are left out. Returns the path."""
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
    lengths = torch.full((batch,), length, dtype=torch.int64)
    b, n = torch.export.Dim("batch"), torch.export.Dim("length", min=1, max=longest)
    shapes: dict[str, dict[int, Any]] = {"seq": {0: b, 1: n}, "lengths": {0: b}}
    if isinstance(module, RowsQueryEncoder):
        n_rows = batch * length + 1  # every example item its own row (more rows than batch or length)
        seq = torch.arange(1, n_rows, dtype=torch.int64).reshape(batch, length)
        rows = torch.randn(n_rows, net.positions.embedding_dim, generator=gen)
        rows[0] = 0
        example: tuple[torch.Tensor, ...] = (seq, lengths, rows)
        shapes["rows"] = {0: torch.export.Dim("rows", min=1)}
        names = list(ROWS_INPUTS)
    else:
        example = (torch.randint(1, net.n_items + 1, (batch, length), generator=gen), lengths)
        names = list(INPUTS)
    modes = [(m, m.training) for m in module.modules()]  # put back as found, module by module
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's progress and deprecation chatter
            program = torch.onnx.export(
                module,
                example,
                input_names=names,
                output_names=["scores" if module.scores else "query"],
                dynamic_shapes=shapes,
                dynamo=True,
                verbose=False,
            )
            assert program is not None
            program.save(str(path))
    finally:
        for m, mode in modes:
            m.training = mode
    _slim(path)
    return path


def _slim(path: Path) -> None:
    """Remove weights that no node reads (the exporter keeps every parameter of the module) and
    the nodes' metadata (what ONNX Runtime never reads)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def onnx_values(model: str | Path | bytes) -> int:
    """How many numbers an ONNX model's weights (initializers) hold."""
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return sum(int(np.prod(init.dims, dtype=np.int64)) for init in proto.graph.initializer)


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization of an exported model (weights int8, activations quantized at run
    time): ``onnxruntime.quantization.quantize_dynamic``. Returns ``dst``."""
    _ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = Path(dst)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst


class OnnxRunner:
    """An ONNX Runtime CPU session over an exported :class:`QueryEncoder` or
    :class:`RowsQueryEncoder`, from its file or its bytes; ``threads`` bounds the intra-op thread
    pool (None: ONNX Runtime's default)."""

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        ort = _ort()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.path = None if isinstance(model, bytes) else Path(model)
        self._size = len(model) if isinstance(model, bytes) else 0
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    @property
    def nbytes(self) -> int:
        """Size of the model file (or of the bytes it was made from)."""
        return self._size if self.path is None else int(self.path.stat().st_size)

    def __call__(
        self,
        seq: torch.Tensor | np.ndarray,
        lengths: torch.Tensor | np.ndarray,
        rows: torch.Tensor | np.ndarray | None = None,
    ) -> np.ndarray:
        feed = {
            "seq": np.ascontiguousarray(np.asarray(seq, dtype=np.int64)),
            "lengths": np.ascontiguousarray(np.asarray(lengths, dtype=np.int64)),
        }
        if rows is not None:
            feed["rows"] = np.ascontiguousarray(np.asarray(rows, dtype=np.float32))
        out: np.ndarray = self.session.run(None, feed)[0]
        return out
