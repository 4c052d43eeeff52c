"""Data-parallel training on PyTorch's own runtime: ``torchrun --nproc-per-node N -m lmrec train ...``.

Every process builds the same model and draws the same epoch of batches (same seed); each takes
its share of every batch (rows ``rank::world``), DDP all-reduces the gradients, so N processes
with batch b take the steps one process takes with batch N·b. Validation runs everywhere on the
same weights and the main process's number decides early stopping for all; only the main process
logs and writes checkpoints and the run directory.

Gloo on CPU, NCCL on CUDA. Several machines: the same command on each with ``--nnodes``,
``--node-rank`` and ``--rdzv-endpoint=HOST:PORT`` (torchrun's rendezvous); nothing here changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmrec.train.trainer import Strategy


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (it sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> DDPStrategy:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on CUDA)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return DDPStrategy()


class DDPStrategy(Strategy):
    """The Trainer's seam for DistributedDataParallel over an initialised process group."""

    def __init__(self) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        # A task's loss must call the wrapped module once per step (that is when DDP arms its
        # gradient hooks); parameters also used outside forward (a tied output table, an L2 term)
        # still have their whole gradient all-reduced.
        ids = [module_device(module).index] if module_device(module).type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids), optimizer

    def batches(self, batches: Iterable[Any]) -> Iterator[Any]:
        for batch in batches:
            yield shard(batch, self.rank, self.world)

    def agree(self, value: float) -> float:
        out = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(out, src=0)
        return float(out.item())

    def close(self) -> None:
        # Every process waits until the main one has written the run, then the group is torn
        # down in order: a process that exits with gloo's threads still running aborts (SIGABRT).
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def shard(batch: Any, rank: int, world: int) -> Any:
    """Rows ``rank::world`` of every tensor (and list) in a batch."""
    if isinstance(batch, torch.Tensor):
        return batch[rank::world]
    if isinstance(batch, tuple):
        return tuple(shard(b, rank, world) for b in batch)
    if isinstance(batch, list):
        return batch[rank::world]
    raise TypeError(f"cannot shard a batch of type {type(batch).__name__} across processes")


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
