"""kproto bench, the run loop and the sides without a VM or a mount (fast): the adaptive loop on
deterministic sides, A/A false alarms and power on simulated sides (rig.bench.simulate), the repetition
script with THE mounter's command lines, the program cache, and the command's kernel stage (faked)."""
from __future__ import annotations

import random

import pytest

from rig.bench import metrics, run, script, simulate
from rig.bench.readings import Reading
from rig.bench.run import BenchOptions


# ---------------------------------------------------------------- the adaptive run loop

class FakeSide:
    """Deterministic side: each boot gets an offset, each repetition a little noise."""

    def __init__(self, label, log, value, boot_spread, rep_noise, seed, better="higher"):
        self.label, self.log, self.value = label, log, value
        self.boot_spread, self.rep_noise, self.better = boot_spread, rep_noise, better
        self.rng = random.Random(seed)
        self.offset = 0.0
        self.running = False

    def start(self, round_no):
        self.log.append(f"start {self.label} {round_no}")
        self.offset = self.rng.uniform(-self.boot_spread, self.boot_spread)
        self.running = True

    def ready(self):
        assert self.running

    def rep(self):
        assert self.running
        self.log.append(f"rep {self.label}")
        v = self.value * (1 + self.offset) * (1 + self.rng.uniform(-self.rep_noise, self.rep_noise))
        return {"m": Reading(v, "MB/s", self.better), "other": Reading(50.0, "us", "lower")}

    def stop(self):
        self.log.append(f"stop {self.label}")
        self.running = False


def test_run_loop_interleaves_and_stops_when_decided():
    log = []
    a = FakeSide("A", log, 100, 0.0, 0.001, 1)
    b = FakeSide("B", log, 70, 0.0, 0.001, 2)
    col, res = run.run_bench(a, b, BenchOptions(runs=2, max_runs=5, reps=2), progress=lambda m: None)
    assert col.rounds == 2
    assert log[:8] == ["start A 1", "start B 1", "rep A", "rep B", "rep B", "rep A", "stop A", "stop B"]
    assert log[8:10] == ["start B 2", "start A 2"]        # the side that goes first alternates
    (m, other) = res
    assert m.name == "m" and m.verdict == "regression" and m.runs == 2 and m.samples == 4
    assert other.name == "other" and not other.significant and other.decided


def test_run_loop_adds_rounds_while_undecided_up_to_the_bound():
    log = []
    a = FakeSide("A", log, 100, 0.08, 0.01, 3)
    b = FakeSide("B", log, 100, 0.08, 0.01, 4)
    msgs = []
    col, res = run.run_bench(a, b, BenchOptions(runs=2, max_runs=4, reps=2), progress=msgs.append)
    assert col.rounds == 4
    assert any("undecided" in m and "another round" in m for m in msgs)
    assert "max-runs 4" in msgs[-1]
    assert res[0].runs == 4 and not res[0].significant


def test_run_loop_stops_early_once_the_noise_shrinks():
    log = []
    a = FakeSide("A", log, 100, 0.0, 0.002, 5)
    b = FakeSide("B", log, 100, 0.0, 0.002, 6)
    col, res = run.run_bench(a, b, BenchOptions(runs=2, max_runs=6, reps=3), progress=lambda m: None)
    assert col.rounds == 2 and all(m.decided and not m.significant for m in res)


def test_run_loop_stops_sides_on_failure():
    log = []

    class Broken(FakeSide):
        def rep(self):
            raise RuntimeError("guest died")

    a = FakeSide("A", log, 100, 0, 0, 1)
    b = Broken("B", log, 100, 0, 0, 2)
    with pytest.raises(RuntimeError):
        run.run_bench(a, b, BenchOptions(runs=1, reps=1), progress=lambda m: None)
    assert "stop A" in log and "stop B" in log


def test_run_loop_rejects_a_filter_that_matches_nothing():
    from rig.core.errors import BadInput
    log = []
    a = FakeSide("A", log, 100, 0, 0, 1)
    b = FakeSide("B", log, 100, 0, 0, 2)
    with pytest.raises(BadInput):
        run.run_bench(a, b, BenchOptions(runs=1, reps=1, only=("nosuchmetric",)), progress=lambda m: None)
    assert log[-1].startswith("stop")


