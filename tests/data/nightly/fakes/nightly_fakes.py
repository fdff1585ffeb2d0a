"""TEST DOUBLE, not part of kproto: a stand-in for `kproto test` (rig.suite.testrun.run) for the nightly cluster
tests (tests/nightly/test_cluster.py) and bench/bench_nightly_cluster.py.

It lives in a module of its own so that real Dask workers can import it (their PYTHONPATH gets this
directory); the nightly passes it as test_fn="nightly_fakes:fake_test".

Like kproto test it prepares the baseline and the patched kernel (rig.kernel.prepare). The nightly's graph
must have delivered both to this worker's cache (built here or fetched from the worker that built them);
whether they were cache hits is recorded, so a test can tell "fetched" from "rebuilt". Instead of booting
QEMU it starts a stand-in process (`sleep`) reaped the way rig/machine/qemu.py reaps QEMU (own session,
PR_SET_PDEATHSIG), waits KPROTO_FAKE_BOOT_S seconds, and reports the test statuses the patches announce in
"Kproto-Fake-Result: TEST=STATUS" lines (splats: "Kproto-Fake-Splat: TITLE").

With KPROTO_FAKE_MARKERS=DIR, each call writes DIR/<pid>.json: which patches, which process (and its
parent: the Dask worker), the stand-in QEMU's pid, KPROTO_CACHE, whether the kernels were cache hits, accel.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from rig.core.paths import cache_dir
from rig.kernel import prepare
from rig.report.model import Report
from rig.machine.qemu import _pdeathsig, kvm_works


def _announced(series) -> tuple[dict[str, str], list[str]]:
    results: dict[str, str] = {}
    splats: list[str] = []
    for p in series:
        text = p.path.read_text(errors="replace")
        for m in re.finditer(r"^Kproto-Fake-Result: (\S+)=(\S+)\s*$", text, re.M):
            results[m.group(1)] = m.group(2)
        for m in re.finditer(r"^Kproto-Fake-Splat: (.+?)\s*$", text, re.M):
            splats.append(m.group(1))
    return results, splats


def fake_test(opts) -> Report:
    say = opts.progress
    prep = prepare.prepare(prepare.KernelSpec(opts.kernel_src, tuple(opts.config)), opts.patches, say)
    tree, series, base, patched = prep.tree, prep.series, prep.baseline, prep.patched
    assert base is not None
    say(f"source: linux {tree.version()} at {tree.base[:12]} ({tree.origin})")
    say(f"baseline kernel {base.version}: {'cached' if base.cached else 'BUILT HERE'}; "
        f"patched kernel: {'cached' if patched.cached else 'BUILT HERE'}")
    accel = "kvm" if kvm_works() else "tcg"
    results, splat_titles = _announced(series)

    qemu = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_pdeathsig)
    markers = os.environ.get("KPROTO_FAKE_MARKERS")
    if markers:
        info = {"patches": [p.path.name for p in series], "pid": os.getpid(), "ppid": os.getppid(),
                "qemu_pid": qemu.pid, "cache": str(cache_dir()), "base_key": base.key, "patched_key": patched.key,
                "base_cached": base.cached, "patched_cached": patched.cached, "accel": accel, "time": time.time()}
        d = Path(markers)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, d / f"{os.getpid()}.json")
    try:
        say(f"boot patched-1: stand-in guest pid {qemu.pid} ({accel}); running {len(results)} test(s)")
        time.sleep(float(os.environ.get("KPROTO_FAKE_BOOT_S", "0.1")))
    finally:
        qemu.kill()
        qemu.wait()

    tests = []
    for name, status in sorted(results.items()):
        ok = status in ("match", "fixed")
        tests.append({"name": name, "status": status, "known": None, "reason": None,
                      "diffs": [] if ok else [{"key": "read_data", "reference": "bar", "baseline": "bar",
                                               "patched": "foo"}],
                      "reference": {"observations": {"read_data": "bar"}}, "baseline": {},
                      "patched": {"observations": {"read_data": "bar" if ok else "foo"}}})
    sp = [{"kind": "warning", "title": t, "signature": f"warning:{t}"} for t in splat_titles]
    verdict = "regressed" if sp or any(t["status"] == "regressed" for t in tests) else "clean"
    return Report(verdict=verdict,
                  kernel={"source": tree.origin, "version": patched.version, "base": tree.base, "accel": accel},
                  patches=[p.as_json() for p in series], tests=tests,
                  splats={"baseline": [], "patched": sp, "new": sp},
                  timings={"build_s": 1.0, "boot_s": 2.0, "tests_s": 3.0, "total_s": 6.0})
