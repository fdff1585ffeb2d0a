"""Run the guest-test suite on a kernel under test, inside a machine (QEMU), test by test.

The host decides when the next test starts. The harness (rig/guest/harness.py, staged into the run
directory) runs in step mode: after every test it prints the result, writes a barrier marker to the
kernel log and waits for the host's `next`. Between two tests the host runs the barrier:

1. wait until the marker reached the console (everything the kernel printed during the test is out)
   and the console has been quiet for a moment;
2. scan the console since the test started for splats, and read the kernel's own state that the
   harness reported after the test: `debug_locks` (0: lockdep turned itself off) and the taint mask;
3. any new splat, new taint bit or lockdep turned off: the rest of the tests run on a fresh boot
   (lockdep reports only the first problem of a boot, DESIGN.md §1); otherwise `next`.

A test is hung only when it really did not finish: the harness reported `timeout` (its program was
killed after the spec's timeout) or no result came within the timeout plus a margin. Then the
blocked tasks are dumped (sysrq-w), the machine is killed and the rest runs on a fresh boot. When
MAX_SAME_HANGS tests of one kernel run hang with the same blocked-task signature, the runner stops and
reports the rest as `not run: same deadlock as T`.

The machine is injected (`machine_factory`): QemuMachine here, a replaying fake in the tests, so
this state machine is tested without QEMU.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from . import splats as splatmod
from .build import Kernel
from .errors import BootError, GuestError
from .ssh import ChannelClosed, GuestSSH, SSHError
from .vm import SCRATCH_MNT, VM

GUEST_PYTHON = "/usr/bin/python3"
MAX_BOOTS = 12
MAX_SAME_HANGS = 3
TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"   # bit i of /proc/sys/kernel/tainted -> letter (kernel/panic.c)


@dataclass(frozen=True)
class Timing:
    """The runner's waits (seconds); the fake machine's tests use short ones."""
    hang_margin: float = 20.0     # on top of the test's own timeout (the hung-task detector fires at 10 s)
    idle_limit: float = 60.0      # no test started and nothing heard: the harness is stuck
    barrier_max: float = 10.0     # the marker must reach the console within this
    quiet: float = 0.1            # console unchanged this long after the marker
    poll: float = 0.2
    death_grace: float = 5.0      # a panicking guest takes a moment to print and power off


TIMING = Timing()


# ---------------------------------------------------------------- the machine seam

class HarnessChannel(Protocol):
    def read_line(self, timeout: float) -> str | None: ...   # None: nothing yet; ChannelClosed at the end
    def send_line(self, line: str) -> None: ...
    def close(self) -> None: ...


class Machine(Protocol):
    name: str
    accel: str
    console_log: Path

    def boot(self, timeout: float) -> float: ...            # seconds to the first command; BootError
    def console_size(self) -> int: ...
    def console_since(self, offset: int) -> str: ...
    def console_tail(self) -> str: ...
    def alive(self) -> bool: ...
    def open_harness(self, names: list[str]) -> HarnessChannel: ...
    def blocked_tasks(self) -> str: ...                      # sysrq-w dump ("" if none came)
    def stop(self) -> None: ...


MachineFactory = Callable[[str], Machine]


class QemuMachine:
    """The real machine: rig/vm.py's QEMU guest, the harness over a paramiko channel."""

    def __init__(self, kernel: Kernel, run_dir: Path, name: str) -> None:
        self.vm = VM(bzimage=kernel.bzimage, run_dir=run_dir, name=name)
        self.name = name
        self.console_log = self.vm.console_log

    @property
    def accel(self) -> str:
        return self.vm.accel

    def boot(self, timeout: float) -> float:
        self.vm.start()
        return self.vm.wait_ready(timeout)

    def console_size(self) -> int:
        return len(self.vm.console_text())

    def console_since(self, offset: int) -> str:
        return self.vm.console_since(offset)

    def console_tail(self) -> str:
        return self.vm.console_tail()

    def alive(self) -> bool:
        return self.vm.alive()

    def open_harness(self, names: list[str]) -> HarnessChannel:
        names_file = self.vm.run_dir / "guest" / f"names-{self.name}.txt"
        names_file.write_text("\n".join(names) + "\n")
        guest = f"{SCRATCH_MNT}/guest"
        cmd = (f"cd / && exec {GUEST_PYTHON} -S {guest}/harness.py --bins {guest}/bins --tests {guest}/tests "
               f"--work /run/kproto-work --target overlay --names {guest}/names-{self.name}.txt "
               f"--step --kernel-state")
        assert self.vm.ssh is not None
        try:
            return self.vm.ssh.open_stream(cmd)
        except SSHError as e:
            raise GuestError(f"could not start the guest test harness: {e}", self.vm.console_tail())

    def blocked_tasks(self) -> str:
        """sysrq-w: dump the blocked (D state) tasks to the console and return that part of it. Through
        the QEMU monitor's keyboard first (works when userspace and sshd are wedged), then over SSH."""
        offset = self.console_size()
        self.vm.sysrq("w")
        for attempt in range(2):
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                text = self.vm.console_since(offset)
                if "Show Blocked State" in text:
                    time.sleep(1.5)            # let the whole dump reach the console
                    text = self.vm.console_since(offset)
                    return text[text.index("Show Blocked State"):][:20000]
                time.sleep(0.2)
            if attempt == 0 and self.vm.ssh is not None:
                try:
                    other = GuestSSH(port=self.vm.port, key=self.vm.ssh.key, known_hosts=self.vm.ssh.known_hosts)
                    other.connect(timeout=5)
                    other.run("echo w > /proc/sysrq-trigger", timeout=10)
                    other.close()
                except (SSHError, OSError):
                    pass
        return ""

    def stop(self) -> None:
        self.vm.stop()


