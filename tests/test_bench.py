"""kproto bench: statistics and the adaptive run loop on deterministic data (fast), the benchmark
program on the host's overlayfs (fast, root), and real TCG runs (slow)."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rig import bench
from rig.bench import BenchOptions, Reading

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
READ_DELAY = DATA / "patches" / "read-delay.patch"
OVL_COPYUP = REPO / "patches" / "ovl-copyup.patch"
KPROTO = [str(Path(sys.executable).with_name("kproto"))]


# ---------------------------------------------------------------- parsing

def test_parse_metric_lines():
    text = ("seqread_hot_lower=497.7 MB/s higher\n"
            "noise line\n"
            "mmap_shared_first_lower=9243.03 us lower\n"
            "bare=12\n"
            "bad=abc MB/s higher\n"
            "inf=inf x higher\n")
    got = bench.parse(text)
    assert got == {"seqread_hot_lower": Reading(497.7, "MB/s", "higher"),
                   "mmap_shared_first_lower": Reading(9243.03, "us", "lower"),
                   "bare": Reading(12.0, "", "higher")}


# ---------------------------------------------------------------- statistics

def test_median_and_stddev():
    assert bench.median([3, 1, 2]) == 2
    assert bench.median([4, 1, 3, 2]) == 2.5
    assert bench.stddev_pct([10, 10, 10]) == 0
    assert bench.stddev_pct([9, 11]) == pytest.approx(100 * 2 ** 0.5 / 10)
    assert bench.change_pct(100, 90) == pytest.approx(-10)


def test_bootstrap_ci_is_deterministic_and_brackets_the_change():
    rng = random.Random(1)
    base = [[100 + rng.gauss(0, 1) for _ in range(4)] for _ in range(3)]
    patched = [[80 + rng.gauss(0, 1) for _ in range(4)] for _ in range(3)]
    ci1 = bench.bootstrap_ci(base, patched, seed=7)
    ci2 = bench.bootstrap_ci(base, patched, seed=7)
    assert ci1 == ci2
    lo, hi = ci1
    assert -23 < lo < hi < -17
    m = bench.analyze_metric("x", "MB/s", "higher", base, patched, min_effect=3)
    assert m.ci95_pct[0] <= m.change_pct <= m.ci95_pct[1]
    assert m.significant and m.decided and m.verdict == "regression"


def test_identical_distributions_are_not_significant():
    rng = random.Random(2)
    base = [[100 + rng.gauss(0, 2) for _ in range(3)] for _ in range(3)]
    same = [[100 + rng.gauss(0, 2) for _ in range(3)] for _ in range(3)]
    m = bench.analyze_metric("x", "MB/s", "higher", base, same, min_effect=3)
    assert m.ci95_pct[0] < 0 < m.ci95_pct[1] or abs(m.change_pct) < 3
    assert not m.significant and m.verdict in ("", "undecided")


def test_boot_to_boot_variation_widens_the_interval():
    # Within each boot the repetitions agree, but the boots differ by +-10 %: resampling only the
    # repetitions would call a 5 % shift significant; the two-level bootstrap must not.
    base = [[100.0, 100.1, 99.9], [110.0, 110.1, 109.9], [90.0, 90.1, 89.9]]
    patched = [[105.0, 105.1, 104.9], [115.0, 115.1, 114.9], [95.0, 95.1, 94.9]]
    lo, hi = bench.bootstrap_ci(base, patched, seed=3)
    assert lo < 0 < hi
    flat_lo, flat_hi = bench.bootstrap_ci([sum(base, [])], [sum(patched, [])], seed=3)
    assert (hi - lo) > (flat_hi - flat_lo)


def test_two_boots_that_happen_to_agree_do_not_make_a_regression():
    # Boots differ by several % (independently on each side); with two rounds the percentile
    # bootstrap alone sees both patched boots low and calls it; the paired t-interval over rounds
    # (1 degree of freedom) keeps the call open.
    base = [[95.9, 95.6], [101.9, 100.8]]
    patched = [[94.7, 94.6], [90.0, 90.4]]
    boot_only = bench.bootstrap_ci(base, patched, seed=0)
    assert boot_only[1] < 0                      # the bootstrap alone would flag it
    m = bench.analyze_metric("m", "MB/s", "higher", base, patched, min_effect=3)
    assert m.ci95_pct[0] < 0 < m.ci95_pct[1] and not m.significant and not m.decided


def test_paired_round_ci():
    assert bench.paired_round_ci([[100.0]], [[90.0]]) is None
    lo, hi = bench.paired_round_ci([[100.0], [100.0], [100.0]], [[80.0], [81.0], [79.0]])
    assert -23 < lo < -20 < -19 < hi < -17


@pytest.mark.parametrize("change, ci, p_adj, significant, decided", [
    (-20.0, (-25.0, -15.0), 0.001, True, True),    # clear regression
    (-20.0, (-25.0, -15.0), 0.2, False, False),    # its own CI excludes 0, but not after Holm and the looks
    (-2.0, (-2.5, -1.5), 1e-6, False, True),       # real but below the floor: decided, not significant
    (0.5, (-1.0, 2.0), 0.5, False, True),          # inside the equivalence band
    (1.0, (-8.0, 10.0), 0.7, False, False),        # too wide: undecided
    (4.0, (0.0, 8.0), 0.01, False, False),         # touches zero: not significant
    (4.0, (0.5, 8.0), 0.05, True, True),           # excludes zero, big enough, p_adj at the level
    (4.0, (0.5, 8.0), 0.051, False, False),        # ... p_adj just above it
    (2.0, (0.5, 4.0), 1e-6, False, False),         # excludes zero but straddles the floor
])
def test_significance_and_decision(change, ci, p_adj, significant, decided):
    sig = bench.is_significant(change, ci, 3.0, p_adj)
    assert sig is significant
    assert bench.is_decided(sig, ci, 3.0) is decided


# ---------------------------------------------------------------- multiplicity: p-values, Holm, looks

def test_t_distribution_and_welch_against_reference_values():
    # two-sided tail of Student's t (the 97.5 % quantiles of the table above; a fractional df for Welch)
    assert bench.t_two_sided_p(2.228, 10) == pytest.approx(0.0500118, rel=1e-5)
    assert bench.t_two_sided_p(12.706, 1) == pytest.approx(0.0500008, rel=1e-5)
    assert bench.t_two_sided_p(3.0, 2.5) == pytest.approx(0.0725761, rel=1e-5)
    assert bench.t_two_sided_p(0.0, 4) == pytest.approx(1.0)
    # Welch on log values (scipy.stats.ttest_ind(equal_var=False) gives 0.0215898)
    base = [[100.0], [104.0], [97.0]]
    patched = [[90.0], [93.0], [88.0], [95.0]]
    assert bench.metric_p_value(base, patched) == pytest.approx(0.0215898, rel=1e-5)
    # one boot per side: the spread between boots is unknown, nothing can be called
    assert bench.metric_p_value([[100.0, 100.0]], [[50.0, 50.0]]) == 1.0
    # no spread at all: a difference is certain, no difference is none
    assert bench.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert bench.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_holm_adjusted_p_values_hand_worked():
    # m = 4, sorted p: 0.01 x4 = 0.04, 0.015 x3 = 0.045, 0.04 x2 = 0.08, 0.30 x1 = 0.30
    # (given out of order: the result is in the input order)
    adj = bench.holm([0.04, 0.01, 0.30, 0.015])
    assert adj == pytest.approx([0.08, 0.04, 0.30, 0.045])
    assert [a <= 0.05 for a in adj] == [False, True, False, True]
    # plain Bonferroni (x4) would keep 0.015 -> 0.06 above 0.05: Holm is the stronger of the two
    assert 0.015 * 4 > 0.05
    # step-down monotonicity: 0.02 x2 = 0.04, then 0.021 x1 = 0.021 is raised to 0.04
    assert bench.holm([0.021, 0.02]) == pytest.approx([0.04, 0.04])
    # capped at 1; a family of one is left alone
    assert bench.holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    assert bench.holm([0.03]) == [0.03]
    assert bench.holm([]) == []


def test_alpha_is_split_over_the_looks():
    assert bench.n_looks(3, 6) == 4 and bench.n_looks(3, 3) == 1 and bench.n_looks(4, 2) == 1
    levels = [bench.look_alpha(k, 4) for k in (1, 2, 3, 4)]
    assert sum(levels) == pytest.approx(bench.ALPHA)
    assert levels[-1] == pytest.approx(bench.ALPHA * bench.FINAL_LOOK_SHARE) and levels[-1] > levels[0]
    assert levels[0] == levels[1] == levels[2]
    assert bench.look_alpha(1, 1) == bench.ALPHA


def test_adjust_family_applies_holm_and_the_look_level():
    base = [[100.0], [104.0], [97.0]]
    patched = [[90.0], [93.0], [88.0], [95.0]]          # p = 0.0216 on its own: -9.6 %
    same = [[101.0], [98.0], [102.0]]
    alone = bench.analyze_metric("x", "MB/s", "higher", base, patched, min_effect=3)
    assert alone.p_adjusted == alone.p_value and alone.significant
    fam = [bench.analyze_metric(n, "MB/s", "higher", base, patched if n == "x" else same, min_effect=3)
           for n in ("x", "y", "z")]
    bench.adjust_family(fam, min_effect=3)               # x3 by Holm: 0.065 > 0.05
    assert fam[0].p_adjusted == pytest.approx(3 * 0.0215898, rel=1e-4) and not fam[0].significant
    (one,) = bench.adjust_family([alone], min_effect=3, level=bench.look_alpha(4, 4))
    assert one.p_adjusted == pytest.approx(0.0215898 / bench.FINAL_LOOK_SHARE, rel=1e-4) and one.significant
    (one,) = bench.adjust_family([alone], min_effect=3, level=bench.look_alpha(1, 4))
    assert not one.significant and not one.decided


def test_verdict_follows_the_direction_of_better():
    base = [[100.0, 100.0], [100.0, 100.0]]
    more = [[120.0, 120.0], [120.0, 120.0]]
    assert bench.analyze_metric("t", "MB/s", "higher", base, more, min_effect=3).verdict == "improvement"
    assert bench.analyze_metric("l", "us", "lower", base, more, min_effect=3).verdict == "regression"


def test_json_shape_matches_the_contract():
    base = [[100.0, 101.0], [99.0, 100.0]]
    pat = [[80.0, 81.0], [79.0, 80.0]]
    m = bench.analyze_metric("pread4k_rand_lower", "kops/s", "higher", base, pat, min_effect=3)
    doc = json.loads(json.dumps(bench.to_json([m])))
    (j,) = doc["metrics"]
    for key, typ in [("name", str), ("unit", str), ("baseline_median", float), ("patched_median", float),
                     ("change_pct", float), ("significant", bool), ("runs", int)]:
        assert isinstance(j[key], typ), key
    assert isinstance(j["ci95_pct"], list) and len(j["ci95_pct"]) == 2
    assert j["runs"] == 2 and j["significant"] is True
    assert 0 <= j["p_value"] <= j["p_adjusted"] <= 0.05


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
    col, res = bench.run_bench(a, b, BenchOptions(runs=2, max_runs=5, reps=2), progress=lambda m: None)
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
    col, res = bench.run_bench(a, b, BenchOptions(runs=2, max_runs=4, reps=2), progress=msgs.append)
    assert col.rounds == 4
    assert any("undecided" in m and "another round" in m for m in msgs)
    assert "max-runs 4" in msgs[-1]
    assert res[0].runs == 4 and not res[0].significant


def test_run_loop_stops_early_once_the_noise_shrinks():
    log = []
    a = FakeSide("A", log, 100, 0.0, 0.002, 5)
    b = FakeSide("B", log, 100, 0.0, 0.002, 6)
    col, res = bench.run_bench(a, b, BenchOptions(runs=2, max_runs=6, reps=3), progress=lambda m: None)
    assert col.rounds == 2 and all(m.decided and not m.significant for m in res)


def test_run_loop_stops_sides_on_failure():
    log = []

    class Broken(FakeSide):
        def rep(self):
            raise RuntimeError("guest died")

    a = FakeSide("A", log, 100, 0, 0, 1)
    b = Broken("B", log, 100, 0, 0, 2)
    with pytest.raises(RuntimeError):
        bench.run_bench(a, b, BenchOptions(runs=1, reps=1), progress=lambda m: None)
    assert "stop A" in log and "stop B" in log


def test_run_loop_rejects_a_filter_that_matches_nothing():
    from rig.errors import BadInput
    log = []
    a = FakeSide("A", log, 100, 0, 0, 1)
    b = FakeSide("B", log, 100, 0, 0, 2)
    with pytest.raises(BadInput):
        bench.run_bench(a, b, BenchOptions(runs=1, reps=1, only=("nosuchmetric",)), progress=lambda m: None)
    assert log[-1].startswith("stop")


# ---------------------------------------------------------------- A/A false alarms and power, simulated

def _sim_metrics(rng, boot_sd=(3.0, 5.0), rep_sd=1.0):
    """The 14 metrics of ovlbench, each with its own boot-to-boot spread (sd in %, drawn in boot_sd)."""
    names = [f"{m}_{l}" for m in ("seqread_hot", "pread4k_rand", "open_read_close", "stat", "mmap_read")
             for l in ("lower", "upper")] + ["pread4k_fd_before_copyup", "mmap_shared_first_lower",
                                             "seqread_cold_lower", "readdir_lower"]
    assert len(names) == 14
    return [bench.SimMetric(n, value=100.0, boot_sd_pct=rng.uniform(*boot_sd), rep_sd_pct=rep_sd,
                            better="lower" if n == "mmap_shared_first_lower" else "higher") for n in names]


def _simulate(n_runs, seed, monkeypatch, scale=None, boot_sd=(3.0, 5.0), rep_sd=1.0, min_effect=3.0):
    """n_runs whole `kproto bench` decisions (run_bench with its adaptive rounds, default runs=3 ..
    max_runs=6, 3 reps) on simulated readings. Every look is recorded, not only the last. n_boot=10:
    the bootstrap only sizes the printed interval (and the stopping rule), the error control is in
    the p-values, and 2000 resamples x 14 metrics x 4 looks x 400 runs would take minutes."""
    looks: list[list[bench.MetricResult]] = []
    real_analyze = bench.Collected.analyze

    def recording(self, *a, **kw):
        res = real_analyze(self, *a, **kw)
        looks.append(res)
        return res

    monkeypatch.setattr(bench.Collected, "analyze", recording)
    runs = []
    for i in range(n_runs):
        rng = random.Random(seed * 100_003 + i)
        ms = _sim_metrics(rng, boot_sd, rep_sd)
        a = bench.SimulatedSide("A", ms, rng.randrange(1 << 30))
        b = bench.SimulatedSide("B", ms, rng.randrange(1 << 30), scale=scale)
        looks.clear()
        col, res = bench.run_bench(a, b, BenchOptions(n_boot=10, min_effect=min_effect), progress=lambda m: None)
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


def test_render_table():
    base = [[100.0, 101.0], [99.0, 100.0]]
    m1 = bench.analyze_metric("pread4k_rand_lower", "kops/s", "higher", base, [[60.0, 61.0], [59.0, 60.0]],
                              min_effect=3)
    m2 = bench.analyze_metric("stat_lower", "kops/s", "higher", base, base, min_effect=3)
    out = bench.render([m1, m2], title="t", a_label="baseline", b_label="patched", accel="tcg+icount",
                       rounds=2, reps=2, min_effect=3)
    assert "absolute numbers mean little" in out and "icount" in out
    assert "%stddev" in out and "%change" in out
    line = next(l for l in out.splitlines() if "pread4k_rand_lower" in l and "regression" in l)
    assert "-40.0%*" in line
    assert "significant regressions: pread4k_rand_lower" in out


def test_rep_script_cleans_up_on_failure():
    s = bench.rep_script("/tmp/ovlbench", "/tmp/kb", "mount X", "umount /tmp/kb/mnt", 30, cold=False)
    assert s.endswith("exit $rc; }") and "-n" in s and "prepare" in s


# ---------------------------------------------------------------- the program, on the host

def _can_mount_overlay() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and "overlay" in Path("/proc/filesystems").read_text()


@pytest.mark.skipif(not _can_mount_overlay(), reason="needs root and overlayfs on the host")
def test_ovlbench_on_host_overlayfs(tmp_path):
    bins = bench.build_bins(cache=tmp_path / "cache")
    side = bench.HostSide("host", "host", bins, tmp_path, BenchOptions(duration_ms=10))
    try:
        side.start(1)
        side.ready()
        got = side.rep()
    finally:
        side.close()
    expected = {f"{m}_{l}" for m in ("seqread_hot", "pread4k_rand", "open_read_close", "stat", "mmap_read")
                for l in ("lower", "upper")} | {"pread4k_fd_before_copyup", "mmap_shared_first_lower"}
    assert expected <= set(got)
    assert "seqread_cold_lower" not in got            # -n on the host: no drop_caches
    assert all(r.value > 0 for r in got.values())
    assert got["mmap_shared_first_lower"].better == "lower"
    assert not os.path.ismount(tmp_path / "host-host")


# ---------------------------------------------------------------- real runs (TCG, slow)

FAST = ["--runs", "2", "--max-runs", "2", "--reps", "2", "--duration-ms", "30"]


def _bench(args, tmp_path, timeout=900, fast=FAST):
    out = tmp_path / "bench.json"
    p = subprocess.run([*KPROTO, "bench", *args, *fast, "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    print(p.stdout)
    print(p.stderr[-3000:], file=sys.stderr)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    return p, json.loads(out.read_text())


@pytest.mark.slow
def test_read_delay_is_a_significant_regression(tmp_path):
    p, doc = _bench([str(READ_DELAY)], tmp_path)
    assert p.returncode == 1
    m = {x["name"]: x for x in doc["metrics"]}
    for name in ("pread4k_rand_lower", "pread4k_rand_upper"):
        assert m[name]["significant"] and m[name]["change_pct"] < -10, m[name]
        assert m[name]["ci95_pct"][1] < 0
    assert "absolute numbers mean little" in p.stdout or doc.get("accel") == "kvm"
    assert "pread4k_rand_lower" in p.stdout and "%change" in p.stdout


@pytest.mark.slow
def test_baseline_vs_baseline_is_not_significant(tmp_path):
    p, doc = _bench([], tmp_path)
    assert p.returncode == 0
    flagged = [x["name"] for x in doc["metrics"] if x["significant"]]
    assert flagged == [], flagged
    assert doc["metrics"] and all(x["runs"] >= 2 for x in doc["metrics"])


@pytest.mark.slow
def test_ovl_copyup_prints_the_table(tmp_path):
    patch = OVL_COPYUP if OVL_COPYUP.is_file() else READ_DELAY
    p, doc = _bench([str(patch)], tmp_path, fast=["--runs", "1", "--reps", "2", "--duration-ms", "30"])
    assert "%stddev" in p.stdout and "mmap_shared_first_lower" in p.stdout
    assert len(doc["metrics"]) >= 14


@pytest.mark.fuse
@pytest.mark.skipif(not _can_mount_overlay(), reason="needs root and overlayfs on the host")
def test_host_vs_ref_same_table(tmp_path):
    out = tmp_path / "hr.json"
    p = subprocess.run([*KPROTO, "bench", "--host-vs-ref", "--runs", "1", "--reps", "1", "--duration-ms", "10",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "host overlayfs" in p.stdout and "overlay_ref" in p.stdout and "%change" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "host-vs-ref"
    assert {"pread4k_rand_lower", "open_read_close_upper"} <= {m["name"] for m in doc["metrics"]}


def test_bench_rejects_patches_with_host_vs_ref(tmp_path):
    p = subprocess.run([*KPROTO, "bench", "--host-vs-ref", str(READ_DELAY)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "takes no PATCH" in p.stderr
