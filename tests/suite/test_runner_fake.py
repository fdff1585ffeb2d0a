"""The runner's per-test barrier and reboot state machine, driven through a replaying fake machine
(tests/fake_machine.py): seconds, no QEMU. The same code drives QEMU guests in test_e2e.py."""
from __future__ import annotations

import pytest

from rig.suite import runner
from rig.suite.results import KernelRun, hang_signature
from rig.core.errors import BootError

from fake_machine import FAST, FakeKernel, FakeTest, log

LOCKDEP = log("lockdep-abba-6.12.log")
PANIC = log("real-oops-null-6.12.log")
HUNG = log("hung-task-6.12.log")
BLOCKED = """sysrq: Show Blocked State
task:t_hang          state:D stack:0     pid:301   tgid:301   ppid:300    flags:0x00004002
Call Trace:
 <TASK>
 __schedule+0x3c1/0xa50
 schedule+0x34/0xb0
 schedule_preempt_disabled+0x15/0x30
 __mutex_lock+0x4c2/0x9a0
 ovl_copy_up_start+0x5c/0x170
 ovl_copy_up_one+0x2d1/0x4a0
 </TASK>
"""


def run(tmp_path, kernel: FakeKernel, names, timeout=0.3):
    return runner.run_kernel_suite(None, "patched", tmp_path, names, {n: timeout for n in names},
                                   progress=lambda m: None, machine_factory=kernel.factory(tmp_path), timing=FAST)


def boots_of(r: KernelRun) -> dict[str, str]:
    return {n: res.get("boot") for n, res in r.results.items()}


def test_clean_suite_runs_in_one_boot_with_a_barrier_per_test(tmp_path):
    k = FakeKernel()
    r = run(tmp_path, k, ["a", "b", "c"])
    assert r.boots == 1
    assert [t for _, t in k.ran] == ["a", "b", "c"]
    assert all(res["status"] == "ok" for res in r.results.values())
    assert r.splats == [] and r.test_splats == {}


@pytest.mark.parametrize("duration", [0.0, 1.2])    # fast tests right after, and slow ones
def test_splat_then_next_tests_run_on_a_fresh_boot_and_none_is_called_hung(tmp_path, duration):
    script = {"a": FakeTest(console=LOCKDEP, lockdep_off=True), "b": FakeTest(duration=duration),
              "c": FakeTest(duration=duration)}
    k = FakeKernel(script)
    r = run(tmp_path, k, ["a", "b", "c"], timeout=5.0)
    assert boots_of(r) == {"a": "patched-1", "b": "patched-2", "c": "patched-2"}
    assert all(res["status"] == "ok" for res in r.results.values()), r.results
    assert [s.kind for s in r.test_splats["a"]] == ["lockdep"]
    assert "b" not in r.test_splats and "c" not in r.test_splats
    assert any("fresh boot" in e for e in r.events)


def test_splat_printed_after_the_result_line_is_still_this_tests(tmp_path):
    # the console lags the harness: the splat reaches it 0.3 s after the result, before the barrier marker
    k = FakeKernel({"a": FakeTest(late_console=LOCKDEP, late_delay=0.3), "b": FakeTest()})
    r = run(tmp_path, k, ["a", "b"])
    assert [s.kind for s in r.test_splats["a"]] == ["lockdep"]
    assert r.results["b"]["boot"] == "patched-2"


def test_lockdep_turned_off_without_a_console_line_means_a_fresh_boot(tmp_path):
    k = FakeKernel({"a": FakeTest(lockdep_off=True)})
    r = run(tmp_path, k, ["a", "b"])
    assert r.results["a"]["kernel_events"] == ["lockdep turned itself off"]
    assert boots_of(r) == {"a": "patched-1", "b": "patched-2"}


def test_taint_without_a_console_line_means_a_fresh_boot(tmp_path):
    k = FakeKernel({"a": FakeTest(taint=1 << 9)})          # W
    r = run(tmp_path, k, ["a", "b"])
    assert r.results["a"]["kernel_events"] == ["kernel tainted (W)"]
    assert boots_of(r) == {"a": "patched-1", "b": "patched-2"}


def test_taint_from_boot_does_not_reboot_every_test(tmp_path):
    k = FakeKernel({"a": FakeTest(taint=1 << 9), "b": FakeTest(), "c": FakeTest()})
    # once tainted, later tests of that boot add no new bits: only "a" ends a boot
    r = run(tmp_path, k, ["b", "a", "c"])
    assert r.boots == 2 and boots_of(r)["c"] == "patched-2"


