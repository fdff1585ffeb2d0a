"""One kernel's run of the suite as data: KernelRun (per-test results, splats per test, boots, console,
a deadlock when the runner gave up) with its JSON codec for the result cache, and the small pure helpers
the barrier uses to name what happened (taint letters, a hang's blocked-task signature, a test's outcome)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from rig.analysis import splats as splatmod
from rig.kernel.build import Kernel

TAINT_FLAGS = "PFSRMBUDAWCIOELKXTN"   # bit i of /proc/sys/kernel/tainted -> letter (kernel/panic.c)


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


def merge_runs(label: str, kernel: Kernel | None, runs: list[KernelRun], wall_s: float | None = None) -> KernelRun:
    """One kernel's run of a test list made of RUNS that went on side by side (rig/suite/boots.py), in
    the list's order: results, splats, boots, consoles and events added up; boot_s is the first run's
    first boot; tests_s the WALL_S they took together (default: the runs' sum) less that boot."""
    out = KernelRun(label=label, kernel=kernel)
    for r in runs:
        out.results.update(r.results)
        out.splats += r.splats
        for n, v in r.test_splats.items():
            out.test_splats.setdefault(n, []).extend(v)
        out.boots += r.boots
        out.console_logs += r.console_logs
        out.events += r.events
        out.console += r.console
        if r.deadlock is not None:
            out.deadlock = r.deadlock if out.deadlock is None else \
                {**out.deadlock, "hung": out.deadlock["hung"] + r.deadlock["hung"],
                 "not_run": out.deadlock["not_run"] + r.deadlock["not_run"]}
    out.boot_s = runs[0].boot_s if runs else 0.0
    out.tests_s = (wall_s - out.boot_s) if wall_s is not None else sum(r.tests_s for r in runs)
    return out


def renumber_boots(run: KernelRun, take) -> KernelRun:
    """A cached RUN's boots renamed LABEL-N with numbers from TAKE() (this run's counter), in the order
    its results name them, so they never collide with the boots of this run. Every boot takes a number,
    also one that ran no test."""
    names: dict[str, str] = {}
    for res in run.results.values():
        b = res.get("boot")
        if b and b not in names:
            names[b] = f"{run.label}-{take()}"
        if b:
            res["boot"] = names[b]
    for _ in range(run.boots - len(names)):
        take()
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


def outcome_key(result: dict, splats: list[splatmod.Splat]) -> str:
    """What must be the same on every boot of one kernel for a test to be stable: its status, what it
    observed (incl. the upper layer) and the signatures of the splats during it."""
    from rig.analysis.compare import comparable
    h = hashlib.sha256(json.dumps(comparable(result) if result.get("status") == "ok" else {},
                                  sort_keys=True).encode()).hexdigest()[:12]
    sigs = ",".join(sorted({s.signature for s in splats}))
    return f"{result.get('status')}|{h}|{sigs}"
