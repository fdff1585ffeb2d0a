"""Run the guest-test suite on a kernel under test, inside a machine (QEMU), test by test.

The host decides when the next test starts. The harness (rig/guest/harness.py, staged into the run
directory as guest/harness.zip) runs in step mode: after every test it prints the result, writes a
barrier marker to the kernel log and waits for the host's `next`. Between two tests the host runs the barrier:

1. wait until the marker reached the console (everything the kernel printed during the test is out)
   and the console has been quiet for a moment;
2. scan the console since the test started for splats, and read the kernel's own state that the
   harness reported after the test: `debug_locks` (0: lockdep turned itself off) and the taint mask;
3. any new splat, new taint bit or lockdep turned off: the rest of the tests run on a fresh boot
   (lockdep reports only the first problem of a boot, docs/design.md §1); otherwise `next`.

A test is hung only when it really did not finish: the harness reported `timeout` (its program was
killed after the spec's timeout) or no result came within the timeout plus a margin. Then the
blocked tasks are dumped (sysrq-w), the machine is killed and the rest runs on a fresh boot. When
MAX_SAME_HANGS tests of one kernel run hang with the same blocked-task signature, the runner stops and
reports the rest as `not run: same deadlock as T`.

The machine is injected (`machine_factory`): QemuMachine (rig/suite/machine.py) here, a replaying fake in
the tests, so this state machine is tested without QEMU. Layout: runner.py (boots until every test has a
result), session.py (one boot: events and the barrier), machine.py (the seam), results.py (KernelRun),
timing.py (the waits).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Callable

from rig.analysis import splats as splatmod
from rig.core.errors import BootError
from rig.core.progress import plural
from rig.kernel.build import Kernel
from rig.suite.machine import MachineFactory, QemuMachine
from rig.suite.results import KernelRun, error_result
from rig.suite.session import BootSession, HangTracker
from rig.suite.timing import TIMING, Timing

MAX_BOOTS = 12
MAX_SAME_HANGS = 3


# ---------------------------------------------------------------- one kernel, many boots

class BootNumbers:
    """The boot numbers of one kernel (its machines are named LABEL-N), unique across the runs of that
    kernel that go on side by side (rig/suite/boots.py)."""

    def __init__(self, first: int = 1) -> None:
        self._next = first
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            n, self._next = self._next, self._next + 1
            return n

    @property
    def taken(self) -> int:
        with self._lock:
            return self._next - 1


class Tally:
    """n/N in the progress lines: one per kernel run, shared by its parts that go on side by side."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self._lock = threading.Lock()

    def finished(self) -> None:
        with self._lock:
            self.done += 1


def run_kernel_suite(kernel: Kernel, label: str, run_dir: Path, names: list[str], timeouts: dict[str, float],
                     progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                     boot_timeout: float = 120.0, machine_factory: MachineFactory | None = None,
                     timing: Timing = TIMING, first_boot: int = 1, numbers: BootNumbers | None = None,
                     stop: threading.Event | None = None, tally: Tally | None = None) -> KernelRun:
    """Run NAMES (in that order) on KERNEL; as many boots as the barrier asks for, until every test
    has a result. BootError when the first boot fails (the caller decides whose fault that is).
    The first boot is LABEL-FIRST_BOOT, later ones take NUMBERS (a counter shared with the other runs of
    this kernel going on at the same time). STOP set: the run ends at its next poll or boot, as a
    KeyboardInterrupt carrying the partial run (whatever the stopped machine made of the run in flight)."""
    factory = machine_factory or QemuMachine.factory(kernel, run_dir)
    numbers = numbers or BootNumbers(first_boot + 1)
    run = KernelRun(label=label, kernel=kernel)
    try:
        return _run_suite(run, factory, names, timeouts, progress, boot_timeout, timing, first_boot, numbers,
                          stop, tally or Tally(len(names)))
    except KeyboardInterrupt as e:
        e.partial_run = run                # type: ignore[attr-defined]  # for the partial report
        raise
    except BaseException as e:
        if stop is None or not stop.is_set():
            raise
        ki = KeyboardInterrupt()           # cancelled: whatever failed, the machine was stopped under it
        ki.partial_run = run               # type: ignore[attr-defined]
        raise ki from e


def _run_suite(run: KernelRun, factory: MachineFactory, names: list[str], timeouts: dict[str, float],
               progress: Callable[[str], None], boot_timeout: float, timing: Timing, first_boot: int,
               numbers: BootNumbers, stop: threading.Event | None, tally: Tally) -> KernelRun:
    remaining = list(names)
    hangs = HangTracker(MAX_SAME_HANGS)
    t_start = time.monotonic()
    consoles: list[str] = []
    while remaining and run.boots < MAX_BOOTS:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        run.boots += 1
        machine = factory(f"{run.label}-{first_boot if run.boots == 1 else numbers.take()}")
        run.console_logs.append(machine.console_log)
        done = len(names) - len(remaining)
        progress(f"[{run.label}] boot {machine.name}: booting" +
                 (f" ({done}/{len(names)} tests done, {len(remaining)} to go)" if done else ""))
        try:
            try:
                boot_s = machine.boot(boot_timeout, on_init=_init_ready(progress, run.label, machine.name))
            except BootError as e:
                if run.boots == 1:
                    e.console = machine.console_since(0)     # type: ignore[attr-defined]  # for the report
                    raise
                for n in remaining:   # a later boot failed: the rest cannot be tested
                    run.results[n] = error_result(n, "error", "guest did not boot again after a failure")
                remaining = []
                break
            if run.boots == 1:
                run.boot_s = boot_s
            progress(f"[{run.label}] boot {machine.name}: SSH ready after {boot_s:.1f} s ({machine.accel}); "
                     f"running {plural(len(remaining), 'tests')}" + (f" ({done}/{len(names)} done)" if done else ""))
            remaining = BootSession(machine, run, remaining, timeouts, progress, timing, hangs, tally, stop).run()
        finally:
            machine.stop()
            consoles.append(machine.console_since(0))
        if hangs.gave_up:
            first = hangs.first
            for n in remaining:
                run.results[n] = error_result(n, "error", f"not run: same deadlock as {first}")
            msg = (f"{MAX_SAME_HANGS} tests hung with the same blocked tasks ({hangs.signature}: "
                   f"{', '.join(hangs.tests)})")
            if remaining:
                msg += f"; stopped: {plural(len(remaining), 'tests')} not run: same deadlock as {first}"
            run.events.append(msg)
            run.deadlock = {"signature": hangs.signature, "hung": hangs.tests, "not_run": list(remaining)}
            progress(f"[{run.label}] {msg}")
            remaining = []
            break
    for n in remaining:
        run.results.setdefault(n, error_result(n, "error", "not run: too many guest reboots"))
    run.tests_s = time.monotonic() - t_start - run.boot_s
    run.console = "".join(consoles)
    run.splats = splatmod.scan_text(run.console)
    return run


def _init_ready(progress: Callable[[str], None], label: str, name: str) -> Callable[[float], None]:
    """The boot's stage line for when the guest's init is up (SSH comes next)."""
    def say(seconds: float) -> None:
        progress(f"[{label}] boot {name}: init ready after {seconds:.1f} s; waiting for SSH")
    return say
