"""renameat2(RENAME_WHITEOUT) on the reference: the rename itself is a normal rename, and the
source name is replaced by a whiteout (0/0 character device) in the upper layer -- whatever the
lower layers hold there -- so it reads as absent in the merged view, as after any rename.

The host kernel's overlayfs answers RENAME_WHITEOUT with EINVAL (ovl_rename accepts only
NOREPLACE and EXCHANGE; checked on 6.18), so the differential tests compare the reference's
RENAME_WHITEOUT with the kernel's plain rename (or with its RENAME_WHITEOUT, should a kernel
start accepting it): the merged views must agree, and the kernel must read the layers the
reference wrote as the reference does.  Sources: lower-only, upper-only and merged (upper over
lower) files and directories."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from pathlib import Path

import pytest

from ovl_helpers import attempt, requires_fuse
from test_ovlref_differential import view

pytestmark = [pytest.mark.fuse, requires_fuse]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def renameat2(a, b, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


LOWER = {
    "lo": "lower-only",
    "both": "lower-both",
    "ldir": {"x": "x"},
    "mdir": {"lm": "lm"},
    "d": {"keep": "k"},
}
UPPER = {
    "up": "upper-only",
    "both": "upper-both",
    "udir": {"y": "y"},
    "mdir": {"um": "um"},
}
# (source, destination): lower-only, upper-only and merged files and directories
MOVES = [("lo", "d/lo2"), ("up", "d/up2"), ("both", "both2"), ("udir", "d/udir2"),
         ("ldir", "ldir2"), ("mdir", "mdir2")]


def scenario(m: Path, rename) -> list:
    obs: list = [attempt(rename, m / a, m / b) for a, b in MOVES]
    obs.append(sorted(os.listdir(m)))
    obs.append(sorted(os.listdir(m / "d")))
    obs += [attempt(os.lstat, m / a) for a, _ in MOVES]
    obs += [(m / "d/lo2").read_text(), (m / "d/up2").read_text(), (m / "both2").read_text(),
            sorted(os.listdir(m / "d/udir2"))]
    # the names left behind can be used again; nothing of the lower layers shows through
    (m / "lo").write_text("new lo")
    os.mkdir(m / "both")
    os.mkdir(m / "up")
    obs += [(m / "lo").read_text(), os.listdir(m / "both"), os.listdir(m / "up"),
            sorted(os.listdir(m))]
    return [o if not isinstance(o, os.stat_result) else "exists" for o in obs]


def _kernel_rename(a, b) -> None:
    """The kernel overlay's RENAME_WHITEOUT, or its plain rename where it refuses the flag."""
    try:
        renameat2(a, b, RENAME_WHITEOUT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        os.rename(a, b)


def _is_whiteout(p: Path) -> bool:
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.mark.parametrize("redirect", [False, True], ids=["redirect_off", "redirect_on"])
def test_rename_whiteout_agrees_with_kernel(redirect, make_layers, ref_mount, kernel_mount):
    kopts = "redirect_dir=on" if redirect else "redirect_dir=off"
    ropts = {"redirect_dir": "on" if redirect else "off"}

    lr = make_layers([LOWER], UPPER)
    m = ref_mount(lr, ropts)
    obs_ref = scenario(m, lambda a, b: renameat2(a, b, RENAME_WHITEOUT))
    view_ref = view(m)
    ref_mount.umount(m)
    # every source that moved left a whiteout in the upper layer (upper-only ones too, which
    # a plain rename would not), and the kernel reads those layers as the reference does
    moved = [a for (a, _), r in zip(MOVES, obs_ref) if r == "ok"]
    assert {"lo", "up", "both", "udir"} <= set(moved)
    for a in moved:
        if a in ("lo", "both", "up"):
            continue                 # used again by the scenario
        assert _is_whiteout(lr.upper / a), a
    km = kernel_mount(lr, kopts)
    assert view(km) == view_ref, "kernel sees the reference's layers differently"
    kernel_mount.umount(km)

    lk = make_layers([LOWER], UPPER)
    km = kernel_mount(lk, kopts)
    obs_k = scenario(km, _kernel_rename)
    view_k = view(km)
    kernel_mount.umount(km)

    assert obs_ref == obs_k
    assert view_ref == view_k
    if not redirect:
        assert obs_ref[MOVES.index(("ldir", "ldir2"))] == "EXDEV"
        assert obs_ref[MOVES.index(("mdir", "mdir2"))] == "EXDEV"


def test_kernel_overlay_refuses_rename_whiteout(make_layers, kernel_mount):
    """What the host kernel does (the reason the test above compares with a plain rename): if
    this starts failing, the kernel accepts RENAME_WHITEOUT and the comparison above becomes a
    direct one."""
    lk = make_layers([LOWER], UPPER)
    km = kernel_mount(lk)
    assert [attempt(renameat2, km / a, km / b, RENAME_WHITEOUT) for a, b in MOVES[:3]] \
        == ["EINVAL"] * 3


def test_rename_whiteout_flags(make_layers, ref_mount):
    lr = make_layers([LOWER], UPPER)
    m = ref_mount(lr)
    obs = [attempt(renameat2, m / "up", m / "both", RENAME_WHITEOUT | RENAME_NOREPLACE),
           attempt(renameat2, m / "up", m / "lo", RENAME_WHITEOUT | RENAME_EXCHANGE),
           attempt(renameat2, m / "missing", m / "x", RENAME_WHITEOUT),
           attempt(renameat2, m / "up", m / "up", RENAME_WHITEOUT),
           (m / "up").read_text(),
           attempt(renameat2, m / "up", m / "new", RENAME_WHITEOUT | RENAME_NOREPLACE),
           attempt(renameat2, m / "lo", m / "both", RENAME_WHITEOUT),   # over a merged file
           attempt(renameat2, m / "udir", m / "d", RENAME_WHITEOUT),    # ENOTEMPTY
           sorted(os.listdir(m)), (m / "new").read_text(), (m / "both").read_text()]
    assert obs == ["EEXIST", "EINVAL", "ENOENT", "ok", "upper-only", "ok", "ok", "ENOTEMPTY",
                   ["both", "d", "ldir", "mdir", "new", "udir"], "upper-only", "lower-only"]
    # a file opened before the rename keeps reading its data
    fd = os.open(m / "new", os.O_RDONLY)
    try:
        assert attempt(renameat2, m / "new", m / "d/new", RENAME_WHITEOUT) == "ok"
        assert os.pread(fd, 100, 0) == b"upper-only"
    finally:
        os.close(fd)
    assert attempt(os.lstat, m / "new") == "ENOENT"
    ref_mount.umount(m)
    for name in ("up", "lo", "new"):
        assert _is_whiteout(lr.upper / name), name
    assert (lr.upper / "both").read_text() == "lower-only"
