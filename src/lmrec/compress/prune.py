"""Structured pruning of a :class:`~lmrec.models.sequential.SequenceEncoder`: smaller matrices, not masks.

Two things can go, in every transformer block:

* feed-forward units — hidden unit ``j`` of ``linear2(gelu(linear1(x)))`` is ranked by
  ``‖[linear1.weight[j], linear1.bias[j]]‖ · ‖linear2.weight[:, j]‖`` (how much can flow in times how
  much can flow out) and the lowest are dropped. :func:`prune_ffn` returns a plain
  ``SequenceEncoder`` with a smaller ``inner`` and its config, which the sequential models save and
  load as they are;
* attention heads — head ``h`` is ranked by ``‖W_v[h]‖ · ‖W_out[:, h]‖`` (its value rows times its
  columns of the output projection). ``nn.MultiheadAttention`` cannot hold fewer heads than
  ``dim / head_dim``, so :func:`prune` returns a :class:`PrunedEncoder`: a ``SequenceEncoder`` whose
  blocks are re-written with exactly the kept heads and units (same maths, same item table,
  same ``forward(seq, causal, table)``), rebuilt from its :attr:`PrunedEncoder.spec`.

Pruning is one-shot from weight norms; a few epochs of fine-tuning (or distillation from the
unpruned model, ``--set teacher=RUN``) usually win back most of the loss.
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F

from lmrec.errors import ConfigError
from lmrec.models.sequential import SequenceEncoder, SequentialConfig


def _layers(net: SequenceEncoder) -> list[nn.TransformerEncoderLayer]:
    return [cast(nn.TransformerEncoderLayer, layer) for layer in net.blocks.layers]


def ffn_importance(layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    """(inner,) importance of each feed-forward hidden unit of ``layer``."""
    w_in = torch.cat([layer.linear1.weight, layer.linear1.bias[:, None]], dim=1)
    return (w_in.norm(dim=1) * layer.linear2.weight.norm(dim=0)).detach()


def head_importance(layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    """(heads,) importance of each attention head of ``layer``."""
    attn = layer.self_attn
    dim, heads = attn.in_proj_weight.shape[1], attn.num_heads  # nn.MultiheadAttention or its like
    w_v = attn.in_proj_weight[2 * dim :].reshape(heads, -1)
    w_o = attn.out_proj.weight.T.reshape(heads, -1)
    return (w_v.norm(dim=1) * w_o.norm(dim=1)).detach()


def _keep(importance: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` most important entries, in their original order (ties: lower first)."""
    order = torch.argsort(importance, descending=True, stable=True)[:n]
    return torch.sort(order).values


def _text_dim(net: SequenceEncoder) -> int:
    return int(net.text.shape[1]) if net.item_repr != "id" else 0


