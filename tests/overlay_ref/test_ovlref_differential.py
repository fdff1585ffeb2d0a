"""Differential tests against the host kernel's overlayfs, on behaviours where the kernel is
already POSIX, plus the on-disk format both ways: layers the reference wrote are mounted by the
kernel and must show the same tree, and layers the kernel wrote are mounted by the reference."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from ovl_helpers import WHITEOUT, XWHITEOUT, attempt, opaque, requires_fuse, symlink

pytestmark = [pytest.mark.fuse, requires_fuse]

TOP = {
    "a.txt": "lower-a",
    "dir": {"l1.txt": "one", "sub": {"deep.txt": "deep"}},
    "gone": WHITEOUT,
    "opq": opaque({"o1": "o1"}),
    "link": symlink("a.txt"),
    "empty": {},
    "only-top": {"t": "t"},
}
BOTTOM = {
    "b.txt": "lower-b",
    "dir": {"l2.txt": "two", "l1.txt": "shadowed"},
    "gone": "hidden",
    "opq": {"o2": "hidden by opaque"},
    "x.txt": "xx",
}


def view(root: Path) -> list:
    """What a POSIX user sees, minus what legitimately differs (inode numbers, directory sizes
    and link counts, times)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            ent = [rel, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    ent += [st.st_size, st.st_nlink, hashlib.sha256(f.read()).hexdigest()[:16]]
            elif stat.S_ISLNK(st.st_mode):
                ent.append(os.readlink(p))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                ent.append(st.st_rdev)
            xs = sorted(x for x in os.listxattr(p, follow_symlinks=False)
                        if x.startswith(("user.", "trusted.")))
            ent.append([(x, os.getxattr(p, x, follow_symlinks=False)) for x in xs])
            out.append(ent)
    return out


# ---------------------------------------------------------------- scenarios

def sc_write_lower_files(m: Path):
    obs = []
    with open(m / "a.txt", "a") as f:
        f.write("+appended")
    os.truncate(m / "b.txt", 3)
    fd = os.open(m / "dir/l2.txt", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"rewritten")
    os.close(fd)
    with open(m / "dir/sub/deep.txt", "r+") as f:
        f.seek(2)
        f.write("EP")
    obs += [(m / p).read_text() for p in ("a.txt", "b.txt", "dir/l2.txt", "dir/sub/deep.txt")]
    return obs


def sc_unlink_and_recreate(m: Path):
    obs = []
    for p in ("a.txt", "dir/l1.txt", "dir/l2.txt", "x.txt", "link"):
        obs.append(attempt(os.unlink, m / p))
    obs.append(sorted(os.listdir(m)))
    obs.append(sorted(os.listdir(m / "dir")))
    (m / "dir/l1.txt").write_text("new l1")
    (m / "x.txt").write_text("new x")
    obs.append(sorted(os.listdir(m / "dir")))
    obs.append(attempt(os.stat, m / "gone"))
    return obs


def sc_rmdir(m: Path):
    obs = [attempt(os.rmdir, m / "dir"), attempt(os.rmdir, m / "empty"),
           attempt(os.rmdir, m / "a.txt")]
    for p in ("dir/l1.txt", "dir/l2.txt", "dir/sub/deep.txt"):
        os.unlink(m / p)
    obs += [attempt(os.rmdir, m / "dir/sub"), attempt(os.rmdir, m / "dir"),
            sorted(os.listdir(m))]
    os.mkdir(m / "dir")
    os.mkdir(m / "empty")
    obs += [os.listdir(m / "dir"), os.listdir(m / "empty")]
    (m / "dir/fresh").write_text("f")
    obs.append(os.listdir(m / "dir"))
    return obs


def sc_rename_files(m: Path):
    obs = [attempt(os.rename, m / "a.txt", m / "dir/a-moved"),
           attempt(os.rename, m / "b.txt", m / "dir/l2.txt"),
           attempt(os.rename, m / "x.txt", m / "only-top/t"),
           attempt(os.rename, m / "link", m / "link2")]
    (m / "new").write_text("n")
    obs += [attempt(os.rename, m / "new", m / "dir/l1.txt"),
            attempt(os.rename, m / "dir/l1.txt", m / "a.txt"),
            sorted(os.listdir(m)), sorted(os.listdir(m / "dir"))]
    obs.append(os.readlink(m / "link2"))
    return obs


def sc_rename_dirs_no_redirect(m: Path):
    obs = [attempt(os.rename, m / "dir", m / "dir2"),
           attempt(os.rename, m / "only-top", m / "ot2"),
           attempt(os.rename, m / "empty", m / "empty2")]
    os.mkdir(m / "up")
    (m / "up/f").write_text("f")
    obs += [attempt(os.rename, m / "up", m / "up2"),
            attempt(os.rename, m / "up2", m / "dir/sub2")]
    os.mkdir(m / "up3")
    # a pure upper dir replacing an empty merged dir must not show the old lower content
    os.unlink(m / "only-top/t")
    obs += [attempt(os.rename, m / "up3", m / "only-top"), os.listdir(m / "only-top"),
            sorted(os.listdir(m))]
    return obs


def sc_rename_dirs_redirect(m: Path):
    obs = [attempt(os.rename, m / "dir", m / "dir2"),
           sorted(os.listdir(m / "dir2")),
           attempt(os.mkdir, m / "dir"),
           os.listdir(m / "dir"),
           attempt(os.rename, m / "dir2/sub", m / "sub-out"),
           attempt(os.rename, m / "dir2", m / "only-top/nested"),
           sorted(os.listdir(m / "only-top/nested")),
           attempt(os.rename, m / "empty", m / "dir/e")]
    return obs


def sc_rename_errors(m: Path):
    os.mkdir(m / "d1")
    return [attempt(os.rename, m / "d1", m / "b.txt"),
            attempt(os.rename, m / "b.txt", m / "d1"),
            attempt(os.rename, m / "d1", m / "dir"),
            attempt(os.rename, m / "d1", m / "d1/x"),
            attempt(os.rename, m / "missing", m / "x"),
            attempt(os.rename, m / "b.txt", m / "missing-dir/x")]


def sc_hardlinks(m: Path):
    obs = [attempt(os.link, m / "b.txt", m / "dir/b-link"),
           attempt(os.link, m / "dir", m / "dir-link")]
    a, b = os.stat(m / "b.txt"), os.stat(m / "dir/b-link")
    obs += [a.st_ino == b.st_ino, a.st_nlink, b.st_nlink]
    with open(m / "dir/b-link", "a") as f:
        f.write("+via-link")
    obs.append((m / "b.txt").read_text())
    os.unlink(m / "b.txt")
    obs.append(os.stat(m / "dir/b-link").st_nlink)
    return obs


def sc_metadata(m: Path):
    os.chmod(m / "a.txt", 0o640)
    os.chown(m / "a.txt", 101, 202)
    os.utime(m / "a.txt", ns=(1_000_000_000, 1_500_000_000))
    os.chmod(m / "dir/sub", 0o700)
    os.chown(m / "link", 7, 8, follow_symlinks=False)
    os.utime(m / "dir", ns=(3_000_000_000, 4_000_000_000))
    st = os.stat(m / "a.txt")
    d = os.stat(m / "dir")
    return [stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns,
            d.st_mtime_ns, os.lstat(m / "link").st_uid]


def sc_xattrs(m: Path):
    os.setxattr(m / "a.txt", "user.k1", b"v1")
    os.setxattr(m / "dir", "user.d", b"dv")
    obs = [sorted(x for x in os.listxattr(m / "a.txt") if x.startswith("user.")),
           os.getxattr(m / "dir", "user.d"),
           attempt(os.getxattr, m / "b.txt", "user.none"),
           attempt(os.removexattr, m / "b.txt", "user.none")]
    os.removexattr(m / "a.txt", "user.k1")
    obs.append([x for x in os.listxattr(m / "a.txt") if x.startswith("user.")])
    obs.append(sorted(x for x in os.listxattr(m / "opq") if not x.startswith("security.")))
    # the overlay's own xattr namespace: private ones hidden, user-set ones escaped
    obs.append(attempt(os.getxattr, m / "opq", "trusted.overlay.opaque"))
    obs.append(attempt(os.setxattr, m / "b.txt", "trusted.overlay.mine", b"1"))
    obs.append(attempt(os.getxattr, m / "b.txt", "trusted.overlay.mine"))
    obs.append(sorted(x for x in os.listxattr(m / "b.txt") if x.startswith("trusted.")))
    obs.append(sorted(os.listdir(m / "opq")))
    return obs


def sc_create_special(m: Path):
    os.symlink("dir/l1.txt", m / "sl")
    os.mkfifo(m / "dir/fifo", 0o640)
    os.mknod(m / "dir/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    fd = os.open(m / "dir/excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    return [os.readlink(m / "sl"), (m / "sl").read_text(),
            attempt(os.open, m / "dir/excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
            attempt(os.mkdir, m / "dir"), attempt(os.symlink, "x", m / "a.txt")]


def sc_errors(m: Path):
    return [attempt(os.open, m / "missing", os.O_RDONLY),
            attempt(os.open, m / "dir", os.O_WRONLY),
            attempt(os.unlink, m / "dir"),
            attempt(os.rmdir, m / "b.txt"),
            attempt(os.mkdir, m / "b.txt/x"),
            attempt(os.open, m / "gone", os.O_RDONLY),
            attempt(os.listdir, m / "a.txt"),
            attempt(os.readlink, m / "a.txt")]


def sc_fd_after_copy_up(m: Path):
    ro = os.open(m / "x.txt", os.O_RDONLY)
    rw = os.open(m / "x.txt", os.O_WRONLY)
    os.write(rw, b"new data")
    obs = [os.pread(ro, 100, 0), os.fstat(ro).st_size]
    os.close(rw)
    os.fchmod(ro, 0o600) if False else os.chmod(m / "x.txt", 0o600)
    obs.append(stat.S_IMODE(os.fstat(ro).st_mode))
    os.close(ro)
    return obs


def sc_fd_after_unlink(m: Path):
    """An open fd keeps working once its name is gone, also when the object was copied up
    since the fd was opened (found by the fuzzer: the reference read ENOENT here)."""
    obs = []
    ro = os.open(m / "a.txt", os.O_RDONLY)           # lower-only when opened
    os.truncate(m / "a.txt", 0)                      # copy-up + truncate by path
    os.unlink(m / "a.txt")
    obs += [attempt(os.read, ro, 16), attempt(os.pread, ro, 16, 0), os.fstat(ro).st_size]
    os.close(ro)
    ro = os.open(m / "b.txt", os.O_RDONLY)
    rw = os.open(m / "b.txt", os.O_RDWR)             # copy-up
    os.write(rw, b"NEW")
    os.unlink(m / "b.txt")
    os.ftruncate(rw, 5)
    os.pwrite(rw, b"!", 4)
    obs += [os.pread(ro, 16, 0), os.fstat(ro).st_size, os.fstat(rw).st_size,
            os.pread(rw, 16, 0), sorted(os.listdir(m))]
    os.close(rw)
    os.close(ro)
    ro = os.open(m / "x.txt", os.O_RDONLY)           # never copied up
    os.unlink(m / "x.txt")
    obs += [os.pread(ro, 16, 0), os.fstat(ro).st_size]
    os.close(ro)
    return obs


def _exchange(a, b):
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def sc_rename_exchange(m: Path):
    os.mkdir(m / "updir")
    (m / "updir/f").write_text("f")
    (m / "upfile").write_text("u")
    obs = [attempt(_exchange, m / "a.txt", m / "b.txt"),
           attempt(_exchange, m / "upfile", m / "dir/l1.txt"),
           attempt(_exchange, m / "updir", m / "x.txt"),
           attempt(_exchange, m / "dir", m / "only-top"),
           attempt(_exchange, m / "updir", m / "missing"),
           (m / "a.txt").read_text(), (m / "b.txt").read_text(), (m / "upfile").read_text(),
           (m / "dir/l1.txt").read_text(), (m / "updir").read_text(),
           sorted(os.listdir(m / "x.txt")), sorted(os.listdir(m))]
    return obs


def sc_rename_exchange_redirect(m: Path):
    os.mkdir(m / "updir")
    obs = [attempt(_exchange, m / "dir", m / "only-top"),
           sorted(os.listdir(m / "dir")), sorted(os.listdir(m / "only-top")),
           attempt(_exchange, m / "updir", m / "empty"),
           sorted(os.listdir(m / "updir")), sorted(os.listdir(m / "empty"))]
    return obs


SCENARIOS = {
    "rename_exchange": (sc_rename_exchange, False),
    "rename_exchange_redirect": (sc_rename_exchange_redirect, True),
    "write_lower_files": (sc_write_lower_files, False),
    "unlink_and_recreate": (sc_unlink_and_recreate, False),
    "rmdir": (sc_rmdir, False),
    "rename_files": (sc_rename_files, False),
    "rename_dirs_no_redirect": (sc_rename_dirs_no_redirect, False),
    "rename_dirs_redirect": (sc_rename_dirs_redirect, True),
    "rename_errors": (sc_rename_errors, False),
    "hardlinks": (sc_hardlinks, False),
    "metadata": (sc_metadata, False),
    "xattrs": (sc_xattrs, False),
    "create_special": (sc_create_special, False),
    "errors": (sc_errors, False),
    "fd_after_copy_up": (sc_fd_after_copy_up, False),
    "fd_after_unlink": (sc_fd_after_unlink, False),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_reference_agrees_with_kernel(name, make_layers, ref_mount, kernel_mount):
    fn, redirect = SCENARIOS[name]
    kopts = "redirect_dir=on" if redirect else "redirect_dir=off"
    ropts = {"redirect_dir": "on" if redirect else "off"}

    # the reference writes, then the kernel reads its layers
    lr = make_layers([TOP, BOTTOM])
    m = ref_mount(lr, ropts)
    view0_ref = view(m)
    obs_ref = fn(m)
    view_ref = view(m)
    ref_mount.umount(m)
    km = kernel_mount(lr, kopts)
    assert view(km) == view_ref, "kernel sees the reference's layers differently"
    kernel_mount.umount(km)

    # the kernel writes, then the reference reads its layers
    lk = make_layers([TOP, BOTTOM])
    km = kernel_mount(lk, kopts)
    view0_k = view(km)
    obs_k = fn(km)
    view_k = view(km)
    kernel_mount.umount(km)
    m = ref_mount(lk, ropts)
    assert view(m) == view_k, "the reference sees the kernel's layers differently"
    ref_mount.umount(m)

    assert view0_ref == view0_k
    assert obs_ref == obs_k
    assert view_ref == view_k
