"""The one training loop.

A model says *what* it trains — a :class:`Task`: the ``nn.Module`` whose parameters move, the
batches of one epoch, and the loss of one batch — and the :class:`Trainer` decides *how*: the
optimizer and its parameter groups, warm-up and schedule, device, bf16 autocast and
``torch.compile``, gradient clipping and accumulation, a moving average of the weights, early
stopping on a validation number with the best weights restored, progress, and checkpoints
(weights, optimizer state, step, random state) from which a stopped run resumes to the same
result as an uninterrupted one.

The seams other features plug into, so that none of them writes its own loop:

* a :class:`Strategy` wraps the module and optimizer and picks each process's batches
  (:mod:`lmrec.train.distributed` for DDP; DP-SGD hands module, optimizer and batches to Opacus);
* ``extra_losses`` add named terms to a task's loss (distillation, alignment, diversity);
* a task's loss may be a dict of named terms (multi-task): they are summed and logged one by one;
* a task may name ``decay_to``, {parameter name: tensor}: weight decay pulls those parameters
  towards these tensors instead of towards zero (L2-SP: a table that starts from text embeddings
  keeps that start where the data says nothing else).

Two more things it decides: the intra-op thread count (:mod:`lmrec.train.threads`: as many as there
are cores no other process is using, looked at again every second, unless ``threads`` fixes it),
and that weight decay of an embedding table reaches only the rows a step's gradient touches
(``row_decay``): a step over a 1M-item table reads a few thousand rows, and decaying the others
too shrank every item towards zero at every step whether anyone had seen it or not. The pieces
that act on the weights around each optimizer step (row decay, ``decay_to``, the moving average,
the learning-rate schedule) are in :mod:`lmrec.train.optim`.

Read it top to bottom: :meth:`Trainer.fit` is the loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from lmrec.errors import ConfigError
from lmrec.train.loop import EarlyStopping, TrainLog
from lmrec.train.optim import (
    averager,
    copy_into,
    decay_anchors,
    embedding_tables,
    learned,
    lr_factor,  # also imported from here (tests/test_trainer.py)
    row_decay_groups,
    row_decay_hook,
    swapped,
    trainable_params,
)
from lmrec.train.threads import ThreadPolicy

OPTIMIZERS = ("adamw", "adam", "sgd")  # sgd: with momentum 0.9
SCHEDULES = ("constant", "cosine", "linear")
CHECKPOINT_WEIGHTS = "checkpoint.safetensors"
CHECKPOINT_STATE = "checkpoint.json"

LossValue = torch.Tensor | Mapping[str, torch.Tensor]


class Task(Protocol):
    """What a model hands the Trainer."""

    @property
    def module(self) -> nn.Module:
        """Everything that is optimised (and snapshotted for the best epoch)."""
        ...

    def batches(self, epoch: int, generator: torch.Generator) -> Iterable[Any]:
        """The training batches of one epoch, drawn with ``generator``."""
        ...

    def loss(self, module: nn.Module, batch: Any, generator: torch.Generator) -> LossValue:
        """The loss of one batch, computed through ``module`` (the wrapped, compiled or
        distributed version of :attr:`module`): one tensor, or named terms that are summed."""
        ...


class Strategy:
    """How the module, the optimizer and the batches are wrapped. This one, for one process,
    changes nothing; the distributed and the differentially private ones override it."""

    is_main = True  # the process that validates, logs and writes checkpoints

    def prepare(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        return module, optimizer

    def batches(self, batches: Iterable[Any]) -> Iterable[Any]:
        """This process's share of an epoch's batches."""
        return batches

    def agree(self, value: float) -> float:
        """A number every process must act on alike (the validation score): the main one's."""
        return value

    def close(self) -> None:
        """Leave whatever the strategy joined (the process group), once the work is done."""


