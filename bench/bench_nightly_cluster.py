#!/usr/bin/env python3
"""`kproto nightly` on the embedded Dask cluster vs a 2-worker local Dask cluster. Figures, not assertions.

A 4-series matrix (one kernel: the fake kernel tree of the test suite, really built; series s1..s4 of
tests/data/nightly/fakekernel-series) runs twice from cold caches:

  embedded   `kproto nightly` as on one machine: the in-process LocalCluster, one build or boot at a time
             on a 2-core machine (builds ask for all cpus, tests for 2);
  2 workers  a `dask scheduler` and two `dask worker` processes on 127.0.0.1 (each its own KPROTO_CACHE, as
             if on two machines), driven with --scheduler.

kproto test is the stand-in tests/data/nightly/fakes/nightly_fakes.py: no QEMU, a "boot" of --boot-s
seconds (a sleep), so the figures show what the graph overlaps, not what real guests would cost. Both workers
run on this machine's cores: real builds and guests would compete for them here; on two machines they would
not. Prints per run the wall time, where each cell's test ran and how many kernels moved between workers.

    .venv/bin/python bench/bench_nightly_cluster.py [--boot-s 5] [--rounds 1]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
FAKES = DATA / "nightly" / "fakes"
SERIES = DATA / "nightly" / "fakekernel-series"
DASK = str(Path(sys.executable).parent / "dask")


def fake_source(d: Path) -> Path:
    src = d / "linux-fake"
    shutil.copytree(DATA / "fakekernel", src)
    for f in (DATA / "nightly" / "fakekernel-scripts").iterdir():
        shutil.copy2(f, src / "scripts" / f.name)
    tb = d / "linux-fake.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(src, arcname="linux-fake")
    return tb


def config(d: Path, source: Path) -> Path:
    lines = [f'output = "{d / "out"}"', 'tests = "rfc_read"', "", "[[kernel]]", 'name = "fake"', f'source = "{source}"', ""]
    for n in ("s1", "s2", "s3", "s4"):
        lines += ["[[series]]", f'name = "{n}"', f'paths = ["{SERIES / (n + ".patch")}"]', ""]
    p = d / "nightly.toml"
    p.write_text("\n".join(lines))
    return p


def night(d: Path, source: Path, scheduler: str | None) -> dict:
    from rig.nightly.config import load_config
    from rig.nightly.run import run
    d.mkdir(parents=True)
    os.environ["KPROTO_CACHE"] = str(d / "driver-cache")
    cfg = load_config(config(d, source))
    t = time.monotonic()
    res = run(cfg, say=lambda m: None, test_fn="nightly_fakes:fake_test", scheduler=scheduler)
    wall = time.monotonic() - t
    cl = json.loads((res.report_dir / "report.json").read_text())["cluster"]
    tests = {p["series"]: p["worker"] for p in cl["placement"] if p["stage"] == "test"}
    moved = sum(1 for p in cl["placement"] for f in p.get("fetched", []) if f.get("how") not in ("local", None))
    return {"wall": wall, "exit": res.exit_code, "tests": tests, "moved": moved,
            "outcomes": {s.name: s.outcome for s in res.series}}


def start_cluster(d: Path, boot_s: float) -> tuple[str, list[subprocess.Popen]]:
    d.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]), "KPROTO_FAKE_BOOT_S": str(boot_s)}
    sf = d / "scheduler.json"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                               "127.0.0.1:0", "--scheduler-file", str(sf)], env=env,
                              stdout=open(d / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    while not sf.is_file():
        time.sleep(0.1)
    time.sleep(0.2)
    addr = json.loads(sf.read_text())["address"]
    for name in ("worker-1", "worker-2"):
        procs.append(subprocess.Popen([DASK, "worker", addr, "--name", name, "--host", "127.0.0.1", "--nthreads", "2",
                                       "--no-dashboard"], env={**env, "KPROTO_CACHE": str(d / f"cache-{name}")},
                                      stdout=open(d / f"{name}.log", "w"), stderr=subprocess.STDOUT))
    from distributed import Client
    with Client(addr, timeout=30, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=120)
    return addr, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--boot-s", type=float, default=5.0, help="seconds each stand-in 'boot' takes (default 5)")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    sys.path.insert(0, str(FAKES))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(FAKES), str(REPO)])
    os.environ["KPROTO_FAKE_BOOT_S"] = str(a.boot_s)
    print(f"4-series matrix on the fake kernel tree, stand-in boot {a.boot_s:g} s, {os.cpu_count()} cores here; "
          "cold caches each run", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kproto-bench-cluster-") as tmpname:
        tmp = Path(tmpname)
        source = fake_source(tmp)
        for r in range(1, a.rounds + 1):
            e = night(tmp / f"embedded-{r}", source, None)
            print(f"round {r} embedded : {e['wall']:6.1f} s  exit {e['exit']}  tests on {sorted(set(e['tests'].values()))}",
                  flush=True)
            t = time.monotonic()
            addr, procs = start_cluster(tmp / f"dask-{r}", a.boot_s)
            up = time.monotonic() - t
            try:
                c = night(tmp / f"cluster-{r}", source, addr)
            finally:
                stop(procs)
            placed = ", ".join(f"{s}@{w}" for s, w in sorted(c["tests"].items()))
            print(f"round {r} 2 workers: {c['wall']:6.1f} s  exit {c['exit']}  (+{up:.1f} s to start the scheduler and "
                  f"workers)  tests: {placed}; kernels moved between workers: {c['moved']}", flush=True)
            same = e["outcomes"] == c["outcomes"]
            print(f"round {r} same outcomes: {same}", flush=True)
            rows.append((e["wall"], c["wall"]))
    if rows:
        em = sum(x for x, _ in rows) / len(rows)
        cm = sum(y for _, y in rows) / len(rows)
        print(f"mean: embedded {em:.1f} s, 2 workers {cm:.1f} s ({em / cm:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
