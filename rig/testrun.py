"""`kproto test`: patches -> tree -> build (baseline + patched) -> VM -> guest tests -> compare -> report."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import build as buildmod
from . import compare, guest_build
from . import patches as patchmod
from . import splats as splatmod
from . import tree as treemod
from .errors import InfraError, KprotoError
from .guest import harness
from .paths import GUEST_TESTS, cache_dir
from .report import Report
from .runner import KernelRun, run_kernel_suite
from .vm import kvm_works


@dataclass
class TestOptions:
    patches: list[Path]
    kernel_src: str | None = None
    config: tuple[Path, ...] = ()
    pattern: str | None = None
    timeout: float | None = None
    keep: bool = False
    rerun_baseline: bool = False
    checks: bool = True                # checkpatch + get_maintainer before building (kproto check)
    suite: Path = GUEST_TESTS          # directory of guest tests (*.c + *.toml)
    progress: Callable[[str], None] = field(default=lambda m: print(f"kproto: {m}", file=sys.stderr))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C/SIGTERM during the guest runs; carries the partial report (verdict error)."""

    def __init__(self, report: Report) -> None:
        super().__init__()
        self.report = report


def new_run_dir(keep: bool) -> Path:
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
    os.chmod(d, 0o700)
    return d


def select_tests(suite: Path, pattern: str | None, timeout: float | None) -> tuple[list[str], dict[str, float]]:
    chosen = harness.select(harness.load_specs(suite), pattern)
    if not chosen:
        from .errors import BadInput
        raise BadInput(f"-k {pattern!r} selects no guest test (see guest_tests/*.toml for names)")
    return [s.name for s in chosen], {s.name: float(timeout or s.timeout) for s in chosen}


def run_reference(suite: Path, bins: Path, names: list[str], timeout: float | None, work: Path) -> dict[str, dict]:
    results = harness.run_tests(bins=bins, tests=suite, work=work, target="ref", names=names,
                                timeout=timeout, emit=None, ref_python=sys.executable)
    return {r["name"]: r for r in results}


def _baseline_cache_path(suite: Path, kernel: buildmod.Kernel, bins: Path, names: list[str],
                         timeout: float | None) -> Path:
    h = hashlib.sha256(f"{kernel.key}|{bins.name}|{','.join(names)}|{timeout}".encode())
    h.update(harness.__file__.encode() + Path(harness.__file__).read_bytes())
    for spec in sorted(suite.rglob("*.toml")):
        h.update(spec.read_bytes())
    return cache_dir() / "results" / f"baseline-{h.hexdigest()[:20]}.json"


def _reference_cache_path(suite: Path, bins: Path, names: list[str], timeout: float | None) -> Path:
    import overlay_ref
    h = hashlib.sha256(f"{bins.name}|{','.join(names)}|{timeout}".encode())
    h.update(Path(harness.__file__).read_bytes())
    for src in sorted(Path(overlay_ref.__file__).parent.glob("*.py")):
        h.update(src.read_bytes())
    for spec in sorted(suite.rglob("*.toml")):
        h.update(spec.read_bytes())
    return cache_dir() / "results" / f"reference-{h.hexdigest()[:20]}.json"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.rename(tmp, path)


def _save_run(path: Path, run: KernelRun) -> None:
    _atomic_write(path, json.dumps({"results": run.results, "splats": [s.as_json() for s in run.splats],
                                    "test_splats": run.test_splats, "boot_s": run.boot_s,
                                    "tests_s": run.tests_s, "boots": run.boots, "events": run.events}))


def _load_run(path: Path, kernel: buildmod.Kernel, label: str) -> KernelRun:
    d = json.loads(path.read_text())
    run = KernelRun(label=label, kernel=kernel, results=d["results"], test_splats=d["test_splats"],
                    boot_s=d["boot_s"], tests_s=d["tests_s"], boots=d["boots"], events=d["events"])
    run.splats = [splatmod.Splat(kind=s["kind"], title=s["title"], log=s["log"], count=s.get("count", 1))
                  for s in d["splats"]]
    return run


