"""One boot of the runner (see rig/suite/runner.py for the whole protocol): start the harness on the
remaining tests, follow its events, and run the barrier after each test — wait for the per-test marker on
the console, scan the new console text for splats, read debug_locks and the taint mask, and decide
`next` or a fresh boot; a test that did not finish is hung (sysrq-w dump, signature, HangTracker)."""
from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Callable

from rig.analysis import splats as splatmod
from rig.core.errors import GuestError
from rig.machine.ssh import ChannelClosed
from rig.suite.machine import HarnessChannel, Machine
from rig.suite.results import KernelRun, error_result, hang_signature, taint_letters
from rig.suite.timing import Timing

if TYPE_CHECKING:
    from rig.suite.runner import Tally


class HangTracker:
    """Hangs of one kernel run by blocked-task signature. Tests that pass in between do not reset it:
    with a patch that deadlocks every copy-up, the tests that copy nothing up still pass."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.by_sig: dict[str, list[str]] = {}
        self.signature = ""

    def hung(self, name: str, signature: str) -> None:
        if signature:
            self.by_sig.setdefault(signature, []).append(name)
            if len(self.by_sig[signature]) >= self.limit and not self.signature:
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


class BootSession:
    """One boot: start the harness on the remaining tests, follow its events, run the barrier after each
    test. run() returns the tests still to run (on a fresh boot)."""

    def __init__(self, machine: Machine, run: KernelRun, names: list[str], timeouts: dict[str, float],
                 progress: Callable[[str], None], timing: Timing, hangs: HangTracker, tally: "Tally",
                 stop: threading.Event | None = None) -> None:
        self.m, self.run_, self.names, self.timeouts = machine, run, names, timeouts
        self.say, self.t, self.hangs, self.stop, self.tally = progress, timing, hangs, stop, tally
        self.current: str | None = None
        self.since = time.monotonic()
        self.offset = 0
        self.state_before: dict = {}
        self.done: list[str] = []

    def count(self, extra: int = 0) -> str:
        """n/N in the progress lines: tests of this kernel's run with a result / all of them."""
        return f"{self.tally.done + extra}/{self.tally.total}"

    def _record(self, name: str, res: dict) -> None:
        self.run_.results[name] = res
        self.tally.finished()

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
            self._check_stop()
            try:
                line = chan.read_line(self.t.poll)
            except ChannelClosed as closed:
                self._check_stop()          # the machine was stopped under us: not the test's doing
                return self._closed(closed)
            self._check_stop()
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

    def _check_stop(self) -> None:
        """The run was cancelled (rig/suite/boots.py): end it here, recording nothing about the test in
        flight (its machine may have been stopped under it)."""
        if self.stop is not None and self.stop.is_set():
            raise KeyboardInterrupt

    # -------------------------------------------------------- a test finished: the barrier
    def _finished(self, ev: dict) -> bool:
        """Record the result and run the barrier; False when the rest needs a fresh boot."""
        name = ev["name"]
        self.current = None
        seg = self._settled_console(ev.get("barrier"))
        found = splatmod.scan_text(seg)
        ev["boot"] = self.m.name
        self._record(name, ev)
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
        self.say(f"[{self.run_.label}] {self.count()} {name}: {status}" + (f"  ({'; '.join(reasons)})" if reasons else ""))
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
        self.say(f"[{self.run_.label}] {self.count()} {name}: timed out; collecting blocked tasks (sysrq-w) before the next boot")
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
        self.say(f"[{self.run_.label}] {self.count(1)} {name}: no result after {limit:.0f} s, collecting blocked tasks "
                 "(sysrq-w) and killing the VM")
        dump = self.m.blocked_tasks() if self.m.alive() else ""
        found = splatmod.scan_text(self.m.console_since(self.offset))
        self.run_.test_splats.setdefault(name, []).extend(found)
        reason = f"hung: no result within {limit:.0f} s (guest deadlock?)" + \
            (f"; splats: {'; '.join(s.title for s in found)}" if found else "")
        res = error_result(name, "timeout", reason)
        res["blocked_tasks"] = dump
        res["boot"] = self.m.name
        self._record(name, res)
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
        self._record(cur, res)
        self.say(f"[{self.run_.label}] {self.count()} {cur}: error ({reason})")
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
