"""Shared fixtures, and the session-level check that the suite leaves no QEMU and no FUSE mount behind."""
from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from kproto_helpers import FAKE_KERNEL  # noqa: E402


SESSION_MARK = "KPROTO_TEST_SESSION"


def _qemu_pids() -> set[int]:
    """QEMU processes started by this test session: they inherit SESSION_MARK in their environment
    (so another user's or another session's VMs on the same machine do not count)."""
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    mark = f"{SESSION_MARK}={os.environ.get(SESSION_MARK, '')}".encode()
    pids = set()
    for p in out.split():
        try:
            env = open(f"/proc/{p}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if mark in env:
            pids.add(int(p))
    return pids


def _fuse_mounts() -> set[str]:
    with open("/proc/mounts") as fh:
        return {line.split()[1] for line in fh if line.split()[2].startswith("fuse")}


def _overlay_mounts() -> set[str]:
    with open("/proc/mounts") as fh:
        return {line.split()[1] for line in fh if line.split()[2] == "overlay"}


_BEFORE: dict[str, set] = {}


def pytest_sessionstart(session):
    os.environ[SESSION_MARK] = f"{os.getpid()}-{os.urandom(4).hex()}"
    _BEFORE["qemu"] = _qemu_pids()
    _BEFORE["fuse"] = _fuse_mounts()
    _BEFORE["overlay"] = _overlay_mounts()


def pytest_sessionfinish(session, exitstatus):
    leaks = []
    qemu = _qemu_pids() - _BEFORE.get("qemu", set())
    if qemu:
        leaks.append(f"QEMU processes left running: {sorted(qemu)}")
    fuse = _fuse_mounts() - _BEFORE.get("fuse", set())
    if fuse:
        leaks.append(f"FUSE mounts left behind: {sorted(fuse)}")
    ovl = _overlay_mounts() - _BEFORE.get("overlay", set())
    if ovl:
        leaks.append(f"overlay mounts left behind: {sorted(ovl)}")
    if leaks:
        print("\nkproto suite leak check FAILED:\n  " + "\n  ".join(leaks))
        session.exitstatus = 1


@pytest.fixture
def kcache(tmp_path, monkeypatch) -> Path:
    """A private $KPROTO_CACHE for one test."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("KPROTO_CACHE", str(d))
    return d


@pytest.fixture
def fake_tarball(tmp_path) -> Path:
    """The tiny fake kernel tree as a source tarball (top-level directory stripped on unpack)."""
    tb = tmp_path / "linux-fake.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(FAKE_KERNEL, arcname="linux-fake")
    return tb


@pytest.fixture
def fast_runner(monkeypatch):
    """kproto test's runner with the fake machine's short waits (the orchestration tests that drive
    kproto test, bisect and the nightly through the fake machine)."""
    from fake_machine import FAST
    from rig.suite import runner, testrun
    monkeypatch.setattr(runner, "TIMING", FAST)
    orig = runner.run_kernel_suite

    def fast(*a, **kw):
        kw["timing"] = FAST
        return orig(*a, **kw)
    monkeypatch.setattr(testrun, "run_kernel_suite", fast)