# ---------------------------------------------------------------- A/A false alarms and power, simulated

def _sim_metrics(rng, boot_sd=(3.0, 5.0), rep_sd=1.0):
    """The 14 metrics of ovlbench, each with its own boot-to-boot spread (sd in %, drawn in boot_sd)."""
    names = [f"{m}_{l}" for m in ("seqread_hot", "pread4k_rand", "open_read_close", "stat", "mmap_read")
             for l in ("lower", "upper")] + ["pread4k_fd_before_copyup", "mmap_shared_first_lower",
                                             "seqread_cold_lower", "readdir_lower"]
    assert len(names) == 14
    return [simulate.SimMetric(n, value=100.0, boot_sd_pct=rng.uniform(*boot_sd), rep_sd_pct=rep_sd,
                            better="lower" if n == "mmap_shared_first_lower" else "higher") for n in names]


def _simulate(n_runs, seed, monkeypatch, scale=None, boot_sd=(3.0, 5.0), rep_sd=1.0, min_effect=3.0):
    """n_runs whole `kproto bench` decisions (run_bench with its adaptive rounds, default runs=3 ..
    max_runs=6, 3 reps) on simulated readings. Every look is recorded, not only the last. n_boot=10:
    the bootstrap only sizes the printed interval (and the stopping rule), the error control is in
    the p-values, and 2000 resamples x 14 metrics x 4 looks x 400 runs would take minutes."""
    looks: list[list[metrics.MetricResult]] = []
    real_analyze = metrics.Collected.analyze

    def recording(self, *a, **kw):
        res = real_analyze(self, *a, **kw)
        looks.append(res)
        return res

    monkeypatch.setattr(metrics.Collected, "analyze", recording)
    runs = []
    for i in range(n_runs):
        rng = random.Random(seed * 100_003 + i)
        ms = _sim_metrics(rng, boot_sd, rep_sd)
        a = simulate.SimulatedSide("A", ms, rng.randrange(1 << 30))
        b = simulate.SimulatedSide("B", ms, rng.randrange(1 << 30), scale=scale)
        looks.clear()
        col, res = run.run_bench(a, b, BenchOptions(n_boot=10, min_effect=min_effect), progress=lambda m: None)
        runs.append((col, res, list(looks)))
    return runs


def test_aa_false_alarm_rate_is_at_most_5_percent_per_run(monkeypatch):
    # Same kernel on both sides, 14 metrics, 3-5 % boot-to-boot spread: 400 simulated runs.
    runs = _simulate(400, seed=1, monkeypatch=monkeypatch)
    n = len(runs)
    exit1 = sum(any(m.verdict == "regression" for m in res) for _, res, _ in runs) / n
    any_star_any_look = sum(any(m.significant for look in looks for m in look) for _, _, looks in runs) / n
    assert exit1 <= 0.05 and any_star_any_look <= 0.05, (exit1, any_star_any_look)
    # the noise is real: uncorrected, one test per metric per look at 5 %, most runs would alarm
    raw = sum(any(m.p_value <= 0.05 for look in looks for m in look) for _, _, looks in runs) / n
    assert raw >= 0.3, raw
    assert sum(len(looks) for _, _, looks in runs) / n > 2     # the adaptive rounds did run


def test_a_15_percent_regression_is_found_in_nearly_every_run(monkeypatch):
    runs = _simulate(200, seed=2, monkeypatch=monkeypatch, scale={"pread4k_rand_lower": 0.85})
    found = sum(any(m.name == "pread4k_rand_lower" and m.verdict == "regression" for m in res)
                for _, res, _ in runs) / len(runs)
    others = sum(any(m.significant and m.name != "pread4k_rand_lower" for m in res) for _, res, _ in runs)
    assert found >= 0.9, found
    assert others / len(runs) <= 0.05


