"""What runs for one nightly cell on a worker: each stage function takes a payload dict (the specs of
rig/nightly/specs.py) and a progress callback and returns a result dict. They run in a stage process of
rig/nightly/children.py, or in the thread of the embedded cluster for in-process stand-ins (tests).

  s_baseline   prepare the baseline kernel (rig.kernel.prepare.baseline), or the stand-in kernel_fn
  s_patched    kproto test's pre-build pass (apply + checkpatch, cached) and the patched build
               (rig.kernel.prepare.patched) in the baseline's object tree
  s_test       kproto test (run_series: the outcome from the exception it raises) with --repro into a temp
               dir; for a regressed series, its reproducer bundles (as file contents, for the driver to
               write) and its first bad patch (rig/nightly/bisecting.py: kproto bisect, reusing this run's
               kernels and report)
  s_extra      kproto bench / kproto fuzz (rig/nightly/subcommands.py)
"""
from __future__ import annotations

import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from rig.core.errors import BootError, BuildError, KprotoError, PatchError
from rig.kernel import artifacts, prepare
from rig.kernel.build import Kernel
from rig.kernel.patches import Patch, series_digest
from rig.kernel.tree import SourceTree
from rig.nightly import bisecting, cluster, subcommands
from rig.nightly.children import resolve
from rig.nightly.config import KernelCfg, SeriesCfg
from rig.nightly.record import SeriesRecord, now_iso
from rig.nightly.specs import kernel_cfg, record_to_dict, series_cfg
from rig.report.model import Report

Say = Callable[[str], None]

# stand-ins passed as Python objects, by token ("local:..."); only reachable from this process's embedded cluster
LOCAL: dict[str, object] = {}


def one_line(e: BaseException) -> str:
    msg = e.message if isinstance(e, KprotoError) else f"{type(e).__name__}: {e}"
    return " ".join(str(msg).split())[:500]


def _fn(ref: str | None, default: Callable | None = None) -> Callable | None:
    if ref is None:
        return default
    if ref.startswith("local:"):
        return LOCAL[ref]          # type: ignore[return-value]
    return resolve(ref)


def blank_record(kernel: str, s: SeriesCfg, series: list[Patch] | None = None,
                 error: str | None = None) -> SeriesRecord:
    """The record of series S on KERNEL before (or instead of) running it: its patches, outcome error."""
    plist = prepare.open_series(s.paths) if series is None else series
    return SeriesRecord(kernel=kernel, name=s.name, outcome="error", error=error, started=now_iso(),
                        patches=[{"path": str(p.path), "sha256": p.sha256, "subject": p.subject} for p in plist],
                        series_hash=series_digest(plist))


# ================================================================ kernels

def _keep_build_log(k: KernelCfg, tree: SourceTree, kern: Kernel) -> None:
    """A kernel built here keeps its build log next to it, for the artifact manifest."""
    from rig.kernel import build as buildmod
    from rig.kernel import kconfig
    objdir = buildmod.objdir_for(tree, kconfig.requested(k.config))
    artifacts.keep_log(kern.key, objdir.parent / f"{objdir.name}.log")


def _baseline(k: KernelCfg, say: Say) -> tuple[dict, SourceTree, Kernel]:
    tree, kern = prepare.baseline(k.spec, say)
    say(f"kernel {k.name}: linux {tree.version()} at {tree.base[:12]} ({tree.origin})")
    if kern.cached:      # a build said "built baseline kernel: N objects in T" itself
        say(f"kernel {k.name}: baseline " + kern.outcome())
    return {"source": tree.origin, "version": kern.version, "commit_id": tree.base}, tree, kern


def prepare_kernel(k: KernelCfg, say: Say) -> dict:
    """Open the source (a git tree at its current HEAD) and build the baseline once, so that a BuildError
    of a series later is the series' own. Returns {"source", "version", "commit_id"}; raises on failure."""
    return _baseline(k, say)[0]


