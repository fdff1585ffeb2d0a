"""Running tests: one program under a timeout (run_program), one test end to end (run_one: build the
layers, mount, run, record, unmount, clean up), and a selection of them emitting the harness's JSON
events (run_tests). STDLIB ONLY (runs in the guest).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass
from typing import IO, Any, Callable

from rig.guest.layers import build_layer, checksum_tree, upper_state
from rig.guest.mount import Mounter, is_mounted
from rig.guest.observe import kernel_state, kmsg, parse_observations
from rig.guest.spec import Spec, SpecError, load_specs, select

STDERR_TAIL = 2000


Event = dict[str, Any]     # one JSON line of the harness's output (see rig.guest.harness)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class ProgramRun:
    """What one run of a test program gave: its output, how it ended, and why the harness gave up."""
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None


def run_program(prog: Path, merged: Path, timeout: float) -> ProgramRun:
    """Run PROG MERGED in its own session; kill the whole group after TIMEOUT or when it exits."""
    res = ProgramRun()
    try:
        proc = subprocess.Popen([str(prog), str(merged)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", start_new_session=True)
    except OSError as e:
        res.error = f"cannot execute {prog}: {e.strerror}"
        return res
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        res.timed_out = True
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:   # stuck in the kernel (D state): leave it
            out, err = b"", b""
            res.error = "the program did not die after SIGKILL (blocked in the kernel?)"
    _kill_group(proc)          # stray children (e.g. a sleeping exec'd child)
    res.stdout = out.decode(errors="replace")
    res.stderr = err.decode(errors="replace")
    rc = proc.returncode
    if rc is not None and not res.timed_out:
        if rc < 0:
            res.signal = -rc
        else:
            res.exit_code = rc
    return res


def _result(name: str) -> Event:
    return {"event": "result", "name": name, "status": "error", "observations": {}, "exit_code": None,
            "signal": None, "upper": {}, "stderr": "", "duration_s": 0.0, "error": None,
            "lower_modified": False, "diagnostics": []}


def run_one(spec: Spec, bins: Path, work: Path, mounter: Mounter, timeout: float | None = None) -> Event:
    """Build, mount, run, record, unmount, clean up one test. Never raises for a test's own failure."""
    res = _result(spec.name)
    t0 = time.monotonic()
    tdir = Path(tempfile.mkdtemp(prefix=f"{spec.name[:40]}-", dir=work))
    merged = tdir / "merged"
    mounted = False
    errors: list[str] = []
    try:
        prog = bins / spec.name
        if not prog.is_file():
            raise RuntimeError(f"no binary for {spec.name} in {bins}")
        lowers = []
        for i, layer in enumerate(spec.lower):
            d = tdir / f"lower{i}"
            d.mkdir()
            build_layer(d, layer, spec, bins)
            lowers.append(d)
        upper, wdir = tdir / "upper", tdir / "work"
        for d in (upper, wdir, merged):
            d.mkdir()
        build_layer(upper, spec.upper, spec, bins)
        sums = [checksum_tree(d) for d in lowers]
        mounter.mount(lowers, upper, wdir, merged, spec.mount_options)
        mounted = True
        run = run_program(prog, merged, timeout or spec.timeout)
        try:
            os.stat(merged)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise
            # a FUSE target whose daemon died: what the program saw says nothing about the overlay
            run.error = "the filesystem daemon died during the test (Transport endpoint is not connected)"
        obs, diags = parse_observations(run.stdout)
        res.update(observations=obs, diagnostics=diags, exit_code=run.exit_code, signal=run.signal,
                   stderr=run.stderr[-STDERR_TAIL:])
        if run.error:
            errors.append(run.error)
        if run.timed_out:
            res["status"] = "timeout"
            errors.insert(0, f"timed out after {timeout or spec.timeout:g} s")
        elif run.error:
            res["status"] = "error"
        else:
            res["status"] = "ok"
        err = mounter.umount(merged)
        mounted = False
        if err:
            errors.append(err)
            if is_mounted(merged):
                res["status"] = "error"
        res["upper"] = upper_state(upper, lowers)
        res["lower_modified"] = [checksum_tree(d) for d in lowers] != sums
    except (OSError, RuntimeError, SpecError, subprocess.SubprocessError) as e:
        res["status"] = "error"
        errors.append(f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e))
    finally:
        if mounted:
            err = mounter.umount(merged)
            if err:
                errors.append(err)
        if not is_mounted(merged):
            shutil.rmtree(tdir, ignore_errors=True)
        else:
            errors.append(f"left {tdir} behind: still mounted")
    res["error"] = "; ".join(errors) if errors else None
    res["duration_s"] = round(time.monotonic() - t0, 3)
    return res


def print_event(ev: Event) -> None:
    """The harness's output: one JSON line per event, flushed."""
    sys.stdout.write(json.dumps(ev, sort_keys=False) + "\n")
    sys.stdout.flush()


def _wait_go(stdin: IO[str]) -> bool:
    """Step mode: the host answers `next` when the next test may start (after its barrier), `stop` to end."""
    line = stdin.readline()
    return line.strip() == "next"


def run_tests(bins: Path, tests: Path, work: Path, target: str, pattern: str | None = None,
              timeout: float | None = None, emit: Callable[[Event], None] | None = print_event,
              ref_python: str | None = None, names: list[str] | None = None, step: IO[str] | None = None,
              with_kernel_state: bool = False) -> list[Event]:
    """Run the selected tests (run_order) on TARGET; EMIT each event; return the result events.
    STEP (a text stream, e.g. stdin): after each result, wait for the host's `next` (anything else or
    EOF ends the run) -- the host runs its per-test barrier in between. WITH_KERNEL_STATE adds
    kernel_state() to every start and result event (in the guest)."""
    bins, tests, work = Path(bins), Path(tests), Path(work)
    emit = emit or (lambda ev: None)
    work.mkdir(parents=True, exist_ok=True)
    mounter = Mounter(target, ref_python)
    results: list[Event] = []
    specs = select(load_specs(tests), pattern, names)
    for i, spec in enumerate(specs):
        start: Event = {"event": "start", "name": spec.name}
        if with_kernel_state:
            start["kernel"] = kernel_state()
            kmsg(f"start {spec.name}")
        emit(start)
        res = run_one(spec, bins, work, mounter, timeout)
        if with_kernel_state:
            res["kernel"] = kernel_state()
            token = f"barrier {spec.name} {os.getpid()}-{i}"
            if kmsg(token):
                res["barrier"] = f"kproto: {token}"
        emit(res)
        results.append(res)
        if step is not None and i + 1 < len(specs) and not _wait_go(step):
            emit({"event": "stopped"})
            return results
    emit({"event": "done"})
    return results
