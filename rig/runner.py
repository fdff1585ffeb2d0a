"""Run the guest-test suite on a kernel under test, inside QEMU, over SSH.

The harness (rig/guest/harness.py, staged into the run directory) streams one JSON line per event.
The host watches the stream: a test that produces no result in time is a hang (blocked-task stacks
are collected with sysrq-w, the VM is killed); a splat, an oops or a panic during a test is attributed
to that test and the remaining tests continue on a freshly booted VM, because lockdep reports only
the first problem of a boot (DESIGN.md §1).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import splats as splatmod
from .build import Kernel
from .errors import BootError, GuestError
from .ssh import SSHError, GuestSSH
from .vm import SCRATCH_MNT, VM

GUEST_PYTHON = "/usr/bin/python3"
HANG_MARGIN_S = 20.0       # on top of the test's own timeout: the hung-task detector fires at 10 s
MAX_BOOTS = 12


@dataclass
class KernelRun:
    label: str
    kernel: Kernel
    results: dict[str, dict] = field(default_factory=dict)
    splats: list[splatmod.Splat] = field(default_factory=list)
    test_splats: dict[str, list[str]] = field(default_factory=dict)   # test -> splat titles seen during it
    boots: int = 0
    boot_s: float = 0.0            # first boot, QEMU start to first SSH command
    tests_s: float = 0.0
    console_logs: list[Path] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def console_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.console_logs if p.exists())


def _error_result(name: str, status: str, error: str) -> dict:
    return {"name": name, "status": status, "observations": {}, "exit_code": None, "signal": None,
            "upper": {}, "stderr": "", "duration_s": 0.0, "error": error, "lower_modified": False}


def run_kernel_suite(kernel: Kernel, label: str, run_dir: Path, names: list[str], timeouts: dict[str, float],
                     progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                     boot_timeout: float = 120.0) -> KernelRun:
    """Run the staged suite (run_dir/guest) on KERNEL; one or more boots until every test has a result."""
    run = KernelRun(label=label, kernel=kernel)
    try:
        return _run_suite(run, kernel, label, run_dir, names, timeouts, progress, boot_timeout)
    except KeyboardInterrupt as e:
        e.partial_run = run            # what finished before Ctrl-C/SIGTERM, for the partial report
        raise


def _run_suite(run: KernelRun, kernel: Kernel, label: str, run_dir: Path, names: list[str],
               timeouts: dict[str, float], progress: Callable[[str], None], boot_timeout: float) -> KernelRun:
    remaining = list(names)
    t_start = time.monotonic()
    while remaining and run.boots < MAX_BOOTS:
        run.boots += 1
        vm = VM(bzimage=kernel.bzimage, run_dir=run_dir, name=f"{label}-{run.boots}")
        run.console_logs.append(vm.console_log)
        with vm:
            try:
                boot_s = vm.wait_ready(boot_timeout)
            except BootError:
                if run.boots == 1:
                    raise
                for n in remaining:   # a later boot failed: the rest cannot be tested
                    run.results[n] = _error_result(n, "error", "guest did not boot again after a failure")
                break
            if run.boots == 1:
                run.boot_s = boot_s
            progress(f"[{label}] boot {run.boots}: SSH ready after {boot_s:.1f} s ({vm.accel}); "
                     f"running {len(remaining)} test(s)")
            remaining = _run_batch(vm, run, remaining, timeouts, progress)
    for n in remaining:
        run.results.setdefault(n, _error_result(n, "error", "not run: too many guest reboots"))
    run.tests_s = time.monotonic() - t_start - run.boot_s
    run.splats = splatmod.scan_text(run.console_text())
    return run


def _run_batch(vm: VM, run: KernelRun, names: list[str], timeouts: dict[str, float],
               progress: Callable[[str], None]) -> list[str]:
    """Run NAMES in this boot. Returns the tests still to run (after a hang, crash or splat)."""
    names_file = vm.run_dir / "guest" / f"names-{vm.name}.txt"
    names_file.write_text("\n".join(names) + "\n")
    guest = f"{SCRATCH_MNT}/guest"
    cmd = (f"cd / && exec {GUEST_PYTHON} -S {guest}/harness.py --bins {guest}/bins --tests {guest}/tests "
           f"--work /run/kproto-work --target overlay --names {guest}/names-{vm.name}.txt")
    state = {"current": None, "since": time.monotonic(), "offset": len(vm.console_text()), "stop": False}
    done: list[str] = []

    def on_line(line: str) -> None:
        line = line.strip()
        if not line.startswith("{"):
            return
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            return
        if ev.get("event") == "start":
            state.update(current=ev["name"], since=time.monotonic(), offset=len(vm.console_text()))
        elif ev.get("event") == "result":
            name = ev["name"]
            run.results[name] = ev
            done.append(name)
            seg = vm.console_since(state["offset"])
            titles = [s.title for s in splatmod.scan_text(seg)]
            if titles:
                run.test_splats.setdefault(name, []).extend(titles)
            status = ev.get("status")
            progress(f"[{run.label}] {name}: {status}" + (f"  (splat: {'; '.join(titles)})" if titles else ""))
            if status == "timeout":
                # the harness gave up on the program; if it is stuck in the kernel, the guest is wedged
                state["wedged"] = (name, state["offset"])
            state.update(current=None, since=time.monotonic())
            if titles or status == "timeout":
                state["stop"] = True   # fresh boot for the rest: lockdep is off after its first report

    def on_idle(idle: float) -> bool:
        cur = state["current"]
        limit = timeouts.get(cur, 20.0) + HANG_MARGIN_S if cur else 60.0
        return time.monotonic() - state["since"] > limit or state["stop"] or not vm.alive()

    error: str | None = None
    try:
        rc, err = _stream(vm, cmd, on_line, on_idle, state)
        if rc != 0 and state["current"] is None and not done:
            error = f"guest harness exited with status {rc}: {err.strip()[-300:]}"
    except SSHError as e:
        error = str(e)
    if state.get("wedged") and vm.alive():
        name, offset = state["wedged"]
        progress(f"[{run.label}] {name}: timed out; collecting blocked tasks (sysrq-w) before the next boot")
        res = run.results[name]
        res["blocked_tasks"] = _collect_blocked_tasks(vm)
        titles = [s.title for s in splatmod.scan_text(vm.console_since(offset))]
        run.test_splats[name] = titles
        res["error"] = f"hung: {res.get('error') or 'timed out'}" + (f"; splats: {'; '.join(titles)}" if titles else "")
        run.events.append(f"{name}: {res['error']}")
    cur = state["current"]
    if cur is not None and cur not in run.results:
        silent = "timed out" in (error or "") or "no output" in (error or "")
        if silent and vm.alive():
            progress(f"[{run.label}] {cur}: no result after {timeouts.get(cur, 20.0) + HANG_MARGIN_S:.0f} s, "
                     "collecting blocked tasks (sysrq-w) and killing the VM")
            blocked = _collect_blocked_tasks(vm)
            reason = f"hung: no result within {timeouts.get(cur, 20.0) + HANG_MARGIN_S:.0f} s (guest deadlock?)"
            status = "timeout"
        else:
            # the connection ended without a result: a panicking guest takes a moment to power off
            deadline = time.monotonic() + 5
            while vm.alive() and time.monotonic() < deadline:
                if any(splatmod.is_fatal(x) for x in splatmod.scan_text(vm.console_since(state["offset"]))):
                    break
                time.sleep(0.2)
            fatal = [x.title for x in splatmod.scan_text(vm.console_since(state["offset"])) if splatmod.is_fatal(x)]
            if fatal or not vm.alive():
                reason = f"the guest died during this test ({fatal[0] if fatal else 'QEMU exited'})"
            else:
                reason = f"lost contact with the guest: {error or 'the SSH session ended without a result'}"
            status = "error"
        seg = vm.console_since(state["offset"])
        titles = [s.title for s in splatmod.scan_text(seg)]
        run.test_splats.setdefault(cur, []).extend(titles)
        run.results[cur] = _error_result(cur, status, reason + (f"; splats: {'; '.join(titles)}" if titles else ""))
        if status == "timeout":
            run.results[cur]["blocked_tasks"] = blocked
        done.append(cur)
        progress(f"[{run.label}] {cur}: {status} ({reason})")
        run.events.append(f"{cur}: {reason}")
    elif error and not done:
        raise GuestError(f"guest test harness failed on the {run.label} kernel: {error}",
                         vm.console_tail())
    return [n for n in names if n not in run.results]


def _stream(vm: VM, cmd: str, on_line, on_idle, state) -> tuple[int, str]:
    err: list[str] = []
    rc = vm.ssh.stream(cmd, on_line, timeout=3600, idle_timeout=1.0, stderr=err.append,
                       on_idle=lambda idle: on_idle(idle))
    return rc, "".join(err)


def _collect_blocked_tasks(vm: VM) -> str:
    """sysrq-w: dump the blocked (D state) tasks to the console and return that part of the console.
    Through the QEMU monitor's keyboard first (works when userspace and sshd are wedged), then via a
    fresh SSH connection."""
    offset = len(vm.console_text())
    vm.sysrq("w")
    for attempt in range(2):
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            text = vm.console_since(offset)
            if "Show Blocked State" in text:
                time.sleep(1.5)            # let the whole dump reach the console
                text = vm.console_since(offset)
                return text[text.index("Show Blocked State"):][:20000]
            time.sleep(0.2)
        if attempt == 0:
            try:
                other = GuestSSH(port=vm.port, key=vm.ssh.key, known_hosts=vm.ssh.known_hosts)
                other.connect(timeout=5)
                other.run("echo w > /proc/sysrq-trigger", timeout=10)
                other.close()
            except (SSHError, OSError):
                pass
    return ""
