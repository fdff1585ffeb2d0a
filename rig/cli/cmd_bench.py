"""`kproto bench PATCH... [--runs N] [--json FILE]` and `kproto bench --host-vs-ref`."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import click

from rig.core import progress
from rig.bench import modes
from rig.bench.programs import build_bins
from rig.bench.run import BenchOptions
from rig.core.errors import EXIT_CLEAN, EXIT_REGRESSED, BadInput


_say = progress.for_stderr("kproto: ")   # one line per message; a live line on a terminal


@click.command("bench")
@click.argument("patches", nargs=-1, type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=1), default=3, show_default=True,
              help="rounds at least: each round boots baseline and patched afresh (A B A B ...)")
@click.option("--max-runs", type=click.IntRange(min=1), help="rounds at most while a metric is undecided "
              "(default: 2 x --runs)")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True,
              help="benchmark repetitions per boot, alternating between the two kernels")
@click.option("--duration-ms", type=click.IntRange(min=10), default=50, show_default=True,
              help="time box (guest time) of each looped metric")
@click.option("--min-effect", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="smallest |%change| called significant (the adjusted p-value must also be <= 0.05 and the CI "
              "exclude 0)")
@click.option("--no-icount", is_flag=True, help="under TCG, time guests by the host wall clock instead of by "
              "emulated instruction count (noisy on a loaded host)")
@click.option("-k", "only", multiple=True, help="only metrics whose name contains this (repeatable)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the JSON report (docs/design.md §4)")
@click.option("--host-vs-ref", is_flag=True, help="no VM: the host kernel's overlayfs (baseline column) against "
              "the reference overlay (patched column), same programs, same table")
@click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (default: Debian linux-source-6.12)")
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="extra Kconfig fragment (repeatable)")
@click.option("--keep", is_flag=True, help="keep the run directory (console logs)")
def command(patches: tuple[Path, ...], runs: int, max_runs: int | None, reps: int, duration_ms: int, min_effect: float,
            no_icount: bool, only: tuple[str, ...], json_out: Path | None, host_vs_ref: bool, kernel_src: str | None,
            config: tuple[Path, ...], keep: bool) -> None:
    """Measure what PATCH... costs on the overlay read path: boot baseline and patched kernels
    (interleaved, fresh boots), run the guest micro-benchmarks on a tmpfs-backed overlay, and print
    medians, %change and a 95% bootstrap CI per metric. Without PATCH, the baseline is compared with
    itself (an A/A check of the noise).

    --host-vs-ref needs no kernel build or VM: the same programs run on the host, on the host
    kernel's overlayfs and on the reference overlay (tmpfs layers, wall-clock timing), exit 0.

    Significance is controlled over the whole run: Welch's t per metric on the per-boot medians, Holm
    over the metrics, and alpha spent across the adaptive rounds, so a same-kernel run flags any
    metric in at most 5% of runs; a change under --min-effect is never significant.

    Exit: 0 no significant regression, 1 a metric regressed significantly, 2 bad input, 3 infrastructure."""
    from rig.suite.testrun import new_run_dir
    opts = BenchOptions(runs=runs, max_runs=max(max_runs or 2 * runs, runs), reps=reps, duration_ms=duration_ms,
                        min_effect=min_effect, only=tuple(only), icount=not no_icount)
    if host_vs_ref and patches:
        raise BadInput("--host-vs-ref compares the host's overlayfs with the reference overlay; it takes no PATCH")
    bins = build_bins()
    run_root = new_run_dir(keep)
    try:
        if host_vs_ref:
            outcome = modes.host_vs_ref(bins, run_root, opts, _say)
        else:
            outcome = _kernels(patches, kernel_src, config, bins, run_root, opts)
    finally:
        if keep:
            _say(f"run directory kept: {run_root}")
        else:
            shutil.rmtree(run_root, ignore_errors=True)
    click.echo(outcome.table(opts))
    if json_out:
        Path(json_out).write_text(json.dumps(outcome.json(opts), indent=1) + "\n")
    if host_vs_ref:          # a comparison of two implementations, not a patch: informational
        sys.exit(EXIT_CLEAN)
    sys.exit(EXIT_REGRESSED if outcome.regressed else EXIT_CLEAN)


def _kernels(patches: Sequence[Path], kernel_src: str | None, config: Sequence[Path], bins: Path, run_root: Path,
             opts: BenchOptions) -> modes.Outcome:
    """The baseline and (with PATCHES) the patched kernel, through the kernel stage; then the guest run."""
    from rig.kernel import prepare        # the kernel stage only when kernels are wanted
    spec = prepare.KernelSpec(source=kernel_src, fragments=tuple(config))
    series = prepare.open_series(patches)
    tree, base_k = prepare.baseline(spec, _say)
    if base_k.cached:    # a build says "built baseline kernel: N objects in T" itself
        _say(f"baseline kernel {base_k.version}: " + base_k.outcome())
    if series:
        _, pat_k = prepare.patched(spec, series, _say, tree=tree)
        if pat_k.cached:
            _say("patched kernel: " + pat_k.outcome(incremental=True))
    else:
        pat_k = base_k
    return modes.kernels(base_k, pat_k, series, tree.origin, bins, run_root, opts, _say)
