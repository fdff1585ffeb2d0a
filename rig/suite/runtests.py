"""`kproto run-tests`: the guest-test suite on the reference overlay and on a target, no VM.

Targets: `host` = the host kernel's overlayfs (harness target `overlay`, run in-process on the host),
`ref` = the reference overlay itself (ref vs ref: a check that the suite and the reference are
deterministic). The reference is always run too, and the target is compared with it test by test.

Exit status: 0 every test matches or is a known divergence; 1 unexplained divergences; 3 an
infrastructure error (a test could not be run on one side, timed out, or the rig failed).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rig.analysis import compare
from rig.analysis.known import load_known
from rig.report import junit, ktap as report_ktap, terminal as report_terminal
from rig.guest import programs as guest_build
from rig.core import paths
from rig.core.progress import plural
from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED, InfraError, MissingTool
from rig.guest import harness

TARGETS = {"host": "overlay", "ref": "ref"}


@dataclass
class SuiteRun:
    target: str
    reference: dict[str, dict] = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)
    verdicts: list[compare.TestVerdict] = field(default_factory=list)
    duration_s: float = 0.0

    def exit_code(self) -> int:
        if any(v.status == "error" for v in self.verdicts):
            return EXIT_INFRA
        if compare.unexplained(self.verdicts):
            return EXIT_REGRESSED
        return EXIT_CLEAN

    def as_json(self) -> dict:
        return {"target": self.target, "counts": compare.counts(self.verdicts),
                "duration_s": round(self.duration_s, 3),
                "tests": [v.as_target_json() for v in self.verdicts]}


def check_ref_available(python: str | None = None) -> None:
    if python is None and importlib.util.find_spec("overlay_ref") is None and not (
            paths.REPO / "overlay_ref" / "__main__.py").exists():
        raise MissingTool("the reference overlay (overlay_ref) is not available: install kproto with its package")


def _check_root() -> None:
    if os.geteuid() != 0:
        raise InfraError("run-tests mounts overlay and FUSE filesystems: run it as root")


def result_lines(label: str, total: int, progress: Callable[[str], None]) -> Callable[[dict], None]:
    """The harness's event callback for one side of the run: a line per finished test with n/N of the
    side's tests done, as `kproto test` prints them ("[reference] 3/36 name: status")."""
    done = 0

    def emit(ev: dict) -> None:
        nonlocal done
        if ev.get("event") == "result":
            done += 1
            extra = f" ({ev['error']})" if ev.get("error") else ""
            progress(f"[{label}] {done}/{total} {ev['name']}: {ev['status']}{extra}")
    return emit


def run_suite(target: str, pattern: str | None = None, timeout: float | None = None,
              progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
              tests_dir: Path | None = None, work_root: Path | None = None,
              ref_python: str | None = None) -> SuiteRun:
    """Build the programs, run the selected tests on the reference and on TARGET, compare."""
    if target not in TARGETS:
        raise InfraError(f"unknown target {target!r} (one of {', '.join(TARGETS)})")
    _check_root()
    check_ref_available(ref_python)
    tests_dir = Path(tests_dir) if tests_dir else paths.GUEST_TESTS
    try:
        specs = harness.select(harness.load_specs(tests_dir), pattern)
    except harness.SpecError as e:
        raise InfraError(f"bad guest test spec: {e}") from None
    if not specs:
        raise InfraError(f"no guest test matches -k {pattern!r}")
    known = load_known(tests_dir / "known_divergences.toml")
    t0 = time.monotonic()
    bins = guest_build.build(tests_dir)
    run = SuiteRun(target=target)
    work = Path(tempfile.mkdtemp(prefix="kproto-run-tests-", dir=work_root))
    ref_python = ref_python or sys.executable
    try:
        for label, htarget, store in (("reference", "ref", run.reference),
                                      (target, TARGETS[target], run.results)):
            progress(f"[{label}] running {plural(len(specs), 'tests')}")
            res = harness.run_tests(bins, tests_dir, work / label, htarget, pattern, timeout,
                                    result_lines(label, len(specs), progress), ref_python)
            store.update({r["name"]: r for r in res})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.verdicts = compare.compare_target(run.reference, run.results, known)
    run.duration_s = time.monotonic() - t0
    return run


def run(target: str, pattern: str | None = None, json_path: Path | None = None,
        junit_path: Path | None = None, ktap: bool = False, timeout: float | None = None,
        echo: Callable[[str], None] = print, progress: Callable[[str], None] | None = None) -> int:
    """The whole command: run, print the table (or KTAP), write JSON / JUnit; returns the exit code.
    PROGRESS: where the per-test lines go (default: stderr, as run_suite's)."""
    suite = run_suite(target, pattern, timeout, progress=progress or (lambda m: print(m, file=sys.stderr)))
    cols = ("reference", f"patched:{target}")
    if ktap:
        echo(report_ktap.to_ktap(suite.verdicts, columns=("reference", "patched")).rstrip("\n"))
    else:
        echo(report_terminal.format_table(suite.verdicts, columns=cols))
    if json_path:
        Path(json_path).write_text(json.dumps(suite.as_json(), indent=2) + "\n")
    if junit_path:
        Path(junit_path).write_text(junit.to_junit(suite.verdicts, f"kproto.run-tests.{target}",
                                                     columns=("reference", "patched")))
    return suite.exit_code()
