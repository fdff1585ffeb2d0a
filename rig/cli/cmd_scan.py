"""`kproto scan LOG... [--json]`: splat analysis of kernel console logs or dmesg output (files,
directories of logs, or `-` for stdin)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rig.analysis import splats as splatmod
from rig.core.errors import BadInput


def _inputs(args: tuple[str, ...]) -> list[tuple[str, Path | None]]:
    """(name, path) per log; path None is stdin. A directory contributes its regular files, recursively,
    in name order. BadInput (exit 2) names a missing input before anything is scanned."""
    out: list[tuple[str, Path | None]] = []
    for a in args:
        if a == "-":
            out.append(("-", None))
            continue
        p = Path(a)
        if not p.exists():
            raise BadInput(f"console log not found: {p}")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            out.extend((str(f), f) for f in files)
        elif p.is_file():
            out.append((str(p), p))
        else:
            raise BadInput(f"not a regular file or directory: {p}")
    return out


@click.command("scan")
@click.argument("logs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True,
              help='one log: {"splats": [{"kind", "title", "where", "signature", "corrupted", "log", "count"}, '
                   '...]}; several: {"inputs": [{"path", "splats": [...]}, ...]}')
def command(logs: tuple[str, ...], as_json: bool) -> None:
    """Find kernel splats (lockdep, WARNING, BUG/oops, KASAN/KMSAN/KCSAN/KFENCE/UBSAN, kmemleak, hung
    tasks, RCU stalls, lockups, panics) in each LOG, titled as syzkaller titles them (plus `where`, the
    place overlayfs work cares about when syzkaller names another, and whether syzkaller would call the
    report corrupted), deduplicated by signature: the lock classes of a lockdep report (a cycle is the
    same splat whichever edge closed it), function@file of a WARNING/BUG, the function of an oops or
    hang; --json shows it.

    LOG is a console log or dmesg output from any machine, a directory of them, or - for stdin
    (`dmesg | kproto scan -`). Exit status is 0 whenever the logs could be read, whether splats were
    found or not (this command reports, it does not judge; use `kproto test` for a verdict); 2 when an
    input is missing or unreadable.
    """
    inputs = _inputs(logs)
    results: list[tuple[str, list[splatmod.Splat]]] = []
    for name, path in inputs:
        try:
            text = sys.stdin.read() if path is None else path.read_text(errors="replace")
        except OSError as e:
            raise BadInput(f"cannot read console log {name}: {e.strerror or e}") from e
        results.append((name, splatmod.scan_text(text)))
    single = len(logs) == 1 and len(results) == 1 and not Path(logs[0]).is_dir()
    if as_json:
        if single:
            click.echo(json.dumps({"splats": [s.as_json() for s in results[0][1]]}, indent=2))
        else:
            click.echo(json.dumps({"inputs": [{"path": n, "splats": [s.as_json() for s in found]}
                                             for n, found in results]}, indent=2))
        return
    if single:
        click.echo(splatmod.format_table(results[0][1]))
        return
    for n, found in results:
        click.echo(f"== {n}: {len(found)} splat(s)")
        if found:
            click.echo(splatmod.format_table(found))
    with_splats = sum(1 for _, f in results if f)
    click.echo(f"{len(results)} log(s), {with_splats} with splats")
