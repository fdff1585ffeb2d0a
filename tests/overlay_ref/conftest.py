"""Fixtures for the reference overlay tests: real FUSE mounts of the reference, host-kernel
overlayfs mounts; lower-layer checksums are checked after every mount."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# tests/ is on sys.path (rootdir conftest) and tests/overlay_ref would shadow the real package as a
# namespace package: put the repository root first.
_REPO = str(Path(__file__).resolve().parents[2])
sys.path.insert(0, _REPO)
if "overlay_ref" in sys.modules and getattr(sys.modules["overlay_ref"], "__file__", None) is None:
    del sys.modules["overlay_ref"]
import overlay_ref  # noqa: E402
from overlay_ref import daemon, procs  # noqa: E402

# The mount(8) helper's template process (overlay_ref/zygote.py) is off unless a test turns it on:
# a template started by one test would serve the mounts of the next (test_ovlref_zygote.py tests it).
os.environ["KPROTO_OVL_ZYGOTE"] = "0"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ovl_helpers import HERE, Layers  # noqa: E402


@pytest.fixture
def make_layers(tmp_path):
    n = [0]

    def make(lowers, upper=None, prefix="trusted.overlay.") -> Layers:
        n[0] += 1
        return Layers(tmp_path / f"ovl{n[0]}", lowers, upper, prefix)
    return make


def _force_umount(mnt: Path) -> None:
    if daemon.is_mounted(str(mnt)):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def ref_mount():
    """ref_mount(layers, options=None) mounts the reference; unmounts, checks the daemon is
    gone and the lowers are unchanged at teardown."""
    mounted: list[tuple[Layers, int, Path]] = []

    def mount(layers: Layers, options: dict | None = None, mnt: Path | None = None) -> Path:
        mnt = mnt or layers.mnt
        pid = overlay_ref.mount([str(d) for d in layers.lowers], str(layers.upper),
                                str(layers.work), str(mnt), options)
        mounted.append((layers, pid, mnt))
        return mnt

    def umount(mnt: Path) -> None:
        for i, (layers, pid, m) in enumerate(mounted):
            if m == mnt:
                overlay_ref.umount(str(m))
                assert not procs._pid_alive(pid)
                del mounted[i]
                layers.check_lowers()
                return
        raise AssertionError("not mounted here")

    mount.umount = umount
    try:
        yield mount
    finally:
        for layers, pid, m in mounted:
            try:
                if daemon.is_mounted(str(m)):
                    overlay_ref.umount(str(m))
            finally:
                _force_umount(m)
                if procs._pid_alive(pid):
                    os.kill(pid, 9)
        for layers, pid, m in mounted:
            assert not procs._pid_alive(pid), "daemon survived umount"
            layers.check_lowers()


@pytest.fixture
def kernel_mount():
    """kernel_mount(layers, options='') mounts the host kernel's overlayfs on the layers."""
    mounted: list[Path] = []

    def mount(layers: Layers, options: str = "", mnt: Path | None = None) -> Path:
        mnt = mnt or layers.mnt
        o = (f"lowerdir={layers.lowerdir},upperdir={layers.upper},workdir={layers.work},"
             f"index=off,metacopy=off")
        if options:
            o += "," + options
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", o, str(mnt)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"host overlayfs mount failed: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    def umount(mnt: Path) -> None:
        subprocess.run(["umount", str(mnt)], check=True)
        mounted.remove(mnt)

    mount.umount = umount
    try:
        yield mount
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], capture_output=True)
            _force_umount(m)


@pytest.fixture(scope="session")
def probe_bin(tmp_path_factory):
    if not shutil.which("gcc"):
        pytest.skip("gcc not available")
    out = tmp_path_factory.mktemp("probe") / "probe"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "probe.c")], check=True)
    return out

