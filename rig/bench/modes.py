"""The two kinds of `kproto bench` run, each a pair of Sides driven by run_bench() into an Outcome:

- kernels(): baseline against patched kernel (or baseline against itself: the A/A noise check), each
  booted afresh in QEMU every round (GuestSide);
- host_vs_ref(): no VM, the host kernel's overlayfs against the reference overlay (HostSide).

The sides are stopped (and their host mounts released) whatever happens. Preparing the kernels is the
caller's (rig.kernel.prepare), and so is the run directory. Outcome renders itself as the table and the
JSON report (rig.bench.report)."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rig.bench import report
from rig.bench.metrics import Collected, MetricResult
from rig.bench.run import BenchOptions, run_bench
from rig.bench.sides import GuestSide, HostSide

if TYPE_CHECKING:
    from rig.kernel.build import Kernel
    from rig.kernel.patches import Patch

Progress = Callable[[str], None]


@dataclass
class Outcome:
    col: Collected
    results: list[MetricResult]
    title: str
    a_label: str                  # the baseline column
    b_label: str                  # the patched column
    accel: str                    # "kvm", "tcg", "tcg+icount"; "" on the host
    per: str                      # what a round starts on each side: "boot" (a guest) or "round" (host)
    extra: dict[str, Any] = field(default_factory=dict)    # JSON: what was compared, and how

    @property
    def regressed(self) -> bool:
        return any(m.verdict == "regression" for m in self.results)

    def table(self, opts: BenchOptions) -> str:
        return report.render(self.results, title=self.title, a_label=self.a_label, b_label=self.b_label,
                             accel=self.accel, rounds=self.col.rounds, reps=opts.reps,
                             min_effect=opts.min_effect, per=self.per, alpha=opts.alpha)

    def json(self, opts: BenchOptions) -> dict:
        return report.report_json(self.results, rounds=self.col.rounds, opts=opts, accel=self.accel,
                                  extra=self.extra)


def host_vs_ref(bins: Path, run_root: Path, opts: BenchOptions, progress: Progress) -> Outcome:
    """The host kernel's overlayfs (baseline column) against overlay_ref over FUSE (patched column)."""
    a = HostSide("host", "host", bins, run_root, opts)
    b = HostSide("ref", "ref", bins, run_root, opts)
    release = platform.release()
    progress("host-vs-ref: cold-cache metric skipped (drop_caches would hit the whole shared host)")
    try:
        col, results = run_bench(a, b, opts, progress=progress)
    finally:
        for side in (a, b):
            side.stop()
            side.close()
    return Outcome(col, results, title=f"kproto bench: host kernel {release} overlayfs vs the reference overlay (FUSE)",
                   a_label="host overlayfs", b_label="overlay_ref", accel="", per="round",
                   extra={"mode": "host-vs-ref", "host_kernel": release})


def kernels(baseline: Kernel, patched: Kernel, series: list[Patch], source: str, bins: Path, run_root: Path,
            opts: BenchOptions, progress: Progress) -> Outcome:
    """BASELINE against PATCHED (the baseline built with SERIES; with no SERIES, PATCHED is BASELINE
    itself and the run measures the noise). SOURCE: where the kernel source came from (for the JSON)."""
    if series:
        what = ", ".join(p.path.name for p in series)
        b_label = "patched"
    else:
        what = "nothing (baseline vs baseline: the A/A noise check)"
        b_label = "baseline (again)"
    a = GuestSide("baseline", baseline.bzimage, bins, run_root, opts, progress)
    b = GuestSide("patched" if series else "baseline2", patched.bzimage, bins, run_root, opts, progress)
    try:
        col, results = run_bench(a, b, opts, progress=progress)
    finally:
        for side in (a, b):
            side.stop()
    accel = a.accel or b.accel
    extra: dict[str, Any] = {"mode": "kernel", "kernel": {"source": source, "version": baseline.version},
                             "patches": [p.as_json() for p in series],
                             "accel": accel, "boot_s": {"baseline": a.boot_s, "patched": b.boot_s}}
    return Outcome(col, results, title=f"kproto bench: linux {baseline.version} baseline vs patched with {what}",
                   a_label="baseline", b_label=b_label, accel=accel, per="boot", extra=extra)
