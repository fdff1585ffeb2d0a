"""kproto bench, the arithmetic and the output (fast, deterministic): parsing the programs' lines, the
statistics of rig.bench.stats, the per-metric decisions of rig.bench.metrics, the JSON and the table
of rig.bench.report. The run loop and the sides: test_bench_run.py; real runs: test_bench_host.py."""
from __future__ import annotations

import json
import random

import pytest

from rig.bench import metrics, readings, report, stats
from rig.bench.readings import Reading


# ---------------------------------------------------------------- parsing

def test_parse_metric_lines():
    text = ("seqread_hot_lower=497.7 MB/s higher\n"
            "noise line\n"
            "mmap_shared_first_lower=9243.03 us lower\n"
            "bare=12\n"
            "bad=abc MB/s higher\n"
            "inf=inf x higher\n")
    got = readings.parse(text)
    assert got == {"seqread_hot_lower": Reading(497.7, "MB/s", "higher"),
                   "mmap_shared_first_lower": Reading(9243.03, "us", "lower"),
                   "bare": Reading(12.0, "", "higher")}


# ---------------------------------------------------------------- statistics

def test_median_and_stddev():
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    assert stats.stddev_pct([10, 10, 10]) == 0
    assert stats.stddev_pct([9, 11]) == pytest.approx(100 * 2 ** 0.5 / 10)
    assert stats.change_pct(100, 90) == pytest.approx(-10)


def test_bootstrap_ci_is_deterministic_and_brackets_the_change():
    rng = random.Random(1)
    base = [[100 + rng.gauss(0, 1) for _ in range(4)] for _ in range(3)]
    patched = [[80 + rng.gauss(0, 1) for _ in range(4)] for _ in range(3)]
    ci1 = stats.bootstrap_ci(base, patched, seed=7)
    ci2 = stats.bootstrap_ci(base, patched, seed=7)
    assert ci1 == ci2
    lo, hi = ci1
    assert -23 < lo < hi < -17
    m = metrics.analyze_metric("x", "MB/s", "higher", base, patched, min_effect=3)
    assert m.ci95_pct[0] <= m.change_pct <= m.ci95_pct[1]
    assert m.significant and m.decided and m.verdict == "regression"


def test_identical_distributions_are_not_significant():
    rng = random.Random(2)
    base = [[100 + rng.gauss(0, 2) for _ in range(3)] for _ in range(3)]
    same = [[100 + rng.gauss(0, 2) for _ in range(3)] for _ in range(3)]
    m = metrics.analyze_metric("x", "MB/s", "higher", base, same, min_effect=3)
    assert m.ci95_pct[0] < 0 < m.ci95_pct[1] or abs(m.change_pct) < 3
    assert not m.significant and m.verdict in ("", "undecided")


def test_boot_to_boot_variation_widens_the_interval():
    # Within each boot the repetitions agree, but the boots differ by +-10 %: resampling only the
    # repetitions would call a 5 % shift significant; the two-level bootstrap must not.
    base = [[100.0, 100.1, 99.9], [110.0, 110.1, 109.9], [90.0, 90.1, 89.9]]
    patched = [[105.0, 105.1, 104.9], [115.0, 115.1, 114.9], [95.0, 95.1, 94.9]]
    lo, hi = stats.bootstrap_ci(base, patched, seed=3)
    assert lo < 0 < hi
    flat_lo, flat_hi = stats.bootstrap_ci([sum(base, [])], [sum(patched, [])], seed=3)
    assert (hi - lo) > (flat_hi - flat_lo)


def test_two_boots_that_happen_to_agree_do_not_make_a_regression():
    # Boots differ by several % (independently on each side); with two rounds the percentile
    # bootstrap alone sees both patched boots low and calls it; the paired t-interval over rounds
    # (1 degree of freedom) keeps the call open.
    base = [[95.9, 95.6], [101.9, 100.8]]
    patched = [[94.7, 94.6], [90.0, 90.4]]
    boot_only = stats.bootstrap_ci(base, patched, seed=0)
    assert boot_only[1] < 0                      # the bootstrap alone would flag it
    m = metrics.analyze_metric("m", "MB/s", "higher", base, patched, min_effect=3)
    assert m.ci95_pct[0] < 0 < m.ci95_pct[1] and not m.significant and not m.decided


def test_paired_round_ci():
    assert stats.paired_round_ci([[100.0]], [[90.0]]) is None
    lo, hi = stats.paired_round_ci([[100.0], [100.0], [100.0]], [[80.0], [81.0], [79.0]])
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
    sig = metrics.is_significant(change, ci, 3.0, p_adj)
    assert sig is significant
    assert metrics.is_decided(sig, ci, 3.0) is decided


# ---------------------------------------------------------------- multiplicity: p-values, Holm, looks

def test_t_distribution_and_welch_against_reference_values():
    # two-sided tail of Student's t (the 97.5 % quantiles of the table above; a fractional df for Welch)
    assert stats.t_two_sided_p(2.228, 10) == pytest.approx(0.0500118, rel=1e-5)
    assert stats.t_two_sided_p(12.706, 1) == pytest.approx(0.0500008, rel=1e-5)
    assert stats.t_two_sided_p(3.0, 2.5) == pytest.approx(0.0725761, rel=1e-5)
    assert stats.t_two_sided_p(0.0, 4) == pytest.approx(1.0)
    # Welch on log values (scipy.stats.ttest_ind(equal_var=False) gives 0.0215898)
    base = [[100.0], [104.0], [97.0]]
    patched = [[90.0], [93.0], [88.0], [95.0]]
    assert stats.metric_p_value(base, patched) == pytest.approx(0.0215898, rel=1e-5)
    # one boot per side: the spread between boots is unknown, nothing can be called
    assert stats.metric_p_value([[100.0, 100.0]], [[50.0, 50.0]]) == 1.0
    # no spread at all: a difference is certain, no difference is none
    assert stats.welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert stats.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0


