"""rig/guest/mount.py: THE mounter's command lines (argv and shell-quoted), is_mounted on real mounts."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rig.core import paths
from rig.guest import mount

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")


def test_mount_argv_overlay_and_ref():
    assert mount.mount_argv("overlay", ["/l0", Path("/l1")], "/u", "/w", "/m", ["userxattr", "redirect_dir=on"]) == [
        "mount", "-t", "overlay", "overlay", "-o",
        "lowerdir=/l0:/l1,upperdir=/u,workdir=/w,userxattr,redirect_dir=on", "/m"]
    assert mount.mount_argv("ref", ["/l0", "/l1"], "/u", "/w", "/m", ref_python="/py") == [
        "/py", "-m", "overlay_ref", "mount", "/l0:/l1", "/u", "/w", "/m"]
    assert mount.mount_argv("ref", ["/l"], "/u", "/w", "/m", ["userxattr", "x=y"])[-2:] == ["-o", "userxattr,x=y"]
    assert mount.umount_argv("overlay", Path("/m")) == ["umount", "/m"]
    assert mount.umount_argv("ref", "/m", ref_python="/py") == ["/py", "-m", "overlay_ref", "umount", "/m"]
    with pytest.raises(ValueError):
        mount.mount_argv("ext4", ["/l"], "/u", "/w", "/m")
    with pytest.raises(ValueError):
        mount.umount_argv("nope", "/m")
    with pytest.raises(ValueError):
        mount.Mounter("nope")


@pytest.mark.parametrize("target", mount.TARGETS)
def test_mount_commands_quote_paths(target):
    odd = "/tmp/a dir/it's $HOME;`x`"
    m, u = mount.mount_commands(target, [f"{odd}/lower"], f"{odd}/upper", f"{odd}/work", f"{odd}/merged",
                                opts=["userxattr"])
    # the shell sees exactly the argv: no word splitting, no expansion
    assert shlex.split(m) == mount.mount_argv(target, [f"{odd}/lower"], f"{odd}/upper", f"{odd}/work",
                                              f"{odd}/merged", ["userxattr"])
    assert shlex.split(u) == mount.umount_argv(target, f"{odd}/merged")
    out = subprocess.run(["sh", "-c", f"set -- {m}; printf '%s\\n' \"$@\""], capture_output=True, text=True).stdout
    assert out.splitlines() == shlex.split(m)
    assert "$HOME" in out and "`x`" in out


def test_mount_commands_env_prefix_and_ref_python():
    m, u = mount.mount_commands("ref", ["/l"], "/u", "/w", "/m b", ref_python="/opt/py 3/python",
                                env={"PYTHONPATH": "/repo dir", "A": "1"})
    assert shlex.split(m) == ["env", "PYTHONPATH=/repo dir", "A=1", "/opt/py 3/python", "-m", "overlay_ref",
                              "mount", "/l", "/u", "/w", "/m b"]
    assert shlex.split(u) == ["env", "PYTHONPATH=/repo dir", "A=1", "/opt/py 3/python", "-m", "overlay_ref",
                              "umount", "/m b"]
    m, u = mount.mount_commands("overlay", ["/l"], "/u", "/w", "/m", env={"K": "v"})
    assert m.startswith("env K=v mount -t overlay ") and u == "env K=v umount /m"
    # no env: the bare command; an empty env is the same
    assert mount.mount_commands("overlay", ["/l"], "/u", "/w", "/m")[1] == "umount /m"
    assert mount.mount_commands("overlay", ["/l"], "/u", "/w", "/m", env={})[1] == "umount /m"
    # the env prefix really sets the variable for the command
    m, _ = mount.mount_commands("ref", ["/l"], "/u", "/w", "/m", ref_python="printenv", env={"KPROTO_T": "x y"})
    out = subprocess.run(["sh", "-c", m.replace(" -m overlay_ref mount /l /u /w /m", " KPROTO_T")],
                         capture_output=True, text=True).stdout
    assert out == "x y\n"


def test_repo_root_for_overlay_ref_on_the_host():
    assert mount.repo_root() == paths.REPO
    m = mount.Mounter("ref")
    assert m.ref_python == sys.executable
    assert m.env["PYTHONPATH"].split(os.pathsep)[0] == str(paths.REPO)


def test_is_mounted_not_a_mount(tmp_path):
    assert not mount.is_mounted(tmp_path)
    assert not mount.is_mounted(str(tmp_path / "missing"))
    assert mount.is_mounted("/proc")


@root_only
def test_is_mounted_real_tmpfs_with_a_space(tmp_path):
    mp = tmp_path / "mount point"          # /proc/self/mounts escapes the space as \040
    mp.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "kproto-test", str(mp)], check=True)
    try:
        assert mount.is_mounted(mp) and mount.is_mounted(str(mp))
        assert not mount.is_mounted(tmp_path)
    finally:
        subprocess.run(["umount", str(mp)], check=True)
    assert not mount.is_mounted(mp)


def _overlay_mounted(tmp_path: Path) -> tuple[mount.Mounter, dict[str, Path]]:
    """A kernel overlay of one lower holding f ("low\\n") on tmp_path/merged, through Mounter."""
    d = {n: tmp_path / n for n in ("lower", "upper", "work", "merged")}
    for p in d.values():
        p.mkdir()
    (d["lower"] / "f").write_text("low\n")
    m = mount.Mounter("overlay")
    m.mount([d["lower"]], d["upper"], d["work"], d["merged"], [])
    return m, d


@root_only
def test_mounter_overlay_round_trip(tmp_path):
    m, d = _overlay_mounted(tmp_path)
    try:
        assert mount.is_mounted(d["merged"]) and (d["merged"] / "f").read_text() == "low\n"
    finally:
        assert m.umount(d["merged"]) is None
    assert not mount.is_mounted(d["merged"]) and m.umount(d["merged"]) is None
    with pytest.raises(RuntimeError, match="mount -t overlay"):
        m.mount([tmp_path / "missing"], d["upper"], d["work"], d["merged"], [])


@root_only
def test_mount_commands_overlay_run_in_a_shell(tmp_path):
    d = {n: tmp_path / "with space" / n for n in ("lower", "upper", "work", "merged")}
    for p in d.values():
        p.mkdir(parents=True)
    m, u = mount.mount_commands("overlay", [d["lower"]], d["upper"], d["work"], d["merged"])
    subprocess.run(["sh", "-c", m], check=True)
    try:
        assert mount.is_mounted(d["merged"])
    finally:
        subprocess.run(["sh", "-c", u], check=True)
    assert not mount.is_mounted(d["merged"])


@root_only
def test_busy_overlay_is_detached_lazily_and_said_so(tmp_path):
    m, d = _overlay_mounted(tmp_path)
    with open(d["merged"] / "f") as busy:          # an open file keeps umount(2) at EBUSY
        left = m.umount(d["merged"])
        assert left is not None and left.startswith("unmount needed lazy detach") and "busy" in left
        assert not mount.is_mounted(d["merged"]) and busy.read() == "low\n"


@root_only
def test_mount_tmpfs_mounts_with_the_size_and_names_a_bad_option(tmp_path):
    mp = tmp_path / "t"
    mount.mount_tmpfs(mp, "1m", "kproto-test")
    try:
        assert mount.is_mounted(mp)
        st = os.statvfs(mp)
        assert st.f_blocks * st.f_frsize == 1 << 20
    finally:
        mount.sys_umount(mp)
    with pytest.raises(RuntimeError, match=r"mount -t tmpfs -o size=lots.*failed: Invalid argument \(EINVAL\)"):
        mount.mount_tmpfs(mp, "lots")
    assert not mount.is_mounted(mp)
