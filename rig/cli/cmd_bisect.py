"""`kproto bisect`: which patch of a series first breaks a guest test, brings a splat, or breaks the build."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rig.core.errors import BadInput


def _say(msg: str) -> None:
    click.echo(f"kproto: {msg}", err=True)


@click.command("bisect")
@click.argument("series", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--test", "test_name", metavar="NAME", help="bad = guest test NAME regresses (vs reference and baseline)")
@click.option("--splat", metavar="SIGNATURE", help="bad = a splat with this signature (or title) shows during the tests")
@click.option("--build", "build_only", is_flag=True, help="bad = the kernel does not build (nothing is booted)")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the steps and the first bad patch as JSON")
@click.option("-k", "pattern", help="--splat: run only guest tests whose name matches (default: all; after the "
                                    "whole series ran, only the tests that showed the splat)")
@click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (default: Debian linux-source-6.12)")
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="extra Kconfig fragment (repeatable)")
@click.option("--timeout", type=click.FloatRange(min=1), help="per-test timeout in seconds (default: each test's own)")
@click.option("--confirm", type=click.IntRange(min=0, max=20), default=2, show_default=True, metavar="N",
              help="extra fresh boots of each kernel when a step's outcome can vary (as kproto test)")
@click.option("--flaky-bad", is_flag=True, help="a step whose outcome varies across boots counts as bad "
                                                "(an intermittent bug); by default only a consistent failure is bad")
@click.option("--suite", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="directory of guest tests instead of guest_tests/")
@click.option("--keep", is_flag=True, help="keep the run directories (console logs)")
def bisect_cmd(series, test_name, splat, build_only, json_out, pattern, kernel_src, config, timeout, confirm,
               flaky_bad, suite, keep):
    """Name the first patch of SERIES... (patch files or a directory, in order) that is bad: guest test
    NAME regresses (--test), a splat shows (--splat), or the kernel does not build (--build). Each step
    builds a prefix incrementally on the baseline's objects and runs only the tests the criterion needs.

    Exit: 1 a first bad patch (or a range) was named, or the whole series is only flaky; 0 the series does
    not regress (or the baseline already fails); 2 bad input; 3 infrastructure failure."""
    from rig.suite import bisect
    given = [(k, v) for k, v in (("test", test_name), ("splat", splat), ("build", build_only or None)) if v]
    if len(given) != 1:
        raise BadInput("give exactly one of --test NAME, --splat SIGNATURE, --build (what makes a prefix bad)")
    kind, value = given[0]
    if pattern and kind != "splat":
        raise BadInput("-k selects the tests of --splat (--test runs only its test; --build boots nothing)")
    opts = bisect.BisectOptions(patches=list(series), criterion=bisect.Criterion(kind, None if kind == "build" else value),
                                kernel_src=kernel_src, config=tuple(config), pattern=pattern, timeout=timeout,
                                confirm=confirm, flaky_bad=flaky_bad, keep=keep, progress=_say,
                                **({"suite": suite} if suite else {}))
    res = bisect.run(opts)
    click.echo(bisect.render(res))
    if json_out:
        res.write_json(json_out)
    sys.exit(res.exit_code)