def test_holm_adjusted_p_values_hand_worked():
    # m = 4, sorted p: 0.01 x4 = 0.04, 0.015 x3 = 0.045, 0.04 x2 = 0.08, 0.30 x1 = 0.30
    # (given out of order: the result is in the input order)
    adj = stats.holm([0.04, 0.01, 0.30, 0.015])
    assert adj == pytest.approx([0.08, 0.04, 0.30, 0.045])
    assert [a <= 0.05 for a in adj] == [False, True, False, True]
    # plain Bonferroni (x4) would keep 0.015 -> 0.06 above 0.05: Holm is the stronger of the two
    assert 0.015 * 4 > 0.05
    # step-down monotonicity: 0.02 x2 = 0.04, then 0.021 x1 = 0.021 is raised to 0.04
    assert stats.holm([0.021, 0.02]) == pytest.approx([0.04, 0.04])
    # capped at 1; a family of one is left alone
    assert stats.holm([0.5, 0.6, 0.9]) == [1.0, 1.0, 1.0]
    assert stats.holm([0.03]) == [0.03]
    assert stats.holm([]) == []


def test_alpha_is_split_over_the_looks():
    assert stats.n_looks(3, 6) == 4 and stats.n_looks(3, 3) == 1 and stats.n_looks(4, 2) == 1
    levels = [stats.look_alpha(k, 4) for k in (1, 2, 3, 4)]
    assert sum(levels) == pytest.approx(stats.ALPHA)
    assert levels[-1] == pytest.approx(stats.ALPHA * stats.FINAL_LOOK_SHARE) and levels[-1] > levels[0]
    assert levels[0] == levels[1] == levels[2]
    assert stats.look_alpha(1, 1) == stats.ALPHA


def test_adjust_family_applies_holm_and_the_look_level():
    base = [[100.0], [104.0], [97.0]]
    patched = [[90.0], [93.0], [88.0], [95.0]]          # p = 0.0216 on its own: -9.6 %
    same = [[101.0], [98.0], [102.0]]
    alone = metrics.analyze_metric("x", "MB/s", "higher", base, patched, min_effect=3)
    assert alone.p_adjusted == alone.p_value and alone.significant
    fam = [metrics.analyze_metric(n, "MB/s", "higher", base, patched if n == "x" else same, min_effect=3)
           for n in ("x", "y", "z")]
    metrics.adjust_family(fam, min_effect=3)               # x3 by Holm: 0.065 > 0.05
    assert fam[0].p_adjusted == pytest.approx(3 * 0.0215898, rel=1e-4) and not fam[0].significant
    (one,) = metrics.adjust_family([alone], min_effect=3, level=stats.look_alpha(4, 4))
    assert one.p_adjusted == pytest.approx(0.0215898 / stats.FINAL_LOOK_SHARE, rel=1e-4) and one.significant
    (one,) = metrics.adjust_family([alone], min_effect=3, level=stats.look_alpha(1, 4))
    assert not one.significant and not one.decided


def test_verdict_follows_the_direction_of_better():
    base = [[100.0, 100.0], [100.0, 100.0]]
    more = [[120.0, 120.0], [120.0, 120.0]]
    assert metrics.analyze_metric("t", "MB/s", "higher", base, more, min_effect=3).verdict == "improvement"
    assert metrics.analyze_metric("l", "us", "lower", base, more, min_effect=3).verdict == "regression"


def test_json_shape_matches_the_contract():
    base = [[100.0, 101.0], [99.0, 100.0]]
    pat = [[80.0, 81.0], [79.0, 80.0]]
    m = metrics.analyze_metric("pread4k_rand_lower", "kops/s", "higher", base, pat, min_effect=3)
    doc = json.loads(json.dumps(report.to_json([m])))
    (j,) = doc["metrics"]
    for key, typ in [("name", str), ("unit", str), ("baseline_median", float), ("patched_median", float),
                     ("change_pct", float), ("significant", bool), ("runs", int)]:
        assert isinstance(j[key], typ), key
    assert isinstance(j["ci95_pct"], list) and len(j["ci95_pct"]) == 2
    assert j["runs"] == 2 and j["significant"] is True
    assert 0 <= j["p_value"] <= j["p_adjusted"] <= 0.05



def test_render_table():
    base = [[100.0, 101.0], [99.0, 100.0]]
    m1 = metrics.analyze_metric("pread4k_rand_lower", "kops/s", "higher", base, [[60.0, 61.0], [59.0, 60.0]],
                              min_effect=3)
    m2 = metrics.analyze_metric("stat_lower", "kops/s", "higher", base, base, min_effect=3)
    out = report.render([m1, m2], title="t", a_label="baseline", b_label="patched", accel="tcg+icount",
                       rounds=2, reps=2, min_effect=3)
    assert "absolute numbers mean little" in out and "icount" in out
    assert "%stddev" in out and "%change" in out
    line = next(l for l in out.splitlines() if "pread4k_rand_lower" in l and "regression" in l)
    assert "-40.0%*" in line
    assert "significant regressions: pread4k_rand_lower" in out
