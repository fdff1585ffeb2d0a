"""kproto bench for real: the benchmark program on the host's overlayfs (fast, root), the command on
the host (--host-vs-ref: host overlayfs against the reference overlay over FUSE; bad input), and real
TCG runs of baseline and patched kernels (slow)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rig.bench import programs, sides
from rig.bench.run import BenchOptions

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
READ_DELAY = DATA / "patches" / "read-delay.patch"
OVL_COPYUP = REPO / "patches" / "ovl-copyup.patch"
KPROTO = [str(Path(sys.executable).with_name("kproto"))]


# ---------------------------------------------------------------- the program, on the host

def _can_mount_overlay() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None and "overlay" in Path("/proc/filesystems").read_text()


@pytest.mark.skipif(not _can_mount_overlay(), reason="needs root and overlayfs on the host")
def test_ovlbench_on_host_overlayfs(tmp_path):
    bins = programs.build_bins(cache=tmp_path / "cache")
    side = sides.HostSide("host", "host", bins, tmp_path, BenchOptions(duration_ms=10))
    try:
        side.start(1)
        side.ready()
        got = side.rep()
        # ovlbench keeps its set rotation in the side's own directory, not in the host's /tmp
        assert side.state_file.read_text().strip() == "1"
    finally:
        side.close()
    expected = {f"{m}_{l}" for m in ("seqread_hot", "pread4k_rand", "open_read_close", "stat", "mmap_read")
                for l in ("lower", "upper")} | {"pread4k_fd_before_copyup", "mmap_shared_first_lower"}
    assert expected <= set(got)
    assert "seqread_cold_lower" not in got            # -n on the host: no drop_caches
    assert all(r.value > 0 for r in got.values())
    assert got["mmap_shared_first_lower"].better == "lower"
    assert not os.path.ismount(tmp_path / "host-host")


# ---------------------------------------------------------------- real runs (TCG, slow)

FAST = ["--runs", "2", "--max-runs", "2", "--reps", "2", "--duration-ms", "30"]


def _bench(args, tmp_path, timeout=900, fast=FAST):
    out = tmp_path / "bench.json"
    p = subprocess.run([*KPROTO, "bench", *args, *fast, "--json", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    print(p.stdout)
    print(p.stderr[-3000:], file=sys.stderr)
    assert p.returncode in (0, 1), p.stderr[-2000:]
    return p, json.loads(out.read_text())


@pytest.mark.slow
def test_read_delay_is_a_significant_regression(tmp_path):
    p, doc = _bench([str(READ_DELAY)], tmp_path)
    assert p.returncode == 1
    m = {x["name"]: x for x in doc["metrics"]}
    for name in ("pread4k_rand_lower", "pread4k_rand_upper"):
        assert m[name]["significant"] and m[name]["change_pct"] < -10, m[name]
        assert m[name]["ci95_pct"][1] < 0
    assert "absolute numbers mean little" in p.stdout or doc.get("accel") == "kvm"
    assert "pread4k_rand_lower" in p.stdout and "%change" in p.stdout


@pytest.mark.slow
def test_baseline_vs_baseline_is_not_significant(tmp_path):
    p, doc = _bench([], tmp_path)
    assert p.returncode == 0
    flagged = [x["name"] for x in doc["metrics"] if x["significant"]]
    assert flagged == [], flagged
    assert doc["metrics"] and all(x["runs"] >= 2 for x in doc["metrics"])


@pytest.mark.slow
def test_ovl_copyup_prints_the_table(tmp_path):
    patch = OVL_COPYUP if OVL_COPYUP.is_file() else READ_DELAY
    p, doc = _bench([str(patch)], tmp_path, fast=["--runs", "1", "--reps", "2", "--duration-ms", "30"])
    assert "%stddev" in p.stdout and "mmap_shared_first_lower" in p.stdout
    assert len(doc["metrics"]) >= 14


@pytest.mark.fuse
@pytest.mark.skipif(not _can_mount_overlay(), reason="needs root and overlayfs on the host")
def test_host_vs_ref_same_table(tmp_path):
    out = tmp_path / "hr.json"
    p = subprocess.run([*KPROTO, "bench", "--host-vs-ref", "--runs", "1", "--reps", "1", "--duration-ms", "10",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "host overlayfs" in p.stdout and "overlay_ref" in p.stdout and "%change" in p.stdout
    doc = json.loads(out.read_text())
    assert doc["mode"] == "host-vs-ref"
    assert {"pread4k_rand_lower", "open_read_close_upper"} <= {m["name"] for m in doc["metrics"]}


def test_bench_rejects_patches_with_host_vs_ref(tmp_path):
    p = subprocess.run([*KPROTO, "bench", "--host-vs-ref", str(READ_DELAY)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "takes no PATCH" in p.stderr
