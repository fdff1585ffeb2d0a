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
from .errors import BootError, InfraError, KprotoError
from .evidence import LOCKDEP_KINDS, Evidence, add_run, decide, needs_confirmation
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
    confirm: int = 2                   # extra boots per kernel for tests whose outcome can vary
    allow_flaky: bool = False          # a flaky test alone does not make the verdict need attention
    machine_factories: dict | None = None   # label -> runner.MachineFactory (tests: a fake machine)
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
                 timeout: float | None) -> tuple[list[str], dict[str, float], set[str]]:
    """The selected tests in run order, their timeouts, and which of them are marked concurrent."""
    chosen = harness.select(harness.load_specs(suite), pattern)
    if not chosen:
        from .errors import BadInput
        raise BadInput(f"-k {pattern!r} selects no guest test (see guest_tests/*.toml for names)")
    return ([s.name for s in chosen], {s.name: float(timeout or s.timeout) for s in chosen},
            {s.name for s in chosen if s.concurrent})


def run_reference(suite: Path, bins: Path, names: list[str], timeout: float | None, work: Path) -> dict[str, dict]:
    results = harness.run_tests(bins=bins, tests=suite, work=work, target="ref", names=names,
                                timeout=timeout, emit=None, ref_python=sys.executable)
    return {r["name"]: r for r in results}


# What shapes a kernel's results besides the kernel itself: the harness, the runner and its barrier,
# the splat analysis (titles, signatures), the guest boot (vm, ssh, templates) and the suite. A kproto
# upgrade that changes any of them never compares against stale cached results.
_ANALYSIS = ("runner.py", "splats.py", "vm.py", "ssh.py", "guest_build.py", "evidence.py", "guest/harness.py")


