"""rig/suite/boots.py: a kernel's tests split by phase onto boots of their own, the parts and the kernels'
runs side by side on a pool of machines, boot names, n/N over the parts, cancel. Replaying fake machines."""
from __future__ import annotations

import threading
import time

import pytest

from fake_machine import FAST, FakeKernel, FakeTest, log
from rig.suite import boots, runner
from rig.suite.results import KernelRun

LOCKDEP = log("lockdep-abba-6.12.log")
PHASES = {"s1": "lockdep", "s2": "lockdep", "m1": "main", "m2": "main"}
NAMES = ["s1", "s2", "m1", "m2"]


def pool(tmp_path, kernels: dict[str, FakeKernel], jobs: int, progress=lambda m: None) -> boots.BootPool:
    def run_part(kernel, label, part, first, numbers, stop, tally, factory) -> KernelRun:
        return runner.run_kernel_suite(kernel, label, tmp_path, part, {n: 5.0 for n in part}, progress,
                                       machine_factory=factory, timing=FAST, first_boot=first, numbers=numbers,
                                       stop=stop, tally=tally)
    return boots.BootPool(jobs, run_part, lambda kernel, label: kernels[label].factory(tmp_path))


def test_split_phases_keeps_run_order_and_drops_empty_parts():
    assert boots.split_phases(NAMES, PHASES) == [["s1", "s2"], ["m1", "m2"]]
    assert boots.split_phases(["m2", "m1"], PHASES) == [["m2", "m1"]]
    assert boots.split_phases(["x", "s2"], PHASES) == [["s2"], ["x"]]        # no phase: a main test
    assert boots.split_phases([], PHASES) == []


@pytest.mark.parametrize("jobs, side_by_side", [(2, True), (1, False)])
def test_the_two_parts_of_a_kernel_run_on_boots_of_their_own_side_by_side(tmp_path, jobs, side_by_side):
    """s1 waits (up to 1 s) for m1 to start: only when the parts run at once does it see it."""
    m1_started, seen = threading.Event(), {}

    def script(name, boot, m):
        if name == "m1":
            m1_started.set()
        if name == "s1":
            seen["m1"] = m1_started.wait(1.0)
        return FakeTest()
    k = FakeKernel(script)
    with pool(tmp_path, {"patched": k}, jobs) as p:
        run = p.submit(None, "patched", NAMES, PHASES).result()
    assert seen["m1"] is side_by_side
    assert list(run.results) == NAMES                                  # merged in run order
    assert {n: r["boot"] for n, r in run.results.items()} == \
        {"s1": "patched-1", "s2": "patched-1", "m1": "patched-2", "m2": "patched-2"}
    assert run.boots == 2 and p.boots("patched") == 2
    assert all(m.stopped for m in k.machines)


def test_a_fresh_boot_takes_the_next_number_and_progress_counts_over_both_parts(tmp_path):
    k = FakeKernel(lambda name, boot, m: FakeTest(console=LOCKDEP, lockdep_off=True) if name == "s1" else FakeTest())
    lines: list[str] = []
    with pool(tmp_path, {"patched": k}, 2, lines.append) as p:
        run = p.submit(None, "patched", NAMES, PHASES).result()
    assert run.results["s2"]["boot"] == "patched-3"                   # after the splat, on a fresh boot
    assert run.results["m1"]["boot"] == run.results["m2"]["boot"] == "patched-2"
    assert sorted(m.name for m in k.machines) == ["patched-1", "patched-2", "patched-3"]
    assert run.boots == 3 and [s.kind for s in run.test_splats["s1"]] == ["lockdep"]
    done = sorted(int(l.split()[1].split("/")[0]) for l in lines if l.startswith("[patched] ") and ": ok" in l)
    assert done == [1, 2, 3, 4] and all("/4 " in l for l in lines if l.startswith("[patched] ") and ": ok" in l)


def test_cancel_stops_every_machine_and_keeps_what_finished(tmp_path):
    """m2 never finishes on its own; cancel() ends both parts, stops both machines, and the partial run
    holds the tests that had finished."""
    k = FakeKernel(lambda name, boot, m: FakeTest(duration=60.0) if name == "m2" else FakeTest())
    with pool(tmp_path, {"patched": k}, 2) as p:
        pending = p.submit(None, "patched", NAMES, PHASES)
        while ("patched-2", "m2") not in k.ran or not pending.futures[0].done():
            time.sleep(0.01)
        p.cancel()
        assert pending.done()
        with pytest.raises(KeyboardInterrupt):
            pending.result()
        part = pending.partial()
    assert part is not None and list(part.results) == ["s1", "s2", "m1"]
    assert all(m.stopped for m in k.machines) and len(k.machines) == 2


def test_an_exception_on_the_way_out_cancels_the_rest(tmp_path):
    k = FakeKernel(lambda name, boot, m: FakeTest(duration=60.0) if name == "m1" else FakeTest())
    with pytest.raises(RuntimeError):
        with pool(tmp_path, {"patched": k}, 2) as p:
            p.submit(None, "patched", NAMES, PHASES)
            while ("patched-2", "m1") not in k.ran:
                time.sleep(0.01)
            raise RuntimeError("the caller failed")
    assert k.machines and all(m.stopped for m in k.machines)


def test_a_cached_run_is_renumbered_into_this_runs_count(tmp_path):
    k = FakeKernel()
    cached = KernelRun(label="baseline", kernel=None, boots=3,
                       results={"a": {"boot": "baseline-7"}, "b": {"boot": "baseline-9"}, "c": {"boot": "baseline-7"}})
    with pool(tmp_path, {"baseline": k}, 2) as p:
        got = p.adopt(cached)
        assert {n: r["boot"] for n, r in got.results.items()} == {"a": "baseline-1", "b": "baseline-2", "c": "baseline-1"}
        assert p.boots("baseline") == 3                                # a boot without a test counts too
        run = p.submit(None, "baseline", ["m1"], PHASES).result()
    assert run.results["m1"]["boot"] == "baseline-4"


def test_default_jobs_is_one_per_cpu_at_most_two(monkeypatch):
    monkeypatch.setattr(boots.os, "cpu_count", lambda: 1)
    assert boots.default_jobs() == 1
    monkeypatch.setattr(boots.os, "cpu_count", lambda: 64)
    assert boots.default_jobs() == 2
    monkeypatch.setattr(boots.os, "cpu_count", lambda: None)
    assert boots.default_jobs() == 1