# ---------------------------------------------------------------- results

@dataclass
class KernelRun:
    label: str
    kernel: Kernel | None
    results: dict[str, dict] = field(default_factory=dict)
    splats: list[splatmod.Splat] = field(default_factory=list)
    test_splats: dict[str, list[splatmod.Splat]] = field(default_factory=dict)   # test -> splats during it
    boots: int = 0
    boot_s: float = 0.0            # first boot, QEMU start to first SSH command
    tests_s: float = 0.0
    console_logs: list[Path] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    console: str = ""              # every boot's console, concatenated (kept after the run dir is gone)
    deadlock: dict | None = None   # {"signature", "hung": [tests], "not_run": [tests]} when it gave up

    def console_text(self) -> str:
        if self.console:
            return self.console
        return "".join(p.read_text(errors="replace") for p in self.console_logs if p.exists())

    def titles(self, name: str) -> list[str]:
        return [s.title for s in self.test_splats.get(name, [])]

    def signatures(self, name: str) -> list[str]:
        return sorted({s.signature for s in self.test_splats.get(name, [])})

    def as_json(self) -> dict:
        return {"results": self.results, "splats": [s.as_json() for s in self.splats],
                "test_splats": {n: [s.as_json() for s in v] for n, v in self.test_splats.items()},
                "boot_s": self.boot_s, "tests_s": self.tests_s, "boots": self.boots, "events": self.events,
                "deadlock": self.deadlock}

    @classmethod
    def from_json(cls, d: dict, kernel: Kernel | None, label: str) -> "KernelRun":
        run = cls(label=label, kernel=kernel, results=d["results"], boot_s=d["boot_s"], tests_s=d["tests_s"],
                  boots=d["boots"], events=d["events"], deadlock=d.get("deadlock"))
        run.splats = [splatmod.Splat.from_json(s) for s in d["splats"]]
        run.test_splats = {n: [splatmod.Splat.from_json(s) for s in v] for n, v in d["test_splats"].items()}
        return run


def error_result(name: str, status: str, error: str) -> dict:
    return {"name": name, "status": status, "observations": {}, "exit_code": None, "signal": None,
            "upper": {}, "stderr": "", "duration_s": 0.0, "error": error, "lower_modified": False}


def taint_letters(mask: int) -> str:
    return "".join(c for i, c in enumerate(TAINT_FLAGS) if mask & (1 << i)) or str(mask)


