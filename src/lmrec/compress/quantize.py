"""Row-wise int8 / int4 quantization of an embedding table, and scoring straight from the codes.

Each row ``x`` gets its own affine grid: ``offset = min(x)``, ``scale = (max(x) - min(x)) / (2^bits - 1)``
and codes ``q = round((x - offset) / scale)`` in ``[0, 2^bits - 1]``, so ``x̂ = offset + scale · q``
is within ``scale / 2`` of ``x`` in every coordinate. Per-row grids matter for item tables,
whose row norms differ by orders of magnitude between popular and rare items.

int4 codes are packed two per byte (coordinate ``2j`` in the low nibble, ``2j + 1`` in the high one).
A dot product with a query reads the codes directly::

    q · x̂ = offset · Σq + scale · (q · codes)

so :func:`scores` and :func:`top_k` turn only one block of rows at a time into floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmrec.compress._topk import chunked_top_k
from lmrec.errors import ConfigError

BITS = (4, 8)
CHUNK = 16_384  # rows turned into floats at a time (64-dim: 4 MB)


@dataclass(frozen=True)
class QuantizedTable:
    """A quantized (n_rows, dim) table: uint8 ``codes`` (n_rows, dim) for 8 bits, (n_rows, ⌈dim/2⌉)
    packed for 4 bits; float32 ``scale`` and ``offset`` per row."""

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    bits: int
    dim: int

    @property
    def n_rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held: codes plus the per-row scale and offset."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.offset))

    def __len__(self) -> int:
        return self.n_rows

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save (safetensors); :meth:`from_state` reads them back."""
        meta = torch.tensor([self.bits, self.dim], dtype=torch.int64)
        return {"codes": self.codes, "scale": self.scale, "offset": self.offset, "meta": meta}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> QuantizedTable:
        bits, dim = (int(v) for v in tensors["meta"])
        return cls(tensors["codes"], tensors["scale"], tensors["offset"], bits, dim)


def float_nbytes(table: torch.Tensor) -> int:
    """Bytes of a float table as stored (for size ratios)."""
    return table.numel() * table.element_size()


def quantize_rows(table: torch.Tensor, bits: int = 8) -> QuantizedTable:
    """Quantize each row of a 2-D float ``table`` to ``bits`` (8 or 4) on its own min–max grid."""
    if bits not in BITS:
        raise ConfigError(f"bits must be one of {BITS}, got {bits}")
    if table.dim() != 2 or not table.is_floating_point():
        raise ConfigError(f"need a 2-D float table, got {tuple(table.shape)} {table.dtype}")
    x = table.detach().float().cpu()
    if not torch.isfinite(x).all():
        raise ConfigError("the table holds non-finite values")
    levels = (1 << bits) - 1
    lo, hi = x.min(dim=1).values, x.max(dim=1).values
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant row: every code 0, x̂ = offset
    q = torch.round((x - lo[:, None]) / safe[:, None]).clamp_(0, levels).to(torch.uint8)
    if bits == 4:
        q = _pack4(q)
    return QuantizedTable(q.contiguous(), scale.contiguous(), lo.contiguous(), bits, x.shape[1])


def _pack4(q: torch.Tensor) -> torch.Tensor:
    if q.shape[1] % 2:
        q = torch.cat([q, torch.zeros(len(q), 1, dtype=torch.uint8)], dim=1)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def _unpack4(packed: torch.Tensor, dim: int) -> torch.Tensor:
    out = torch.stack([packed & 0x0F, packed >> 4], dim=2).reshape(len(packed), -1)
    return out[:, :dim]


def codes(qtable: QuantizedTable, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """The integer codes of rows start..stop, unpacked: uint8 (rows, dim)."""
    block = qtable.codes[start:stop]
    return _unpack4(block, qtable.dim) if qtable.bits == 4 else block


def dequantize(qtable: QuantizedTable, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Float32 rows start..stop (all by default) of the table: ``offset + scale · codes``."""
    q = codes(qtable, start, stop).float()
    return qtable.offset[start:stop, None] + qtable.scale[start:stop, None] * q


def gather(qtable: QuantizedTable, index: torch.Tensor) -> torch.Tensor:
    """Float32 rows ``index`` (any order, repeats allowed) of the table, only those dequantized."""
    block = qtable.codes[index]
    q = (_unpack4(block, qtable.dim) if qtable.bits == 4 else block).float()
    return qtable.offset[index, None] + qtable.scale[index, None] * q


def row_slice(qtable: QuantizedTable, start: int, stop: int) -> QuantizedTable:
    """Rows start..stop as a table of their own (views of the codes, scales and offsets, no copy)."""
    return QuantizedTable(
        qtable.codes[start:stop], qtable.scale[start:stop], qtable.offset[start:stop], qtable.bits, qtable.dim
    )


def _score_block(
    query: torch.Tensor, qsum: torch.Tensor, qtable: QuantizedTable, start: int, stop: int, buf: torch.Tensor
) -> torch.Tensor:
    """``buf`` (≥ stop - start, dim) float32 is reused across blocks: a fresh multi-MB tensor per
    block costs more in page faults than the matmul itself."""
    q = buf[: stop - start]
    q.copy_(codes(qtable, start, stop))
    return torch.addcmul(qsum * qtable.offset[start:stop], query @ q.T, qtable.scale[start:stop])


def _as_query(query: torch.Tensor, qtable: QuantizedTable) -> torch.Tensor:
    query = query.detach().float().cpu()
    if query.dim() == 1:
        query = query[None]
    if query.dim() != 2 or query.shape[1] != qtable.dim:
        raise ConfigError(f"queries must be (B, {qtable.dim}), got {tuple(query.shape)}")
    return query


def scores(query: torch.Tensor, qtable: QuantizedTable, chunk: int = CHUNK) -> torch.Tensor:
    """(B, n_rows) dot products of ``query`` (B, dim) with the dequantized rows, computed block by
    block from the codes (the float copy of the table is never built; the output is B × n_rows)."""
    query = _as_query(query, qtable)
    qsum = query.sum(1, keepdim=True)
    out = torch.empty(len(query), qtable.n_rows)
    buf = torch.empty(min(chunk, qtable.n_rows), qtable.dim)
    for start in range(0, qtable.n_rows, chunk):
        stop = min(qtable.n_rows, start + chunk)
        out[:, start:stop] = _score_block(query, qsum, qtable, start, stop, buf)
    return out


def top_k(query: torch.Tensor, qtable: QuantizedTable, k: int, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` (scores, row indices) per query, best first, holding one block of scores at a time."""
    query = _as_query(query, qtable)
    qsum = query.sum(1, keepdim=True)
    buf = torch.empty(min(chunk, qtable.n_rows), qtable.dim)
    score = lambda s, e: _score_block(query, qsum, qtable, s, e, buf)  # noqa: E731
    return chunked_top_k(score, qtable.n_rows, len(query), k, chunk)
