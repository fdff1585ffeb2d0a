"""THE mounter: mount and unmount a test's overlay on either target. STDLIB ONLY (it runs in the guest).

Targets: "overlay" (the running kernel's overlayfs, `mount -t overlay`) and "ref" (the reference overlay
over FUSE, `python -m overlay_ref mount|umount`). mount_argv()/umount_argv() are the command lines,
mount_commands() the same lines shell-quoted for scripts that run elsewhere (over SSH in the guest, in the
benchmark repetition scripts), Mounter mounts here (with the lazy-detach fallback) and is_mounted() is
the one mount-point test (right for a dead FUSE mount, where os.path.ismount is not). Here the kernel's
overlay and tmpfs are mounted with mount(2)/umount2(2) directly (sys_mount, sys_umount): under TCG an exec
of mount(8) and umount(8) costs ~0.15 s a test, the system calls ~1 ms, and the options are the same.
"""
from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

TARGETS = ("overlay", "ref")     # kernel overlayfs, or the reference overlay (python -m overlay_ref)
REF_MOUNT_WAIT_S = 15.0


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r} (overlay or ref)")


def is_mounted(path: Path | str) -> bool:
    """Is PATH a mount point? From /proc/self/mounts, not stat(): a FUSE mount whose daemon died fails
    every stat with ENOTCONN, and os.path.ismount() then says False while it is still mounted."""
    want = str(Path(path).absolute())
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                mp = line.split()[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                if mp == want:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def overlay_options(lowers: Sequence[Path | str], upper: Path | str, work: Path | str,
                    opts: Sequence[str] = ()) -> str:
    """The -o string of `mount -t overlay` (lowerdir: the topmost first)."""
    return ",".join([f"lowerdir={':'.join(str(p) for p in lowers)}", f"upperdir={upper}", f"workdir={work}",
                     *opts])


def mount_argv(target: str, lowers: Sequence[Path | str], upper: Path | str, work: Path | str,
               merged: Path | str, opts: Sequence[str] = (), ref_python: str = "python3") -> list[str]:
    """The command that mounts LOWERS (topmost first) + UPPER/WORK on MERGED for TARGET."""
    _check_target(target)
    if target == "overlay":
        return ["mount", "-t", "overlay", "overlay", "-o", overlay_options(lowers, upper, work, opts), str(merged)]
    cmd = [ref_python, "-m", "overlay_ref", "mount", ":".join(str(p) for p in lowers), str(upper), str(work),
           str(merged)]
    if opts:
        cmd += ["-o", ",".join(opts)]
    return cmd


def umount_argv(target: str, merged: Path | str, ref_python: str = "python3") -> list[str]:
    """The command that unmounts MERGED for TARGET (no lazy fallback: see Mounter.umount)."""
    _check_target(target)
    if target == "overlay":
        return ["umount", str(merged)]
    return [ref_python, "-m", "overlay_ref", "umount", str(merged)]


def mount_commands(target: str, lowers: Sequence[Path | str], upper: Path | str, work: Path | str,
                   merged: Path | str, opts: Sequence[str] = (), ref_python: str = "python3",
                   env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(mount_sh, umount_sh): mount_argv/umount_argv as shell-quoted command lines, each prefixed with
    `env K=V ...` when ENV is given (e.g. PYTHONPATH for overlay_ref)."""
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return (shlex.join([*prefix, *mount_argv(target, lowers, upper, work, merged, opts, ref_python)]),
            shlex.join([*prefix, *umount_argv(target, merged, ref_python)]))


MNT_DETACH = 2
_libc = None


def _sys():
    """libc through ctypes, imported on first use (0.1 s of the harness's start under TCG otherwise)."""
    global _libc
    if _libc is None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = libc
    return _libc


def sys_mount(source: str, target: Path | str, fstype: str, data: str = "") -> None:
    """mount(2); OSError (errno, strerror, target) when it fails."""
    _check(_sys().mount(os.fsencode(source), os.fsencode(str(target)), fstype.encode(), 0,
                        os.fsencode(data) if data else None), target)


def sys_umount(target: Path | str, flags: int = 0) -> None:
    """umount2(2); OSError when it fails."""
    _check(_sys().umount2(os.fsencode(str(target)), flags), target)


def _check(rc: int, target: Path | str) -> None:
    """A libc call's -1 as OSError(errno, strerror, TARGET)."""
    if rc != 0:
        import ctypes
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(target))


def _run(cmd: list[str], timeout: float = 30.0, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd[:4])}...: timed out after {timeout:.0f} s"
    return p.returncode, p.stdout.decode(errors="replace").strip()


def mount_tmpfs(path: Path | str, size: str, source: str = "tmpfs") -> None:
    """A fresh tmpfs of SIZE (e.g. "256m") on PATH (created if missing), for layers that must not live on a
    slow disk. RuntimeError with mount's message when it fails."""
    Path(path).mkdir(parents=True, exist_ok=True)
    try:
        sys_mount(source, path, "tmpfs", f"size={size},mode=0755")
    except OSError as e:
        raise RuntimeError(f"mount -t tmpfs -o size={size},mode=0755 {source} {path} failed: {e.strerror} "
                           f"({_errname(e)})") from None


def repo_root() -> Path | None:
    """The checkout when this file is rig/guest/mount.py inside it (so `-m overlay_ref` imports from
    it); None when staged without overlay_ref (in the guest, whose python has it installed)."""
    here = Path(__file__).resolve()
    if len(here.parents) > 2 and (here.parents[2] / "overlay_ref").is_dir():
        return here.parents[2]
    return None


class Mounter:
    """Mount/unmount on TARGET here. The ref target runs REF_PYTHON (default: this interpreter) with the
    checkout on PYTHONPATH when there is one."""

    def __init__(self, target: str, ref_python: str | None = None):
        _check_target(target)
        self.target = target
        self.ref_python = ref_python or sys.executable or "python3"
        self.env = dict(os.environ)
        root = repo_root()
        if root is not None:
            pp = self.env.get("PYTHONPATH")
            self.env["PYTHONPATH"] = str(root) + (os.pathsep + pp if pp else "")

    def mount(self, lowers: list[Path], upper: Path, work: Path, merged: Path, opts: list[str]) -> None:
        """Raises RuntimeError (with the command's output) when the mount fails."""
        if self.target == "overlay":
            options = overlay_options(lowers, upper, work, opts)
            try:
                sys_mount("overlay", merged, "overlay", options)
            except OSError as e:
                raise RuntimeError(f"mount -t overlay -o {options} overlay {merged} failed: {e.strerror} "
                                   f"({_errname(e)}; the kernel log says why)") from None
            return
        cmd = mount_argv(self.target, lowers, upper, work, merged, opts, self.ref_python)
        rc, out = _run(cmd, timeout=60, env=self.env)
        if rc != 0:
            raise RuntimeError(f"overlay_ref mount failed ({rc}): {out[-500:]}")
        deadline = time.monotonic() + REF_MOUNT_WAIT_S
        while not is_mounted(merged):
            if time.monotonic() > deadline:
                raise RuntimeError("overlay_ref mount returned but the mount point is not mounted")
            time.sleep(0.05)

    def umount(self, merged: Path) -> str | None:
        """Unmount; lazy fallback. None when clean, else what was left behind."""
        if not is_mounted(merged):
            return None
        if self.target == "ref":
            rc, out = _run(umount_argv(self.target, merged, self.ref_python), timeout=30, env=self.env)
        else:
            rc, out = _syscall_rc(sys_umount, merged)
        if rc == 0 and not is_mounted(merged):
            return None
        rc2, out2 = _syscall_rc(sys_umount, merged, MNT_DETACH)
        if rc2 != 0 and self.target == "ref":
            rc2, out2 = _run(["fusermount3", "-u", "-z", str(merged)])
        if is_mounted(merged):
            return f"could not unmount {merged}: {out} / {out2}"
        return f"unmount needed lazy detach: {out}"


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _syscall_rc(fn, *args) -> tuple[int, str]:
    """(0, "") or (errno, "umount: PATH: strerror"), the shape of _run's answer."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno or 1, f"umount: {e.filename}: {e.strerror}"
    return 0, ""
