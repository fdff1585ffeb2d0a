"""The guest-suite runner on a real kernel: a test that panics the guest is an error with its splat,
and the remaining tests still run on a fresh boot (slow: boots the baseline kernel)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rig.kernel import build
from rig.guest import programs as guest_build
from rig.suite import runner
from rig.kernel import tree

pytestmark = pytest.mark.slow
SUITE = Path(__file__).resolve().parent.parent / "data" / "panic_suite"     # guest only: it crashes the kernel


def test_guest_panic_marks_the_test_and_the_rest_run_on_a_fresh_boot(tmp_path):
    kernel = build.build(tree.default_source(), [], progress=lambda m: None)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    guest_build.stage(run_dir, SUITE, guest_build.build(SUITE))
    names = ["crash_panic", "zz_after_panic"]
    run = runner.run_kernel_suite(kernel, "baseline", run_dir, names, {n: 20.0 for n in names},
                                  progress=lambda m: None)
    crash, after = run.results["crash_panic"], run.results["zz_after_panic"]
    assert crash["status"] == "error" and "died" in crash["error"], crash
    assert any("panic" in t.lower() or "sysrq" in t.lower() for t in run.titles("crash_panic")), run.test_splats
    assert after["status"] == "ok" and after["observations"]["data"] == "x\\n"
    assert run.boots == 2
    assert any(s.kind == "panic" for s in run.splats)
