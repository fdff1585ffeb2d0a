"""`kproto bench`: what a patch costs on the overlay read path, baseline vs patched, with confidence.

Pieces, one concern each:
- build_bins(): guest_tests/bench/*.c as static binaries, cached by content.
- parse(): the programs' `name=value unit higher|lower` lines.
- statistics: medians, %stddev, a two-level (boot, then repetition) bootstrap CI of the %change of
  the medians, a p-value per metric (Welch's t on the per-boot log medians), Holm over the metrics
  and the alpha split over the adaptive looks (false alarms <= 5 % per run, all metrics and rounds
  together), the minimum effect, and the "decided" test that drives the adaptive run loop. Pure
  Python, seeded, so the same samples always give the same table.
- sides: a Side is something we can start, run one repetition of the benchmark on, and stop:
  a guest kernel in QEMU (GuestSide), or an overlay on the host (HostSide: the host kernel's
  overlayfs or the reference overlay). run_bench() interleaves two sides, A B A B, and keeps adding
  rounds while some metric is undecided, up to a bound.
- render(): a kernel-test-robot style `%stddev %change %stddev` table; to_json(): DESIGN.md §4.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from . import paths
from .errors import BadInput, BuildError, GuestError, InfraError, MissingTool

BENCH_SRC = paths.GUEST_TESTS / "bench"
CC = "gcc"
CFLAGS = ["-static", "-O2", "-Wall"]
PROGRAM = "ovlbench"
TCG_NOTE = ("under TCG (no KVM) absolute numbers mean little: every instruction is emulated; "
            "the ratios (%change) between kernels measured the same way are what counts")

ICOUNT_NOTE = ("guests ran with -icount (shift=0): guest time is the count of emulated instructions "
               "(1 insn = 1 ns), so the numbers do not move with host load; a ratio is a ratio of "
               "instructions executed, not of real cycles (caches, TLBs, locks contention are not modelled)")

Samples = list[list[float]]     # per boot (or round): the values of its repetitions


# ---------------------------------------------------------------- programs

def build_bins(src_dir: Path | None = None, cache: Path | None = None, cc: str = CC) -> Path:
    """Compile every guest_tests/bench/*.c (static); returns the directory of binaries, cached by content."""
    src_dir = Path(src_dir) if src_dir else BENCH_SRC
    if shutil.which(cc) is None:
        raise MissingTool(f"{cc} not found: install gcc (apt-get install gcc libc6-dev)")
    progs = sorted(src_dir.glob("*.c"))
    if not progs:
        raise BuildError(f"no benchmark programs (*.c) in {src_dir}")
    h = hashlib.sha256(" ".join([cc, *CFLAGS]).encode())
    for p in progs + sorted(src_dir.glob("*.h")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    root = (Path(cache) if cache else paths.cache_dir()) / "bench_bins"
    final = root / h.hexdigest()[:16]
    if final.is_dir() and all((final / p.stem).is_file() for p in progs):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        for src in progs:
            proc = subprocess.run([cc, *CFLAGS, "-o", str(tmp / src.stem), str(src)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError(f"benchmark program {src.name} does not compile", proc.stderr[-3000:])
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class Reading:
    value: float
    unit: str
    better: str       # "higher" | "lower"


def parse(text: str) -> dict[str, Reading]:
    """`name=value [unit [higher|lower]]` lines; anything else is ignored."""
    out: dict[str, Reading] = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        name, eq, val = head.partition("=")
        if not eq or not name or not name.replace("_", "").isalnum():
            continue
        try:
            value = float(val)
        except ValueError:
            continue
        if not math.isfinite(value):
            continue
        words = rest.split()
        unit = words[0] if words else ""
        better = words[1] if len(words) > 1 and words[1] in ("higher", "lower") else "higher"
        out[name] = Reading(value, unit, better)
    return out


# ---------------------------------------------------------------- statistics

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


@dataclass
class MetricResult:
    name: str
    unit: str
    better: str
    baseline_median: float
    patched_median: float
    baseline_stddev_pct: float
    patched_stddev_pct: float
    change_pct: float
    ci95_pct: tuple[float, float]
    significant: bool
    runs: int                 # boots (rounds) per side
    samples: int              # values per side (boots x repetitions)
    decided: bool
    p_value: float = 1.0      # this metric alone, this look
    p_adjusted: float = 1.0   # Holm over the metrics, scaled by alpha / (this look's level): compare with ALPHA

    @property
    def verdict(self) -> str:
        if not self.significant:
            return "" if self.decided else "undecided"
        worse = self.change_pct < 0 if self.better == "higher" else self.change_pct > 0
        return "regression" if worse else "improvement"

    def as_json(self) -> dict:
        return {"name": self.name, "unit": self.unit, "baseline_median": self.baseline_median,
                "patched_median": self.patched_median, "change_pct": round(self.change_pct, 3),
                "ci95_pct": [round(self.ci95_pct[0], 3), round(self.ci95_pct[1], 3)],
                "significant": self.significant, "runs": self.runs,
                # extras (not in the contract): direction, spread, sample count, p-values, verdict
                "better": self.better, "baseline_stddev_pct": round(self.baseline_stddev_pct, 3),
                "patched_stddev_pct": round(self.patched_stddev_pct, 3), "samples": self.samples,
                "p_value": _round_p(self.p_value), "p_adjusted": _round_p(self.p_adjusted),
                "verdict": self.verdict or "no change"}


def _round_p(p: float) -> float:
    return float(f"{p:.4g}")


def is_significant(change: float, ci: tuple[float, float], min_effect: float, p_adjusted: float,
                   alpha: float = ALPHA) -> bool:
    """Significant: the family- and look-adjusted p-value is at most ALPHA, the 95 % interval
    excludes zero (so the table never stars a change its own interval doubts), and the change is at
    least MIN_EFFECT % (a floor against real-but-negligible shifts, e.g. one kernel's different
    memory layout)."""
    lo, hi = ci
    return p_adjusted <= alpha and (lo > 0 or hi < 0) and abs(change) >= min_effect


def is_decided(significant: bool, ci: tuple[float, float], min_effect: float) -> bool:
    """Decided: significant, or the whole interval lies inside ±MIN_EFFECT (no change that matters).
    Otherwise the interval is too wide to tell, and another round may settle it. (Only the stopping
    rule uses this; the alpha split over the looks holds whatever it decides.)"""
    lo, hi = ci
    return significant or (-min_effect <= lo and hi <= min_effect)


def adjust_family(results: list[MetricResult], *, min_effect: float, level: float | None = None,
                  alpha: float = ALPHA) -> list[MetricResult]:
    """Holm over the metrics of one look, tested at `level` (look_alpha(); default alpha: a single
    look). Sets p_adjusted (Holm's, scaled by alpha / level, so that it compares with alpha whatever
    the look), significant and decided of every result, in place, and returns them."""
    level = alpha if level is None else level
    for m, p_holm in zip(results, holm([m.p_value for m in results])):
        m.p_adjusted = min(1.0, p_holm * alpha / level)
        m.significant = is_significant(m.change_pct, m.ci95_pct, min_effect, m.p_adjusted, alpha)
        m.decided = is_decided(m.significant, m.ci95_pct, min_effect)
    return results


def analyze_metric(name: str, unit: str, better: str, base: Samples, patched: Samples, *,
                   min_effect: float, n_boot: int = 2000, seed: int = 0, alpha: float = ALPHA) -> MetricResult:
    """One metric on its own (a family of one, one look); Collected.analyze() adjusts over the family."""
    pb, pp = pooled(base), pooled(patched)
    mb, mp = median(pb), median(pp)
    ch = change_pct(mb, mp)
    # seed per metric, so adding or removing a metric does not change the others' intervals
    s = seed ^ int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
    ci = combined_ci(base, patched, n_boot=n_boot, seed=s)
    p = metric_p_value(base, patched)
    sig = is_significant(ch, ci, min_effect, p, alpha)
    return MetricResult(name=name, unit=unit, better=better, baseline_median=mb, patched_median=mp,
                        baseline_stddev_pct=stddev_pct(pb), patched_stddev_pct=stddev_pct(pp),
                        change_pct=ch, ci95_pct=ci, significant=sig,
                        runs=min(len(base), len(patched)), samples=min(len(pb), len(pp)),
                        decided=is_decided(sig, ci, min_effect), p_value=p, p_adjusted=p)


@dataclass
class Collected:
    """Everything measured so far: metric -> per-boot repetition values, for each side."""
    a: dict[str, Samples] = field(default_factory=dict)
    b: dict[str, Samples] = field(default_factory=dict)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    rounds: int = 0

    def add_boot(self, side: str, reps: list[dict[str, Reading]]) -> None:
        store = self.a if side == "a" else self.b
        boot: dict[str, list[float]] = {}
        for rep in reps:
            for name, r in rep.items():
                if name not in self.units:
                    self.units[name] = (r.unit, r.better)
                    self.order.append(name)
                boot.setdefault(name, []).append(r.value)
        for name, vals in boot.items():
            store.setdefault(name, []).append(vals)

    def analyze(self, min_effect: float, n_boot: int = 2000, seed: int = 0, level: float | None = None,
                alpha: float = ALPHA) -> list[MetricResult]:
        """Every metric, then Holm over them at this look's `level` (adjust_family)."""
        out = []
        for name in self.order:
            if self.a.get(name) and self.b.get(name):
                unit, better = self.units[name]
                out.append(analyze_metric(name, unit, better, self.a[name], self.b[name],
                                          min_effect=min_effect, n_boot=n_boot, seed=seed, alpha=alpha))
        return adjust_family(out, min_effect=min_effect, level=level, alpha=alpha)


# ---------------------------------------------------------------- sides and the run loop

class Side(Protocol):
    label: str

    def start(self, round_no: int) -> None: ...
    def ready(self) -> None: ...
    def rep(self) -> dict[str, Reading]: ...
    def stop(self) -> None: ...


@dataclass
class BenchOptions:
    runs: int = 3                 # rounds (A and B boots) at least
    max_runs: int = 6             # rounds at most, while some metric is undecided
    reps: int = 3                 # benchmark repetitions per boot
    duration_ms: int = 200        # per time-boxed metric
    min_effect: float = 3.0       # % below which a change is not called significant
    alpha: float = ALPHA          # false-alarm rate of the whole run (all metrics, all looks)
    n_boot: int = 2000
    seed: int = 0
    only: tuple[str, ...] = ()    # metric name substrings; empty = all
    icount: bool = True           # TCG: guest time counts instructions (-icount), immune to host load
    warmup: bool = True           # one short throw-away pass per boot


def run_bench(a: Side, b: Side, opts: BenchOptions,
              progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[Collected, list[MetricResult]]:
    """Interleave A and B: each round starts both sides fresh (a new boot each), then runs the
    repetitions alternately, A B B A A B ..., so slow drift of the host lands on both sides; the
    order of the sides flips every round. After `runs` rounds, keep adding rounds (up to `max_runs`)
    while any metric is undecided. Every round from `runs` on is a look: all metrics are tested, with
    Holm over them, at that look's share of alpha (look_alpha()), so whichever look the run stops at,
    its false-alarm rate over all metrics and looks stays at or below alpha."""
    col = Collected()
    results: list[MetricResult] = []
    looks = n_looks(opts.runs, opts.max_runs)
    while True:
        col.rounds += 1
        r = col.rounds
        first, second = (a, b) if r % 2 else (b, a)
        reps: dict[str, list[dict[str, Reading]]] = {"a": [], "b": []}
        try:
            first.start(r)
            second.start(r)      # both guests boot at once; no measurement runs while either boots
            first.ready()
            second.ready()
            for i in range(opts.reps):
                pair = (first, second) if i % 2 == 0 else (second, first)
                for side in pair:
                    got = side.rep()
                    if opts.only:
                        got = {k: v for k, v in got.items() if any(s in k for s in opts.only)}
                    reps["a" if side is a else "b"].append(got)
        finally:
            first.stop()
            second.stop()
        col.add_boot("a", reps["a"])
        col.add_boot("b", reps["b"])
        if not col.order:
            raise BadInput(f"-k {' '.join(opts.only)}: no metric matches (names: see guest_tests/bench/ovlbench.c)")
        if r < opts.runs:
            progress(f"round {r}/{opts.runs} done")
            continue
        level = look_alpha(min(looks, r - opts.runs + 1), looks, opts.alpha)
        results = col.analyze(opts.min_effect, opts.n_boot, opts.seed, level=level, alpha=opts.alpha)
        undecided = [m.name for m in results if not m.decided]
        if not undecided:
            progress(f"round {r}: every metric decided")
            return col, results
        if r >= opts.max_runs:
            progress(f"round {r}: stopping at --max-runs {opts.max_runs} with {len(undecided)} "
                     f"metric(s) still undecided: {', '.join(undecided)}")
            return col, results
        progress(f"round {r}: {len(undecided)} metric(s) undecided "
                 f"({', '.join(undecided[:4])}{', ...' if len(undecided) > 4 else ''}); another round")


@dataclass(frozen=True)
class SimMetric:
    """One simulated metric: its typical value, boot-to-boot spread and repetition noise (standard
    deviations, in % of the value)."""
    name: str
    value: float = 100.0
    boot_sd_pct: float = 4.0
    rep_sd_pct: float = 1.0
    unit: str = "MB/s"
    better: str = "higher"


class SimulatedSide:
    """A Side made of simulated readings (no VM, no overlay): each start() is a "boot" that draws one
    offset per metric (log-normal, boot_sd_pct), each rep() one reading per metric with repetition
    noise (rep_sd_pct), times scale[name] (the simulated effect of a patch; 1.0 when not given).
    Seeded: drives run_bench() through the whole decision procedure, e.g. to measure its A/A
    false-alarm rate and its power (tests/test_bench.py, bench/bench_aa_false_alarm.py)."""

    def __init__(self, label: str, metrics: list[SimMetric], seed: int,
                 scale: dict[str, float] | None = None) -> None:
        self.label, self.metrics = label, list(metrics)
        self.scale = dict(scale or {})
        self.rng = random.Random(seed)
        self.offsets: dict[str, float] = {}

    def start(self, round_no: int) -> None:
        self.offsets = {m.name: self.rng.gauss(0.0, m.boot_sd_pct / 100) for m in self.metrics}

    def ready(self) -> None:
        pass

    def rep(self) -> dict[str, Reading]:
        return {m.name: Reading(m.value * self.scale.get(m.name, 1.0)
                                * math.exp(self.offsets[m.name] + self.rng.gauss(0.0, m.rep_sd_pct / 100)),
                                m.unit, m.better)
                for m in self.metrics}

    def stop(self) -> None:
        pass


GUEST_BENCH_DIR = "/tmp/kb"


def rep_script(binary: str, base: str, mount_cmd: str, umount_cmd: str, duration_ms: int, cold: bool) -> str:
    """Shell for one repetition: fresh layers, mount, run, unmount."""
    q = shlex.quote
    return (f"B={q(base)}; {umount_cmd} 2>/dev/null; rm -rf \"$B\"; "
            f"mkdir -p \"$B/lower\" \"$B/upper\" \"$B/work\" \"$B/mnt\" && {q(binary)} prepare \"$B/lower\" && "
            f"{mount_cmd} && {{ {q(binary)} run \"$B/mnt\" -d {int(duration_ms)}{'' if cold else ' -n'}; rc=$?; "
            f"{umount_cmd}; rm -rf \"$B\"; exit $rc; }}")


ICOUNT_SHIFT = 0     # -icount shift=0: one emulated instruction = 1 ns of guest time


def bench_vm_class():
    """rig.vm.VM plus, under TCG, `-icount shift=0,sleep=off`: guest time then counts emulated
    instructions instead of host wall-clock time, so the measurements are immune to host load
    (other builds, the other guest). Subclassed here so vm.py stays as it is."""
    from .vm import VM

    class BenchVM(VM):
        icount: bool = True

        def command(self) -> list[str]:
            cmd = super().command()
            if self.accel == "tcg" and self.icount:
                cmd += ["-icount", f"shift={ICOUNT_SHIFT},sleep=off,align=off"]
            return cmd

    return BenchVM


class GuestSide:
    """A kernel booted afresh in QEMU each round; the overlay is the guest kernel's, on tmpfs layers."""

    def __init__(self, label: str, bzimage: Path, bins: Path, run_root: Path, opts: BenchOptions,
                 progress: Callable[[str], None], boot_timeout: float = 180.0) -> None:
        self.label, self.bzimage, self.bins, self.run_root = label, bzimage, bins, run_root
        self.opts, self.progress, self.boot_timeout = opts, progress, boot_timeout
        self.vm = None
        self.accel = ""
        self.boots = 0
        self.boot_s: list[float] = []

    def start(self, round_no: int) -> None:
        d = self.run_root / f"{self.label}-{round_no}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.bins / PROGRAM, d / PROGRAM)
        os.chmod(d / PROGRAM, 0o755)
        # smp=1: fewer sources of noise inside the guest, and two guests fit the 2-core host
        self.vm = bench_vm_class()(bzimage=self.bzimage, run_dir=d, name=f"bench-{self.label}", smp=1)
        self.vm.icount = self.opts.icount
        self.vm.start()
        self.boots += 1

    def ready(self) -> None:
        if self.vm.ssh is None:
            self.boot_s.append(self.vm.wait_ready(self.boot_timeout))
            self.accel = self.vm.accel + ("+icount" if self.vm.accel == "tcg" and self.opts.icount else "")
            self.progress(f"[{self.label}] boot {self.boots}: SSH after {self.boot_s[-1]:.1f} s ({self.accel})")
            rc, out, err = self.vm.ssh.run(f"cp /mnt/kproto/{PROGRAM} /tmp/{PROGRAM} && chmod 755 /tmp/{PROGRAM}",
                                           timeout=60)
            if rc != 0:
                raise GuestError(f"[{self.label}] cannot stage the benchmark program in the guest: {err.strip()[:200]}")
            # one short throw-away pass: first-touch effects of a fresh boot stay out of the samples
            if self.opts.warmup:
                self._run(duration_ms=min(10, self.opts.duration_ms))

    def _run(self, duration_ms: int) -> dict[str, Reading]:
        b = GUEST_BENCH_DIR
        mount = (f"mount -t overlay overlay -o lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work {b}/mnt")
        script = rep_script(f"/tmp/{PROGRAM}", b, mount, f"umount {b}/mnt", duration_ms, cold=True)
        rc, out, err = self.vm.ssh.run(script, timeout=300)
        got = parse(out)
        if rc != 0 or not got:
            raise GuestError(f"[{self.label}] benchmark failed in the guest (exit {rc}): "
                             f"{(err or out).strip()[-300:]}", self.vm.console_tail(15))
        return got

    def rep(self) -> dict[str, Reading]:
        self.ready()
        return self._run(self.opts.duration_ms)

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            self.vm = None


class HostSide:
    """An overlay on the host, fresh layers on a private tmpfs every repetition: the host kernel's
    overlayfs ("host") or the reference overlay ("ref", overlay_ref over FUSE)."""

    def __init__(self, label: str, kind: str, bins: Path, run_root: Path, opts: BenchOptions) -> None:
        if kind not in ("host", "ref"):
            raise ValueError(kind)
        self.label, self.kind, self.bins, self.run_root, self.opts = label, kind, bins, run_root, opts
        self.base = run_root / f"host-{kind}"
        self._tmpfs = False

    def start(self, round_no: int) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if not self._tmpfs:
            p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(self.base)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise InfraError(f"cannot mount a tmpfs for the host benchmark layers: {p.stderr.strip()}")
            self._tmpfs = True

    def ready(self) -> None:
        pass

    def _mount_cmds(self) -> tuple[str, str]:
        q = shlex.quote
        b = "$B"
        if self.kind == "host":
            return (f"mount -t overlay overlay -o lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work {b}/mnt",
                    f"umount {b}/mnt")
        py = q(sys.executable)
        env = f"PYTHONPATH={q(str(paths.REPO))}"
        return (f"{env} {py} -m overlay_ref mount {b}/lower {b}/upper {b}/work {b}/mnt",
                f"{env} {py} -m overlay_ref umount {b}/mnt")

    def rep(self) -> dict[str, Reading]:
        mount, umount = self._mount_cmds()
        work = str(self.base / "kb")
        script = rep_script(str(self.bins / PROGRAM), work, mount, umount, self.opts.duration_ms, cold=False)
        p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=600)
        got = parse(p.stdout)
        if p.returncode != 0 or not got:
            raise InfraError(f"[{self.label}] benchmark on the host failed (exit {p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-300:]}")
        return got

    def stop(self) -> None:
        pass

    def close(self) -> None:
        if self._tmpfs:
            mnt = self.base / "kb" / "mnt"
            if os.path.ismount(mnt):
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            subprocess.run(["umount", str(self.base)], capture_output=True)
            self._tmpfs = False


# ---------------------------------------------------------------- output

def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.4g}"


def _fmt_pct(x: float) -> str:
    return f"{x:+.1f}" if abs(x) < 1000 else (">+999" if x > 0 else "<-999")


def _fmt_p(p: float) -> str:
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def render(results: list[MetricResult], *, title: str, a_label: str, b_label: str, accel: str,
           rounds: int, reps: int, min_effect: float, per: str = "boot", alpha: float = ALPHA) -> str:
    lines = [title]
    if accel.startswith("tcg"):
        lines.append(f"note: {TCG_NOTE}")
        if "icount" in accel:
            lines.append(f"note: {ICOUNT_NOTE}")
    elif accel:
        lines.append(f"accel: {accel}")
    lines.append(f"{rounds} {per}(s) per side, {reps} repetition(s) per {per}, interleaved A B; "
                 f"95% CI: two-level bootstrap of the median ratio, widened to the paired per-round t-interval; "
                 f"p_adj: Welch's t on the per-{per} medians, Holm over the {len(results)} metric(s), scaled for "
                 f"the adaptive rounds; '*' = significant (p_adj <= {alpha:g}, CI excludes 0 and "
                 f"|%change| >= {min_effect:g}%): at most {alpha * 100:g}% of same-kernel runs show any '*'")
    if rounds < 2:
        lines.append(f"note: a single {per} per side: nothing tells how much {per}s differ, so nothing can be "
                     f"called significant; use --runs 2 or more")
    lines.append("")
    w = max([len(m.name) + len(m.unit) + 3 for m in results] + [10])
    lines.append(f"{a_label[:21]:>21s}                        {b_label[:21]:>21s}")
    lines.append(f"{'median':>12s} {'%stddev':>8s} {'%change':>9s}   {'median':>12s} {'%stddev':>8s}"
                 f"   {'95% CI of %change':>19s} {'p_adj':>6s}   {'metric':<{w}s}")
    lines.append(f"{'-' * 12} {'-' * 8} {'-' * 9}   {'-' * 12} {'-' * 8}   {'-' * 19} {'-' * 6}   {'-' * w}")
    for m in results:
        ci = f"[{_fmt_pct(m.ci95_pct[0])}, {_fmt_pct(m.ci95_pct[1])}]"
        star = "*" if m.significant else " "
        name = f"{m.name} ({m.unit})"
        lines.append(f"{_fmt(m.baseline_median):>12s} {'± ' + format(m.baseline_stddev_pct, '.0f') + '%':>8s} "
                     f"{m.change_pct:+8.1f}%{star}  {_fmt(m.patched_median):>12s} "
                     f"{'± ' + format(m.patched_stddev_pct, '.0f') + '%':>8s}   {ci:>19s} {_fmt_p(m.p_adjusted):>6s}   "
                     f"{name:<{w}s} {m.verdict}".rstrip())
    reg = [m.name for m in results if m.verdict == "regression"]
    imp = [m.name for m in results if m.verdict == "improvement"]
    und = [m.name for m in results if m.verdict == "undecided"]
    lines.append("")
    lines.append(f"significant regressions: {', '.join(reg) if reg else 'none'}")
    if imp:
        lines.append(f"significant improvements: {', '.join(imp)}")
    if und:
        lines.append(f"undecided (CI too wide after {rounds} round(s); try --max-runs): {', '.join(und)}")
    return "\n".join(lines)


def to_json(results: list[MetricResult], **extra) -> dict:
    return {"metrics": [m.as_json() for m in results], **extra}
