"""A replaying machine for the runner's state machine: no QEMU, real time at a small scale.

A FakeKernel says what each test does on each boot (FakeTest): how long it takes, what it prints on the
console (before its result, or late: after the result line but before the harness's barrier marker),
how it changes the kernel's state (lockdep off, taint), or whether it hangs, panics the guest or drops
the SSH connection. FakeMachine plays the harness's step-mode protocol (start/result events, the
barrier marker on the console, waiting for `next`) exactly as rig/guest/harness.py does in a guest.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rig.core.errors import BootError
from rig.machine.ssh import ChannelClosed
from rig.suite.timing import Timing

# the runner's waits at a small scale, for the fake machine
FAST = Timing(hang_margin=1.5, idle_limit=10.0, barrier_max=3.0, quiet=0.02, poll=0.02, death_grace=0.3)

LOGS = Path(__file__).resolve().parent / "data" / "logs"


def log(name: str) -> str:
    return (LOGS / name).read_text()


@dataclass
class FakeTest:
    status: str = "ok"                   # the harness's status for a test that finishes
    observations: dict = field(default_factory=lambda: {"data": "x"})
    duration: float = 0.0
    console: str = ""                    # printed while the test runs
    late_console: str = ""               # printed after the result line, before the barrier marker
    late_delay: float = 0.0
    lockdep_off: bool = False            # debug_locks becomes 0 (with or without a console line)
    taint: int = 0                       # taint bits added
    behaviour: str = "finish"            # finish | hang | panic | drop
    blocked: str = ""                    # sysrq-w dump while hung


# (test name, boot number of this kernel, FakeMachine) -> what the test does
Script = Callable[[str, int, "FakeMachine"], FakeTest]


class FakeKernel:
    def __init__(self, script: Script | dict[str, FakeTest] | None = None, boot_fails: bool = False,
                 boot_console: str = "") -> None:
        if isinstance(script, dict):
            table = script
            script = lambda name, boot, m: table.get(name, FakeTest())
        self.script: Script = script or (lambda name, boot, m: FakeTest())
        self.boot_fails = boot_fails
        self.boot_console = boot_console
        self.machines: list[FakeMachine] = []
        self.ran: list[tuple[str, str]] = []          # (machine name, test) in order

    def factory(self, tmp: Path) -> Callable[[str], "FakeMachine"]:
        def make(name: str) -> FakeMachine:
            suffix = name.rsplit("-", 1)[-1]        # LABEL-N: the runner numbers boots (not thread timing)
            m = FakeMachine(self, name, tmp / f"console-{name}.log",
                            int(suffix) if suffix.isdigit() else len(self.machines) + 1)
            self.machines.append(m)
            return m
        return make


class FakeMachine:
    accel = "fake"

    def __init__(self, kernel: FakeKernel, name: str, console_log: Path, boot_no: int) -> None:
        self.k, self.name, self.console_log, self.boot_no = kernel, name, console_log, boot_no
        self.console = ""
        self.debug_locks = 1
        self.tainted = 0
        self.dead_at: float | None = None
        self.stopped = False
        self.blocked = ""
        self.sysrq_calls = 0
        self._pending: list[tuple[float, str, str]] = []     # (when, "console"|"line"|"close", text)

    # -- Machine protocol
    def boot(self, timeout: float, on_init: Callable[[float], None] | None = None) -> float:
        if self.k.boot_fails:
            self.console = "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n"
            raise BootError(f"QEMU exited before init was ready; console tail:\n{self.console}")
        self.console = "[    0.000000][    T0] Linux version 6.12.117 (fake)\n" + self.k.boot_console
        return 0.01

    def console_size(self) -> int:
        self._flush()
        return len(self.console)

    def console_since(self, offset: int) -> str:
        self._flush()
        return self.console[offset:]

    def console_tail(self) -> str:
        return "\n".join(self.console.splitlines()[-25:])

    def alive(self) -> bool:
        self._flush()
        dead = self.dead_at is not None and time.monotonic() >= self.dead_at
        return not dead and not self.stopped

    def open_harness(self, names: list[str]) -> "FakeChannel":
        return FakeChannel(self, names)

    def blocked_tasks(self) -> str:
        self.sysrq_calls += 1
        self.console += self.blocked
        return self.blocked

    def stop(self) -> None:
        self.stopped = True

    # -- helpers
    def _flush(self) -> None:
        now = time.monotonic()
        keep = []
        for when, kind, text in self._pending:
            if kind == "console" and when <= now:
                self.console += text
            else:
                keep.append((when, kind, text))
        self._pending = keep


class FakeChannel:
    def __init__(self, m: FakeMachine, names: list[str]) -> None:
        self.m, self.names = m, list(names)
        self.i = 0
        self.lines: list[tuple[float, str]] = []
        self.waiting = False
        self.closed: ChannelClosed | None = None
        self.hung = False
        self.begin: str | None = None
        self.closed_at = 0.0
        self._start_next()

    def _state(self) -> dict:
        return {"debug_locks": self.m.debug_locks, "tainted": self.m.tainted}

    def _start_next(self) -> None:
        now = time.monotonic()
        if self.i >= len(self.names):
            self.lines.append((now, json.dumps({"event": "done"})))
            self.closed = ChannelClosed(0, "")
            return
        name = self.names[self.i]
        self.m.k.ran.append((self.m.name, name))
        self.lines.append((now, json.dumps({"event": "start", "name": name, "kernel": self._state()})))
        self.m.console += f"[    1.000000][  T100] kproto: start {name}\n"
        self.begin = name        # the test itself starts once the host has read its start event

    def _run(self, name: str) -> None:
        now = time.monotonic()
        t = self.m.k.script(name, self.m.boot_no, self.m)
        end = now + max(t.duration, 0.02)      # after the host took its console offset
        if t.behaviour == "hang":
            self.m._pending.append((end, "console", t.console))
            self.m.blocked = t.blocked
            self.hung = True
            return
        if t.behaviour == "panic":
            self.m._pending.append((end, "console", t.console))
            self.m.dead_at = end                 # QEMU exits once the panic is printed
            self.closed_at = end
            self.closed = ChannelClosed(None, "", dropped=True)
            return
        if t.behaviour == "drop":
            self.m._pending.append((end, "console", t.console))
            self.closed_at = end
            self.closed = ChannelClosed(None, "Connection reset by peer", dropped=True)
            return
        self.m._pending.append((end, "console", t.console))
        if t.lockdep_off:
            self.m.debug_locks = 0
        self.m.tainted |= t.taint
        marker = f"kproto: barrier {name} {self.m.boot_no}-{self.i}"
        res = {"event": "result", "name": name, "status": t.status, "observations": dict(t.observations),
               "exit_code": 0 if t.status == "ok" else None, "signal": None, "upper": {}, "stderr": "",
               "duration_s": t.duration, "error": None if t.status == "ok" else f"{t.status}",
               "lower_modified": False, "diagnostics": [], "kernel": self._state(), "barrier": marker}
        self.lines.append((end, json.dumps(res)))
        self.m._pending.append((end + t.late_delay, "console", t.late_console + f"[    1.000000][  T100] {marker}\n"))
        self.i += 1
        self.waiting = self.i < len(self.names)
        if not self.waiting:
            self.lines.append((end, json.dumps({"event": "done"})))
            self.closed = ChannelClosed(0, "")

    # -- HarnessChannel protocol
    def read_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            self.m._flush()
            if self.lines and self.lines[0][0] <= now:
                line = self.lines.pop(0)[1]
                if self.begin and '"event": "start"' in line:
                    name, self.begin = self.begin, None
                    self._run(name)
                return line
            if not self.lines and self.closed is not None and now >= self.closed_at:
                raise self.closed
            if now >= deadline:
                return None
            time.sleep(0.005)

    def send_line(self, line: str) -> None:
        if not self.waiting:
            return
        self.waiting = False
        if line == "next":
            self._start_next()
        else:
            self.lines.append((time.monotonic(), json.dumps({"event": "stopped"})))
            self.closed = ChannelClosed(0, "")

    def close(self) -> None:
        pass
