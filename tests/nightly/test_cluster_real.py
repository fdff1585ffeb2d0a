"""One real nightly cell on a real two-worker Dask cluster (slow): `dask scheduler` and two `dask worker`
processes on 127.0.0.1, the real default kernel (the baseline from the machine's kernel cache, the patched
kernel built incrementally on it), a real QEMU boot under the worker, the real guest tests.

The fake-tree tests in test_cluster.py cover placement rules, artifact moves and worker deaths in seconds;
this one shows the same engine drives the real path end to end. Both workers use the machine's kernel
cache (as workers on one host would), so CI pays for the baseline build at most once for the whole suite.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from rig.core.paths import cache_dir
from test_cluster import DASK, REPO, LocalDask

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(DASK is None, reason="dask distributed is not installed (pip install 'dask[distributed]')")]

V1 = REPO / "patches" / "ovl-copyup.patch"
TESTS = "rfc_read,mmap_shared_ro_after"


def _qemu_pids() -> set[int]:
    out = set()
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"qemu-system" in (p / "cmdline").read_bytes():
                out.add(int(p.name))
        except OSError:
            pass
    return out


def test_a_real_cell_builds_boots_and_tests_on_a_two_worker_cluster(tmp_path):
    cache = cache_dir()
    cfg = tmp_path / "nightly.toml"
    cfg.write_text("\n".join([
        f'output = "{tmp_path / "out"}"', f'tests = "{TESTS}"', "",
        "[[kernel]]", 'name = "debian-6.12"', 'source = "default"', "",
        "[[series]]", 'name = "ovl-copyup-v1"', f'paths = ["{V1}"]', ""]))
    qemu_before = _qemu_pids()
    # one machine: both workers use its kernel cache
    dask = LocalDask(tmp_path / "dask", [(name, {"KPROTO_ACCEL": "tcg", "KPROTO_CACHE": str(cache)}, [])
                                         for name in ("worker-a", "worker-b")])
    try:
        kproto = REPO / ".venv" / "bin" / "kproto"
        p = subprocess.run([str(kproto) if kproto.exists() else "kproto", "nightly", str(cfg),
                            "--scheduler", dask.address], capture_output=True, text=True, timeout=2400,
                           env={**dask.env, "KPROTO_CACHE": str(cache)}, stdin=subprocess.DEVNULL)
        print(p.stdout, p.stderr[-4000:])
        assert not _qemu_pids() - qemu_before, "a QEMU outlived its cell"
    finally:
        dask.stop()
    assert p.returncode == 0, p.stderr[-3000:]
    assert "kproto nightly run 1: OK" in p.stdout
    assert f"Dask scheduler {dask.address}" in p.stderr + p.stdout

    db = sqlite3.connect(tmp_path / "out" / "history.sqlite")
    assert db.execute("SELECT name, outcome, applies, builds, boots, tested FROM series").fetchall() == [
        ("ovl-copyup-v1", "tested", 1, 1, 1, 1)]
    status = dict(db.execute("SELECT name, status FROM test_results").fetchall())
    assert status["rfc_read_ro_fd_after_copyup"] == "match"
    assert status["mmap_shared_ro_after_copyup"] == "fixed"
    version = db.execute("SELECT version FROM kernels").fetchone()[0]
    assert version.startswith("6.12")

    rep = json.loads((tmp_path / "out" / "latest" / "report.json").read_text())
    cluster = rep["cluster"]
    assert not cluster["embedded"] and cluster["scheduler"] == dask.address
    assert {w["name"] for w in cluster["workers"]} == {"worker-a", "worker-b"}
    stages = {p["stage"]: p for p in cluster["placement"]}
    assert set(stages) >= {"baseline", "patched", "test"}
    assert stages["patched"]["worker"] == stages["baseline"]["worker"], "the patched build goes where the baseline's objects are"
    assert stages["test"]["worker"] in ("worker-a", "worker-b") and stages["test"]["accel"] == "tcg"
