"""`kproto reproduce BUNDLE`: run a reproducer bundle written by `kproto test --repro DIR` (or the nightly)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rig.core import progress

_say = progress.for_stderr("kproto: ")


@click.command("reproduce")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=click.IntRange(min=1, max=20), default=1, show_default=True, metavar="N",
              help="fresh boots, the test run once in each (for an outcome that varies from boot to boot)")
@click.option("--kernel-src", metavar="PATH",
              help="kernel git tree or tarball instead of the bundle's source (it must be at the bundle's base commit)")
@click.option("--keep", is_flag=True, help="keep the run directory (console logs)")
def reproduce_cmd(bundle: Path, runs: int, kernel_src: str | None, keep: bool) -> None:
    """Rebuild (or reuse from the cache) the kernel of BUNDLE from its base, series and config, boot it,
    run its one guest test as `kproto test` does (per-test barrier, splat scan), print the observations
    and any splat, and compare them with the bundle's expected.json.

    BUNDLE is DIR/<test>/ of `kproto test --repro DIR` (or DIR itself when it holds one bundle).

    Exit: 0 reproduced (in at least one of the N runs), 1 did not reproduce, 2 bad bundle (a missing or
    changed file, named) or a kernel source not at the bundle's base, 3 infrastructure failure."""
    from rig.suite import repro
    res = repro.reproduce(repro.ReproOptions(bundle=bundle, runs=runs, kernel_src=kernel_src, keep=keep,
                                             progress=_say))
    click.echo(repro.render_result(res))
    sys.exit(res.exit_code)
