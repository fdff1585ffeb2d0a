"""From samples to a decision per metric: MetricResult, the significance and decision rules, the family
adjustment of one look (Holm, scaled for the look's share of alpha), and Collected, everything measured
so far (metric -> per-boot repetition values, for each side). The arithmetic lives in rig.bench.stats."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from rig.bench.readings import Reading
from rig.bench.stats import (ALPHA, Samples, change_pct, combined_ci, holm, median, metric_p_value, pooled,
                             stddev_pct)


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