def test_a_change_below_the_minimum_effect_is_never_significant(monkeypatch):
    # -2 % with little noise: the test alone would call it (no floor: flagged), the 3 % floor does
    # not; -5 % clears the floor.
    quiet = dict(boot_sd=(0.1, 0.2), rep_sd=0.1)

    def stat_lower(runs):
        return [next(m for m in res if m.name == "stat_lower") for _, res, _ in runs]

    small = stat_lower(_simulate(60, seed=3, monkeypatch=monkeypatch, scale={"stat_lower": 0.98}, **quiet))
    assert not any(m.significant for m in small)
    assert all(m.decided for m in small)                   # and a decision: no change that matters
    no_floor = stat_lower(_simulate(60, seed=3, monkeypatch=monkeypatch, scale={"stat_lower": 0.98},
                                    min_effect=0.0, **quiet))
    assert sum(m.verdict == "regression" for m in no_floor) >= 0.9 * len(no_floor)
    big = stat_lower(_simulate(60, seed=3, monkeypatch=monkeypatch, scale={"stat_lower": 0.95}, **quiet))
    assert all(m.verdict == "regression" for m in big)

def test_rep_script_cleans_up_on_failure():
    s = script.rep_script("/tmp/ovlbench", "/tmp/kb", "mount X", "umount /tmp/kb/mnt", 30, cold=False)
    assert s.endswith("exit $rc; }") and "-n" in s and "prepare" in s




# ---------------------------------------------------------------- the repetition's mount lines (THE mounter)

def test_guest_repetition_is_the_same_shell_as_before(tmp_path):
    from rig.bench import sides
    side = sides.GuestSide("baseline", tmp_path / "bzImage", tmp_path, tmp_path, BenchOptions(), lambda m: None)
    b = script.GUEST_BENCH_DIR
    before = script.rep_script("/tmp/ovlbench", b,
                               f"mount -t overlay overlay -o lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work {b}/mnt",
                               f"umount {b}/mnt", 50, cold=True)
    assert side.script(50) == before


def test_host_repetition_mount_lines(tmp_path):
    import shlex
    import sys

    from rig.bench import sides
    from rig.core import paths
    host = sides.HostSide("host", "host", tmp_path / "bins", tmp_path, BenchOptions(duration_ms=20))
    ref = sides.HostSide("ref", "ref", tmp_path / "bins", tmp_path, BenchOptions(duration_ms=20))
    w = str(tmp_path / "host-host" / "kb")
    s = host.script()
    assert shlex.join(["mount", "-t", "overlay", "overlay", "-o",
                       f"lowerdir={w}/lower,upperdir={w}/upper,workdir={w}/work", f"{w}/mnt"]) in s
    assert f"{shlex.join(['umount', w + '/mnt'])} 2>/dev/null;" in s and " -d 20 -n;" in s
    w = str(tmp_path / "host-ref" / "kb")
    env = ["env", f"PYTHONPATH={paths.REPO}", sys.executable, "-m", "overlay_ref"]
    s = ref.script()
    assert shlex.join([*env, "mount", f"{w}/lower", f"{w}/upper", f"{w}/work", f"{w}/mnt"]) + " && {" in s
    assert s.count(shlex.join([*env, "umount", f"{w}/mnt"])) == 2       # before (stale) and after the run
    with pytest.raises(ValueError):
        sides.HostSide("x", "nfs", tmp_path, tmp_path, BenchOptions())


def test_guest_side_used_before_start_is_an_infra_error(tmp_path):
    from rig.bench import sides
    from rig.core.errors import InfraError
    side = sides.GuestSide("baseline", tmp_path / "bzImage", tmp_path, tmp_path, BenchOptions(), lambda m: None)
    with pytest.raises(InfraError, match="not running"):
        side.rep()
    side.stop()                                           # nothing to stop: fine


def test_build_bins_goes_through_the_shared_program_cache(tmp_path, monkeypatch):
    from rig.bench import programs
    calls = []
    monkeypatch.setattr(programs.programs, "compile_dir", lambda src, **kw: calls.append((src, kw)) or tmp_path)
    assert programs.build_bins(cache=tmp_path / "c") == tmp_path
    (src, kw), = calls
    assert src == programs.BENCH_SRC and (src / f"{programs.PROGRAM}.c").is_file()
    assert kw["cache_name"] == "bench_bins" and kw["what"] == "benchmark program" and kw["cache"] == tmp_path / "c"


