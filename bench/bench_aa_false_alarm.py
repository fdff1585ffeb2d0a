#!/usr/bin/env python3
"""How often does `kproto bench` cry wolf? Simulated A/A runs (the same kernel on both sides) of the
whole decision procedure, adaptive rounds included, before and after the multiplicity control, and
the power that is left. No VM: rig.bench.sim.SimulatedSide draws the readings. Prints figures only.

    .venv/bin/python bench/bench_aa_false_alarm.py [--sims 400] [--n-boot 200] [--seed 0]

Model: 14 metrics (as ovlbench prints), each with its own boot-to-boot spread drawn in 3-5 % (standard
deviation, log-normal), 1 % repetition noise; `kproto bench` defaults: 3 rounds at least, 6 at most,
3 repetitions per boot, minimum effect 3 %.

- before: the old rule, reimplemented below: a metric is significant when its own 95 % interval (the
  two-level bootstrap widened to the paired per-round t-interval) excludes 0 and |%change| >= 3 %,
  re-tested at every look, no correction over metrics or looks.
- after: rig.bench as it is: Welch's t on the per-boot log medians, Holm over the metrics, alpha
  spent over the looks (rig.bench.stats.look_alpha), the same interval and minimum effect
  (rig.bench.metrics.Collected.analyze).
Both run in the same loop (rig.bench.run.run_bench); only the per-look analysis differs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rig.bench import metrics, run, stats  # noqa: E402
from rig.bench import simulate as sim  # noqa: E402

NAMES = [f"{m}_{l}" for m in ("seqread_hot", "pread4k_rand", "open_read_close", "stat", "mmap_read")
         for l in ("lower", "upper")] + ["pread4k_fd_before_copyup", "mmap_shared_first_lower",
                                         "seqread_cold_lower", "readdir_lower"]


def old_analyze(col: metrics.Collected, min_effect: float, n_boot: int = 2000, seed: int = 0,
                **_ignored) -> list[metrics.MetricResult]:
    """The rule before the fix: each metric on its own, significant when its 95 % CI excludes 0 and
    the change reaches the minimum effect; decided when significant or the CI is inside +-min_effect."""
    out = []
    for name in col.order:
        base, patched = col.a.get(name), col.b.get(name)
        if not (base and patched):
            continue
        unit, better = col.units[name]
        pb, pp = stats.pooled(base), stats.pooled(patched)
        mb, mp = stats.median(pb), stats.median(pp)
        ch = stats.change_pct(mb, mp)
        s = seed ^ int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
        lo, hi = stats.combined_ci(base, patched, n_boot=n_boot, seed=s)
        sig = (lo > 0 or hi < 0) and abs(ch) >= min_effect
        decided = sig or (-min_effect <= lo and hi <= min_effect)
        out.append(metrics.MetricResult(name=name, unit=unit, better=better, baseline_median=mb, patched_median=mp,
                                      baseline_stddev_pct=0.0, patched_stddev_pct=0.0, change_pct=ch,
                                      ci95_pct=(lo, hi), significant=sig, runs=min(len(base), len(patched)),
                                      samples=min(len(pb), len(pp)), decided=decided))
    return out


@contextlib.contextmanager
def recording(rule: str, looks: list[list[metrics.MetricResult]]):
    """Run the loop with the `rule` ("old" or "new") per-look analysis, recording every look."""
    real = metrics.Collected.analyze

    def analyze(self, *a, **kw):
        res = old_analyze(self, *a, **kw) if rule == "old" else real(self, *a, **kw)
        looks.append(res)
        return res

    setattr(metrics.Collected, "analyze", analyze)     # run_bench() calls Collected.analyze at every look
    try:
        yield
    finally:
        setattr(metrics.Collected, "analyze", real)


def simulate(rule: str, sims: int, seed: int, n_boot: int, scale: dict[str, float] | None = None,
             boot_sd: tuple[float, float] = (3.0, 5.0), rep_sd: float = 1.0) -> dict[str, float]:
    exit1 = any_look = hit = 0
    rounds = 0
    for i in range(sims):
        rng = random.Random(seed * 1_000_003 + i)
        ms = [sim.SimMetric(n, boot_sd_pct=rng.uniform(*boot_sd), rep_sd_pct=rep_sd,
                              better="lower" if n == "mmap_shared_first_lower" else "higher") for n in NAMES]
        a = sim.SimulatedSide("A", ms, rng.randrange(1 << 30))
        b = sim.SimulatedSide("B", ms, rng.randrange(1 << 30), scale=scale)
        looks: list[list[metrics.MetricResult]] = []
        with recording(rule, looks):
            col, res = run.run_bench(a, b, run.BenchOptions(n_boot=n_boot), progress=lambda m: None)
        rounds += col.rounds
        exit1 += any(m.verdict == "regression" for m in res)
        any_look += any(m.significant for look in looks for m in look)
        hit += any(m.verdict == "regression" and m.name in (scale or {}) for m in res)
    return {"exit1": exit1 / sims, "any_look": any_look / sims, "hit": hit / sims, "rounds": rounds / sims}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=400, help="simulated `kproto bench` runs per line")
    ap.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per interval (kproto: 2000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, nb = args.sims, args.n_boot
    print(f"simulated kproto bench runs: {len(NAMES)} metrics, boot-to-boot spread 3-5 % (sd), repetition "
          f"noise 1 %, rounds 3..6 (adaptive), 3 reps, min effect 3 %, alpha {stats.ALPHA:g}, "
          f"n_boot {nb}, seed {args.seed}")
    print()
    print(f"{'':44s} {'sims':>5s} {'exit 1':>7s} {'any * at any look':>18s} {'rounds':>7s} {'found':>6s}  s")
    cases = [("A/A (same kernel)", None, (3.0, 5.0), 1.0),
             ("pread4k_rand_lower 15 % slower", {"pread4k_rand_lower": 0.85}, (3.0, 5.0), 1.0),
             ("pread4k_rand_lower 10 % slower", {"pread4k_rand_lower": 0.90}, (3.0, 5.0), 1.0),
             ("stat_lower 2 % slower, 0.1-0.2 % spread", {"stat_lower": 0.98}, (0.1, 0.2), 0.1)]
    for label, scale, boot_sd, rep_sd in cases:
        for rule in ("old", "new"):
            t = time.perf_counter()
            r = simulate(rule, n, args.seed, nb, scale, boot_sd, rep_sd)
            found = f"{100 * r['hit']:5.1f}%" if scale else "     -"
            print(f"{rule + ': ' + label:44s} {n:5d} {100 * r['exit1']:6.1f}% {100 * r['any_look']:17.1f}% "
                  f"{r['rounds']:7.2f} {found}  {time.perf_counter() - t:.0f}")
    print()
    print("exit 1: runs whose final table has a significant regression (any metric, in an A/A run a false "
          "alarm); any * at any look: runs where some metric was significant at some adaptive look; found: "
          "runs that flag the slowed metric as a regression (power; for the 2 % case, below the 3 % floor, "
          "it should stay 0)")


if __name__ == "__main__":
    main()
