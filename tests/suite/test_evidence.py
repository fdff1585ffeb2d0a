"""rig.suite.evidence: what the boots of both kernels add up to, and how a reason reads."""
from __future__ import annotations

from rig.analysis.splats.splat import Splat
from rig.suite.evidence import Evidence, Sample, decide

CYCLE = Splat(kind="lockdep", title="possible deadlock in ovl_copy_up_start", log="",
              signature="lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]")
WARN = Splat(kind="warning", title="WARNING in ovl_copy_up_one", log="", signature="warning:ovl_copy_up_one")


def _ev(patched: list[list[Splat]], baseline: list[list[Splat]]) -> Evidence:
    def samples(side: str, boots: list[list[Splat]]) -> list[Sample]:
        return [Sample(boot=f"{side}-{i + 1}", status="splat" if s else "ok", outcome="x", splats=s)
                for i, s in enumerate(boots)]
    return Evidence("t", baseline=samples("baseline", baseline), patched=samples("patched", patched))


def test_a_new_lockdep_cycle_is_a_regression_and_its_title_is_said_once():
    d = decide(_ev([[CYCLE], [], [CYCLE]], [[], [], []]))
    assert d.status == "regressed"
    assert d.reason == ("lockdep: possible deadlock in ovl_copy_up_start "
                        "[seen in 2/3 patched boots, 0/3 baseline boots]")


def test_with_more_splats_the_reason_counts_each_under_its_title():
    d = decide(_ev([[CYCLE, WARN], [WARN]], [[], [WARN]]))
    assert d.status == "regressed"
    assert d.reason == ("lockdep: possible deadlock in ovl_copy_up_start "
                        "[possible deadlock in ovl_copy_up_start: seen in 1/2 patched boots, 0/2 baseline boots; "
                        "WARNING in ovl_copy_up_one: seen in 2/2 patched boots, 1/2 baseline boots]")


def test_a_cycle_the_baseline_shows_too_is_not_new():
    d = decide(_ev([[CYCLE]], [[CYCLE]]))
    assert d.status is None
