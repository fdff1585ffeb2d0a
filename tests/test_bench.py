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


@pytest.mark.parametrize("change, ci, min_effect, significant, decided", [
    (-20.0, (-25.0, -15.0), 3.0, True, True),      # clear regression
    (-2.0, (-2.5, -1.5), 3.0, False, True),        # real but below the floor: decided, not significant
    (0.5, (-1.0, 2.0), 3.0, False, True),          # inside the equivalence band
    (1.0, (-8.0, 10.0), 3.0, False, False),        # too wide: undecided
    (4.0, (0.0, 8.0), 3.0, False, False),          # touches zero: not significant
    (4.0, (0.5, 8.0), 3.0, True, True),            # excludes zero, big enough
    (2.0, (0.5, 4.0), 3.0, False, False),          # excludes zero but straddles the floor
])
def test_significance_and_decision(change, ci, min_effect, significant, decided):
    assert bench.is_significant(change, ci, min_effect) is significant
    assert bench.is_decided(change, ci, min_effect) is decided


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
