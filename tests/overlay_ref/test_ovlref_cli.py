"""CLI, daemon life cycle, and the mount(8) helper."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import overlay_ref
from overlay_ref import daemon, procs
from ovl_helpers import HELPER, requires_fuse
from ovl_helpers import cmdline as _cmdline, daemon_pid as _daemon_pid, run_helper as _run_helper

REPO = Path(overlay_ref.__file__).resolve().parents[1]


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "overlay_ref", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def _cleanup(mnt, pid=None):
    if daemon.is_mounted(str(mnt)):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    if pid and procs._pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _wait_gone(pid, t=10):
    deadline = time.monotonic() + t
    while procs._pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not procs._pid_alive(pid)


def test_bad_input_exit_2(tmp_path):
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "m").mkdir()
    r = cli("mount", tmp_path / "missing", tmp_path / "u", tmp_path / "w", tmp_path / "m")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "does not exist" in r.stderr
    (tmp_path / "l").mkdir()
    r = cli("mount", tmp_path / "l", tmp_path / "u", tmp_path / "w", tmp_path / "m", "-o", "bogus")
    assert r.returncode == 2 and "unknown option" in r.stderr
    assert "redirect_dir" in r.stderr and "xino" in r.stderr     # names what it understands and what it ignores
    r = cli("umount", tmp_path / "m")
    assert r.returncode == 2 and "not mounted" in r.stderr
    r = cli("mount", tmp_path / "l")
    assert r.returncode == 2
    with pytest.raises(overlay_ref.OverlayRefError):
        overlay_ref.mount([str(tmp_path / "nope")], str(tmp_path / "u"), str(tmp_path / "w"),
                          str(tmp_path / "m"))


@pytest.mark.fuse
@requires_fuse
def test_cli_mount_umount_round_trip(make_layers):
    layers = make_layers([{"a": "1"}, {"b": "2"}])
    pid = None
    try:
        r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt, "-o",
                "redirect_dir,allow_other")
        assert r.returncode == 0, r.stderr
        ent = daemon.mount_entry(str(layers.mnt))
        assert ent["fstype"] == "fuse.kproto-ovl"
        assert "allow_other" in ent["options"] or "allow_other" in open("/proc/mounts").read()
        pid = _daemon_pid(layers.mnt)
        assert sorted(os.listdir(layers.mnt)) == ["a", "b"]
        r = cli("umount", layers.mnt)
        assert r.returncode == 0, r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
        assert _wait_gone(pid)
    finally:
        _cleanup(layers.mnt, pid)
    layers.check_lowers()


@pytest.mark.fuse
@requires_fuse
def test_umount_after_daemon_died(make_layers):
    layers = make_layers([{"a": "1"}])
    pid = overlay_ref.mount([str(layers.lowers[0])], str(layers.upper), str(layers.work),
                            str(layers.mnt))
    try:
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid)
        with pytest.raises(OSError) as ei:
            os.listdir(layers.mnt)
        assert ei.value.errno == 107          # ENOTCONN
        r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
        r = cli("umount", layers.mnt)
        assert r.returncode == 0, r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
    finally:
        _cleanup(layers.mnt, pid)


@pytest.mark.fuse
@requires_fuse
def test_foreground_and_sigterm(make_layers):
    layers = make_layers([{"a": "1"}])
    p = subprocess.Popen([sys.executable, "-m", "overlay_ref", "mount", layers.lowerdir,
                          str(layers.upper), str(layers.work), str(layers.mnt), "--foreground"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not daemon.is_mounted(str(layers.mnt)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert daemon.is_mounted(str(layers.mnt))
        assert (layers.mnt / "a").read_text() == "1"
        p.send_signal(signal.SIGTERM)            # a clean stop unmounts
        assert p.wait(timeout=20) == 0
        assert not daemon.is_mounted(str(layers.mnt))
    finally:
        _cleanup(layers.mnt)
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.fuse
@requires_fuse
def test_mount_helper_script(make_layers, tmp_path):
    layers = make_layers([{"a": "1"}, {"b": "2"}])
    env = dict(os.environ, KPROTO_OVL_PYTHON=sys.executable)
    opts = f"rw,lowerdir={layers.lowerdir},upperdir={layers.upper},workdir={layers.work}"
    r = subprocess.run([str(HELPER), "kproto-ovl", str(layers.mnt), "-o", opts],
                       capture_output=True, text=True, env=env, timeout=60)
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        pid = _daemon_pid(layers.mnt)
        assert sorted(os.listdir(layers.mnt)) == ["a", "b"]
        assert daemon.mount_entry(str(layers.mnt))["fstype"] == "fuse.kproto-ovl"
        overlay_ref.umount(str(layers.mnt))
        assert _wait_gone(pid)
    finally:
        _cleanup(layers.mnt, pid)
    # missing workdir: mount(8)'s usage error
    r = subprocess.run([str(HELPER), "kproto-ovl", str(layers.mnt), "-o",
                        f"lowerdir={layers.lowerdir},upperdir={layers.upper}"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "workdir" in r.stderr
    # install-helper bakes the interpreter in: works without the environment variable
    dest = tmp_path / "mount.fuse.kproto-ovl"
    assert cli("install-helper", dest).returncode == 0
    assert f"BAKED_PYTHONS={sys.executable}\n" in dest.read_text()
    env2 = {k: v for k, v in os.environ.items() if k != "KPROTO_OVL_PYTHON"}
    r = subprocess.run([str(dest), "kproto-ovl", str(layers.mnt), "-o", opts],
                       capture_output=True, text=True, env=env2, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        pid = _daemon_pid(layers.mnt)
        assert (layers.mnt / "b").read_text() == "2"
        overlay_ref.umount(str(layers.mnt))
    finally:
        _cleanup(layers.mnt, pid)


def _fake_python(path: Path, out: Path) -> Path:
    """An 'interpreter' that records it was the one the helper ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$0\" > {out}\n")
    path.chmod(0o755)
    return path