def _interrupted(e: KeyboardInterrupt, stage: str, runs: dict, tree, series, kernel, timings: dict,
                 t0: float) -> Interrupted:
    """The partial report of an interrupted run: per-kernel raw results of the tests that finished."""
    partial = getattr(e, "partial_run", None)
    if partial is not None:
        runs[stage] = partial
    names = sorted({n for r in runs.values() for n in r.results})
    tests = []
    for n in names:
        t = {"name": n, "status": "error", "reason": "run interrupted before the comparison"}
        for label, r in runs.items():
            res = r.results.get(n)
            if res:
                t[label] = {k: res.get(k) for k in ("status", "observations", "exit_code", "signal", "error")}
        tests.append(t)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    rep = Report(verdict="error", kernel={"source": tree.origin, "version": kernel.version, "base": tree.base},
                 patches=[p.as_json() for p in series], tests=tests,
                 splats={"baseline": [], "patched": [], "new": []}, timings=timings,
                 reasons=[f"interrupted during the {stage} kernel's tests; partial results only"])
    return Interrupted(rep)


def run_checks_cached(tree: treemod.SourceTree, series: list[patchmod.Patch]) -> dict:
    """`kproto check`'s apply/checkpatch/get_maintainer pass, cached by base + patch hashes (it is
    deterministic). PatchError (exit 2) naming the patch and hunk when one does not apply."""
    from . import check
    from .errors import PatchError
    path = cache_dir() / "results" / f"checks-{hashlib.sha256(f'{tree.base}|{patchmod.series_digest(series)}'.encode()).hexdigest()[:20]}.json"
    if path.is_file():
        result = json.loads(path.read_text())
    else:
        result = check.run_checks(tree, series)
        _atomic_write(path, json.dumps(result))
    for p in result["patches"]:
        if p.get("applies") is False:
            err = p.get("apply_error") or "does not apply (see kproto check)"
            raise PatchError(err if p["name"] in err else f"{p['name']}: {err}")
    return result


def verdict_of(tests: list[dict], new_splats: list, base: KernelRun, patched: KernelRun,
               reference: dict[str, dict] | None = None) -> tuple[str, list[str]]:
    """clean | regressed | error. A failure of the reference overlay itself is the rig's problem (error,
    exit 3), not the patch's: without the oracle there is no verdict for that test."""
    reasons = []
    ref_failed = sorted(n for n, r in (reference or {}).items() if r.get("status") != "ok")
    if ref_failed:
        return "error", [f"the reference overlay failed on {len(ref_failed)} test(s): {', '.join(ref_failed[:5])} "
                         f"({(reference or {})[ref_failed[0]].get('error')})"]
    regressed = [t["name"] for t in tests if t["status"] == "regressed"]
    if regressed:
        reasons.append(f"{len(regressed)} test(s) regressed: {', '.join(regressed[:5])}")
    new_errors = [t["name"] for t in tests if t["status"] == "error"
                  and (patched.results.get(t["name"], {}).get("status") != "ok")
                  and base.results.get(t["name"], {}).get("status") == "ok"]
    if new_errors:
        reasons.append(f"{len(new_errors)} test(s) fail only on the patched kernel: {', '.join(new_errors[:5])}")
    if new_splats:
        reasons.append(f"{len(new_splats)} new splat(s): {'; '.join(s.title for s in new_splats[:3])}")
    return ("regressed" if reasons else "clean"), reasons


