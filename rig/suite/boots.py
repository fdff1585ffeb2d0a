"""Which fresh boots a kernel's tests get, and running them side by side.

A kernel's run of a test list (the main run, or one confirmation round) is split by the specs' phase
(rig/guest/spec.py): the `lockdep` phase (lock-order scenarios, in their fixed order) starts on a fresh
boot of its own, and so do the `main` tests. So no main test ever runs after a scenario in the same boot,
whatever the scenario did: its results do not depend on whether a scenario reported a cycle (lockdep
reports once per boot, docs/design.md §1), and the two parts are independent of each other.

Independent parts, and the runs of the two kernels and of every confirmation round (their test list is
known once the main runs are in: rig/suite/evidence.py), go on side by side on a pool of JOBS machines
(`kproto test --jobs`, default: one per host CPU, at most two). Each part is rig/suite/runner.py's
run_kernel_suite; their machines are named LABEL-N from one counter per kernel, the first boot of each
part numbered when it is submitted, so a part's first machine name does not depend on thread timing.

cancel() (Ctrl-C, SIGTERM, or an error on the way out) stops every part at its next poll and stops the
machines that are up, and gives back what each kernel's parts had finished.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from rig.guest.spec import PHASES
from rig.kernel.build import Kernel
from rig.suite.machine import Machine, MachineFactory
from rig.suite.results import KernelRun, merge_runs, renumber_boots
from rig.suite.runner import BootNumbers, Tally

MAX_DEFAULT_JOBS = 2

# (kernel, label, names, first boot number, numbers, stop, tally, factory) -> KernelRun
PartRunner = Callable[..., KernelRun]


def default_jobs() -> int:
    """Machines side by side by default: one per host CPU, at most two (a kernel's run has two parts;
    under TCG each guest is mostly one busy vCPU)."""
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


def split_phases(names: list[str], phase_of: dict[str, str]) -> list[list[str]]:
    """NAMES (in run order) as the parts that each start on a fresh boot: one per phase, in spec.PHASES order,
    empty ones left out. A name without a phase is a main test."""
    parts = [[n for n in names if phase_of.get(n, "main") == ph] for ph in PHASES]
    return [p for p in parts if p]


@dataclass
class Pending:
    """One kernel's run of a test list, submitted part by part."""
    label: str
    kernel: Kernel | None
    futures: list[Future] = field(default_factory=list)
    started: list[float] = field(default_factory=list)       # monotonic start of each part, when it started
    ended: list[float] = field(default_factory=list)

    def result(self) -> KernelRun:
        """The merged run (waits for every part); a part's exception (BootError, ...) is raised."""
        runs = [f.result() for f in self.futures]
        wall = (max(self.ended) - min(self.started)) if self.started and self.ended else None
        return merge_runs(self.label, self.kernel, runs, wall)

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def partial(self) -> KernelRun | None:
        """After cancel(): whatever the parts finished (complete runs and the partial runs their
        KeyboardInterrupt carried); None when no part got anywhere."""
        runs = []
        for f in self.futures:
            if not f.done() or f.cancelled():
                continue
            e = f.exception()
            r = f.result() if e is None else getattr(e, "partial_run", None)
            if r is not None:
                runs.append(r)
        return merge_runs(self.label, self.kernel, runs) if runs else None


class BootPool:
    """Runs kernels' test lists on up to JOBS machines at once (see the module docstring)."""

    def __init__(self, jobs: int, run_part: PartRunner,
                 make_factory: Callable[[Kernel | None, str], MachineFactory]) -> None:
        """RUN_PART runs one part (runner.run_kernel_suite with its arguments filled in); MAKE_FACTORY(kernel,
        label) gives the machines of a kernel (the real QemuMachine, or a test's fake)."""
        self.jobs = max(1, jobs)
        self.run_part = run_part
        self.make_factory = make_factory
        self.numbers: dict[str, BootNumbers] = {}
        self.stop = threading.Event()
        self._machines: list[Machine] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="kproto-boot")
        self.pending: list[Pending] = []

    def _numbers(self, label: str) -> BootNumbers:
        return self.numbers.setdefault(label, BootNumbers())

    def boots(self, label: str) -> int:
        """Boots of LABEL numbered so far: machines started, and the boots of cached runs (adopt())."""
        return self._numbers(label).taken

    def adopt(self, run: KernelRun) -> KernelRun:
        """A cached RUN of RUN.label, its boots renumbered into this run's count (results.renumber_boots)."""
        return renumber_boots(run, self._numbers(run.label).take)

    def submit(self, kernel: Kernel | None, label: str, names: list[str], phase_of: dict[str, str]) -> Pending:
        numbers = self._numbers(label)
        tally = Tally(len(names))
        pending = Pending(label, kernel)
        factory = self._tracking(self.make_factory(kernel, label))
        for part in split_phases(names, phase_of):
            first = numbers.take()
            pending.futures.append(self._pool.submit(self._run, pending, kernel, label, part, first, numbers,
                                                     tally, factory))
        self.pending.append(pending)
        return pending

    def _run(self, pending: Pending, kernel: Kernel | None, label: str, part: list[str], first: int,
             numbers: BootNumbers, tally: Tally, factory: MachineFactory) -> KernelRun:
        if self.stop.is_set():
            raise KeyboardInterrupt
        pending.started.append(time.monotonic())
        try:
            return self.run_part(kernel, label, part, first, numbers, self.stop, tally, factory)
        finally:
            pending.ended.append(time.monotonic())

    def _tracking(self, factory: MachineFactory) -> MachineFactory:
        """FACTORY, whose machines cancel() can stop."""
        def make(name: str) -> Machine:
            m = factory(name)
            with self._lock:
                self._machines.append(m)
            return m
        return make

    def cancel(self) -> None:
        """Stop every part (at its next poll or boot) and every machine that is up; wait for them."""
        self.stop.set()
        with self._lock:
            machines = list(self._machines)
        for m in machines:
            try:
                m.stop()
            except Exception:       # noqa: BLE001 -- stopping is best effort; the runner reaps too
                pass
        for p in self.pending:
            for f in p.futures:
                f.cancel()
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        """Done with the pool: cancel what is still running (the caller is leaving early), then wait."""
        if any(not p.done() for p in self.pending):
            self.cancel()
        else:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> "BootPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
