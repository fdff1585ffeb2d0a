"""`kproto check PATCH...` (is this series ready to post?) and `kproto cover-letter TEST.json [BENCH.json]`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rig.core import progress
from rig.check import validate as checkmod
from rig.check import coverletter
from rig.kernel import patches as patchmod
from rig.kernel import tree as treemod


_say = progress.for_stderr("kproto: ")   # one line per message; a live line on a terminal


@click.command("check")
@click.argument("patches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--strict", is_flag=True, help="pass --strict to checkpatch.pl (adds CHECK: findings)")
@click.option("--each", is_flag=True, help="build every prefix of the series in turn (bisectability); names the "
                                           "first patch that breaks the build")
@click.option("--build", "build_all", is_flag=True, help="build the whole series once (no per-patch builds)")
@click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (default: Debian linux-source-6.12)")
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="extra Kconfig fragment for --each/--build (repeatable)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the check result as JSON")
@click.option("--test-report", type=click.Path(path_type=Path), metavar="TEST.json",
              help="append the cover-letter 'Testing:' section rendered from a `kproto test --json` report")
@click.option("--bench-report", type=click.Path(path_type=Path), metavar="BENCH.json",
              help="with --test-report: add the `kproto bench --json` summary")
def check_cmd(patches, strict, each, build_all, kernel_src, config, json_out, test_report, bench_report):
    """Is PATCH... ready to post? PATCH is a patch file, a directory of `git format-patch` output (a 0000-
    cover letter is not applied, its subject is shown), or an mbox holding a series.

    Applies the series patch by patch to the base (naming the first patch and hunk that fail), runs the tree's
    scripts/checkpatch.pl on each patch, and scripts/get_maintainer.pl for To/Cc. With --each, builds each
    patch of the series in turn and names the first one that breaks the build.

    Exit: 0 ready to post; 1 findings (checkpatch errors, a patch breaks the build); 2 the series does not
    apply or the input is bad; 3 infrastructure failure."""
    report = bench = None
    if bench_report and not test_report:
        raise click.UsageError("--bench-report needs --test-report")
    if test_report:   # validate before the (possibly long) checks
        report = coverletter.load_test_report(test_report)
        bench = coverletter.load_bench_report(bench_report) if bench_report else None
    covers = checkmod.cover_letters(patches)
    series = patchmod.expand(checkmod.patch_args(patches))
    tree = treemod.open_source(kernel_src)
    with checkmod.prepared(series, covers) as s:
        res = checkmod.check_series(tree, s, strict=strict, each=each, build_all=build_all, config=tuple(config),
                                    progress=_say)
    click.echo(checkmod.format_text(res))
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1) + "\n")
    if report is not None:
        click.echo("")
        click.echo(coverletter.render(report, bench, tuple(config)), nl=False)
    sys.exit(res["exit_code"])


@click.command("cover-letter")
@click.argument("test_json", type=click.Path(path_type=Path))
@click.argument("bench_json", required=False, type=click.Path(path_type=Path))
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="the extra Kconfig fragment(s) the test run used, when the report does not name them")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="write the text here instead of stdout")
def cover_letter_cmd(test_json, bench_json, config, output):
    """Print a plain-text "Testing:" section for a cover letter from a `kproto test --json` report
    (and optionally a `kproto bench --json` file): base and kernel version, config, scenarios fixed and
    regressed, new splats, bench summary. Exit 0, or 2 when a file is missing or not such a report."""
    report = coverletter.load_test_report(test_json)
    bench = coverletter.load_bench_report(bench_json) if bench_json else None
    text = coverletter.render(report, bench, tuple(config))
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


