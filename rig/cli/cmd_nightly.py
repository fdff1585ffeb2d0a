"""`kproto nightly CONFIG.toml` (rig/nightly/run.py) and `kproto history` (rig/nightly/history.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from rig.core import progress
from rig.core.errors import BadInput


_say = progress.for_stderr("kproto nightly: ")   # one line per message; a live line on a terminal


@click.command("nightly")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr (the summary still goes to stdout)")
@click.option("--scheduler", metavar="tcp://HOST:8786",
              help="run the matrix on this Dask scheduler's workers (default: [cluster] scheduler of the config, "
                   "else an embedded cluster on this machine); see docs/cluster.md")
def nightly_cmd(config: Path, quiet: bool, scheduler: str | None) -> None:
    """Run every series of CONFIG.toml through kproto test (and bench/fuzz when configured), store the run
    in the history database, diff it against the last complete run and write the reports
    (OUTPUT/runs/<id>-<stamp>/{report.html,report.json,summary.txt,junit/}, OUTPUT/latest).
    The matrix runs as a Dask task graph: on this machine, or on a Dask cluster with --scheduler.

    Exit: 0 nothing regressed since the last complete run; 1 something regressed; 2 bad config;
    3 infrastructure failure (another nightly is running, the Dask scheduler is unreachable, a kernel does
    not build, a rig error)."""
    from rig.nightly.config import load_config
    from rig.nightly.run import run
    res = run(load_config(config), say=(lambda m: None) if quiet else _say, scheduler=scheduler)
    click.echo(res.summary, nl=False)
    sys.exit(res.exit_code)


def _db_path(db: Path | None, config: Path | None) -> Path:
    if db:
        return db
    if config:
        from rig.nightly.config import load_config
        return load_config(config).db
    env = os.environ.get("KPROTO_NIGHTLY_DB")
    if env:
        return Path(env)
    raise BadInput("which history? pass --db PATH or --config CONFIG.toml (or set KPROTO_NIGHTLY_DB)")


def _glob(p: str | None) -> str | None:
    if not p:
        return None
    return p if any(c in p for c in "*?[") else f"*{p}*"


@click.command("history")
@click.option("--db", type=click.Path(path_type=Path), help="history database (default: the config's db, or $KPROTO_NIGHTLY_DB)")
@click.option("--config", "-c", "config", type=click.Path(path_type=Path), help="take the database path from this nightly config")
@click.option("--series", "-s", "series", help="only this series (substring or glob)")
@click.option("--test", "-t", "test", help="per-test history for tests matching this (substring or glob)")
@click.option("--limit", "-n", default=10, show_default=True, type=click.IntRange(1, 1000), help="number of runs")
@click.option("--json", "as_json", is_flag=True, help="print JSON rows instead of a table")
def history_cmd(db: Path | None, config: Path | None, series: str | None, test: str | None, limit: int,
                as_json: bool) -> None:
    """Past nightly runs from the terminal: the runs; with --series each run's outcome for the series;
    with --test each test's status per run (columns: runs, oldest first)."""
    from rig.nightly.history import history_text
    from rig.nightly.store import Store
    with Store.open(_db_path(db, config), create=False) as store:
        out = history_text(store, series=_glob(series), test=_glob(test), limit=limit, as_json=as_json)
    click.echo(out, nl=False)


commands = [nightly_cmd, history_cmd]
