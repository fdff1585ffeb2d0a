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

from rig.kernel import build as buildmod
from rig.kernel import prepare
from rig.core import cache
from rig.core import progress as progressmod
from rig.analysis import compare
from rig.analysis.known import load_known
from rig.analysis import verdict as verdictmod
from rig.analysis.verdict import TestStatus, Verdict
from rig.guest import programs as guest_build
from rig.kernel import patches as patchmod
from rig.analysis import splats as splatmod
from rig.kernel import tree as treemod
from rig.core.errors import BootError
from rig.suite.evidence import LOCKDEP_KINDS, Evidence, add_run, decide, needs_confirmation
from rig.guest import harness
from rig.core.paths import GUEST_TESTS, cache_dir
from rig.report.model import Report
from rig.suite import results_cache
from rig.suite.results import KernelRun
from rig.suite.boots import BootPool, Pending, default_jobs
from rig.suite.machine import MachineFactory, QemuMachine
from rig.suite.runner import run_kernel_suite
from rig.machine.qemu import kvm_works
from rig.suite import repro as repromod


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
    confirm: int = 2                   # extra boots per kernel for tests whose outcome can vary
    jobs: int | None = None            # machines side by side (None: boots.default_jobs())
    allow_flaky: bool = False          # a flaky test alone does not make the verdict need attention
    machine_factories: dict | None = None   # label -> runner.MachineFactory (tests: a fake machine)
    repro: Path | None = None          # --repro DIR: a reproducer bundle per finding (rig/suite/repro.py)
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


def select_tests(suite: Path, pattern: str | None,
                 timeout: float | None) -> tuple[list[str], dict[str, float], set[str], dict[str, str]]:
    """The selected tests in run order, their timeouts, which of them are marked concurrent, and each
    one's phase (rig/suite/boots.py splits a kernel's run by phase)."""
    chosen = harness.select(harness.load_specs(suite), pattern)
    if not chosen:
        from rig.core.errors import BadInput
        raise BadInput(f"-k {pattern!r} selects no guest test (see guest_tests/*.toml for names)")
    return ([s.name for s in chosen], {s.name: float(timeout or s.timeout) for s in chosen},
            {s.name for s in chosen if s.concurrent}, {s.name: s.phase for s in chosen})


def run_reference(suite: Path, bins: Path, names: list[str], timeout: float | None, work: Path) -> dict[str, dict]:
    results = harness.run_tests(bins=bins, tests=suite, work=work, target="ref", names=names,
                                timeout=timeout, emit=None, ref_python=sys.executable)
    return {r["name"]: r for r in results}


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
    rep = Report(verdict=Verdict.ERROR, kernel={"source": tree.origin, "version": kernel.version, "base": tree.base},
                 patches=[p.as_json() for p in series], tests=tests,
                 splats={"baseline": [], "patched": [], "new": []}, timings=timings,
                 reasons=[f"interrupted during the {stage} kernel's tests; partial results only"])
    return Interrupted(rep)


def run_checks_cached(tree: treemod.SourceTree, series: list[patchmod.Patch]) -> dict:
    """`kproto check`'s apply/checkpatch/get_maintainer pass, cached by base + patch hashes (it is
    deterministic). PatchError (exit 2) naming the patch and hunk when one does not apply."""
    from rig.check import validate as check
    from rig.core.errors import PatchError
    path = cache_dir() / "results" / f"checks-{hashlib.sha256(f'{tree.base}|{patchmod.series_digest(series)}'.encode()).hexdigest()[:20]}.json"
    if path.is_file():
        result = json.loads(path.read_text())
    else:
        result = check.run_checks(tree, series)
        cache.atomic_write(path, json.dumps(result))
    for p in result["patches"]:
        if p.get("applies") is False:
            err = p.get("apply_error") or "does not apply (see kproto check)"
            raise PatchError(err if p["name"] in err else f"{p['name']}: {err}")
    return result


def _kernel_info(tree: treemod.SourceTree, kernel: buildmod.Kernel) -> dict:
    """The report's "kernel" object: where the source came from, the version, the base, the accelerator."""
    return {"source": tree.origin, "version": kernel.version, "base": tree.base,
            "accel": "kvm" if kvm_works() else "tcg"}


