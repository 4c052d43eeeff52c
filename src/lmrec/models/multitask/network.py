"""The network of ``mtl-sasrec``: the sequential encoder, a per-position mixer (shared bottom, MMoE
or PLE) and one head per regression / binary task."""

from __future__ import annotations

import torch
from torch import nn

from lmrec.models.multitask.config import MultiTaskConfig
from lmrec.models.multitask.tasks import TaskSpec
from lmrec.models.sequential import SequenceEncoder


def _expert(dim: int, inner: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout), nn.Linear(inner, dim))


class TaskMixer(nn.Module):
    """Per-task states from the encoder's states (..., dim): shared bottom, MMoE or PLE.

    Returns one (..., dim) tensor per task and, for MMoE/PLE, each task's gate weights
    (..., experts it reads), or None for the shared bottom."""

    def __init__(self, dim: int, n_tasks: int, cfg: MultiTaskConfig) -> None:
        super().__init__()
        self.kind, self.n_tasks = cfg.mixer, n_tasks
        n_shared = 0 if cfg.mixer == "shared" else cfg.experts
        n_own = cfg.task_experts if cfg.mixer == "ple" else 0
        self.shared = nn.ModuleList(_expert(dim, cfg.expert_inner, cfg.dropout_value) for _ in range(n_shared))
        self.n_own = n_own  # task k's own experts are own[k * n_own : (k + 1) * n_own]
        self.own = nn.ModuleList(_expert(dim, cfg.expert_inner, cfg.dropout_value) for _ in range(n_own * n_tasks))
        self.gates = nn.ModuleList(nn.Linear(dim, n_shared + n_own) for _ in range(n_tasks) if n_shared)

    def expert_names(self, task_names: list[str]) -> dict[str, list[str]]:
        """The experts each task's gate weighs, in gate order."""
        shared = [f"shared{e}" for e in range(len(self.shared))]
        return {t: shared + [f"{t}{e}" for e in range(self.n_own)] for t in task_names}

    def forward(self, h: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        if not len(self.shared):
            return [h] * self.n_tasks, [None] * self.n_tasks
        shared = torch.stack([e(h) for e in self.shared], dim=-2)  # (..., E, dim), computed once
        states: list[torch.Tensor] = []
        gates: list[torch.Tensor | None] = []
        for k, gate in enumerate(self.gates):
            own = self.own[k * self.n_own : (k + 1) * self.n_own]
            experts = torch.cat([shared, *(e(h).unsqueeze(-2) for e in own)], -2) if self.n_own else shared
            g = torch.softmax(gate(h), dim=-1)
            states.append(h + (g.unsqueeze(-1) * experts).sum(-2))
            gates.append(g)
        return states, gates


class PairHead(nn.Module):
    """A value of (history state z, target item e): an MLP on [z, e, z * e] → one number (a rating,
    or a logit). Its output bias starts at the training targets' mean (or log-odds)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([z, e, z * e], dim=-1)).squeeze(-1)


class MultiTaskNet(nn.Module):
    """Encoder + mixer + one head per regression / binary task (+ log-variances for uncertainty
    weighting). The next-item head is the encoder's tied item table. ``baseline`` holds each task's
    training mean (rating) or positive rate (like), the prediction for an empty history."""

    baseline: torch.Tensor  # buffer, declared for type checkers

    def __init__(self, encoder: SequenceEncoder, specs: list[TaskSpec], cfg: MultiTaskConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.mixer = TaskMixer(cfg.dim, len(specs), cfg)
        self.heads = nn.ModuleDict(
            {s.name: PairHead(cfg.dim, cfg.head_hidden, cfg.dropout_value) for s in specs if s.kind != "next_item"}
        )
        self.register_buffer("baseline", torch.zeros(len(specs)))
        self.log_vars = nn.Parameter(torch.zeros(len(specs))) if cfg.weighting == "uncertainty" else None

    def forward(self, seq: torch.Tensor, table: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """(B, L) shifted ids → per-task states (B, L, dim) and gate weights."""
        return self.mixer(self.encoder(seq, causal=True, table=table))