_SCHED_FRAMES = re.compile(r"^(__)?(schedule|preempt_schedule|io_schedule|rwsem_down|down_|__down|mutex_lock|"
                           r"__mutex_lock|mutex_lock_nested|rt_mutex|percpu_rwsem|__percpu_down|wait_for_|"
                           r"__wait_|do_wait|__x64_sys|x64_sys|do_syscall|entry_SYSCALL|lock_acquire|"
                           r"_raw_spin|__lock|lock_|down_write|down_read|__switch_to|context_switch)")


def hang_signature(dump: str, hung: list[splatmod.Splat]) -> str:
    """What identifies a deadlock across boots: the first non-scheduler frame of every blocked task in
    the sysrq-w dump (addresses and pids dropped), else the hung-task splats' signatures (the detector
    may or may not have fired within a test's timeout, so the dump comes first)."""
    funcs: set[str] = set()
    take = False
    for line in dump.splitlines():
        if "task:" in line and "state:D" in line:
            take = True
            continue
        m = re.search(r"\b([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+", line)
        if take and m and not _SCHED_FRAMES.match(m.group(1)):
            funcs.add(m.group(1))
            take = False
    if funcs:
        return "blocked:" + ",".join(sorted(funcs))
    return "|".join(sorted({s.signature for s in hung}))


# ---------------------------------------------------------------- one kernel, many boots

def run_kernel_suite(kernel: Kernel, label: str, run_dir: Path, names: list[str], timeouts: dict[str, float],
                     progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                     boot_timeout: float = 120.0, machine_factory: MachineFactory | None = None,
                     timing: Timing = TIMING, first_boot: int = 1) -> KernelRun:
    """Run NAMES (in that order) on KERNEL; as many boots as the barrier asks for, until every test
    has a result. BootError when the first boot fails (the caller decides whose fault that is)."""
    factory = machine_factory or (lambda name: QemuMachine(kernel, run_dir, name))
    run = KernelRun(label=label, kernel=kernel)
    try:
        return _run_suite(run, factory, names, timeouts, progress, boot_timeout, timing, first_boot)
    except KeyboardInterrupt as e:
        e.partial_run = run            # type: ignore[attr-defined]  # for the partial report
        raise


def _run_suite(run: KernelRun, factory: MachineFactory, names: list[str], timeouts: dict[str, float],
               progress: Callable[[str], None], boot_timeout: float, timing: Timing, first_boot: int) -> KernelRun:
    remaining = list(names)
    hangs = _HangTracker()
    t_start = time.monotonic()
    consoles: list[str] = []
    while remaining and run.boots < MAX_BOOTS:
        run.boots += 1
        machine = factory(f"{run.label}-{first_boot + run.boots - 1}")
        run.console_logs.append(machine.console_log)
        try:
            try:
                boot_s = machine.boot(boot_timeout)
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
                     f"running {len(remaining)} test(s)")
            remaining = _BootSession(machine, run, remaining, timeouts, progress, timing, hangs).run()
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
                msg += f"; stopped: {len(remaining)} test(s) not run: same deadlock as {first}"
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


class _HangTracker:
    """Hangs of one kernel run by blocked-task signature. Tests that pass in between do not reset it:
    with a patch that deadlocks every copy-up, the tests that copy nothing up still pass."""

    def __init__(self) -> None:
        self.by_sig: dict[str, list[str]] = {}
        self.signature = ""

    def hung(self, name: str, signature: str) -> None:
        if signature:
            self.by_sig.setdefault(signature, []).append(name)
            if len(self.by_sig[signature]) >= MAX_SAME_HANGS and not self.signature:
                self.signature = signature

    @property
    def gave_up(self) -> bool:
        return bool(self.signature)

    @property
    def first(self) -> str:
        return self.by_sig[self.signature][0] if self.signature else ""

    @property
    def tests(self) -> list[str]:
        return list(self.by_sig.get(self.signature, []))