# ---------------------------------------------------------------- the two kinds of run, on fake sides

class _Fake(FakeSide):
    closed = 0

    def __init__(self, label, *a, **kw):
        super().__init__(label, [], 100, 0.0, 0.001, len(label))
        self.accel, self.boot_s = ("tcg+icount" if label == "baseline" else ""), [1.5]

    def close(self):
        self.log.append("close")


def test_host_vs_ref_mode_closes_both_sides(tmp_path, monkeypatch):
    from rig.bench import modes
    made = []
    monkeypatch.setattr(modes, "HostSide", lambda *a, **kw: made.append(_Fake(*a)) or made[-1])
    out = modes.host_vs_ref(tmp_path, tmp_path, BenchOptions(runs=1, max_runs=1, reps=1), lambda m: None)
    assert [s.log[-2:] for s in made] == [[f"stop {s.label}", "close"] for s in made]
    assert out.per == "round" and out.accel == "" and out.extra["mode"] == "host-vs-ref" and not out.regressed
    doc = out.json(BenchOptions(runs=1, max_runs=1, reps=1))
    assert doc["mode"] == "host-vs-ref" and doc["looks"] == 1 and "note" not in doc
    assert "host overlayfs" in out.table(BenchOptions(reps=1))


def test_kernels_mode_reports_accel_and_boots(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from rig.bench import modes
    monkeypatch.setattr(modes, "GuestSide", lambda label, *a, **kw: _Fake(label))
    k = SimpleNamespace(bzimage=tmp_path / "bzImage", version="6.12.0")
    out = modes.kernels(k, k, [], "linux.tar.xz", tmp_path, tmp_path, BenchOptions(runs=1, max_runs=1, reps=1),
                        lambda m: None)
    assert out.b_label == "baseline (again)" and "A/A" in out.title and out.per == "boot"
    assert list(out.extra) == ["mode", "kernel", "patches", "accel", "boot_s"]
    assert out.extra["kernel"] == {"source": "linux.tar.xz", "version": "6.12.0"}
    assert out.accel == "tcg+icount" and out.extra["boot_s"] == {"baseline": [1.5], "patched": [1.5]}
    assert "icount" in out.json(BenchOptions(runs=1, max_runs=1, reps=1))["note"]


def test_bench_command_prepares_kernels_through_the_kernel_stage(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from rig.cli import cmd_bench
    from rig.kernel import prepare
    from rig.kernel.build import Kernel
    base = Kernel(tmp_path / "b", "6.12.0", "kb", build_s=0.0, cached=True, patches=[])
    pat = Kernel(tmp_path / "p", "6.12.0", "kp", build_s=12.0, cached=False, patches=[])
    tree = SimpleNamespace(origin="src")
    calls = []
    monkeypatch.setattr(prepare, "open_series", lambda ps: calls.append(("series", list(ps))) or list(ps))
    monkeypatch.setattr(prepare, "baseline", lambda spec, progress: calls.append(("baseline", spec)) or (tree, base))
    monkeypatch.setattr(prepare, "patched",
                        lambda spec, series, progress, tree=None: calls.append(("patched", series, tree)) or (tree, pat))
    monkeypatch.setattr(cmd_bench.modes, "kernels", lambda *a: a)
    got = cmd_bench._kernels([], "src", [tmp_path / "frag"], tmp_path, tmp_path, BenchOptions())
    assert got[:4] == (base, base, [], "src")                           # no patch: A/A, nothing else built
    assert calls == [("series", []), ("baseline", prepare.KernelSpec("src", (tmp_path / "frag",)))]
    calls.clear()
    p = SimpleNamespace(path=tmp_path / "x.patch")
    got = cmd_bench._kernels([p], None, [], tmp_path, tmp_path, BenchOptions())
    assert got[:3] == (base, pat, [p]) and calls[-1] == ("patched", [p], tree)