@pytest.mark.skipif(os.path.exists("/etc/kproto-ovl.python"), reason="/etc/kproto-ovl.python overrides the list")
def test_install_helper_keeps_the_other_checkouts_and_skips_removed_ones(tmp_path):
    """Each checkout's set-up installs the one global helper: it names its own interpreter first and keeps
    the others that still exist, so removing the checkout that installed it last does not break
    mount -t fuse.kproto-ovl (the helper falls back to the next one that exists)."""
    out = tmp_path / "ran"
    a = _fake_python(tmp_path / "a" / "python", out)
    b = _fake_python(tmp_path / "b" / "python", out)
    dest = tmp_path / "mount.fuse.kproto-ovl"
    from overlay_ref import mount_helper
    mount_helper.install(str(dest), str(a))
    mount_helper.install(str(dest), str(b))
    mount_helper.install(str(dest), str(b))                 # again: named once
    assert mount_helper.baked_pythons(dest.read_text()) == [str(b), str(a)]
    env = {k: v for k, v in os.environ.items() if k != "KPROTO_OVL_PYTHON"}
    subprocess.run([str(dest), "x", "y"], env=env, check=True, timeout=30)
    assert out.read_text().strip() == str(b)
    shutil.rmtree(tmp_path / "b")                           # the last checkout is gone
    subprocess.run([str(dest), "x", "y"], env=env, check=True, timeout=30)
    assert out.read_text().strip() == str(a)
    mount_helper.install(str(dest), str(a))                 # and a removed one is dropped on the next install
    assert mount_helper.baked_pythons(dest.read_text()) == [str(a)]
    # a helper from before the list (one BAKED_PYTHON=) is read too
    dest.write_text(f"BAKED_PYTHON={a}\n")
    assert mount_helper.baked_pythons(dest.read_text()) == [str(a)]


def _umount_quietly(mnt, pid: int) -> None:
    """`overlay_ref umount` succeeds without a word (it recognised the daemon) and the daemon exits."""
    r = cli("umount", mnt)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _wait_gone(pid)


def _serves_a_then_unmounts(layers, r: subprocess.CompletedProcess) -> None:
    """The mount command R worked: its daemon serves the lower file a ("1"), and overlay_ref.umount
    unmounts it and waits for the daemon to exit (cleaned up whatever fails)."""
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        pid = _daemon_pid(layers.mnt)
        assert (layers.mnt / "a").read_text() == "1"
        overlay_ref.umount(str(layers.mnt))
        assert _wait_gone(pid)
    finally:
        _cleanup(layers.mnt, pid)


