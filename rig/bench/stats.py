"""The statistics of `kproto bench`, pure Python (no scipy), seeded: the same samples give the same numbers.

- summaries: median, %stddev (the robot's ±%stddev), pooled values, %change of the medians;
- intervals: a two-level (boot, then repetition) bootstrap CI of the %change of the medians, the paired
  per-round t-interval, and their union (combined_ci);
- the test: a p-value per metric (Welch's t on the per-boot log medians, with Student's t tail from the
  regularized incomplete beta function), Holm over the metrics, and the alpha split over the adaptive
  looks (n_looks, look_alpha), so false alarms stay <= ALPHA per run, all metrics and rounds together.

A sample set (Samples) is per boot (or round): the values of its repetitions.
"""
from __future__ import annotations

import math
import random

Samples = list[list[float]]     # per boot (or round): the values of its repetitions


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median of nothing")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def stddev_pct(xs: list[float]) -> float:
    """Relative standard deviation in % of the mean (the robot's ±%stddev)."""
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    if m == 0:
        return 0.0
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return 100.0 * math.sqrt(var) / abs(m)


def pooled(samples: Samples) -> list[float]:
    return [x for boot in samples for x in boot]


def change_pct(base: float, patched: float) -> float:
    return (patched / base - 1.0) * 100.0 if base else 0.0


def _resample(samples: Samples, rng: random.Random) -> list[float]:
    """Two-level bootstrap draw: boots with replacement, then repetitions within each boot."""
    out: list[float] = []
    for _ in samples:
        boot = samples[rng.randrange(len(samples))]
        out.extend(boot[rng.randrange(len(boot))] for _ in boot)
    return out


def bootstrap_ci(base: Samples, patched: Samples, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the %change of the median, patched vs baseline.

    Resampling is hierarchical: whole boots first (so boot-to-boot variation widens the interval),
    then the repetitions inside each chosen boot. Deterministic for a given seed."""
    base = [b for b in base if b]
    patched = [b for b in patched if b]
    if not base or not patched:
        raise ValueError("bootstrap needs at least one sample on each side")
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        mb = median(_resample(base, rng))
        mp = median(_resample(patched, rng))
        stats.append(change_pct(mb, mp))
    stats.sort()
    alpha = (1.0 - level) / 2
    lo = stats[int(math.floor(alpha * (n_boot - 1)))]
    hi = stats[int(math.ceil((1 - alpha) * (n_boot - 1)))]
    return lo, hi


# two-sided 97.5 % quantiles of Student's t, df = 1..30 (no scipy here)
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def paired_round_ci(base: Samples, patched: Samples) -> tuple[float, float] | None:
    """95 % t-interval of the %change from the per-round ratios of the medians (round i of A is
    paired with round i of B: booted together, measured interleaved). None with fewer than 2 rounds.

    A percentile bootstrap over 2-3 boots cannot see how much boots differ (with two boots it has
    three distinct draws), so it is too narrow exactly when runs are few; this interval, with its
    n-1 degrees of freedom, is honest about that."""
    n = min(len(base), len(patched))
    pairs = [(median(base[i]), median(patched[i])) for i in range(n) if base[i] and patched[i]]
    if len(pairs) < 2 or any(b <= 0 or p <= 0 for b, p in pairs):
        return None
    d = [math.log(p / b) for b, p in pairs]
    k = len(d)
    mean = sum(d) / k
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1))
    t = _T975[k - 2] if k - 1 <= len(_T975) else 1.96
    half = t * sd / math.sqrt(k)
    return (math.exp(mean - half) - 1) * 100, (math.exp(mean + half) - 1) * 100


def combined_ci(base: Samples, patched: Samples, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The two-level bootstrap interval, widened to the paired per-round t-interval where that is wider."""
    lo, hi = bootstrap_ci(base, patched, n_boot=n_boot, seed=seed)
    t = paired_round_ci(base, patched)
    if t is not None:
        lo, hi = min(lo, t[0]), max(hi, t[1])
    return lo, hi


# ---- the test: one p-value per metric, Holm over the metrics, alpha split over the looks
#
# A run tests ~14 metrics, and the adaptive loop re-tests all of them after every extra round; a
# 95 % interval per metric and per look made a false alarm in a same-kernel (A/A) run likely.
# So: each metric gets a p-value (Welch's t-test on the per-boot medians, log scale: the boot is the
# independent unit, its repetitions are not); Holm's step-down adjusts them over the metrics of the
# look; and each look (every round at which the loop may stop: `runs` .. `max_runs`) spends its own
# part of ALPHA, the parts summing to ALPHA. By the union bound the chance of any false
# "significant", over all metrics and all looks, whatever the stopping rule does, is at most ALPHA.
# The last look gets most of it (as O'Brien-Fleming boundaries do): a run that is still undecided
# ends there, with the most data; the earlier looks only need enough to stop on a clear change.

ALPHA = 0.05              # family-wise false-alarm rate of one `kproto bench` run (all metrics, all looks)
FINAL_LOOK_SHARE = 0.8    # of ALPHA, spent at the last look; the earlier looks split the rest equally


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df (possibly fractional) degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return min(1.0, betainc(df / 2.0, 0.5, df / (df + t * t)))


def boot_log_medians(samples: Samples) -> list[float]:
    """One value per boot: the log of the median of its repetitions (boots with no positive median are
    left out)."""
    return [math.log(median(boot)) for boot in samples if boot and median(boot) > 0]


def welch_p(x: list[float], y: list[float]) -> float:
    """Two-sided p-value of Welch's t-test of mean(x) == mean(y). 1.0 when either side has fewer than
    two values (the spread between boots is then unknown, so nothing can be called)."""
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        return 1.0
    m1, m2 = sum(x) / n1, sum(y) / n2
    v1 = sum((v - m1) ** 2 for v in x) / (n1 - 1) / n1
    v2 = sum((v - m2) ** 2 for v in y) / (n2 - 1) / n2
    se2 = v1 + v2
    diff = m2 - m1
    if se2 <= 1e-24:          # no spread at all: any difference is certain, none is none
        return 0.0 if abs(diff) > 1e-12 else 1.0
    df = se2 * se2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    return t_two_sided_p(diff / math.sqrt(se2), df)


def metric_p_value(base: Samples, patched: Samples) -> float:
    """p-value of "baseline and patched have the same typical value" for one metric: Welch's t-test
    on the per-boot log medians (a change is a ratio; boot-to-boot spread is the noise that counts)."""
    return welch_p(boot_log_medians(base), boot_log_medians(patched))


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order: the i-th smallest p is multiplied by
    (m - i + 1), then made non-decreasing along the sorted order and capped at 1. Rejecting every
    hypothesis whose adjusted p is <= alpha keeps the family-wise error at alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def n_looks(runs: int, max_runs: int) -> int:
    """How many rounds run_bench() tests at and may stop after: `runs`, `runs`+1, ..., `max_runs`."""
    return max(1, max_runs - max(runs, 1) + 1)


def look_alpha(look: int, looks: int, alpha: float = ALPHA) -> float:
    """The level of look `look` (1-based) out of `looks`: the last look gets FINAL_LOOK_SHARE of
    alpha, the earlier ones split the rest equally; a single look gets all of it. The levels of
    all the looks add up to alpha."""
    if looks <= 1:
        return alpha
    if look >= looks:
        return alpha * FINAL_LOOK_SHARE
    return alpha * (1.0 - FINAL_LOOK_SHARE) / (looks - 1)