def s_baseline(p: dict, say: Say) -> dict:
    """The baseline kernel of a kernel spec, snapshotted for other workers; or the stand-in kernel_fn."""
    k = kernel_cfg(dict(p["kspec"], name=p["kspec"]["label"]), p["inproc"])
    try:
        stand_in = _fn(p["kernel_fn"])
        if stand_in is not None:
            return {"info": dict(stand_in(k, say))}
        info, tree, kern = _baseline(k, say)
        if not kern.cached:
            _keep_build_log(k, tree, kern)
        man = artifacts.snapshot(kern.key, p["where"])
        if p.get("shared"):
            artifacts.publish(man, Path(p["shared"]))
        return {"info": info, "manifest": man, "cached": kern.cached}
    except KeyboardInterrupt:
        raise
    except Exception as e:
        return {"error": one_line(e)}


def s_patched(p: dict, say: Say) -> dict:
    """kproto test's own pre-build pass (apply + checkpatch, cached) and the incremental patched build, on
    the worker that holds the baseline's object tree. The outcome and message are kproto test's."""
    from rig.kernel import build as buildmod
    from rig.kernel import kconfig
    from rig.suite import testrun
    k = kernel_cfg(p["cspec"]["kspec"], p["inproc"])
    s = series_cfg(p["cspec"], p["inproc"])
    t0 = time.monotonic()
    try:
        series = prepare.open_series(s.paths)
        tree = prepare.open_tree(k.spec)
        key = buildmod.cache_key(tree, series, kconfig.requested(k.config))
        shared = Path(p["shared"]) if p.get("shared") else None
        if buildmod.lookup(key) is None and shared is not None:
            got = artifacts.install_from_shared(shared, key, say)
            if got:
                return {"outcome": "built", "manifest": artifacts.snapshot(key, p["where"]), "cached": True,
                        "fetched": got, "build_s": 0.0}
        testrun.run_checks_cached(tree, series)
        _, kern = prepare.patched(k.spec, series, say)
        if not kern.cached:
            _keep_build_log(k, tree, kern)
        if kern.cached:
            say("patched kernel: " + kern.outcome(incremental=True))
        man = artifacts.snapshot(kern.key, p["where"])
        if shared is not None:
            artifacts.publish(man, shared)
        return {"outcome": "built", "manifest": man, "cached": kern.cached,
                "build_s": round(time.monotonic() - t0, 1) if not kern.cached else 0.0}
    except KeyboardInterrupt:
        raise
    except PatchError as e:
        return {"outcome": "apply-failed", "error": one_line(e)}
    except BuildError as e:
        return {"outcome": "build-failed", "error": one_line(e)}
    except Exception as e:
        if not isinstance(e, KprotoError):
            say("internal error:\n" + traceback.format_exc())
        return {"outcome": "error", "error": one_line(e)}


# ================================================================ kproto test, bench, fuzz

def run_series(kernel: KernelCfg, s: SeriesCfg, timeout: float | None, say: Say,
               test_fn: Callable | None = None) -> SeriesRecord:
    """kproto test for one series on one kernel; the failure stage from the exception kproto test raises."""
    return _run_series(kernel, s, timeout, say, test_fn)[0]


def _run_series(kernel: KernelCfg, s: SeriesCfg, timeout: float | None, say: Say,
                test_fn: Callable | None = None, repro: Path | None = None) -> tuple[SeriesRecord, Report | None]:
    """run_series, and the kproto test report when there is one (the whole-series step of a bisection).
    REPRO: kproto test's --repro DIR (a reproducer bundle per finding, rig/suite/repro.py)."""
    from rig.suite import testrun
    test_fn = test_fn or testrun.run
    rec = blank_record(kernel.name, s)
    rep: Report | None = None
    opts = testrun.TestOptions(patches=list(s.paths), kernel_src=kernel.source, config=kernel.config,
                               pattern=s.tests, timeout=timeout, progress=say, repro=repro)
    try:
        got = test_fn(opts)
    except PatchError as e:
        rec.outcome, rec.error = "apply-failed", one_line(e)
    except BuildError as e:
        rec.outcome, rec.error = "build-failed", one_line(e)
    except BootError as e:
        rec.outcome, rec.error = "boot-failed", one_line(e)
    except KprotoError as e:
        rec.outcome, rec.error = "error", one_line(e)
    except Exception as e:   # a rig bug must not cost the other series their night
        rec.outcome, rec.error = "error", one_line(e)
        say("internal error:\n" + traceback.format_exc())
    else:
        rep = got if isinstance(got, Report) else None
        j = got.as_json()
        rec.outcome, rec.verdict = "tested", j["verdict"]
        rec.kernel_version = (j.get("kernel") or {}).get("version")
        rec.tests, rec.splats, rec.timings = j["tests"], j["splats"], j["timings"]
        rec.verdicts = got.verdicts    # for JUnit
        if rec.verdict == "error":
            rec.error = "; ".join(j.get("reasons") or []) or None
    if rec.error:
        say(f"{rec.outcome}: {rec.error}")
    rec.finished = now_iso()
    return rec, rep