@dataclass
class TrainConfig:
    """How to train. Models fill it from their own config; the CLI's ``--set`` reaches it there."""

    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    warmup: int = 0  # optimizer steps of linear warm-up
    schedule: str = "constant"  # after warm-up: "constant", "cosine" or "linear" decay to 0 at the last step
    clip: float | None = None  # max gradient norm
    accumulate: int = 1  # batches per optimizer step
    amp: bool = False  # bf16 autocast (see fast_bf16: worth it where the hardware has bf16 units)
    compile: bool = False  # torch.compile the module
    patience: int = 5  # validations without improvement before stopping
    # > 0: keep an exponential moving average of the weights (this decay per optimizer step); it is
    # what is validated, snapshotted as the best epoch and returned
    ema: float = 0.0
    eval_every: int = 1  # epochs between validations
    # weight decay of embedding tables (nn.Embedding) only on the rows a step's gradient touches
    # (lazy, as for sparse features); False: every row every step, as torch's optimizers do
    row_decay: bool = True
    desc: str = "train"  # progress-bar label

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.epochs < 1 or self.accumulate < 1 or self.eval_every < 1 or self.warmup < 0 or self.lr <= 0:
            raise ConfigError("need epochs, accumulate, eval_every >= 1, warmup >= 0 and lr > 0")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError("clip must be > 0 (or None)")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")


@dataclass
class TrainerOptions:
    """Where the run lives and what it may use; from :class:`~lmrec.models.base.FitOptions`."""

    device: str = "cpu"
    progress: bool = False
    checkpoint_dir: Path | None = None  # written after every epoch when set
    resume: bool = False  # continue from the checkpoint in checkpoint_dir
    stop_after: int | None = None  # stop (as if interrupted) after this many epochs; resume later
    strategy: Strategy = field(default_factory=Strategy)
    threads: int | None = None  # intra-op threads; None: the cores no other process uses (train/threads.py)
    deadline: float | None = None  # a clock() reading: stop at the first epoch end past it (max_time)
    on_epoch: Callable[[float], None] | None = None  # gets each validation score; may raise to stop (pruning)
    clock: Callable[[], float] = time.monotonic


