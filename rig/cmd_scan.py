"""`kproto scan CONSOLE_LOG [--json]`: splat analysis of any kernel console log or dmesg."""
from __future__ import annotations

import json
from pathlib import Path

import click

from . import splats as splatmod
from .errors import BadInput


@click.command("scan")
@click.argument("console_log", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help='print {"splats": [{"kind", "title", "signature", "log", "count"}, ...]} instead of the table')
def command(console_log: Path, as_json: bool) -> None:
    """Find kernel splats (lockdep, WARNING, BUG/oops, KASAN/KFENCE/UBSAN, hung tasks, RCU stalls,
    lockups, panics) in CONSOLE_LOG, titled like syzkaller and deduplicated by signature: the lock
    classes of a lockdep report (a cycle is the same splat whichever edge closed it), function@file of a
    WARNING/BUG, the function of an oops or hang; --json shows it.

    Works on any kernel console log or dmesg output, from any machine. Exit status is 0 whenever the log
    could be read, whether splats were found or not (this command reports, it does not judge; use
    `kproto test` for a verdict); 2 when the file is missing or unreadable.
    """
    path = Path(console_log)
    if not path.exists():
        raise BadInput(f"console log not found: {path}")
    if not path.is_file():
        raise BadInput(f"not a regular file: {path}")
    try:
        found = splatmod.scan_file(path)
    except OSError as e:
        raise BadInput(f"cannot read console log {path}: {e.strerror or e}") from e
    if as_json:
        click.echo(json.dumps({"splats": [s.as_json() for s in found]}, indent=2))
    else:
        click.echo(splatmod.format_table(found))