def test_a_hang_is_reported_with_blocked_tasks_and_the_rest_runs(tmp_path):
    k = FakeKernel({"h": FakeTest(behaviour="hang", console=HUNG, blocked=BLOCKED)})
    r = run(tmp_path, k, ["a", "h", "z"])
    h = r.results["h"]
    assert h["status"] == "timeout" and h["error"].startswith("hung: no result within")
    assert "Show Blocked State" in h["blocked_tasks"]
    assert r.results["z"]["status"] == "ok" and r.results["z"]["boot"] == "patched-2"
    assert r.results["a"]["status"] == "ok"


def test_a_test_the_harness_timed_out_is_hung_and_the_guest_rebooted(tmp_path):
    k = FakeKernel({"h": FakeTest(status="timeout", blocked=BLOCKED)})
    r = run(tmp_path, k, ["h", "z"])
    assert r.results["h"]["error"].startswith("hung: ")
    assert r.machines if hasattr(r, "machines") else True
    assert k.machines[0].sysrq_calls == 1
    assert r.results["z"]["boot"] == "patched-2"


def test_repeated_identical_hangs_stop_after_three(tmp_path):
    script = lambda name, boot, m: FakeTest(behaviour="hang", blocked=BLOCKED) if name.startswith("h") else FakeTest()
    names = [f"h{i}" for i in range(8)]
    k = FakeKernel(script)
    r = run(tmp_path, k, names)
    ran = [t for _, t in k.ran]
    assert ran == ["h0", "h1", "h2"]
    for n in names[3:]:
        assert r.results[n]["error"] == "not run: same deadlock as h0"
    assert any("same deadlock as h0" in e and "3 tests hung with the same blocked tasks" in e for e in r.events)


def test_different_hangs_do_not_stop_the_run(tmp_path):
    other = BLOCKED.replace("ovl_copy_up_start", "ovl_rename")
    script = lambda name, boot, m: FakeTest(behaviour="hang", blocked=BLOCKED if boot % 2 else other)
    k = FakeKernel(script)
    r = run(tmp_path, k, ["h0", "h1", "h2", "h3"])
    assert [t for _, t in k.ran] == ["h0", "h1", "h2", "h3"]
    assert all(res["status"] == "timeout" for res in r.results.values())


def test_a_panic_marks_the_test_died_with_its_title_and_the_rest_runs(tmp_path):
    k = FakeKernel({"p": FakeTest(behaviour="panic", console=PANIC)})
    r = run(tmp_path, k, ["p", "z"])
    assert r.results["p"]["status"] == "error"
    assert "the guest died during this test" in r.results["p"]["error"]
    assert any("NULL pointer dereference" in s.title for s in r.test_splats["p"])
    assert r.results["z"]["boot"] == "patched-2" and r.results["z"]["status"] == "ok"


def test_ssh_dropping_is_lost_contact_not_a_hang(tmp_path):
    k = FakeKernel({"d": FakeTest(behaviour="drop")})
    r = run(tmp_path, k, ["d", "z"])
    assert r.results["d"]["status"] == "error"
    assert r.results["d"]["error"].startswith("lost contact with the guest")
    assert r.results["z"]["boot"] == "patched-2"


def test_first_boot_failure_raises_boot_error_for_the_caller(tmp_path):
    with pytest.raises(BootError):
        run(tmp_path, FakeKernel(boot_fails=True), ["a"])


def test_boot_numbers_continue_for_confirmation_runs(tmp_path):
    k = FakeKernel()
    r = runner.run_kernel_suite(None, "patched", tmp_path, ["a"], {"a": 1.0}, progress=lambda m: None,
                                machine_factory=k.factory(tmp_path), timing=FAST, first_boot=4)
    assert r.results["a"]["boot"] == "patched-4"


def test_hang_signature_ignores_addresses_and_pids():
    a = hang_signature(BLOCKED, [])
    b = hang_signature(BLOCKED.replace("pid:301", "pid:999").replace("0x5c/0x170", "0x60/0x170"), [])
    assert a == b == "blocked:ovl_copy_up_start"
    assert hang_signature(BLOCKED.replace("ovl_copy_up_start", "ovl_rename"), []) != a


def test_same_hang_three_times_stops_the_run_even_with_passing_tests_between(tmp_path):
    # a patch that deadlocks every copy-up: tests that copy nothing up still pass in between
    script = lambda name, boot, m: FakeTest(behaviour="hang", blocked=BLOCKED) if name.startswith("h") else FakeTest()
    names = ["h0", "ok1", "h1", "ok2", "h2", "h3", "ok3"]
    k = FakeKernel(script)
    r = run(tmp_path, k, names)
    assert [t for _, t in k.ran] == ["h0", "ok1", "h1", "ok2", "h2"]
    assert r.deadlock == {"signature": "blocked:ovl_copy_up_start", "hung": ["h0", "h1", "h2"],
                          "not_run": ["h3", "ok3"]}
    assert r.results["ok3"]["error"] == "not run: same deadlock as h0"