def analysis_fingerprint(suite: Path) -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    files = [here / f for f in _ANALYSIS] + sorted((here / "templates").glob("*")) + \
        sorted(p for p in Path(suite).rglob("*") if p.is_file() and p.suffix in (".c", ".h", ".toml"))
    for f in files:
        h.update(str(f.relative_to(f.parent.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def _baseline_cache_path(suite: Path, kernel: buildmod.Kernel, bins: Path, names: list[str],
                         timeout: float | None, extra: str = "") -> Path:
    """Keyed by the kernel (base, config fragment, patches), the suite, the selection and the analysis code."""
    h = hashlib.sha256(f"{kernel.key}|{bins.name}|{','.join(names)}|{timeout}|{extra}".encode())
    h.update(analysis_fingerprint(suite).encode())
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
    _atomic_write(path, json.dumps(run.as_json()))


def _load_run(path: Path, kernel: buildmod.Kernel, label: str) -> KernelRun:
    return KernelRun.from_json(json.loads(path.read_text()), kernel, label)


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


def verdict_of(tests: list[dict], new_splats: list, base: KernelRun | None, patched: KernelRun | None,
               reference: dict[str, dict] | None = None, allow_flaky: bool = False) -> tuple[str, list[str]]:
    """clean | regressed | flaky | error. A failure of the reference overlay itself is the rig's problem
    (error, exit 3), not the patch's: without the oracle there is no verdict for that test. `flaky`
    (exit 1): nothing regressed for sure, but a test's outcome varied across boots (--allow-flaky: clean)."""
    reasons = []
    ref_failed = sorted(n for n, r in (reference or {}).items() if r.get("status") != "ok")
    if ref_failed:
        return "error", [f"the reference overlay failed on {len(ref_failed)} test(s): {', '.join(ref_failed[:5])} "
                         f"({(reference or {})[ref_failed[0]].get('error')})"]
    regressed = [t["name"] for t in tests if t["status"] == "regressed"]
    if regressed:
        reasons.append(f"{len(regressed)} test(s) regressed: {', '.join(regressed[:5])}")
    pres = patched.results if patched else {}
    bres = base.results if base else {}
    new_errors = [t["name"] for t in tests if t["status"] == "error"
                  and (pres.get(t["name"], {}).get("status") != "ok")
                  and bres.get(t["name"], {}).get("status") == "ok"]
    dl = patched.deadlock if patched else None
    if dl:
        reasons.append(f"{len(dl['hung'])} test(s) hung with the same blocked tasks ({dl['signature']}): "
                       f"{', '.join(dl['hung'][:5])}" + (f"; {len(dl['not_run'])} not run" if dl["not_run"] else ""))
        new_errors = [n for n in new_errors if n not in dl["hung"] and n not in dl["not_run"]]
    if new_errors:
        reasons.append(f"{len(new_errors)} test(s) fail only on the patched kernel: {', '.join(new_errors[:5])}")
    if new_splats:
        reasons.append(f"{len(new_splats)} new splat(s): {'; '.join(s.title for s in new_splats[:3])}")
    if reasons:
        return "regressed", reasons
    flaky = [t["name"] for t in tests if t["status"] == "flaky"]
    if flaky and not allow_flaky:
        return "flaky", [f"{len(flaky)} test(s) flaky (outcome varies across boots): {', '.join(flaky[:5])}; "
                         "--allow-flaky to accept"]
    return "clean", []


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
    return Report(verdict="regressed",
                  kernel=_kernel_info(tree, patched_kernel),
                  patches=[p.as_json() for p in series], tests=tests,
                  splats={"baseline": [s.as_json() for s in (base_run.splats if base_run else [])],
                          "patched": [s.as_json() for s in found], "new": [s.as_json() for s in new]},
                  timings=timings, reasons=[f"the patched kernel did not boot: {what}"],
                  notes=[f"patched console tail:\n{tail}"], checks=checks)


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
    names, timeouts, concurrent = select_tests(suite, opts.pattern, opts.timeout)
    bins = guest_build.build(suite)
    run_dir = new_run_dir(opts.keep)
    factories = opts.machine_factories or {}
    pool = ThreadPoolExecutor(max_workers=1)
    runs: dict[str, KernelRun] = {}
    evidence: dict[str, Evidence] = {}
    base_run: KernelRun | None = None

    def kernel_run(kernel, label: str, wanted: list[str], first_boot: int = 1) -> KernelRun:
        return run_kernel_suite(kernel, label, run_dir, wanted, timeouts, say,
                                machine_factory=factories.get(label), first_boot=first_boot)

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
        cached = _baseline_cache_path(suite, base_kernel, bins, names, opts.timeout)
        if cached.is_file() and not opts.rerun_baseline:
            base_run = runs["baseline"] = _load_run(cached, base_kernel, "baseline")
            say(f"baseline: results cached from an earlier run ({cached.name}; --rerun-baseline to redo)")
            timings["baseline_tests_s"] = 0.0
        else:
            t = time.monotonic()
            try:
                base_run = runs["baseline"] = kernel_run(base_kernel, "baseline", names)
            except KeyboardInterrupt as e:
                raise _interrupted(e, "baseline", runs, tree, series, patched_kernel, timings, t0) from None
            timings["baseline_tests_s"] = round(time.monotonic() - t, 1)
            if all(r.get("status") != "timeout" for r in base_run.results.values()):
                _save_run(cached, base_run)
        t = time.monotonic()
        try:
            patched_run = runs["patched"] = kernel_run(patched_kernel, "patched", names)
        except KeyboardInterrupt as e:
            raise _interrupted(e, "patched", runs, tree, series, patched_kernel, timings, t0) from None
        except BootError as e:
            # the baseline booted (or its results were cached from a boot): the patch broke boot
            say(f"the patched kernel did not boot: {str(e).splitlines()[0]}")
            return _boot_failure_report(tree, series, base_kernel, patched_kernel, e, names, base_run,
                                        timings, t0, checks)
        timings["patched_tests_s"] = round(time.monotonic() - t, 1)
        timings["boot_s"] = round(patched_run.boot_s, 1)
        timings["tests_s"] = round(patched_run.tests_s, 1)
        add_run(evidence, base_run, "baseline")
        add_run(evidence, patched_run, "patched")

        # confirmation boots for the tests the two kernels disagree on, where the outcome can vary
        t = time.monotonic()
        boots = {"baseline": base_run.boots, "patched": patched_run.boots}
        extra_splats: dict[str, list[splatmod.Splat]] = {"baseline": [], "patched": []}
        for rnd in range(1, opts.confirm + 1):
            # a deadlock that already hung MAX_SAME_HANGS tests is its own evidence: neither its hung
            # tests nor the ones it kept from running are rerun
            settled = {n for r in (base_run, patched_run) if r.deadlock
                       for n in r.deadlock["hung"] + r.deadlock["not_run"]}
            wanted = [n for n in names if n in evidence and n not in settled
                      and needs_confirmation(evidence[n], n in concurrent)]
            if not wanted:
                break
            say(f"confirming {len(wanted)} test(s) on fresh boots of both kernels (round {rnd}/{opts.confirm}): "
                f"{', '.join(wanted[:4])}{' ...' if len(wanted) > 4 else ''}")
            for label, kernel in (("baseline", base_kernel), ("patched", patched_kernel)):
                ccache = _baseline_cache_path(suite, base_kernel, bins, wanted, opts.timeout, extra=f"confirm-{rnd}") \
                    if label == "baseline" else None
                if ccache is not None and ccache.is_file() and not opts.rerun_baseline:
                    extra = _load_run(ccache, kernel, label)
                else:
                    try:
                        extra = kernel_run(kernel, label, wanted, first_boot=boots[label] + 1)
                    except KeyboardInterrupt as e:
                        raise _interrupted(e, label, runs, tree, series, patched_kernel, timings, t0) from None
                    if ccache is not None and all(r.get("status") != "timeout" for r in extra.results.values()):
                        _save_run(ccache, extra)
                boots[label] += extra.boots
                extra_splats[label] += extra.splats
                add_run(evidence, extra, label)
        timings["confirm_s"] = round(time.monotonic() - t, 1)
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
    flaky_sigs: set[str] = set()
    for v in verdicts:
        ev = evidence.get(v.name)
        if ev is not None and ev.rerun:
            d = decide(ev)
            if d.status == "regressed" and v.status != "error":
                v.status, v.reason = "regressed", d.reason
            elif d.status == "flaky":
                v.status, v.reason = "flaky", d.reason
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
    verdict, reasons = verdict_of(tests, sure_new, base_run, patched_run, reference, opts.allow_flaky)
    timings["total_s"] = round(time.monotonic() - t0, 1)
    notes = []
    if not kvm_works():
        notes.append("KVM is not usable here (no vmx/svm): the guests ran under TCG; timings are emulated")
    for ev_text in base_run.events + patched_run.events:
        notes.append(ev_text)
    if boots["patched"] > 1:
        notes.append(f"patched kernel was booted {boots['patched']} times (fresh boot after each splat, taint, "
                     f"lockdep-off or hang; confirmation boots)")
    rep = Report(
        verdict=verdict,
        kernel=_kernel_info(tree, patched_kernel),
        patches=[p.as_json() for p in series], tests=tests,
        splats={"baseline": [s.as_json() for s in all_base],
                "patched": [s.as_json() for s in all_patched],
                "new": [dict(s.as_json(), boots=_seen(s, evidence)) for s in new]},
        timings=timings, reasons=reasons, notes=notes, checks=checks)
    rep.verdicts = verdicts
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