@dataclass
class _State:
    """What the loop carries from epoch to epoch (all of it checkpointed)."""

    epoch: int = 0  # epochs done
    step: int = 0  # optimizer steps done
    log: TrainLog = field(default_factory=TrainLog)
    stopper: EarlyStopping = field(default_factory=EarlyStopping)
    best: dict[str, torch.Tensor] | None = None
    average: dict[str, torch.Tensor] | None = None  # the moving average of the weights (ema > 0)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        options: TrainerOptions | None = None,
        *,
        extra_losses: Mapping[str, Callable[[nn.Module, Any], torch.Tensor]] | None = None,
        param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.config, self.options = config, options or TrainerOptions()
        self.extra_losses = dict(extra_losses or {})
        self.param_groups = param_groups
        self.device = torch.device(self.options.device)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(
        self,
        task: Task,
        generator: torch.Generator,
        validate: Callable[[], float] | None = None,
        total_steps: int | None = None,
    ) -> dict[str, Any]:
        """:meth:`_loop` with the thread count chosen for it (and the caller's put back after);
        the log says which (``threads``)."""
        policy = ThreadPolicy(self.options.threads)
        policy.start()
        try:
            log = self._loop(task, generator, validate, total_steps, policy)
        finally:
            policy.close()
        return {**log, **policy.report()}

    def _loop(
        self,
        task: Task,
        generator: torch.Generator,
        validate: Callable[[], float] | None,
        total_steps: int | None,
        policy: ThreadPolicy,
    ) -> dict[str, Any]:
        """Train ``task`` for up to ``config.epochs`` epochs; with ``validate`` (a number to
        maximise) stop early and restore the best epoch's weights. ``total_steps`` (optimizer steps
        of the whole run, when the task knows it) lets a decaying schedule reach zero at the end.
        ``options.deadline`` stops it at the first epoch end past that clock reading (the best epoch
        still restored). Returns the training log, with why it stopped (``stopped``)."""
        cfg, opts = self.config, self.options
        module = task.module.to(self.device)
        decay_to = getattr(task, "decay_to", None) or {}
        optimizer = self._optimizer(module)
        anchors = decay_anchors(module, optimizer, decay_to)
        if any("row_decay" in group for group in optimizer.param_groups):
            # a hook on this optimizer, which a strategy may wrap: it runs on the gradients the step
            # uses (DP-SGD's noised ones, which touch every row)
            optimizer.register_step_pre_hook(row_decay_hook(module, decay_to, cfg.optimizer == "adamw"))
        forward, optimizer = opts.strategy.prepare(module, optimizer)
        if cfg.compile:
            forward = torch.compile(forward)  # type: ignore[assignment]
        state = _State(stopper=EarlyStopping(cfg.patience))
        if cfg.ema:
            state.average = {k: p.detach().clone() for k, p in trainable_params(module).items()}
        if opts.resume:
            state = self._load_checkpoint(module, optimizer, generator, state)
        average = averager(module, state.average, cfg.ema)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp)
        bar = tqdm(total=cfg.epochs, initial=state.epoch, disable=not opts.progress, desc=cfg.desc, unit="epoch")
        start = time.perf_counter() - state.log.seconds
        stopped = "epochs"  # why the loop ends: "epochs", "early_stopping", "max_time" or "stop_after"
        while state.epoch < cfg.epochs and not state.stopper.should_stop:
            if opts.stop_after is not None and state.epoch >= opts.stop_after:
                stopped = "stop_after"
                break
            t0 = time.perf_counter()
            module.train()
            losses = []
            for batch in opts.strategy.batches(task.batches(state.epoch, generator)):
                policy.update()  # fewer threads while another process holds a core
                with autocast:
                    loss = self._loss(task, forward, _to_device(batch, self.device), generator)
                (loss / cfg.accumulate).backward()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    raise ConfigError(
                        f"{cfg.desc}: the loss is {losses[-1]} at epoch {state.epoch + 1}, batch {len(losses)}"
                    )
                if len(losses) % cfg.accumulate == 0:
                    self._step(module, optimizer, state, total_steps, average, anchors)
            if not losses:
                raise ConfigError(f"{cfg.desc}: an epoch without a training batch (too little data?)")
            if len(losses) % cfg.accumulate:  # a last, partial accumulation
                self._step(module, optimizer, state, total_steps, average, anchors)
            state.log.losses.append(sum(losses) / len(losses))
            state.log.epoch_seconds.append(time.perf_counter() - t0)
            postfix = {"loss": f"{state.log.losses[-1]:.4f}"}
            if validate is not None and ((state.epoch + 1) % cfg.eval_every == 0 or state.epoch + 1 == cfg.epochs):
                module.eval()
                with swapped(module, state.average):
                    value = opts.strategy.agree(float(validate()))
                    state.log.valid.append(value)
                    postfix["valid"] = f"{value:.4f}"
                    if state.stopper.update(value, state.epoch):
                        state.best = {k: v.detach().clone() for k, v in learned(module).items()}
                if opts.on_epoch is not None:
                    opts.on_epoch(value)
            state.epoch += 1
            state.log.seconds = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(postfix)
            if opts.checkpoint_dir is not None and opts.strategy.is_main:
                self._save_checkpoint(module, optimizer, generator, state)
            # past the time budget: every process stops as the main one decides (DDP)
            late = opts.deadline is not None and opts.clock() >= opts.deadline
            if opts.deadline is not None and state.epoch < cfg.epochs and opts.strategy.agree(float(late)):
                stopped = "max_time"
                break
        bar.close()
        if state.stopper.should_stop:
            stopped = "early_stopping"
        if state.best is not None:
            module.load_state_dict(state.best, strict=False)
        elif state.average is not None:
            copy_into(module, state.average)
        module.eval()
        state.log.best_epoch = state.stopper.best_epoch if validate is not None else len(state.log.losses) - 1
        return {**state.log.as_dict(), "steps": state.step, "stopped": stopped}

    # -- pieces of the loop -----------------------------------------------------------------------
    def _loss(self, task: Task, module: nn.Module, batch: Any, generator: torch.Generator) -> torch.Tensor:
        value = task.loss(module, batch, generator)
        terms = dict(value) if isinstance(value, Mapping) else {"loss": value}
        for name, extra in self.extra_losses.items():
            terms[name] = extra(module, batch)
        return sum(terms.values(), torch.zeros((), device=self.device))

    def _optimizer(self, module: nn.Module) -> torch.optim.Optimizer:
        cfg = self.config
        groups = self.param_groups(module) if self.param_groups else [{"params": self._trainable(module)}]
        if cfg.row_decay:
            groups = row_decay_groups(groups, embedding_tables(module), cfg.weight_decay)
        if cfg.optimizer == "sgd":  # no per-coordinate scaling: what DP-SGD's noise on rare rows needs
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        klass = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # fused: one kernel per tensor, with no table-sized temporaries (foreach's cost ~0.25 GB
        # and a third of a step on a 1M-item table); where a parameter cannot take it, foreach
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        return klass(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)

    @staticmethod
    def _trainable(module: nn.Module) -> list[nn.Parameter]:
        return list(trainable_params(module).values())

    def _step(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: _State,
        total: int | None,
        average: Callable[[], None] | None,
        anchors: list[tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]],
    ) -> None:
        cfg = self.config
        if cfg.clip is not None:
            torch.nn.utils.clip_grad_norm_(self._trainable(module), cfg.clip)
        factor = lr_factor(state.step, cfg.warmup, cfg.schedule, total)
        for group in optimizer.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
        decoupled = cfg.optimizer == "adamw"
        for group, params, targets in anchors:  # L2 decay adds wd·p to the gradient: make it wd·(p − target)
            for p, target in zip(params, targets, strict=True):
                if not decoupled and group["weight_decay"] and p.grad is not None:
                    p.grad.add_(target, alpha=-group["weight_decay"])
        optimizer.step()
        for group, params, targets in anchors:  # decoupled decay took lr·wd·p: give back lr·wd·target
            for p, target in zip(params, targets, strict=True):
                if decoupled and group["weight_decay"] and p.grad is not None:  # AdamW skips grad-less ones
                    with torch.no_grad():
                        p.add_(target, alpha=group["lr"] * group["weight_decay"])
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        if average is not None:
            average()

    # -- checkpoints ------------------------------------------------------------------------------
    def _save_checkpoint(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: _State
    ) -> None:
        """Weights, optimizer moments, best weights and random states as safetensors; the rest JSON.
        Written to temporary names and renamed, so a kill mid-write leaves the last good one."""
        directory = self.options.checkpoint_dir
        assert directory is not None
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"module.{k}": v for k, v in learned(module).items()}
        tensors.update({f"best.{k}": v for k, v in (state.best or {}).items()})
        tensors.update({f"average.{k}": v for k, v in (state.average or {}).items()})
        opt = optimizer.state_dict()
        for index, moments in opt["state"].items():
            tensors.update({f"optim.{index}.{k}": torch.as_tensor(v) for k, v in moments.items()})
        tensors["rng.generator"] = generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "epoch": state.epoch,
            "step": state.step,
            "log": asdict(state.log),
            "stopper": asdict(state.stopper),
            "param_groups": opt["param_groups"],
            "config": asdict(self.config),
        }
        tmp = directory / (CHECKPOINT_WEIGHTS + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        tmp.replace(directory / CHECKPOINT_WEIGHTS)
        tmp_meta = directory / (CHECKPOINT_STATE + ".tmp")
        tmp_meta.write_text(json.dumps(meta, indent=1))
        tmp_meta.replace(directory / CHECKPOINT_STATE)

    def _load_checkpoint(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator, state: _State
    ) -> _State:
        directory = self.options.checkpoint_dir
        if directory is None or not (directory / CHECKPOINT_STATE).is_file():
            raise ConfigError(f"nothing to resume: no checkpoint in {directory}")
        meta = json.loads((directory / CHECKPOINT_STATE).read_text())
        tensors = load_file(directory / CHECKPOINT_WEIGHTS)
        module.load_state_dict(_prefixed(tensors, "module."), strict=False)
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in _prefixed(tensors, "optim.").items():
            index, name = key.split(".", 1)
            moments.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
        generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        return _State(
            epoch=meta["epoch"],
            step=meta["step"],
            log=TrainLog(**meta["log"]),
            stopper=EarlyStopping(**meta["stopper"]),
            best=_prefixed(tensors, "best.") or None,
            average=_prefixed(tensors, "average.") or state.average,
        )


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bf16 matmuls run natively here (a GPU with bf16, a CPU with AVX-512 bf16 or AMX):
    there bf16 autocast halves a sequential model's training step; elsewhere it is emulated and
    slower. A model's ``amp=None`` means this."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global random state (weight init, dropout) seeded, and put the
    caller's state back afterwards: the same seed gives the same model, and nothing leaks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def step_rounds(steps: int, size: int = 10) -> list[int]:
    """A run counted in optimizer steps (LLM fine-tuning) as "epochs" of ``size`` steps, the last
    one shorter: the log gets a loss and the checkpoint a save every ``size`` steps."""
    return [min(size, steps - start) for start in range(0, steps, size)]


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator drawn from ``generator`` (for tasks that sample with numpy), so that
    the Trainer's one checkpointed generator decides every draw."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