def _boot_failure_report(tree, series, base_kernel, patched_kernel, err: BootError, names: list[str],
                         base_run: KernelRun | None, timings: dict, t0: float, checks) -> Report:
    """The patched kernel did not boot while the baseline did: that is the patch's regression."""
    console = getattr(err, "console", "") or err.detail or str(err)
    found = splatmod.scan_text(console)
    fatal = [s for s in found if splatmod.is_fatal(s)] or found
    tail = "\n".join(console.splitlines()[-25:])
    what = fatal[0].title if fatal else str(err).splitlines()[0]
    tests = [{"name": n, "status": "error", "reason": "not run: the patched kernel did not boot",
              "baseline": {"status": (base_run.results.get(n) or {}).get("status") if base_run else None},
              "patched": {"status": "error", "error": "the patched kernel did not boot"}} for n in names]
    timings["total_s"] = round(time.monotonic() - t0, 1)
    base_sigs = {s.signature for s in (base_run.splats if base_run else [])}
    new = [s for s in found if s.signature not in base_sigs]
    return Report(verdict=Verdict.REGRESSED,
                  kernel=_kernel_info(tree, patched_kernel),
                  patches=[p.as_json() for p in series], tests=tests,
                  splats={"baseline": [s.as_json() for s in (base_run.splats if base_run else [])],
                          "patched": [s.as_json() for s in found], "new": [s.as_json() for s in new]},
                  timings=timings, reasons=[f"the patched kernel did not boot: {what}"],
                  notes=[f"patched console tail:\n{tail}"], checks=checks)


