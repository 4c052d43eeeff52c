"""The network: item rows (ID, text, fused, aligned, late) + positions + blocks, tied output; the
variant DP-SGD trains; the padded inputs a batch of histories becomes."""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from lmrec.data.batch import QueryBatch
from lmrec.errors import ConfigError
from lmrec.models.sequential.blocks import ByteDropout, SelfAttention, causal_mask, transformer_blocks
from lmrec.models.sequential.config import SequentialConfig

E = TypeVar("E", bound="SequenceEncoder")


CHUNK_ROWS = 64  # rows of a training batch the encoder runs together (forward)


class SequenceEncoder(nn.Module):
    """Item embeddings + learned positions + transformer blocks; output tied to item embeddings."""

    text: torch.Tensor  # buffers, declared for type checkers
    is_item: torch.Tensor
    id_trained: torch.Tensor

    def __init__(self, n_items: int, cfg: SequentialConfig, text_dim: int = 0) -> None:
        super().__init__()
        self.n_items, self.max_len, self.item_repr = n_items, cfg.max_len, cfg.item_repr
        # block=sasrec reads item rows scaled by sqrt(dim) plus positions, not normalised
        self.input_scale = math.sqrt(cfg.dim) if cfg.block == "sasrec" else None
        self.items = nn.Embedding(n_items + 2, cfg.dim, padding_idx=0)  # 0 pad, n+1 mask
        if cfg.item_repr != "id":
            if text_dim < 1:
                raise ConfigError(f"item_repr={cfg.item_repr!r} needs item text embeddings")
            # rows aligned with the shifted ids; pad and mask rows stay zero
            self.register_buffer("text", torch.zeros(n_items + 2, text_dim))
            out = nn.Linear(cfg.dim, cfg.dim)
            self.adaptor = nn.Sequential(nn.Linear(text_dim, cfg.dim), nn.GELU(), out)
            self.gate = nn.Parameter(torch.zeros(cfg.dim))  # fused: sigmoid(gate) weighs the ID part
            is_item = torch.zeros(n_items + 2, 1, dtype=torch.bool)
            is_item[1 : n_items + 1] = True
            self.register_buffer("is_item", is_item, persistent=False)
            # fused, aligned: 1 where an item's ID row was trained; 0 reads the item from its text (cold items)
            self.register_buffer("id_trained", torch.ones(n_items + 2, 1), persistent=False)
            if cfg.item_repr == "late":  # the text logits start at zero: training starts from the ID model
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
        self.positions = nn.Embedding(cfg.max_len + 1, cfg.dim)  # +1: the appended mask slot
        self.dropout = ByteDropout(cfg.dropout_value)
        self.norm = nn.LayerNorm(cfg.dim)
        self.blocks = transformer_blocks(cfg.dim, cfg.heads, cfg.inner, cfg.dropout_value, cfg.layers, cfg.block)
        self.final_norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[0].zero_()

    training_rounds = 0  # times put in training mode (train()): a cached inference table is stale after one

    def train(self: E, mode: bool = True) -> E:
        if mode:
            self.training_rounds += 1
        return super().train(mode)

    def item_table(self, id_drop: torch.Tensor | None = None) -> torch.Tensor:
        """The (n_items + 2, dim) item representations the output scores (and, but for ``late``, the
        input reads). ``id_drop`` (bool, n_items + 2, 1): fused or late rows to read from their text
        alone (ID dropout in training)."""
        if self.item_repr == "id":
            return self.items.weight
        text = self.adaptor(self.text)
        trained = self.id_trained if id_drop is None else self.id_trained * ~id_drop
        if self.item_repr == "fused":
            g = torch.sigmoid(self.gate) * trained
            text = g * self.items.weight + (1 - g) * text
        elif self.item_repr == "late":  # h·(e + a(t)) = the ID logit + the text branch's logit
            text = trained * self.items.weight + text
        elif self.item_repr == "aligned":
            text = torch.where(self.id_trained > 0, self.items.weight, text)
        return torch.where(self.is_item, text, self.items.weight)  # pad and mask keep their own rows

    def alignment_loss(self) -> torch.Tensor:
        """Aligned items: mean squared distance of the text adaptor's rows to the trained ID rows
        (held fixed), so that an item with no ID row gets one predicted from its text."""
        trained = self.id_trained[1 : self.n_items + 1, 0] > 0
        mapped = self.adaptor(self.text[1 : self.n_items + 1][trained])
        return (mapped - self.items.weight[1 : self.n_items + 1][trained].detach()).pow(2).sum(1).mean()

    def mark_trained(self, trained: torch.Tensor) -> None:
        """Tell a fused table which items (bool, n_items) had training interactions: the others
        have an untrained ID row, so they are represented by their text alone."""
        if self.item_repr != "id":
            self.id_trained[1 : self.n_items + 1, 0] = trained.to(self.id_trained)

    def forward(self, seq: torch.Tensor, causal: bool, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) shifted item ids, right-padded with 0 → hidden states (B, L, dim). In training,
        rows run in chunks of :data:`CHUNK_ROWS` of similar length, each cut to its longest row, so a
        batch of mixed lengths costs what its items do; padded positions past a chunk's width hold
        zeros."""
        if self.item_repr == "late":  # text only at the output: the input reads ID rows alone
            table = self.items.weight
        elif table is None:
            table = self.item_table()
        if not self.training or len(seq) <= CHUNK_ROWS:  # scoring (and export) reads one chunk: encode cuts it
            return self._hidden(seq, causal, table)
        lengths = (seq > 0).sum(1)
        order = torch.argsort(lengths)
        parts = []
        for rows in order.split(CHUNK_ROWS):
            width = max(1, int(lengths[rows].max()))
            hidden = self._hidden(seq[rows, :width], causal, table)
            parts.append(nn.functional.pad(hidden, (0, 0, 0, seq.shape[1] - width)))
        return torch.cat(parts)[torch.argsort(order)]

    def _hidden(self, seq: torch.Tensor, causal: bool, table: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.embed(nn.functional.embedding(seq, table, padding_idx=0), self.positions(pos))
        # causal: padding sits after the real items, so the causal mask alone hides it
        mask = causal_mask(length, seq.device) if causal else (seq == 0)[:, None, None, :]
        return self.final_norm(self.blocks(x, mask))

    def embed(self, items: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The blocks' input from the item rows and position rows of a sequence."""
        if self.input_scale is not None:
            return self.dropout(items * self.input_scale + positions)
        return self.dropout(self.norm(items + positions))

    def encode(
        self, seq: torch.Tensor, lengths: torch.Tensor, causal: bool = True, table: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tensors only (exportable): (B, L) right-padded shifted ids and their (B,) lengths → the
        (B, dim) hidden state at each sequence's last position, the query vector."""
        width = max(1, int(lengths.max())) if not torch.jit.is_tracing() and len(lengths) else seq.shape[1]
        hidden = self(seq[:, :width], causal=causal, table=table)
        return hidden[torch.arange(len(seq), device=seq.device), (lengths - 1).clamp(min=0)]

    def logits(self, hidden: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of every catalog item (rows 1..n of the item table): (..., n_items)."""
        table = self.item_table() if table is None else table
        return hidden @ table[1 : self.n_items + 1].T

    def item_logits(self, hidden: torch.Tensor, shifted_items: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Scores of given items: hidden (N, d), shifted_items (N,) or (N, k)."""
        emb = table[shifted_items]
        if emb.dim() == 2:
            return (hidden * emb).sum(-1)
        return torch.einsum("nd,nkd->nk", hidden, emb)


class PrivateSequenceEncoder(SequenceEncoder):
    """The encoder as DP-SGD trains it: the same computation as :class:`SequenceEncoder` (ID items),
    but every parameter is used through the forward of a module Opacus has a per-example gradient
    rule for — the item table through ``nn.Embedding`` on the way in and a bias-free ``nn.Linear``
    head that shares its weight on the way out (tied, as in the plain model: Opacus adds up the
    two uses of each example), positions looked up per sequence, and attention whose input
    projection is an ``nn.Linear``. ``forward`` returns the logits of every table row, so each
    example's whole loss is computed inside the hooks. :meth:`plain_state` is the state of a plain
    encoder with the same weights, which is what is saved and served."""

    def __init__(self, n_items: int, cfg: SequentialConfig) -> None:
        super().__init__(n_items, cfg)
        for block in self.blocks.layers:
            block.self_attn = SelfAttention(cfg.dim, cfg.heads, cfg.dropout_value, linear_in=True)
        self.head = nn.Linear(cfg.dim, n_items + 2, bias=False)
        self.head.weight = self.items.weight

    def forward(self, seq: torch.Tensor, causal: bool, table: torch.Tensor | None = None) -> torch.Tensor:
        """seq (B, L) shifted item ids, right-padded with 0 → logits (B, L, n_items + 2) over the
        table's rows (pad and mask rows included: the loss excludes them)."""
        b, length = seq.shape
        pos = torch.arange(length, device=seq.device).expand(b, length)  # batch-first, for the hooks
        x = self.embed(self.items(seq), self.positions(pos))
        mask = causal_mask(length, seq.device) if causal else (seq == 0)[:, None, None, :]
        return self.head(self.final_norm(self.blocks(x, mask)))

    def load_plain(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a plain encoder's weights."""
        self.load_state_dict(
            {_linear_name(k): v for k, v in state.items()} | {"head.weight": state["items.weight"]}, strict=True
        )

    def plain_state(self) -> dict[str, torch.Tensor]:
        """These weights under the plain encoder's names (no head: it is the item table)."""
        return {_plain_name(k): v for k, v in self.state_dict().items() if not k.startswith("head.")}


def _linear_name(key: str) -> str:
    return key.replace("self_attn.in_proj_weight", "self_attn.in_proj.weight").replace(
        "self_attn.in_proj_bias", "self_attn.in_proj.bias"
    )


def _plain_name(key: str) -> str:
    return key.replace("self_attn.in_proj.weight", "self_attn.in_proj_weight").replace(
        "self_attn.in_proj.bias", "self_attn.in_proj_bias"
    )


# -- inference inputs ------------------------------------------------------------------------------
def histories_to_inputs(
    batch: QueryBatch, n_items: int, max_len: int, append_mask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded shifted inputs (B, max_len [+1]) with each history's last ``max_len`` known
    items, a [MASK] appended for the masked objective; and the input lengths."""
    width = max_len + 1 if append_mask else max_len
    seq = np.zeros((len(batch), width), dtype=np.int64)
    lengths = np.zeros(len(batch), dtype=np.int64)
    for i in range(len(batch)):
        h = batch.history(i)
        h = h[(h >= 0) & (h < n_items)][-max_len:] + 1
        if len(h) == 0:
            continue
        seq[i, : len(h)] = h
        lengths[i] = len(h)
        if append_mask:
            seq[i, len(h)] = n_items + 1
            lengths[i] += 1
    return torch.from_numpy(seq), torch.from_numpy(lengths)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
