"""How many intra-op threads training uses: as many as there are cores nobody else is using.

torch's CPU ops split their work over an OpenMP team, and every op ends at a barrier where the
team waits for its slowest thread. With one thread per core that is free. When another process
takes one of the cores, the thread that shares it runs only in the scheduler's time slices
(milliseconds), and every op — microseconds of work in a small recommender — waits for that
slice: on the 2-core machine a ``bert4rec`` epoch on ml-100k went from 1.2 s to 37 s beside one
busy process. One thread fewer runs at the speed of the free core instead.

:class:`ThreadPolicy` measures what the *other* processes use of the cores this process may run
on (``os.sched_getaffinity``): the busy time ``/proc/stat`` counts on those cores, less this
process's own CPU time, over a window — a short one before training starts (none when an earlier
fit in this process looked moments ago: federated rounds and tuning fit many times), then the time
since the last look, at most once per ``interval`` seconds between batches — and sets torch's thread
count to the cores left, never more than the count it found (``OMP_NUM_THREADS`` or torch's
default) and never fewer than one. A core counts as taken when others use more than
``TAKEN`` of it. Where ``/proc/stat`` cannot be read (not Linux) nothing changes. An explicit
thread count (:attr:`lmrec.models.base.FitOptions.threads`) is used as given, without looking.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch

TAKEN = 0.2  # share of a core the other processes must use for it to count as taken
START_WINDOW = 0.2  # seconds of looking before training starts
INTERVAL = 1.0  # seconds between looks while training
RECENT = 10.0  # seconds for which the last look of an earlier fit serves as the start of the next
PROC_STAT = Path("/proc/stat")


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where affinity is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def busy_seconds(cpus: Iterable[int], stat: Path = PROC_STAT) -> float | None:
    """Seconds the given CPUs have spent busy since boot (user, nice, system, irq, softirq and
    steal: everything but idle and iowait), from ``/proc/stat``; None where it cannot be read."""
    wanted = {f"cpu{c}" for c in cpus}
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if name in wanted:
            values = [int(v) for v in fields[:8]]
            ticks += values[0] + values[1] + values[2] + values[5] + values[6] + values[7]
    return ticks / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    t = os.times()
    return t.user + t.system


def free_cores(others: float, cores: int) -> int:
    """Cores left when other processes use ``others`` cores' worth of time (TAKEN rounds up)."""
    taken = max(0, int(-(-(others - TAKEN) // 1)))  # ceil(others - TAKEN), at least 0
    return max(1, cores - taken)


class ThreadPolicy:
    """Chooses and sets torch's intra-op thread count while a Trainer runs (see the module's
    docstring); :meth:`close` puts the caller's count back. ``fixed``: use that many, always.
    ``shared``: where the last look is kept for the next policy (by default, with the real counters,
    one place per process; with injected ones, none)."""

    LAST_LOOK: ClassVar[dict[str, Any]] = {}  # a measurement cache, not behaviour: see ``shared``

    def __init__(
        self,
        fixed: int | None = None,
        *,
        cpus: list[int] | None = None,
        interval: float = INTERVAL,
        busy: Callable[[], float | None] | None = None,
        own: Callable[[], float] = own_seconds,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        shared: dict[str, Any] | None = None,
    ) -> None:
        if fixed is not None and fixed < 1:
            raise ValueError(f"threads must be at least 1, got {fixed}")
        self.fixed, self.interval = fixed, interval
        self.cpus = cpus if cpus is not None else allowed_cpus()
        self._busy = busy or (lambda: busy_seconds(self.cpus))
        self._own, self._clock, self._sleep = own, clock, sleep
        self._shared = shared if shared is not None else (self.LAST_LOOK if busy is None else None)
        self.caller = torch.get_num_threads()
        self.ceiling = min(self.caller, len(self.cpus))
        self.threads = self.caller
        self.started: int | None = None  # the count training started with
        self.lowest = self.caller
        self.changes = 0  # changes after the start
        self.others: float | None = None  # cores the other processes used at the last look
        self._last: tuple[float, float, float] | None = None

    def start(self) -> int:
        """Set the thread count for the start of training (after a short look when adaptive)."""
        if self.fixed is not None:
            self._set(self.fixed)
        else:
            self._set(self.ceiling)
            self._last = self._sample()
            if self._last is not None and self.ceiling > 1:
                self._first_look(self._last)
        self.started = self.lowest = self.threads
        return self.threads

    def _first_look(self, now: tuple[float, float, float]) -> None:
        recent = (self._shared or {}).get("sample")
        age = now[0] - recent[0] if recent is not None else None
        if age is not None and START_WINDOW <= age <= RECENT:  # the window since the last look
            self._last = recent
            self.update(force=True)
        elif age is not None and 0 <= age < START_WINDOW:  # looked moments ago: what it saw
            assert self._shared is not None
            self.others = self._shared["others"]
            self._set(min(self.ceiling, free_cores(self.others, len(self.cpus))))
        else:
            self._sleep(START_WINDOW)
            self.update(force=True)

    def update(self, force: bool = False) -> None:
        """Look again if ``interval`` seconds have passed (or ``force``), and follow what is free."""
        if self.fixed is not None or self._last is None:
            return
        now = self._clock()
        if not force and now - self._last[0] < self.interval:
            return
        sample = self._sample()
        if sample is None:
            return
        (t0, busy0, own0), (t1, busy1, own1) = self._last, sample
        self._last = sample
        if t1 - t0 <= 0:
            return
        self.others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        if self._shared is not None:
            self._shared.update(sample=sample, others=self.others)
        self._set(min(self.ceiling, free_cores(self.others, len(self.cpus))))

    def close(self) -> None:
        if torch.get_num_threads() != self.caller:
            torch.set_num_threads(self.caller)

    def report(self) -> dict[str, Any]:
        """What the training log (run.json) says: the count training started with, how it was
        chosen, and — when it adapted — the fewest used, how often it changed and the other
        processes' load (cores) at the last look."""
        out: dict[str, Any] = {"threads": self.started, "threads_from": "fixed" if self.fixed else "free cores"}
        if self.fixed is None:
            out.update(threads_min=self.lowest, thread_changes=self.changes, cpus=len(self.cpus))
            if self.others is not None:
                out["other_load"] = round(self.others, 2)
        return out

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self._busy()
        return None if busy is None else (self._clock(), busy, self._own())

    def _set(self, threads: int) -> None:
        if self.started is not None and threads != self.threads:
            self.changes += 1
            self.lowest = min(self.lowest, threads)
        self.threads = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