REPRO_MAX_BYTES = 64 << 20      # what a test stage hands back of its reproducer bundles, at most


def repro_files(d: Path, say: Say) -> dict[str, bytes]:
    """The reproducer bundles kproto test wrote to D (D/<test>/, each with its bundle.json) as file contents
    by path relative to D: the report directory is on the driver's machine. A bundle that would take the
    total past REPRO_MAX_BYTES is left out whole (said through SAY)."""
    out: dict[str, bytes] = {}
    total = 0
    for b in sorted(x for x in d.iterdir() if x.is_dir() and (x / "bundle.json").is_file()):
        files = {str(f.relative_to(d)): f.read_bytes() for f in sorted(b.rglob("*")) if f.is_file()}
        size = sum(len(v) for v in files.values())
        if total + size > REPRO_MAX_BYTES:
            say(f"reproducer {b.name}: {size} bytes would exceed the nightly's {REPRO_MAX_BYTES >> 20} MiB; left out")
            continue
        total += size
        out.update(files)
    return out


def s_test(p: dict, say: Say) -> dict:
    """kproto test for the cell (or the stand-in test_fn), with --repro into a temp dir; a regressed series
    gets its first bad patch, and its reproducer bundles come back as file contents ("repro_files")."""
    k = kernel_cfg(p["cspec"]["kspec"], p["inproc"])
    s = series_cfg(p["cspec"], p["inproc"])
    timeout = p["cspec"]["timeout"]
    d = Path(tempfile.mkdtemp(prefix="kproto-nightly-repro-"))
    files: dict[str, bytes] = {}
    try:
        rec, rep = _run_series(k, s, timeout, say, _fn(p["test_fn"]), repro=d)
        if rec.outcome == "tested" and rec.verdict == "regressed":
            files = repro_files(d, say)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if bisecting.needs_bisect(rec.outcome, rec.verdict):
        bisect_fn = _fn(p.get("bisect_fn"))
        rec.bisect = bisecting.first_bad(list(s.paths), k.source, k.config, timeout, rec.tests, rec.splats, rep,
                                         say, enabled=bool(p.get("bisect")), bisect_fn=bisect_fn)
        if rec.bisect is not None:
            say(bisecting.text(rec.bisect))
            if rec.bisect["result"] == "error":
                rec.notes.append(rec.bisect["message"])
        rec.finished = now_iso()
    return {"record": record_to_dict(rec), "accel": cluster.accel_here(), "repro_files": files}


def s_extra(p: dict, say: Say) -> dict:
    """kproto bench / kproto fuzz for a tested cell. Fuzz reproducers come back as file contents (the
    report directory is on the driver's machine)."""
    cs = p["cspec"]
    k = kernel_cfg(cs["kspec"], p["inproc"])
    s = series_cfg(cs, p["inproc"])
    out: dict = {"bench": [], "findings": [], "notes": [], "files": {}, "findings_dir": None}
    if cs["bench"]:
        metrics, err = subcommands.run_bench(k, s, say)
        out["bench"] = metrics
        if err:
            out["notes"].append(err)
    if cs["fuzz_budget_s"]:
        d = Path(tempfile.mkdtemp(prefix="kproto-nightly-findings-"))
        try:
            findings, err = subcommands.run_fuzz(k, s, cs["fuzz_budget_s"], say, d)
            out["findings"] = findings
            out["findings_dir"] = str(d)
            if err:
                out["notes"].append(err)
            total = 0
            for f in sorted(d.rglob("*")):
                if f.is_file() and total < 64 << 20:
                    data = f.read_bytes()
                    total += len(data)
                    out["files"][str(f.relative_to(d))] = data
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out