def _copy_outside_blocks(src: SequenceEncoder, dst: SequenceEncoder) -> None:
    """Item table, positions, norms (and the text part) from ``src``; non-persistent buffers too."""
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.")}
    missing, unexpected = dst.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("blocks.") for k in missing):
        raise ConfigError(f"cannot copy the encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if src.item_repr != "id":
        dst.id_trained.copy_(src.id_trained)


def _check(net: SequenceEncoder, cfg: SequentialConfig) -> None:
    layer = _layers(net)[0]
    if layer.linear1.out_features != cfg.inner or layer.self_attn.num_heads != cfg.heads:
        raise ConfigError(
            f"cfg (inner={cfg.inner}, heads={cfg.heads}) does not describe this encoder "
            f"(inner={layer.linear1.out_features}, heads={layer.self_attn.num_heads})"
        )


def prune_ffn(net: SequenceEncoder, cfg: SequentialConfig, inner: int) -> tuple[SequenceEncoder, SequentialConfig]:
    """A ``SequenceEncoder`` keeping the ``inner`` most important feed-forward units of every block,
    and its config (``cfg`` with ``inner`` replaced). ``net`` is left untouched; ``inner`` equal to
    the current width gives an identical copy."""
    _check(net, cfg)
    if not 1 <= inner <= cfg.inner:
        raise ConfigError(f"inner must be in 1..{cfg.inner}, got {inner}")
    new_cfg = replace(cfg, inner=inner)
    out = SequenceEncoder(net.n_items, new_cfg, _text_dim(net))
    _copy_outside_blocks(net, out)
    with torch.no_grad():
        for old, new in zip(_layers(net), _layers(out), strict=True):
            keep = _keep(ffn_importance(old), inner)  # all units: 0..inner-1 in order, an exact copy
            state = old.state_dict()
            state["linear1.weight"] = state["linear1.weight"][keep]
            state["linear1.bias"] = state["linear1.bias"][keep]
            state["linear2.weight"] = state["linear2.weight"][:, keep]
            new.load_state_dict(state)
    return out.train(net.training), new_cfg


# -- head pruning: blocks written out ---------------------------------------------------------------
class PrunedBlock(nn.Module):
    """A pre-norm transformer block (GELU) with ``heads`` heads of ``head_dim`` and ``inner`` units:
    the same computation as ``nn.TransformerEncoderLayer(norm_first=True, activation="gelu")``."""

    def __init__(self, dim: int, heads: int, head_dim: int, inner: int, dropout: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dropout_p = heads, head_dim, dropout
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, dim)
        self.linear1 = nn.Linear(dim, inner)
        self.linear2 = nn.Linear(inner, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool, padding: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, dim); ``padding`` (B, L) True at padded keys (bidirectional attention only)."""
        b, length, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if causal or padding is None else ~padding[:, None, None, :]
        drop = self.dropout_p if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, is_causal=causal)
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(b, length, -1)))
        return x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x))))))


class PrunedEncoder(SequenceEncoder):
    """A ``SequenceEncoder`` whose block ``i`` has ``spec[i] = (heads, inner)``; everything outside
    the blocks (item table, positions, norms, text adaptor) is the original's. Build an empty one
    from ``(n_items, cfg, spec, text_dim)`` and ``load_state_dict`` a saved state into it."""

    def __init__(self, n_items: int, cfg: SequentialConfig, spec: list[tuple[int, int]], text_dim: int = 0) -> None:
        if cfg.block != "prenorm":
            raise ConfigError(f"pruning rebuilds pre-norm blocks; a model with block={cfg.block!r} cannot be pruned")
        super().__init__(n_items, replace(cfg, inner=1, layers=1), text_dim)  # its blocks are replaced below
        if len(spec) != cfg.layers or any(h < 1 or i < 1 for h, i in spec):
            raise ConfigError(f"spec needs {cfg.layers} (heads >= 1, inner >= 1) pairs, got {spec}")
        self.spec = [(int(h), int(i)) for h, i in spec]
        head_dim = cfg.dim // cfg.heads
        blocks = nn.ModuleList(PrunedBlock(cfg.dim, h, head_dim, i, cfg.dropout_value) for h, i in self.spec)
        self.blocks = blocks  # type: ignore[assignment]  # the same name, so states read alike

    def forward(self, seq: torch.Tensor, causal: bool, table: torch.Tensor | None = None) -> torch.Tensor:
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        table = self.item_table() if table is None else table
        x = self.dropout(self.norm(F.embedding(seq, table, padding_idx=0) + self.positions(pos)))
        padding = None if causal else seq == 0
        for block in cast(nn.ModuleList, self.blocks):
            x = block(x, causal, padding)
        return self.final_norm(x)


def prune(
    net: SequenceEncoder, cfg: SequentialConfig, inner: int | None = None, heads: int | None = None
) -> PrunedEncoder:
    """Keep the ``heads`` most important attention heads and ``inner`` feed-forward units (None: all)
    of every block of ``net`` (described by ``cfg``). Head dimension, item table and everything
    outside the blocks are unchanged; ``net`` is left untouched."""
    _check(net, cfg)
    inner = cfg.inner if inner is None else inner
    heads = cfg.heads if heads is None else heads
    if not (1 <= inner <= cfg.inner and 1 <= heads <= cfg.heads):
        raise ConfigError(f"need 1 <= inner <= {cfg.inner} and 1 <= heads <= {cfg.heads}, got {inner}, {heads}")
    out = PrunedEncoder(net.n_items, cfg, [(heads, inner)] * cfg.layers, _text_dim(net))
    _copy_outside_blocks(net, out)
    dim, head_dim = cfg.dim, cfg.dim // cfg.heads
    with torch.no_grad():
        for old, block in zip(_layers(net), cast(nn.ModuleList, out.blocks), strict=True):
            new = cast(PrunedBlock, block)
            h_keep = _keep(head_importance(old), heads)
            cols = (h_keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)  # kept rows of q (and k, v)
            rows = torch.cat([cols, cols + dim, cols + 2 * dim])
            attn = old.self_attn
            new.qkv.weight.copy_(attn.in_proj_weight[rows])
            new.qkv.bias.copy_(attn.in_proj_bias[rows])
            new.out.weight.copy_(attn.out_proj.weight[:, cols])
            new.out.bias.copy_(attn.out_proj.bias)
            f_keep = _keep(ffn_importance(old), inner)
            new.linear1.weight.copy_(old.linear1.weight[f_keep])
            new.linear1.bias.copy_(old.linear1.bias[f_keep])
            new.linear2.weight.copy_(old.linear2.weight[:, f_keep])
            new.linear2.bias.copy_(old.linear2.bias)
            for name in ("norm1", "norm2"):
                getattr(new, name).load_state_dict(getattr(old, name).state_dict())
    return out.train(net.training)


def state_nbytes(module: nn.Module) -> int:
    """Bytes of a module's state_dict tensors (what a checkpoint holds)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())
