"""The transformer blocks: the pre-norm GELU block and the original SASRec block (``block``), with
their attention and a dropout whose mask is drawn as bytes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ByteDropout(nn.Module):
    """Dropout whose mask is drawn as random bytes, 8 per 64-bit word (keep where byte ≥ 256·p, so
    p is rounded to 1/256). torch's CPU dropout draws a float per element, and that was 40 % of a
    small transformer's training step on CPU; this draws an eighth of the words, ~3× faster."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64, device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= round(self.p * 256)
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))


class _MaskedScale(torch.autograd.Function):
    """x · mask · scale, keeping only the (bool) mask for the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so saved models and the pruner read it alike; attention
    probabilities dropped out with :class:`ByteDropout`."""

    def __init__(self, dim: int, heads: int, dropout: float, linear_in: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.linear_in = heads, dim // heads, linear_in
        if linear_in:  # DP-SGD: an nn.Linear (in_proj.weight / .bias), which Opacus has a per-example rule for
            self.in_proj = nn.Linear(dim, 3 * dim)
            nn.init.xavier_uniform_(self.in_proj.weight)
            nn.init.zeros_(self.in_proj.bias)
        else:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
            nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = ByteDropout(dropout)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, dim) the queries, and the keys and values unless ``kv`` (B, L, dim) gives them;
        ``mask`` (B or 1, 1, L or 1, L) True where a query may not see a key."""
        b, length, dim = x.shape
        qkv = self.in_proj(x) if self.linear_in else nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        if kv is not None:  # the query part of x, the key and value parts of kv
            kv_proj = (
                self.in_proj(kv) if self.linear_in else nn.functional.linear(kv, self.in_proj_weight, self.in_proj_bias)
            )
            qkv = torch.cat([qkv[..., :dim], kv_proj[..., dim:]], dim=-1)
        q, k, v = qkv.view(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * self.head_dim**-0.5
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        attention = self.dropout(torch.softmax(scores, dim=-1))
        return self.out_proj((attention @ v).transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block with GELU: the computation of ``nn.TransformerEncoderLayer(
    norm_first=True, activation="gelu")`` and its parameter names, with faster dropout."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.linear1, self.linear2 = nn.Linear(dim, inner), nn.Linear(inner, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2 = ByteDropout(dropout), ByteDropout(dropout), ByteDropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x), mask))
        return x + self.dropout2(self.linear2(self.dropout(nn.functional.gelu(self.linear1(self.norm2(x))))))


class SASRecBlock(Block):
    """The block of the original SASRec (Kang & McAuley 2018, as the tuned CE-SASRec baselines
    run it): queries from the normalised input attend over the raw input, and the normalised
    queries are the residual; the sum is normalised and goes through a ReLU feed-forward with its
    own residual. The same parameters (and names) as :class:`Block`."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.norm1(x)
        x = self.norm2(q + self.self_attn(q, mask, kv=x))
        return x + self.dropout2(self.linear2(nn.functional.relu(self.dropout(self.linear1(x)))))


BLOCKS = {"prenorm": Block, "sasrec": SASRecBlock}


class Blocks(nn.Module):
    """The stack of blocks (``layers``, as in ``nn.TransformerEncoder``)."""

    def __init__(self, dim: int, heads: int, inner: int, dropout: float, layers: int, kind: str = "prenorm") -> None:
        super().__init__()
        self.layers = nn.ModuleList(BLOCKS[kind](dim, heads, inner, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


def causal_mask(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, L, L) True above the diagonal: what a position may not see in causal attention."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)[None, None]


def transformer_blocks(dim: int, heads: int, inner: int, dropout: float, layers: int, kind: str = "prenorm") -> Blocks:
    """Transformer blocks (batch first) of ``kind`` (:data:`BLOCKS`); the caller's mask decides
    causal or not."""
    return Blocks(dim, heads, inner, dropout, layers, kind)
