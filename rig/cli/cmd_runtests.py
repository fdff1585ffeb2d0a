"""`kproto run-tests --target {ref,host}`: the guest-test suite without a VM."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rig.core import progress
from rig.suite import runtests


@click.command("run-tests")
@click.option("--target", type=click.Choice(sorted(runtests.TARGETS)), required=True,
              help="host: the host kernel's overlayfs; ref: the reference overlay (against itself)")
@click.option("-k", "pattern", default=None, help="select tests: glob or substring of name/tag, comma-separated")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help='write {"target", "tests": [...]} here')
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write JUnit XML here")
@click.option("--ktap", is_flag=True, help="print KTAP instead of the table")
@click.option("--timeout", type=float, default=None, help="override every test's timeout (s)")
def command(target: str, pattern: str | None, json_path: Path | None, junit_path: Path | None,
            ktap: bool, timeout: float | None) -> None:
    """Run the guest-test suite on the reference overlay and on TARGET; compare them.

    Exit 0: every test matches or is a known divergence; 1: unexplained divergences; 3: infrastructure error.
    """
    code = runtests.run(target, pattern, json_path, junit_path, ktap, timeout, echo=click.echo,
                        progress=progress.for_stderr("kproto: "))
    sys.exit(code)
