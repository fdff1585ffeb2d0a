"""Output of `kproto bench`: the kernel-test-robot style `%stddev %change %stddev` table (render) and the
JSON report of docs/design.md §4 (to_json, report_json), with the notes on what TCG / -icount numbers mean."""
from __future__ import annotations

from typing import Any

from rig.bench.metrics import MetricResult
from rig.bench.run import BenchOptions
from rig.bench.stats import ALPHA, n_looks

TCG_NOTE = ("under TCG (no KVM) absolute numbers mean little: every instruction is emulated; "
            "the ratios (%change) between kernels measured the same way are what counts")

ICOUNT_NOTE = ("guests ran with -icount (shift=0): guest time is the count of emulated instructions "
               "(1 insn = 1 ns), so the numbers do not move with host load; a ratio is a ratio of "
               "instructions executed, not of real cycles (caches, TLBs, locks contention are not modelled)")


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


def report_json(results: list[MetricResult], *, rounds: int, opts: BenchOptions, accel: str,
                extra: dict[str, Any]) -> dict:
    """The whole JSON report of one run: the metrics, how they were measured and tested, EXTRA (what was
    compared), and under TCG the note on what the numbers mean."""
    doc = to_json(results, rounds=rounds, reps=opts.reps, min_effect_pct=opts.min_effect, alpha=opts.alpha,
                  looks=n_looks(opts.runs, opts.max_runs), **extra)
    if accel.startswith("tcg"):
        doc["note"] = TCG_NOTE + ("; " + ICOUNT_NOTE if "icount" in accel else "")
    return doc