def run(opts: TestOptions) -> Report:
    t0 = time.monotonic()
    say = opts.progress
    series = patchmod.expand(opts.patches)
    tree = treemod.open_source(opts.kernel_src)
    say(f"source: linux {tree.version()} at {tree.base[:12]} ({tree.origin})")
    checks = run_checks_cached(tree, series) if opts.checks else None
    if checks is None and not buildmod.cached(tree, series, opts.config):
        tree.check_applies(series)      # exit 2 now, not after a cold baseline build
    timings: dict[str, float] = {}

    t = time.monotonic()
    base_kernel = buildmod.build(tree, [], opts.config, progress=say)
    timings["build_baseline_s"] = round(time.monotonic() - t, 1)
    say(f"baseline kernel {base_kernel.version}: " + ("cached" if base_kernel.cached else f"built in {base_kernel.build_s:.0f} s"))
    t = time.monotonic()
    patched_kernel = buildmod.build(tree, series, opts.config, progress=say)
    timings["build_patched_s"] = round(time.monotonic() - t, 1)
    say("patched kernel: " + ("cached" if patched_kernel.cached else f"built in {patched_kernel.build_s:.0f} s (incremental)"))
    timings["build_s"] = round(timings["build_baseline_s"] + timings["build_patched_s"], 1)

    suite = Path(opts.suite)
    names, timeouts = select_tests(suite, opts.pattern, opts.timeout)
    bins = guest_build.build(suite)
    run_dir = new_run_dir(opts.keep)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        guest_build.stage(run_dir, suite, bins)
        # The reference runs on the host (FUSE) while the guests run; its results are cached too:
        # they depend only on overlay_ref's code and the suite.
        ref_cache = _reference_cache_path(suite, bins, names, opts.timeout)
        def timed(fn, *args):
            t_ref = time.monotonic()
            return fn(*args), round(time.monotonic() - t_ref, 1)

        if ref_cache.is_file():
            say(f"reference: results cached ({ref_cache.name})")
            ref_future = pool.submit(timed, lambda: json.loads(ref_cache.read_text()))
        else:
            say(f"reference: running {len(names)} test(s) on overlay_ref (in the background)")
            ref_future = pool.submit(timed, run_reference, suite, bins, names, opts.timeout, run_dir / "ref-work")
        runs: dict[str, KernelRun] = {}
        cached = _baseline_cache_path(suite, base_kernel, bins, names, opts.timeout)
        if cached.is_file() and not opts.rerun_baseline:
            base_run = runs["baseline"] = _load_run(cached, base_kernel, "baseline")
            say(f"baseline: results cached from an earlier run ({cached.name}; --rerun-baseline to redo)")
            timings["baseline_tests_s"] = 0.0
        else:
            t = time.monotonic()
            try:
                base_run = runs["baseline"] = run_kernel_suite(base_kernel, "baseline", run_dir, names, timeouts, say)
            except KeyboardInterrupt as e:
                raise _interrupted(e, "baseline", runs, tree, series, patched_kernel, timings, t0) from None
            timings["baseline_tests_s"] = round(time.monotonic() - t, 1)
            if base_run.boots == 1 and all(r.get("status") != "timeout" for r in base_run.results.values()):
                _save_run(cached, base_run)
        t = time.monotonic()
        try:
            patched_run = run_kernel_suite(patched_kernel, "patched", run_dir, names, timeouts, say)
        except KeyboardInterrupt as e:
            raise _interrupted(e, "patched", runs, tree, series, patched_kernel, timings, t0) from None
        timings["patched_tests_s"] = round(time.monotonic() - t, 1)
        timings["boot_s"] = round(patched_run.boot_s, 1)
        timings["tests_s"] = round(patched_run.tests_s, 1)
        reference, timings["reference_s"] = ref_future.result()
        if not ref_cache.is_file() and all(r.get("status") == "ok" for r in reference.values()):
            _atomic_write(ref_cache, json.dumps(reference))
    finally:
        pool.shutdown(wait=True)
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            say(f"run directory kept: {run_dir}")

    known = compare.load_known()
    verdicts = compare.compare_run(reference, base_run.results, patched_run.results, known)
    tests = []
    for v in verdicts:
        j = v.as_json()
        j["splats"] = {"baseline": base_run.test_splats.get(v.name, []), "patched": patched_run.test_splats.get(v.name, [])}
        blocked = patched_run.results.get(v.name, {}).get("blocked_tasks")
        if blocked:
            j["blocked_tasks"] = blocked          # sysrq-w dump taken when the test hung
        tests.append(j)
    new = splatmod.new_splats(base_run.splats, patched_run.splats)
    verdict, reasons = verdict_of(tests, new, base_run, patched_run, reference)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    notes = []
    if not kvm_works():
        notes.append("KVM is not usable here (no vmx/svm): the guests ran under TCG; timings are emulated")
    for ev in base_run.events + patched_run.events:
        notes.append(ev)
    if patched_run.boots > 1:
        notes.append(f"patched kernel was booted {patched_run.boots} times (fresh boot after each splat/hang)")
    rep = Report(
        verdict=verdict,
        kernel={"source": tree.origin, "version": patched_kernel.version, "base": tree.base,
                "accel": "kvm" if kvm_works() else "tcg"},
        patches=[p.as_json() for p in series], tests=tests,
        splats={"baseline": [s.as_json() for s in base_run.splats],
                "patched": [s.as_json() for s in patched_run.splats],
                "new": [s.as_json() for s in new]},
        timings=timings, reasons=reasons, notes=notes, checks=checks)
    rep.verdicts = verdicts
    return rep
