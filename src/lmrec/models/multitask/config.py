"""The configuration of ``mtl-sasrec``: the sequential encoder's options plus the tasks, the mixer
and the loss weighting."""

from __future__ import annotations

from dataclasses import dataclass

from lmrec.errors import ConfigError
from lmrec.models.multitask.tasks import TaskSpec, parse_task
from lmrec.models.sequential import SequentialConfig

MIXERS = ("shared", "mmoe", "ple")
WEIGHTINGS = ("fixed", "uncertainty")


@dataclass
class MultiTaskConfig(SequentialConfig):
    tasks: tuple[str, ...] = ("next_item", "rating", "like")  # built-in names or name=kind:column[>=t]
    task_weights: tuple[float, ...] = ()  # one per task; empty: 1.0 each
    mixer: str = "mmoe"  # "shared" (shared bottom) | "mmoe" | "ple"
    experts: int = 4  # mmoe: experts; ple: shared experts
    task_experts: int = 1  # ple: experts of each task
    expert_inner: int = 128  # hidden size of an expert's feed-forward
    head_hidden: int = 64  # hidden size of a regression / binary head
    weighting: str = "fixed"  # "fixed" (task weights) | "uncertainty" (learned log-variances)
    stop_on: str = "auto"  # "auto" (next_item, else the first task) | "mean" (mean relative gain) | a task

    def validate(self) -> None:
        super().validate()
        if self.objective != "causal" or self.item_repr != "id":
            raise ConfigError("mtl-sasrec is causal (objective=causal) over ID items (item_repr=id)")
        if (
            self.teacher
            or self.pretrain_epochs
            or self.init_from
            or self.diversity_weight
            or self.fusion.on
            or self.adversarial.on
        ):
            raise ConfigError(
                "mtl-sasrec has no teacher, pretraining, init_from, diversity_weight, fusion or adversarial training"
            )
        if self.mixer not in MIXERS:
            raise ConfigError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        for key in ("experts", "expert_inner", "head_hidden"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1")
        if self.task_experts < 0 or (self.mixer == "ple" and self.task_experts < 1):
            raise ConfigError("task_experts must be >= 1 for mixer=ple")
        specs = self.task_specs()
        names = [s.name for s in specs]
        if self.stop_on not in ("auto", "mean", *names):
            raise ConfigError(f"stop_on must be auto, mean or one of the tasks {names}, got {self.stop_on!r}")

    def task_specs(self) -> list[TaskSpec]:
        """The tasks, parsed, with their weights."""
        if not self.tasks:
            raise ConfigError("tasks: name at least one task")
        if self.task_weights and len(self.task_weights) != len(self.tasks):
            raise ConfigError(f"task_weights has {len(self.task_weights)} values for {len(self.tasks)} tasks")
        weights = self.task_weights or (1.0,) * len(self.tasks)
        specs = [parse_task(t, float(w)) for t, w in zip(self.tasks, weights, strict=True)]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: each name once, got {names}")
        if sum(s.kind == "next_item" for s in specs) > 1:
            raise ConfigError("tasks: at most one next_item task")
        return specs