class _BootSession:
    """One boot: start the harness on the remaining tests, follow its events, run the barrier after each
    test. run() returns the tests still to run (on a fresh boot)."""

    def __init__(self, machine: Machine, run: KernelRun, names: list[str], timeouts: dict[str, float],
                 progress: Callable[[str], None], timing: Timing, hangs: _HangTracker) -> None:
        self.m, self.run_, self.names, self.timeouts = machine, run, names, timeouts
        self.say, self.t, self.hangs = progress, timing, hangs
        self.current: str | None = None
        self.since = time.monotonic()
        self.offset = 0
        self.state_before: dict = {}
        self.done: list[str] = []

    def rest(self) -> list[str]:
        return [n for n in self.names if n not in self.run_.results]

    def run(self) -> list[str]:
        chan = self.m.open_harness(self.names)
        try:
            return self._follow(chan)
        finally:
            chan.close()

    def _follow(self, chan: HarnessChannel) -> list[str]:
        while True:
            try:
                line = chan.read_line(self.t.poll)
            except ChannelClosed as closed:
                return self._closed(closed)
            if line is None:
                if self.current is not None:
                    limit = self.timeouts.get(self.current, 20.0) + self.t.hang_margin
                    if time.monotonic() - self.since > limit:
                        return self._hung_silent(limit)
                    if not self.m.alive():
                        return self._closed(ChannelClosed(None, "", dropped=True))
                elif time.monotonic() - self.since > self.t.idle_limit:
                    raise GuestError(f"the guest test harness on {self.m.name} started no test for "
                                     f"{self.t.idle_limit:.0f} s", self.m.console_tail())
                continue
            ev = _event(line)
            if ev is None:
                continue
            kind = ev.get("event")
            if kind == "start":
                self.current = ev["name"]
                self.since = time.monotonic()
                self.offset = self.m.console_size()
                self.state_before = ev.get("kernel") or {}
                if self.state_before.get("debug_locks") == 0 and not self.done:
                    self.run_.events.append(f"{self.m.name}: lockdep was already off when the first test "
                                            "started (a report during boot)")
            elif kind == "result":
                if not self._finished(ev):
                    chan.send_line("stop")
                    return self.rest()
                chan.send_line("next")
            elif kind in ("done", "stopped"):
                return self.rest()

    # -------------------------------------------------------- a test finished: the barrier
    def _finished(self, ev: dict) -> bool:
        """Record the result and run the barrier; False when the rest needs a fresh boot."""
        name = ev["name"]
        self.current = None
        seg = self._settled_console(ev.get("barrier"))
        found = splatmod.scan_text(seg)
        ev["boot"] = self.m.name
        self.run_.results[name] = ev
        self.done.append(name)
        if found:
            self.run_.test_splats.setdefault(name, []).extend(found)
        reasons = [f"splat: {'; '.join(s.title for s in found)}"] if found else []
        after = ev.get("kernel") or {}
        if after.get("debug_locks") == 0 and self.state_before.get("debug_locks") != 0 or \
                (splatmod.lockdep_disabled(seg) and not found):
            reasons.append("lockdep turned itself off")
        new_taint = (after.get("tainted") or 0) & ~(self.state_before.get("tainted") or 0)
        if new_taint:
            reasons.append(f"kernel tainted ({taint_letters(new_taint)})")
        status = ev.get("status")
        if status == "timeout":
            return self._hung_reported(name, ev)
        self.say(f"[{self.run_.label}] {name}: {status}" + (f"  ({'; '.join(reasons)})" if reasons else ""))
        if reasons:
            ev["kernel_events"] = reasons
            if self.rest():
                self.run_.events.append(f"{name} on {self.m.name}: {'; '.join(reasons)}: fresh boot for the rest")
            return False
        return True

    def _settled_console(self, marker: str | None) -> str:
        """The console since the test started, once the harness's barrier marker is on it (everything
        printed before the marker is out) and the console has been quiet for a moment."""
        deadline = time.monotonic() + self.t.barrier_max
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            seg = self.m.console_since(self.offset)      # one read per poll: its length shows new output
            if len(seg) != last:
                last, last_change = len(seg), time.monotonic()
            if (not marker or marker in seg) and time.monotonic() - last_change >= self.t.quiet:
                return seg
            if not self.m.alive():
                break
            time.sleep(min(self.t.quiet / 2, 0.05))
        return self.m.console_since(self.offset)

    # -------------------------------------------------------- hangs
    def _hung_reported(self, name: str, res: dict) -> bool:
        """The harness killed the program after its timeout: the kernel may be wedged. Collect the
        blocked tasks, reboot for the rest."""
        self.say(f"[{self.run_.label}] {name}: timed out; collecting blocked tasks (sysrq-w) before the next boot")
        dump = self.m.blocked_tasks() if self.m.alive() else ""
        found = splatmod.scan_text(self.m.console_since(self.offset))
        self.run_.test_splats[name] = found
        res["blocked_tasks"] = dump
        res["error"] = f"hung: {res.get('error') or 'timed out'}" + \
            (f"; splats: {'; '.join(s.title for s in found)}" if found else "")
        self.run_.events.append(f"{name}: {res['error']}")
        self._count_hang(name, dump, found)
        return False

    def _hung_silent(self, limit: float) -> list[str]:
        name = self.current
        assert name is not None
        self.say(f"[{self.run_.label}] {name}: no result after {limit:.0f} s, collecting blocked tasks "
                 "(sysrq-w) and killing the VM")
        dump = self.m.blocked_tasks() if self.m.alive() else ""
        found = splatmod.scan_text(self.m.console_since(self.offset))
        self.run_.test_splats.setdefault(name, []).extend(found)
        reason = f"hung: no result within {limit:.0f} s (guest deadlock?)" + \
            (f"; splats: {'; '.join(s.title for s in found)}" if found else "")
        res = error_result(name, "timeout", reason)
        res["blocked_tasks"] = dump
        res["boot"] = self.m.name
        self.run_.results[name] = res
        self.run_.events.append(f"{name}: {reason}")
        self._count_hang(name, dump, found)
        self.current = None
        return self.rest()

    def _count_hang(self, name: str, dump: str, found: list[splatmod.Splat]) -> None:
        hung = [s for s in found if s.kind == "hung"]
        self.hangs.hung(name, hang_signature(dump, hung))

    # -------------------------------------------------------- the harness went away
    def _closed(self, closed: ChannelClosed) -> list[str]:
        cur = self.current
        if cur is None:
            if not self.done and closed.rc not in (0, None):
                raise GuestError(f"guest test harness failed on the {self.run_.label} kernel: status {closed.rc}: "
                                 f"{closed.stderr.strip()[-300:]}", self.m.console_tail())
            if not self.done and closed.dropped:
                raise GuestError(f"lost contact with the {self.run_.label} guest before any test ran",
                                 self.m.console_tail())
            return self.rest()
        # the connection ended mid-test: a panicking guest takes a moment to print and power off
        deadline = time.monotonic() + self.t.death_grace
        while self.m.alive() and time.monotonic() < deadline:
            if any(splatmod.is_fatal(x) for x in splatmod.scan_text(self.m.console_since(self.offset))):
                break
            time.sleep(0.1)
        found = splatmod.scan_text(self.m.console_since(self.offset))
        fatal = [x.title for x in found if splatmod.is_fatal(x)]
        if fatal or not self.m.alive():
            reason = f"the guest died during this test ({fatal[0] if fatal else 'QEMU exited'})"
        else:
            why = closed.stderr.strip()[-200:] or ("the SSH connection dropped" if closed.dropped else
                                                   f"the harness exited with status {closed.rc}")
            reason = f"lost contact with the guest: {why}"
        self.run_.test_splats.setdefault(cur, []).extend(found)
        res = error_result(cur, "error", reason + (f"; splats: {'; '.join(s.title for s in found)}" if found else ""))
        res["boot"] = self.m.name
        self.run_.results[cur] = res
        self.say(f"[{self.run_.label}] {cur}: error ({reason})")
        self.run_.events.append(f"{cur}: {reason}")
        self.current = None
        return self.rest()


def _event(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        ev = json.loads(line)
    except json.JSONDecodeError:
        return None
    return ev if isinstance(ev, dict) else None


def outcome_key(result: dict, splats: list[splatmod.Splat]) -> str:
    """What must be the same on every boot of one kernel for a test to be stable: its status, what it
    observed (incl. the upper layer) and the signatures of the splats during it."""
    from .compare import comparable
    h = hashlib.sha256(json.dumps(comparable(result) if result.get("status") == "ok" else {},
                                  sort_keys=True).encode()).hexdigest()[:12]
    sigs = ",".join(sorted({s.signature for s in splats}))
    return f"{result.get('status')}|{h}|{sigs}"
