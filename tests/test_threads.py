"""The training thread count follows the cores other processes leave free (lmrec.train.threads)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmrec.train.threads import ThreadPolicy, busy_seconds, free_cores
from lmrec.train.trainer import TrainConfig, Trainer, TrainerOptions
from tests.test_trainer import LineTask


class Machine:
    """A fake clock and CPU counters: ``others`` cores' worth of busy time from other processes
    (and none of ours) accrues per second."""

    def __init__(self) -> None:
        self.now, self.busy, self.others = 0.0, 0.0, 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.busy += self.others * seconds

    def policy(self, fixed: int | None = None) -> ThreadPolicy:
        return ThreadPolicy(
            fixed, cpus=[0, 1], busy=lambda: self.busy, own=lambda: 0.0, clock=self.clock, sleep=self.sleep
        )


@pytest.fixture
def two_threads() -> Iterator[None]:
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(caller)


def test_free_cores() -> None:
    assert free_cores(0.0, 2) == 2
    assert free_cores(0.15, 2) == 2  # noise is not a taken core
    assert free_cores(0.3, 2) == 1  # a service that wakes up often is
    assert free_cores(1.0, 2) == 1
    assert free_cores(3.0, 2) == 1  # never fewer than one
    assert free_cores(1.0, 8) == 7


def test_a_busy_core_costs_a_thread_and_its_return_gives_it_back(two_threads: None) -> None:
    machine = Machine()
    machine.others = 1.0  # another process holds one of the two cores
    policy = machine.policy()
    assert policy.start() == 1 and torch.get_num_threads() == 1
    machine.others = 0.0  # it ended
    machine.sleep(0.5)
    policy.update()  # too soon to look again
    assert torch.get_num_threads() == 1
    machine.sleep(0.6)
    policy.update()
    assert torch.get_num_threads() == 2
    policy.close()
    assert torch.get_num_threads() == 2  # the caller's count
    report = policy.report()
    assert report["threads"] == 1 and report["thread_changes"] == 1 and report["other_load"] == 0.0


def test_quiet_machine_keeps_the_callers_count_and_never_exceeds_it(two_threads: None) -> None:
    machine = Machine()
    assert machine.policy().start() == 2
    torch.set_num_threads(1)  # e.g. OMP_NUM_THREADS=1: a ceiling, not raised on a quiet machine
    policy = machine.policy()
    assert policy.start() == 1
    policy.close()


def test_a_fixed_count_is_used_without_looking(two_threads: None) -> None:
    machine = Machine()
    machine.others = 2.0
    policy = machine.policy(fixed=2)
    assert policy.start() == 2 and machine.now == 0.0
    policy.close()
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPolicy(0)


def test_busy_seconds_reads_the_allowed_cpus(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  300 0 30 1000 10 0 0 0 0 0\n"
        "cpu0 200 0 20 500 5 0 0 0 0 0\n"  # 220 busy ticks (iowait is idle)
        "cpu1 100 0 10 500 5 1 2 3 0 0\n"  # 116 (irq, softirq and steal count as busy)
        "intr 12345\n"
    )
    import os

    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds([1], stat) == pytest.approx(116 / hz)
    assert busy_seconds([0, 1], stat) == pytest.approx(336 / hz)
    assert busy_seconds([0], tmp_path / "missing") is None


def test_the_trainer_restores_the_callers_count_and_logs_its_own() -> None:
    caller = torch.get_num_threads()
    fixed = 3 if caller != 3 else 2
    log = Trainer(TrainConfig(epochs=2, lr=0.1), TrainerOptions(threads=fixed)).fit(
        LineTask(), torch.Generator().manual_seed(0)
    )
    assert log["threads"] == fixed and log["threads_from"] == "fixed"
    assert torch.get_num_threads() == caller


def test_a_fit_moments_after_another_starts_from_its_last_look(two_threads: None) -> None:
    machine, shared = Machine(), {}
    machine.others = 1.0

    def start() -> int:  # a fit's start; its end puts the caller's two threads back
        policy = ThreadPolicy(
            cpus=[0, 1], busy=lambda: machine.busy, own=lambda: 0.0, clock=machine.clock, sleep=machine.sleep,
            shared=shared,
        )  # fmt: skip
        threads = policy.start()
        policy.close()
        return threads

    assert start() == 1 and machine.now == pytest.approx(0.2)  # the first one looks for 0.2 s
    assert start() == 1 and machine.now == pytest.approx(0.2)  # the next one, at once: what it saw
    machine.others = 0.0
    machine.sleep(3.0)
    assert start() == 2 and machine.now == pytest.approx(3.2)  # the window since then, no sleep
