"""`kproto` command line (click): the group, its one-line error handling with the documented exit codes, and
the explicit list of commands. Each rig/cli/cmd_*.py parses its options, calls one API, maps exit codes."""
from __future__ import annotations

import errno
import signal
import sys

import click

from rig.cli import (cmd_bench, cmd_bisect, cmd_check, cmd_fuzz, cmd_nightly, cmd_ref, cmd_reproduce, cmd_runtests,
                     cmd_scan, cmd_test)
from rig.core.errors import EXIT_INFRA, KprotoError

COMMANDS: list[click.Command] = [
    cmd_test.test_cmd,            # kproto test
    cmd_test.build_cmd,           # kproto build
    cmd_test.shell_cmd,           # kproto shell
    cmd_ref.ref,                  # kproto ref mount|umount
    cmd_runtests.command,         # kproto run-tests
    cmd_scan.command,             # kproto scan
    cmd_check.check_cmd,          # kproto check
    cmd_check.cover_letter_cmd,   # kproto cover-letter
    cmd_bench.command,            # kproto bench
    cmd_nightly.nightly_cmd,      # kproto nightly
    cmd_nightly.history_cmd,      # kproto history
    cmd_fuzz.command,             # kproto fuzz
    cmd_bisect.bisect_cmd,        # kproto bisect
    cmd_reproduce.reproduce_cmd,  # kproto reproduce
]


class KprotoGroup(click.Group):
    def invoke(self, ctx: click.Context):  # one-line errors with the documented exit codes
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("kproto: interrupted; VMs reaped, mounts and source trees restored", err=True)
            sys.exit(EXIT_INFRA)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                click.echo(f"kproto: error: disk full writing {e.filename or 'the cache'} "
                           f"(free space there, or point KPROTO_CACHE at a bigger disk)", err=True)
                sys.exit(EXIT_INFRA)
            raise
        except KprotoError as e:
            click.echo(f"kproto: error: {e.message}", err=True)
            if e.detail:
                click.echo(e.detail, err=True)
            sys.exit(e.exit_code)


@click.group(cls=KprotoGroup)
@click.version_option(package_name="kproto")
def main() -> None:
    """kproto: does your overlayfs patch fix what it claims, does lockdep scream, what does it cost?"""
    # SIGTERM unwinds like Ctrl-C, so every context manager reaps its VM / mount / source tree.
    signal.signal(signal.SIGTERM, _sigterm)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


for _cmd in COMMANDS:
    main.add_command(_cmd)


if __name__ == "__main__":
    main()