def run(opts: TestOptions) -> Report:
    t0 = time.monotonic()
    say = opts.progress
    spec = prepare.KernelSpec(opts.kernel_src, tuple(opts.config))
    if opts.repro is not None:
        repromod.check_destination(opts.repro)     # exit 2 now, not after the run
    series = prepare.open_series(opts.patches)
    tree = prepare.open_tree(spec)
    say(f"source: linux {tree.version()} at {tree.base[:12]} ({tree.origin})")
    checks = run_checks_cached(tree, series) if opts.checks else None
    if checks is None and not buildmod.cached(tree, series, opts.config):
        tree.check_applies(series)      # exit 2 now, not after a cold baseline build
    timings: dict[str, float] = {}

    # one line per kernel: a build ends with its own "built ... kernel: N objects in T" line, so only a
    # cached kernel is announced here
    t = time.monotonic()
    base_kernel = prepare.baseline(spec, say, tree)[1]
    timings["build_baseline_s"] = round(time.monotonic() - t, 1)
    if base_kernel.cached:
        say(f"baseline kernel {base_kernel.version}: " + base_kernel.outcome())
    t = time.monotonic()
    patched_kernel = prepare.patched(spec, series, say, tree)[1]
    timings["build_patched_s"] = round(time.monotonic() - t, 1)
    if patched_kernel.cached:
        say("patched kernel: " + patched_kernel.outcome(incremental=True))
    timings["build_s"] = round(timings["build_baseline_s"] + timings["build_patched_s"], 1)

    suite = Path(opts.suite)
    names, timeouts, concurrent, phase_of = select_tests(suite, opts.pattern, opts.timeout)
    bins = guest_build.build(suite)
    run_dir = new_run_dir(opts.keep)
    factories = opts.machine_factories or {}
    ref_pool = ThreadPoolExecutor(max_workers=1)
    runs: dict[str, KernelRun] = {}
    evidence: dict[str, Evidence] = {}
    base_run: KernelRun | None = None

    # --repro: the patched boots are recorded (command line, boot files) while the run dir still exists
    recorder = repromod.BootRecorder() if opts.repro is not None else None
    patched_runs: list[KernelRun] = []          # the main run first, then each confirmation run

    def make_factory(kernel, label: str) -> MachineFactory:
        factory = factories.get(label)
        if factory is None and recorder is not None and label == "patched":
            factory = recorder.factory(kernel, run_dir)
        return factory or QemuMachine.factory(kernel, run_dir)

    def run_part(kernel, label, part, first, numbers, stop, tally, factory) -> KernelRun:
        return run_kernel_suite(kernel, label, run_dir, part, timeouts, say, machine_factory=factory,
                                first_boot=first, numbers=numbers, stop=stop, tally=tally)

    boots_pool = BootPool(opts.jobs or default_jobs(), run_part, make_factory)
    try:
        guest_build.stage(run_dir, suite, bins)
        # The reference runs on the host (FUSE) while the guests run; its results are cached too:
        # they depend only on overlay_ref's code and the suite.
        ref_cache = results_cache.reference_path(suite, bins, names, opts.timeout)
        def timed(fn, *args):
            t_ref = time.monotonic()
            return fn(*args), round(time.monotonic() - t_ref, 1)

        if ref_cache.is_file():
            say(f"reference: results cached ({ref_cache.name})")
            ref_future = ref_pool.submit(timed, lambda: json.loads(ref_cache.read_text()))
        else:
            say(f"reference: running {progressmod.plural(len(names), 'tests')} on overlay_ref (in the background)")
            ref_future = ref_pool.submit(timed, run_reference, suite, bins, names, opts.timeout, run_dir / "ref-work")
        try:
            # both kernels' runs go on side by side (rig/suite/boots.py); the baseline's are cached
            cached = results_cache.baseline_path(suite, base_kernel, bins, names, opts.timeout)
            base_pending = None
            if cached.is_file() and not opts.rerun_baseline:
                base_run = runs["baseline"] = boots_pool.adopt(results_cache.load_run(cached, base_kernel, "baseline"))
                say(f"baseline: results cached from an earlier run ({cached.name}; --rerun-baseline to redo)")
            else:
                base_pending = boots_pool.submit(base_kernel, "baseline", names, phase_of)
            t = time.monotonic()
            patched_pending = boots_pool.submit(patched_kernel, "patched", names, phase_of)
            if base_pending is not None:
                base_run = runs["baseline"] = base_pending.result()
                timings["baseline_tests_s"] = round(time.monotonic() - t, 1)
                if all(r.get("status") != "timeout" for r in base_run.results.values()):
                    results_cache.save_run(cached, base_run)
            else:
                timings["baseline_tests_s"] = 0.0
            assert base_run is not None
            try:
                patched_run = runs["patched"] = patched_pending.result()
            except BootError as e:
                # the baseline booted (or its results were cached from a boot): the patch broke boot
                say(f"the patched kernel did not boot: {str(e).splitlines()[0]}")
                return _boot_failure_report(tree, series, base_kernel, patched_kernel, e, names, base_run,
                                            timings, t0, checks)
            patched_runs.append(patched_run)
            timings["patched_tests_s"] = round(time.monotonic() - t, 1)
            timings["boot_s"] = round(patched_run.boot_s, 1)
            timings["tests_s"] = round(patched_run.tests_s, 1)
            add_run(evidence, base_run, "baseline")
            add_run(evidence, patched_run, "patched")

            # confirmation boots for the tests the two kernels disagree on, where the outcome can vary. The
            # list is the same in every round (the evidence of a disagreement only grows), so every round's
            # runs go on side by side; their evidence is added in round order.
            t = time.monotonic()
            extra_splats: dict[str, list[splatmod.Splat]] = {"baseline": [], "patched": []}
            # a deadlock that already hung MAX_SAME_HANGS tests is its own evidence: neither its hung
            # tests nor the ones it kept from running are rerun
            settled = {n for r in (base_run, patched_run) if r.deadlock
                       for n in r.deadlock["hung"] + r.deadlock["not_run"]}
            wanted = [n for n in names if n in evidence and n not in settled
                      and needs_confirmation(evidence[n], n in concurrent)]
            # (label, the baseline round's result cache or None, the run going on or the cached run)
            rounds: list[tuple[str, Path | None, Pending | KernelRun]] = []
            if wanted and opts.confirm:
                say(f"confirming {progressmod.plural(len(wanted), 'tests')} on fresh boots of both kernels "
                    f"({progressmod.plural(opts.confirm, 'rounds')}, side by side): "
                    f"{', '.join(wanted[:4])}{' ...' if len(wanted) > 4 else ''}")
            for rnd in range(1, (opts.confirm if wanted else 0) + 1):
                for label, kernel in (("baseline", base_kernel), ("patched", patched_kernel)):
                    rpath = results_cache.baseline_path(suite, base_kernel, bins, wanted, opts.timeout,
                                                        extra=f"confirm-{rnd}") if label == "baseline" else None
                    if rpath is not None and rpath.is_file() and not opts.rerun_baseline:
                        rounds.append((label, None, boots_pool.adopt(results_cache.load_run(rpath, kernel, label))))
                    else:
                        rounds.append((label, rpath, boots_pool.submit(kernel, label, wanted, phase_of)))
            for label, rpath, got in rounds:
                extra: KernelRun = got.result() if isinstance(got, Pending) else got
                if rpath is not None and all(r.get("status") != "timeout" for r in extra.results.values()):
                    results_cache.save_run(rpath, extra)
                if label == "patched":
                    patched_runs.append(extra)
                extra_splats[label] += extra.splats
                add_run(evidence, extra, label)
            boots = {label: boots_pool.boots(label) for label in ("baseline", "patched")}
            timings["confirm_s"] = round(time.monotonic() - t, 1)
        except KeyboardInterrupt as e:
            stage = "patched" if "baseline" in runs else "baseline"
            boots_pool.cancel()
            for p in boots_pool.pending:            # the main runs come first in the list
                part = p.partial()
                if part is not None and p.label not in runs:
                    runs[p.label] = part
            raise _interrupted(e, stage, runs, tree, series, patched_kernel, timings, t0) from None
        reference, timings["reference_s"] = ref_future.result()
        if not ref_cache.is_file() and all(r.get("status") == "ok" for r in reference.values()):
            cache.atomic_write(ref_cache, json.dumps(reference))
    finally:
        boots_pool.close()
        ref_pool.shutdown(wait=True)
        if not opts.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            say(f"run directory kept: {run_dir}")

    known = load_known()
    verdicts = compare.compare_run(reference, base_run.results, patched_run.results, known)
    tests = []
    flaky_sigs: set[str] = set()
    for v in verdicts:
        ev = evidence.get(v.name)
        if ev is not None and ev.rerun:
            d = decide(ev)
            if d.status == "regressed" and v.status != "error":
                v.status, v.reason = TestStatus.REGRESSED, d.reason
            elif d.status == "flaky":
                v.status, v.reason = TestStatus.FLAKY, d.reason
                flaky_sigs |= {x.signature for s in ev.patched for x in s.splats}
        j = v.as_json()
        j["splats"] = {"baseline": base_run.titles(v.name), "patched": patched_run.titles(v.name)}
        j["splat_signatures"] = {"baseline": base_run.signatures(v.name), "patched": patched_run.signatures(v.name)}
        if ev is not None:
            j["boots"] = {"baseline": len(ev.baseline), "patched": len(ev.patched)}
            if ev.rerun:
                j["evidence"] = ev.as_json()
        for side, r in (("baseline", base_run), ("patched", patched_run)):
            kev = (r.results.get(v.name) or {}).get("kernel_events")
            if kev:
                j.setdefault("kernel_events", {})[side] = kev
        blocked = patched_run.results.get(v.name, {}).get("blocked_tasks")
        if blocked:
            j["blocked_tasks"] = blocked          # sysrq-w dump taken when the test hung
        tests.append(j)
    all_base = splatmod.merge(base_run.splats + extra_splats["baseline"])
    all_patched = splatmod.merge(patched_run.splats + extra_splats["patched"])
    new = splatmod.new_splats(all_base, all_patched)
    # a new splat that came and went on a flaky test is that test's flakiness, not a sure regression --
    # except lockdep's: it never reports a cycle that is not there
    sure_new = [s for s in new if s.kind in LOCKDEP_KINDS or s.signature not in flaky_sigs]
    verdict, reasons = verdictmod.verdict_of(tests, sure_new, base_run, patched_run, reference, opts.allow_flaky)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    notes = []
    if not kvm_works():
        notes.append("KVM is not usable here (no vmx/svm): the guests ran under TCG; timings are emulated")
    for ev_text in base_run.events + patched_run.events:
        notes.append(ev_text)
    if boots["patched"] > 1:
        notes.append(f"patched kernel was booted {boots['patched']} times (the lock-order scenarios and the other "
                     f"tests each start on a boot of their own; a fresh boot after each splat, taint, lockdep-off "
                     f"or hang; confirmation boots)")
    rep = Report(
        verdict=verdict,
        kernel=_kernel_info(tree, patched_kernel),
        patches=[p.as_json() for p in series], tests=tests,
        splats={"baseline": [s.as_json() for s in all_base],
                "patched": [s.as_json() for s in all_patched],
                "new": [dict(s.as_json(), boots=_seen(s, evidence)) for s in new]},
        timings=timings, reasons=reasons, notes=notes, checks=checks)
    rep.verdicts = verdicts
    if opts.repro is not None and recorder is not None:
        bundles = repromod.write_findings(opts.repro, spec=spec, tree=tree, series=series, kernel=patched_kernel,
                                          runs=patched_runs, tests=tests, new_signatures={s.signature for s in new},
                                          boots=recorder.boots, suite=suite, timeouts=timeouts, progress=say)
        if bundles:
            rep.notes.append("reproducers: " + ", ".join(map(str, bundles)))
        else:
            rep.notes.append(f"reproducers: none written to {opts.repro} (no finding)")
    return rep


def _seen(s: splatmod.Splat, evidence: dict[str, Evidence]) -> dict:
    """In how many boots of each kernel a splat with this signature showed (over the tests that ran)."""
    out = {}
    for side in ("baseline", "patched"):
        boots = {x.boot for ev in evidence.values() for x in getattr(ev, side)}
        hit = {x.boot for ev in evidence.values() for x in getattr(ev, side)
               if any(y.signature == s.signature for y in x.splats)}
        out[side] = f"{len(hit)}/{len(boots)}"
    return out
