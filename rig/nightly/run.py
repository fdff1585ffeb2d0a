"""`kproto nightly CONFIG.toml`: every series on every configured kernel through `kproto test` (and optionally
`kproto bench` / `kproto fuzz`), recorded in the SQLite history, diffed against the last complete run, and
reported as HTML, JSON, JUnit per series and a plain-text summary for an email body.

This module is the run itself: the lock, the run row, waiting for the matrix in matrix order, the diff and
the reports, and the run stored as incomplete when anything stops it (the package map: rig/nightly/__init__.py).

Exit codes: 0 nothing regressed since the last complete run; 1 something regressed; 2 bad config;
3 infrastructure (another nightly holds the lock, a kernel would not build, a series hit a rig error).
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

from rig.core.errors import EXIT_INFRA, InfraError
from rig.core.locks import LockBusy, locked
from rig.nightly import reports
from rig.nightly.config import NightlyConfig
from rig.nightly.diff import diff, exit_code_for
from rig.nightly.engine import Engine, engine
from rig.nightly.record import SeriesRecord, now_iso
from rig.nightly.stages import blank_record, one_line
from rig.nightly.store import Store

Say = Callable[[str], None]


class NightlyBusy(InfraError):
    """Another `kproto nightly` holds the lock of this history database."""


@contextlib.contextmanager
def nightly_lock(path: Path) -> Iterator[None]:
    """Exclusive, non-blocking flock next to the history database: a second nightly fails at once."""
    try:
        with locked(path, "the nightly lock", wait=False):
            yield
    except LockBusy as e:
        raise NightlyBusy(f"another kproto nightly is running (pid {e.holder} holds {path}); "
                          "not starting a second one") from None


@dataclass
class NightlyResult:
    run_id: int
    exit_code: int
    report_dir: Path
    changes: list[dict]
    series: list[SeriesRecord]
    summary: str


def run(cfg: NightlyConfig, say: Say | None = None, test_fn: Callable | str | None = None,
        kernel_fn: Callable | str | None = None, scheduler: str | None = None,
        bisect_fn: Callable | str | None = None) -> NightlyResult:
    """One nightly run under the lock. TEST_FN (kproto test's run), KERNEL_FN (kernel name/version/commit
    and baseline build) and BISECT_FN (kproto bisect's run, for a regressed series of several patches) are
    replaceable for tests without a VM: Python objects run in-process (embedded cluster only),
    'module:function' strings wherever the Dask workers can import them. With a stand-in TEST_FN or
    KERNEL_FN and no BISECT_FN, series are not bisected (a one-patch series still names its patch).
    SCHEDULER (or the config's [cluster] scheduler): a Dask scheduler to run the matrix on instead of the
    embedded cluster."""
    out: Say = say or (lambda m: print(f"kproto nightly: {m}", file=sys.stderr))
    with nightly_lock(cfg.lock_path):
        # the cluster is up, or an unreachable scheduler has failed the run (exit 3), before anything is written
        with engine(cfg, out, scheduler=scheduler, test_fn=test_fn, kernel_fn=kernel_fn, bisect_fn=bisect_fn) as eng:
            store = Store.open(cfg.db)
            try:
                return _run_locked(cfg, store, out, eng)
            finally:
                store.close()


def _logger(log: TextIO, say: Say) -> Say:
    def log_say(msg: str) -> None:
        log.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
        say(msg)
    return log_say


def _run_locked(cfg: NightlyConfig, store: Store, say: Say, eng: Engine) -> NightlyResult:
    gone = store.mark_abandoned()
    if gone:
        say(f"earlier run(s) {', '.join(map(str, gone))} died without recording an end: marked abandoned (incomplete)")
    run_id = store.begin_run(cfg.digest(), str(cfg.path) if cfg.path else None, socket.gethostname(), os.getpid(),
                             started=now_iso())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    report_dir = cfg.output / "runs" / f"{run_id:05d}-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=True)
    store.set_run(run_id, report_dir=str(report_dir))
    log = open(report_dir / "nightly.log", "a", buffering=1)
    log_say = _logger(log, say)
    try:
        prev = store.last_complete_run(before=run_id)
        if prev:
            store.set_run(run_id, previous_run=prev["id"])
        log_say(f"run {run_id} started; " + (f"comparing with run {prev['id']} ({prev['started']})" if prev
                                             else "no earlier complete run to compare with"))
        records, kernels_info, kernel_errors = _collect(cfg, store, run_id, eng, report_dir, log_say)
        prev_series = store.load_series(prev["id"]) if prev else None
        changes = diff(prev_series, records, cfg.bench_noise_pct,
                       store.kernels(prev["id"]) if prev else None, store.kernels(run_id))
        store.add_changes(run_id, changes)
        code = exit_code_for(changes, records, kernel_errors)
        run_row = (store.run(run_id) or {}) | {"finished": now_iso(), "complete": 1, "state": "complete",
                                               "exit_code": code}
        summary = reports.write_reports(report_dir, store, cfg, run_row, prev, kernels_info, records, changes,
                                        kernel_errors)
        assert eng.matrix is not None
        eng.matrix.amend_reports(report_dir)        # which worker ran what, with which accel
        store.finish_run(run_id, code)
        _link_latest(cfg.output, report_dir)
        log_say(f"run {run_id} complete: exit {code}; reports in {report_dir}")
        return NightlyResult(run_id=run_id, exit_code=code, report_dir=report_dir, changes=changes, series=records,
                             summary=summary)
    except KeyboardInterrupt:
        store.fail_run(run_id, "interrupted (SIGINT/SIGTERM) before the run completed", interrupted=True,
                       exit_code=EXIT_INFRA)
        log_say(f"run {run_id} interrupted: stored as incomplete")
        raise
    except BaseException as e:
        store.fail_run(run_id, one_line(e), exit_code=getattr(e, "exit_code", EXIT_INFRA))
        log_say(f"run {run_id} failed: {one_line(e)}: stored as incomplete")
        raise
    finally:
        log.close()


def _collect(cfg: NightlyConfig, store: Store, run_id: int, eng: Engine, report_dir: Path,
             log_say: Say) -> tuple[list[SeriesRecord], list[dict], list[str]]:
    """Submit the whole matrix to the cluster, then wait for it in matrix order, storing each kernel and series
    as it comes, with where their tasks ran (this process alone writes the history). Returns (records,
    kernels, kernel errors)."""
    records: list[SeriesRecord] = []
    kernel_errors: list[str] = []
    kernels_info: list[dict] = []
    matrix = eng.start(cfg, report_dir, log_say)
    for k in cfg.kernels:
        series = [s for s in cfg.series if k.name in s.kernels]
        try:
            info = matrix.kernel(k)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            store.add_placement(run_id, matrix.new_placements())       # where its baseline failed
            msg = one_line(e)
            kernel_errors.append(f"kernel {k.name}: {msg}")
            store.add_kernel(run_id, k.name, k.source or "default", error=msg)
            kernels_info.append({"name": k.name, "source": k.source or "default", "error": msg})
            log_say(f"kernel {k.name}: {msg}; its {len(series)} series are not run")
            for s in series:
                rec = blank_record(k.name, s, error=f"kernel {k.name}: {msg}")
                store.add_series(run_id, rec)
                records.append(rec)
            continue
        store.add_kernel(run_id, k.name, info.get("source"), info.get("version"), info.get("commit_id"))
        store.add_placement(run_id, matrix.new_placements())           # its baseline build (once per shared baseline)
        kernels_info.append({"name": k.name, **info})
        for s in series:
            log_say(f"series {s.name} on {k.name}: {len(s.paths)} path(s), tests {s.tests or '(all)'}")
            rec = matrix.series(k, s)        # kproto test, then bench / fuzz when configured
            rec.kernel_version = rec.kernel_version or info.get("version")
            sid = store.add_series(run_id, rec)
            store.add_placement(run_id, matrix.new_placements(), series_id=sid)   # its patched/test/extra tasks
            records.append(rec)
            log_say(f"series {s.name}: {rec.outcome}" + (f" ({rec.verdict})" if rec.verdict else "")
                    + f" in {matrix.took(k, s):.0f} s")
    return records, kernels_info, kernel_errors


def _link_latest(output: Path, report_dir: Path) -> None:
    link = output / "latest"
    tmp = output / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(report_dir, output), tmp)
    os.replace(tmp, link)
