"""`kproto` command line (click). Each command lives in its own rig/cmd_*.py module exposing `command`."""
from __future__ import annotations

import errno
import importlib
import sys

import click

import signal

from .errors import EXIT_INFRA, KprotoError

# module name -> registered as the click command it exposes (attribute `command`)
COMMAND_MODULES = [
    "rig.cmd_test",       # kproto test / build / shell
    "rig.cmd_ref",        # kproto ref mount|umount
    "rig.cmd_runtests",   # kproto run-tests
    "rig.cmd_scan",       # kproto scan
    "rig.cmd_check",      # kproto check
    "rig.cmd_bench",      # kproto bench
    "rig.cmd_nightly",    # kproto nightly / history
    "rig.cmd_fuzz",       # kproto fuzz
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


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _e:
        if _e.name != _name:
            raise
        continue
    for _attr in ("command", "commands"):
        _obj = getattr(_mod, _attr, None)
        for _cmd in (_obj if isinstance(_obj, (list, tuple)) else [_obj] if _obj else []):
            main.add_command(_cmd)


if __name__ == "__main__":
    main()