@pytest.mark.fuse
@requires_fuse
def test_the_helper_becomes_the_daemon(make_layers):
    """mount(8)'s helper forks into the daemon instead of starting a second interpreter (the outside
    suites remount after every step, and the start-up was most of a mount). The fork is a proper
    daemon: its own session, cwd /, no hold on the caller's stdout/stderr (capture_output would wait
    for it otherwise), and umount knows it by its command line: no warning, and it exits."""
    layers = make_layers([{"a": "1"}, {"b": "2"}])
    r = _run_helper(layers, cwd=layers.upper)
    pid = None
    try:
        assert r.returncode == 0 and r.stderr == "", r.stderr
        pid = _daemon_pid(layers.mnt)
        args = _cmdline(pid)
        assert "overlay_ref.mount_helper" in args and "_serve" not in args, args
        assert os.getsid(pid) == pid
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)} == {os.devnull}
        assert sorted(os.listdir(layers.mnt)) == ["a", "b"]
        _umount_quietly(layers.mnt, pid)
    finally:
        _cleanup(layers.mnt, pid)


@pytest.mark.fuse
@requires_fuse
def test_the_helper_does_not_run_an_overlay_ref_from_the_current_directory(make_layers, tmp_path):
    """mount(8) runs the helper as root in the caller's directory; `python -m` would import a package
    found there first. A planted overlay_ref/ in the cwd must not run; the real one mounts."""
    layers = make_layers([{"a": "1"}])
    planted = tmp_path / "cwd"
    (planted / "overlay_ref").mkdir(parents=True)
    marker = tmp_path / "planted-ran"
    for mod in ("__init__.py", "mount_helper.py"):
        (planted / "overlay_ref" / mod).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    r = _run_helper(layers, cwd=planted)
    # checked first: the planted code mounts nothing, so there is nothing to clean up if it ran
    assert not marker.exists(), "the helper ran the overlay_ref of the current directory"
    _serves_a_then_unmounts(layers, r)


@pytest.mark.fuse
@requires_fuse
def test_cli_mount_with_a_relative_mount_point_starts_a_daemon_that_names_it_absolute(make_layers):
    """A forked daemon's command line is the caller's; with a relative mount point that would not name
    the mount, so the CLI starts `overlay_ref _serve` with the absolute path instead, and umount still
    finds and waits for it."""
    layers = make_layers([{"a": "1"}])
    r = subprocess.run([sys.executable, "-m", "overlay_ref", "mount", layers.lowerdir, str(layers.upper),
                        str(layers.work), layers.mnt.name], capture_output=True, text=True, timeout=60,
                       cwd=layers.mnt.parent, env=dict(os.environ, PYTHONPATH=str(REPO)))
    pid = None
    try:
        assert r.returncode == 0, r.stderr
        pid = _daemon_pid(layers.mnt)
        args = _cmdline(pid)
        assert "_serve" in args and str(layers.mnt) in args, args
        _umount_quietly(layers.mnt, pid)
    finally:
        _cleanup(layers.mnt, pid)


@pytest.mark.fuse
@requires_fuse
@pytest.mark.skipif(not os.path.exists("/sbin/mount.fuse.kproto-ovl"),
                    reason="helper not installed in /sbin (the set-up does that)")
def test_mount_t_fuse_kproto_ovl(make_layers):
    """mount(8) through the helper setup.sh installs; KPROTO_OVL_PYTHON makes it run this checkout's
    overlay_ref (the installed helper names the venv of whichever clone ran setup.sh last)."""
    layers = make_layers([{"a": "1"}])
    r = subprocess.run(["mount", "-t", "fuse.kproto-ovl", "kproto-ovl", str(layers.mnt), "-o",
                        f"lowerdir={layers.lowerdir},upperdir={layers.upper},workdir={layers.work}"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KPROTO_OVL_PYTHON": sys.executable})
    _serves_a_then_unmounts(layers, r)
