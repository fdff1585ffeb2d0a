"""Helpers of the reference overlay tests: layer trees from specs, checksums of trees."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest


HERE = Path(__file__).resolve().parent
PY = sys.executable

WHITEOUT = ("whiteout",)          # char device 0/0
XWHITEOUT = ("xwhiteout",)        # zero-size file with overlay.whiteout xattr


def attempt(fn, *args, **kw):
    """FN(*ARGS) as an observation: its result ("ok" for None) or the errno name it failed with."""
    try:
        r = fn(*args, **kw)
        return "ok" if r is None else r
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def symlink(target):
    return ("symlink", target)


def opaque(children):
    return ("opaque", children)


def fuse_ok() -> bool:
    return os.path.exists("/dev/fuse") and os.geteuid() == 0 and shutil.which("fusermount3")


requires_fuse = pytest.mark.skipif(not fuse_ok(), reason="needs root, /dev/fuse, fusermount3")


def populate(root: Path, spec: dict, prefix: str = "trusted.overlay.") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, v in spec.items():
        p = root / name
        if isinstance(v, (str, bytes)):
            p.write_bytes(v.encode() if isinstance(v, str) else v)
        elif isinstance(v, dict):
            populate(p, v, prefix)
        elif v == WHITEOUT:
            os.mknod(p, stat.S_IFCHR, os.makedev(0, 0))
        elif v == XWHITEOUT:
            p.write_bytes(b"")
            os.setxattr(p, prefix + "whiteout", b"y")
            # overlayfs honours xattr whiteouts only in directories marked as holding them
            if prefix + "opaque" not in os.listxattr(root):
                os.setxattr(root, prefix + "opaque", b"x")
        elif v[0] == "symlink":
            os.symlink(v[1], p)
        elif v[0] == "opaque":
            populate(p, v[1], prefix)
            os.setxattr(p, prefix + "opaque", b"y")
        elif v[0] == "fifo":
            os.mkfifo(p)
        else:
            raise ValueError(v)


def walk_fd(root):
    """Every entry of the tree at ``root``, top-down (each directory, then its entries sorted,
    then its subdirectories in that order), reached with ``*at()`` calls on directory fds, so
    paths longer than PATH_MAX below ``root`` work.  Yields ``(rel, dir_fd, name, lstat)``
    (``rel`` is bytes, ``b"."`` for root; a directory comes once as ``(rel, its fd, b".")``
    and once more as an entry of its parent).  The fd is only valid until the next item."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    held: set[int] = set()          # fds open right now (closed whatever happens)

    def unref(holder):
        holder[1] -= 1
        if holder[1] == 0:
            held.discard(holder[0])
            os.close(holder[0])

    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        held.add(top)
        # pending directories: (rel, name, holder of the parent's fd); holder = [fd, refs]
        stack: list = [(b".", None, [top, 1])]
        while stack:
            rel, name, holder = stack.pop()
            if name is None:
                fd = holder[0]
            else:
                try:
                    fd = os.open(name, flags, dir_fd=holder[0])
                    held.add(fd)
                finally:
                    unref(holder)
            yield rel, fd, b".", os.fstat(fd)
            subdirs = []
            for n in map(os.fsencode, sorted(os.listdir(fd))):
                st = os.lstat(n, dir_fd=fd)
                r = n if rel == b"." else rel + b"/" + n
                yield r, fd, n, st
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((r, n))
            mine = [fd, len(subdirs)]
            if not subdirs:
                held.discard(fd)
                os.close(fd)
            for r, n in reversed(subdirs):
                stack.append((r, n, mine))
    finally:
        for fd in held:
            os.close(fd)


def xattr_path(dir_fd: int, name: bytes) -> bytes:
    """A short path naming the entry ``name`` of the directory ``dir_fd`` (for the xattr
    calls, which have no ``*at()`` form): /proc/self/fd/N/name."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def tree_digest(root: Path) -> str:
    """Checksum of everything in a tree except access times (any depth: see walk_fd)."""
    h = hashlib.sha256()
    for rel, dfd, name, st in walk_fd(root):
        h.update(f"{os.fsdecode(rel)}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0"
                 f"{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_rdev}\0{st.st_nlink}\0".encode())
        xp = xattr_path(dfd, name)
        for x in sorted(os.listxattr(xp, follow_symlinks=False)):
            h.update(x.encode() + b"=" + os.getxattr(xp, x, follow_symlinks=False))
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(name, dir_fd=dfd))
        elif stat.S_ISREG(st.st_mode):
            # O_NOATIME: checksumming must not touch the atimes the atime tests set up
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOATIME", 0), dir_fd=dfd)
            with open(fd, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


ALL_LOWERS: dict[Path, str] = {}   # every lower layer built in this session -> checksum


class Layers:
    def __init__(self, base: Path, lowers: list[dict], upper: dict | None = None,
                 prefix: str = "trusted.overlay."):
        self.base = base
        self.lowers = []
        for i, spec in enumerate(lowers):
            d = base / f"lower{i}"
            populate(d, spec, prefix)
            self.lowers.append(d)
        self.upper = base / "upper"
        populate(self.upper, upper or {}, prefix)
        self.work = base / "work"
        self.work.mkdir()
        self.mnt = base / "mnt"
        self.mnt.mkdir()
        self.rehash()

    def rehash(self) -> None:
        """Record the lower layers' checksums (after a test changed them on purpose)."""
        self.digests = {d: tree_digest(d) for d in self.lowers}
        ALL_LOWERS.update(self.digests)

    def check_lowers(self) -> None:
        for d, dig in self.digests.items():
            assert tree_digest(d) == dig, f"lower layer {d} was modified"

    @property
    def lowerdir(self) -> str:
        return ":".join(str(d) for d in self.lowers)


HELPER = HERE.parents[1] / "overlay_ref" / "mount.fuse.kproto-ovl"


def run_helper(layers: "Layers", cwd=None, lowerdir: str | None = None) -> subprocess.CompletedProcess:
    """The mount(8) helper script of this checkout, running this interpreter, as mount(8) calls it
    (LOWERDIR instead of the layers' own lowerdir= when given, e.g. a relative one)."""
    env = dict(os.environ, KPROTO_OVL_PYTHON=sys.executable)
    opts = f"lowerdir={lowerdir or layers.lowerdir},upperdir={layers.upper},workdir={layers.work}"
    return subprocess.run([str(HELPER), "kproto-ovl", str(layers.mnt), "-o", opts],
                          capture_output=True, text=True, env=env, timeout=60, cwd=cwd)


def daemon_pid(mnt) -> int:
    """The pid in the pidfile of the mount MNT."""
    from overlay_ref import rundir
    with open(rundir.pidfile_for(str(mnt))) as f:
        return int(f.read().split()[0])


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode().rstrip("\0").split("\0")
