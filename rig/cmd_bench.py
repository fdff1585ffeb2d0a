"""`kproto bench PATCH... [--runs N] [--json FILE]` and `kproto bench --host-vs-ref`."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from . import bench as benchmod
from .errors import EXIT_CLEAN, EXIT_REGRESSED, BadInput


def _say(msg: str) -> None:
    click.echo(f"kproto: {msg}", err=True)


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
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the JSON report (DESIGN.md §4)")
@click.option("--host-vs-ref", is_flag=True, help="no VM: the host kernel's overlayfs (baseline column) against "
              "the reference overlay (patched column), same programs, same table")
@click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (default: Debian linux-source-6.12)")
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="extra Kconfig fragment (repeatable)")
@click.option("--keep", is_flag=True, help="keep the run directory (console logs)")
def command(patches, runs, max_runs, reps, duration_ms, min_effect, no_icount, only, json_out, host_vs_ref, kernel_src,
            config, keep):
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
    from .testrun import new_run_dir
    opts = benchmod.BenchOptions(runs=runs, max_runs=max(max_runs or 2 * runs, runs), reps=reps,
                                 duration_ms=duration_ms, min_effect=min_effect, only=tuple(only),
                                 icount=not no_icount)
    if host_vs_ref and patches:
        raise BadInput("--host-vs-ref compares the host's overlayfs with the reference overlay; it takes no PATCH")
    bins = benchmod.build_bins()
    run_root = new_run_dir(keep)
    a = b = None
    try:
        if host_vs_ref:
            a = benchmod.HostSide("host", "host", bins, run_root, opts)
            b = benchmod.HostSide("ref", "ref", bins, run_root, opts)
            a_label, b_label = "host overlayfs", "overlay_ref"
            import platform
            title = f"kproto bench: host kernel {platform.release()} overlayfs vs the reference overlay (FUSE)"
            accel = ""
            extra = {"mode": "host-vs-ref", "host_kernel": platform.release()}
            _say("host-vs-ref: cold-cache metric skipped (drop_caches would hit the whole shared host)")
        else:
            from . import build as buildmod, patches as patchmod, tree as treemod
            series = patchmod.expand(patches)
            tree = treemod.open_source(kernel_src)
            base_k = buildmod.build(tree, [], tuple(config), progress=_say)
            _say(f"baseline kernel {base_k.version}: " + ("cached" if base_k.cached else f"built in {base_k.build_s:.0f} s"))
            if series:
                pat_k = buildmod.build(tree, series, tuple(config), progress=_say)
                _say("patched kernel: " + ("cached" if pat_k.cached else f"built in {pat_k.build_s:.0f} s"))
                what = ", ".join(p.path.name for p in series)
                b_label = "patched"
            else:
                pat_k = base_k
                what = "nothing (baseline vs baseline: the A/A noise check)"
                b_label = "baseline (again)"
            a_label = "baseline"
            a = benchmod.GuestSide("baseline", base_k.bzimage, bins, run_root, opts, _say)
            b = benchmod.GuestSide("patched" if series else "baseline2", pat_k.bzimage, bins, run_root, opts, _say)
            title = f"kproto bench: linux {base_k.version} baseline vs patched with {what}"
            extra = {"mode": "kernel", "kernel": {"source": tree.origin, "version": base_k.version},
                     "patches": [p.as_json() for p in series]}
            accel = ""
        col, results = benchmod.run_bench(a, b, opts, progress=_say)
        if not host_vs_ref:
            accel = a.accel or b.accel
            extra["accel"] = accel
            extra["boot_s"] = {"baseline": a.boot_s, "patched": b.boot_s}
    finally:
        for side in (a, b):
            if side is not None:
                side.stop()
                if hasattr(side, "close"):
                    side.close()
        if keep:
            _say(f"run directory kept: {run_root}")
        else:
            shutil.rmtree(run_root, ignore_errors=True)
    click.echo(benchmod.render(results, title=title, a_label=a_label, b_label=b_label, accel=accel,
                               rounds=col.rounds, reps=opts.reps, min_effect=opts.min_effect,
                               per="round" if host_vs_ref else "boot", alpha=opts.alpha))
    if json_out:
        doc = benchmod.to_json(results, rounds=col.rounds, reps=opts.reps, min_effect_pct=opts.min_effect,
                               alpha=opts.alpha, looks=benchmod.n_looks(opts.runs, opts.max_runs), **extra)
        if accel.startswith("tcg"):
            doc["note"] = benchmod.TCG_NOTE + ("; " + benchmod.ICOUNT_NOTE if "icount" in accel else "")
        Path(json_out).write_text(json.dumps(doc, indent=1) + "\n")
    if host_vs_ref:          # a comparison of two implementations, not a patch: informational
        sys.exit(EXIT_CLEAN)
    sys.exit(EXIT_REGRESSED if any(m.verdict == "regression" for m in results) else EXIT_CLEAN)
