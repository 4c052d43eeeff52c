"""What the Trainer (:mod:`lmrec.train.trainer`) does to the weights around each optimizer step.

* which tensors training changes (:func:`trainable_params`, :func:`learned`: what snapshots and
  checkpoints hold);
* weight decay towards a task's ``decay_to`` tensors instead of towards zero (L2-SP):
  :func:`decay_anchors` pairs each such parameter with its target;
* weight decay of embedding tables only on the rows a step's gradient touches (``row_decay``):
  :func:`row_decay_groups` moves the tables to parameter groups of their own and
  :func:`row_decay_hook` is the optimizer pre-step hook that decays their touched rows;
* the exponential moving average of the weights (``ema``): :func:`averager` updates it after each
  step, :func:`swapped` lets validation see it, :func:`copy_into` puts it (or any snapshot) into the
  module;
* the learning-rate schedule: :func:`lr_factor`, warm-up then constant, cosine or linear decay.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from lmrec.errors import ConfigError


def learned(module: nn.Module) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and the buffers. Frozen weights (a
    language model's base under LoRA) are rebuilt from their source, so snapshots and
    checkpoints leave them out."""
    out: dict[str, torch.Tensor] = dict(trainable_params(module))
    out.update(dict(module.named_buffers()))
    return out


def trainable_params(module: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that require a gradient, by name."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def decay_anchors(
    module: nn.Module, optimizer: torch.optim.Optimizer, decay_to: Mapping[str, torch.Tensor]
) -> list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]]:
    """(param group, parameters, their decay targets) for every group holding a parameter named in
    ``decay_to``; a name that is not a trainable parameter of ``module``, or a target of another
    shape, is an error (a silent no-op would leave the rows decaying to zero)."""
    params = trainable_params(module)
    for name, target in decay_to.items():
        if name not in params or params[name].shape != target.shape:
            raise ConfigError(f"decay_to: {name!r} is not a trainable parameter of that shape")
    targets = {id(params[name]): target.to(params[name]) for name, target in decay_to.items()}
    out = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in targets]
        if mine:
            out.append((group, mine, [targets[id(p)] for p in mine]))
    return out


def embedding_tables(module: nn.Module) -> set[int]:
    """ids of the trainable embedding tables (dense-gradient ``nn.Embedding`` weights)."""
    return {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, nn.Embedding) and not m.sparse and m.weight.requires_grad and m.weight.dim() == 2
    }


def row_decay_groups(groups: list[dict[str, Any]], tables: set[int], decay: float) -> list[dict[str, Any]]:
    """Each group's embedding tables moved to a group of their own with ``weight_decay`` 0 and
    ``row_decay`` the decay they had (groups without decay are left as they are)."""
    out = []
    for group in groups:
        wd = group.get("weight_decay", decay)
        rows = [p for p in group["params"] if id(p) in tables]
        if not wd or not rows:
            out.append(group)
            continue
        dense = [p for p in group["params"] if id(p) not in tables]
        if dense:
            out.append({**group, "params": dense})
        out.append({**group, "params": rows, "weight_decay": 0.0, "row_decay": wd})
    return out


def row_decay_hook(
    module: nn.Module, decay_to: Mapping[str, torch.Tensor], decoupled: bool
) -> Callable[[torch.optim.Optimizer, Any, Any], None]:
    """The optimizer pre-step hook that decays the rows of ``row_decay`` groups whose gradient is
    not zero, as the optimizer itself would decay them: AdamW's decoupled p ← p − lr·wd·(p − target)
    before its update, Adam's and SGD's L2 wd·(p − target) added to the gradient (the target is the
    row of ``decay_to``, else 0). Rows without gradient are left exactly as they are."""
    params = trainable_params(module)
    targets = {id(params[name]): target.to(params[name]) for name, target in decay_to.items() if name in params}

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                wd = group.get("row_decay", 0.0)
                for p in group["params"] if wd else ():
                    if p.grad is None:
                        continue
                    # the largest |gradient| of each row: one pass, no table-sized temporary
                    rows = torch.linalg.vector_norm(p.grad, float("inf"), dim=1).nonzero().squeeze(1)
                    pull = p.index_select(0, rows)
                    if id(p) in targets:
                        pull -= targets[id(p)].index_select(0, rows)
                    if decoupled:
                        p.index_add_(0, rows, pull, alpha=-group["lr"] * wd)
                    else:
                        p.grad.index_add_(0, rows, pull, alpha=wd)

    return hook


def averager(module: nn.Module, average: Mapping[str, torch.Tensor] | None, decay: float) -> Callable[[], None] | None:
    """The update after each optimizer step, average ← average + (1 − decay)·(weights − average),
    over tensors paired once (the optimizer updates the weights in place); None without an average."""
    if average is None:
        return None
    params = trainable_params(module)
    averages, weights = [average[k] for k in params], [p.detach() for p in params.values()]
    return lambda: torch._foreach_lerp_(averages, weights, 1 - decay)


def copy_into(module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in trainable_params(module).items():
            p.copy_(tensors[name])


@contextlib.contextmanager
def swapped(module: nn.Module, average: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """The block sees the averaged weights (when there are any) and training goes on from the
    raw ones afterwards."""
    if average is None:
        yield
        return
    raw = {k: p.detach().clone() for k, p in trainable_params(module).items()}
    copy_into(module, average)
    try:
        yield
    finally:
        copy_into(module, raw)


def lr_factor(step: int, warmup: int, schedule: str, total: int | None) -> float:
    """The learning-rate multiplier at optimizer step ``step``: linear warm-up over ``warmup``
    steps, then constant, or cosine / linear decay to 0 at step ``total`` (constant when unknown)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total is None or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
