"""The reference overlay's rules (issue 3), each on a real FUSE mount."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ovl_helpers import WHITEOUT, XWHITEOUT, opaque, requires_fuse, symlink

pytestmark = [pytest.mark.fuse, requires_fuse]

LOWER_TOP = {
    "a.txt": "lower-a",
    "dir": {"l1.txt": "one", "sub": {"deep.txt": "deep"}},
    "gone": WHITEOUT,
    "xgone": XWHITEOUT,
    "opq": opaque({"o1": "o1"}),
    "link": symlink("a.txt"),
    "empty": {},
}
LOWER_BOTTOM = {
    "b.txt": "lower-b",
    "dir": {"l2.txt": "two", "l1.txt": "shadowed"},
    "gone": "hidden by a char whiteout",
    "xgone": "hidden by an xattr whiteout",
    "opq": {"o2": "hidden by opaque"},
}


@pytest.fixture
def std(make_layers, ref_mount):
    layers = make_layers([LOWER_TOP, LOWER_BOTTOM])
    return layers, ref_mount(layers)


def upper_kind(layers, rel):
    st = os.lstat(layers.upper / rel)
    return st


def is_char_whiteout(p):
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


# ---------------------------------------------------------------- lookup & readdir

def test_merge_and_whiteouts(std):
    layers, m = std
    assert sorted(os.listdir(m)) == ["a.txt", "b.txt", "dir", "empty", "link", "opq"]
    assert sorted(os.listdir(m / "dir")) == ["l1.txt", "l2.txt", "sub"]
    assert (m / "dir/l1.txt").read_text() == "one"          # upper-most layer wins
    assert (m / "dir/l2.txt").read_text() == "two"
    for name in ("gone", "xgone"):
        assert not os.path.lexists(m / name)
        with pytest.raises(FileNotFoundError):
            os.stat(m / name)
    assert os.readlink(m / "link") == "a.txt"
    assert (m / "link").read_text() == "lower-a"


def test_opaque_dir_stops_lookup(std):
    _, m = std
    assert os.listdir(m / "opq") == ["o1"]
    assert not os.path.exists(m / "opq/o2")


def test_userxattr_opaque_and_whiteout(make_layers, ref_mount):
    pfx = "user.overlay."
    layers = make_layers([{"opq": opaque({"x": "x"}), "w": XWHITEOUT}, {"opq": {"y": "y"}, "w": "w"}],
                         prefix=pfx)
    m = ref_mount(layers, {"userxattr": True})
    assert os.listdir(m / "opq") == ["x"]
    assert not os.path.exists(m / "w")
    assert not any(x.startswith(pfx) for x in os.listxattr(m / "opq"))


def test_private_xattrs_hidden(std):
    layers, m = std
    assert "trusted.overlay.opaque" in os.listxattr(layers.lowers[0] / "opq")
    assert not any(x.startswith("trusted.overlay.") for x in os.listxattr(m / "opq"))
    with pytest.raises(OSError) as ei:
        os.getxattr(m / "opq", "trusted.overlay.opaque")
    assert ei.value.errno == errno.ENODATA
    # as overlayfs >= 6.7: a user's trusted.overlay.* is stored escaped and is not private
    os.setxattr(m / "opq", "trusted.overlay.opaque", b"user-value")
    assert os.getxattr(m / "opq", "trusted.overlay.opaque") == b"user-value"
    assert os.getxattr(layers.upper / "opq", "trusted.overlay.overlay.opaque") == b"user-value"
    assert "trusted.overlay.opaque" in os.listxattr(m / "opq")
    assert os.listdir(m / "opq") == ["o1"]                   # still opaque
    os.removexattr(m / "opq", "trusted.overlay.opaque")
    assert "trusted.overlay.overlay.opaque" not in os.listxattr(layers.upper / "opq")


def test_readdir_offsets_stable(make_layers, ref_mount):
    names = {f"f{i:04d}": "x" for i in range(300)}
    layers = make_layers([names, {f"g{i:04d}": "y" for i in range(300)}])
    m = ref_mount(layers)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                    ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                    ("d_name", ctypes.c_char * 256)]
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.POINTER(Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.telldir.restype = ctypes.c_long
    libc.telldir.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(str(m).encode())
    assert d
    try:
        seen = []
        while True:
            pos = libc.telldir(d)
            e = libc.readdir(d)
            if not e:
                break
            seen.append((pos, e.contents.d_name.decode()))
            if len(seen) == 100:
                # changes while the directory is open must not disturb the listing
                (m / "f0000").unlink()
                (m / "new-file").write_text("n")
        names_seen = [n for _, n in seen]
        assert len(names_seen) == len(set(names_seen))
        assert set(names_seen) >= {n for n in list(names) + [f"g{i:04d}" for i in range(300)]
                                   if n != "f0000"} | {".", ".."}
        # seek back to a remembered offset: the same entries follow
        pos, name = seen[250]
        libc.seekdir(d, pos)
        again = []
        for _ in range(50):
            e = libc.readdir(d)
            again.append(e.contents.d_name.decode())
        assert again == names_seen[250:300]
    finally:
        libc.closedir(d)


# ---------------------------------------------------------------- copy-up

def _trigger(kind, m):
    p = m / "a.txt"
    if kind == "open_wronly":
        os.close(os.open(p, os.O_WRONLY))
    elif kind == "open_rdwr":
        os.close(os.open(p, os.O_RDWR))
    elif kind == "o_trunc":
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    elif kind == "truncate":
        os.truncate(p, 3)
    elif kind == "chmod":
        os.chmod(p, 0o600)
    elif kind == "chown":
        os.chown(p, 1234, 5678)
    elif kind == "utimens":
        os.utime(p, ns=(10**18, 2 * 10**18))
    elif kind == "setxattr":
        os.setxattr(p, "user.k", b"v")
    elif kind == "removexattr":
        os.removexattr(p, "user.orig")
    elif kind == "link":
        os.link(p, m / "hard")


TRIGGERS = ["open_wronly", "open_rdwr", "o_trunc", "truncate", "chmod", "chown", "utimens",
            "setxattr", "removexattr", "link"]


@pytest.mark.parametrize("kind", TRIGGERS)
def test_copy_up_triggers(kind, make_layers, ref_mount):
    layers = make_layers([{"a.txt": "lower-a"}])
    os.setxattr(layers.lowers[0] / "a.txt", "user.orig", b"o")
    os.chmod(layers.lowers[0] / "a.txt", 0o640)
    os.chown(layers.lowers[0] / "a.txt", 42, 43)
    os.utime(layers.lowers[0] / "a.txt", ns=(1_000_000_000, 2_000_000_000))
    layers.rehash()
    m = ref_mount(layers)
    ino = os.stat(m / "a.txt").st_ino
    assert not (layers.upper / "a.txt").exists()
    _trigger(kind, m)
    up = layers.upper / "a.txt"
    assert up.exists(), "no copy-up"
    st = os.stat(m / "a.txt")
    assert st.st_ino == ino
    ust = os.stat(up)
    data = up.read_bytes()
    if kind == "o_trunc":
        assert data == b""
    elif kind == "truncate":
        assert data == b"low"
    else:
        assert data == b"lower-a"
    assert stat.S_IMODE(ust.st_mode) == (0o600 if kind == "chmod" else 0o640)
    assert (ust.st_uid, ust.st_gid) == ((1234, 5678) if kind == "chown" else (42, 43))
    if kind not in ("utimens", "o_trunc", "truncate"):
        assert ust.st_mtime_ns == 2_000_000_000          # times copied up
    if kind == "utimens":
        assert ust.st_mtime_ns == 2 * 10**18
    xs = os.listxattr(up)
    assert ("user.orig" in xs) == (kind != "removexattr")
    assert not any(x.startswith("trusted.overlay") for x in xs)
    if kind == "link":
        assert os.stat(m / "hard").st_ino == ino
        assert os.stat(m / "hard").st_nlink == 2


def test_no_copy_up_on_read_and_failed_removexattr(std):
    layers, m = std
    assert (m / "a.txt").read_text() == "lower-a"
    os.stat(m / "dir/sub/deep.txt")
    with pytest.raises(OSError) as ei:
        os.removexattr(m / "a.txt", "user.absent")
    assert ei.value.errno == errno.ENODATA
    assert os.listdir(layers.upper) == []


def test_copy_up_copies_parents_first(make_layers, ref_mount):
    layers = make_layers([{"p": {"q": {"f": "data"}}}])
    os.chmod(layers.lowers[0] / "p", 0o751)
    os.chown(layers.lowers[0] / "p/q", 7, 8)
    os.setxattr(layers.lowers[0] / "p/q", "user.dirattr", b"1")
    layers.rehash()
    m = ref_mount(layers)
    with open(m / "p/q/f", "a") as f:
        f.write("+more")
    assert (layers.upper / "p/q/f").read_text() == "data+more"
    assert stat.S_IMODE(os.stat(layers.upper / "p").st_mode) == 0o751
    st = os.stat(layers.upper / "p/q")
    assert (st.st_uid, st.st_gid) == (7, 8)
    assert os.getxattr(layers.upper / "p/q", "user.dirattr") == b"1"
    # atomic: built in the work dir and renamed into place; nothing left behind
    assert os.listdir(layers.work / "work") == []
    # the directories are still merged, not opaque
    assert "trusted.overlay.opaque" not in os.listxattr(layers.upper / "p")


def test_copy_up_symlink_and_fifo(make_layers, ref_mount):
    layers = make_layers([{"s": symlink("target"), "fifo": ("fifo",)}])
    m = ref_mount(layers)
    os.chown(m / "s", 5, 6, follow_symlinks=False)
    assert os.readlink(layers.upper / "s") == "target"
    assert os.lstat(layers.upper / "s").st_uid == 5
    os.chmod(m / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(layers.upper / "fifo").st_mode)


# ---------------------------------------------------------------- removal and creation

def test_unlink_lower_leaves_whiteout(std):
    layers, m = std
    (m / "a.txt").unlink()
    (m / "dir/l2.txt").unlink()
    assert is_char_whiteout(layers.upper / "a.txt")
    assert is_char_whiteout(layers.upper / "dir/l2.txt")
    assert "a.txt" not in os.listdir(m)
    assert sorted(os.listdir(m / "dir")) == ["l1.txt", "sub"]
    # l1.txt exists in both lowers: removing it must hide both
    (m / "dir/l1.txt").unlink()
    assert not (m / "dir/l1.txt").exists()
    # a pure-upper file leaves no whiteout
    (m / "new").write_text("n")
    (m / "new").unlink()
    assert not os.path.lexists(layers.upper / "new")


def test_rmdir(std):
    layers, m = std
    os.rmdir(m / "empty")
    assert is_char_whiteout(layers.upper / "empty")
    with pytest.raises(OSError) as ei:
        os.rmdir(m / "dir")
    assert ei.value.errno == errno.ENOTEMPTY
    # a merged dir that looks empty (everything whited out) can be removed
    for root, dirs, files in os.walk(m / "dir", topdown=False):
        for f in files:
            os.unlink(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    assert os.listdir(m / "dir") == []
    os.rmdir(m / "dir")
    assert is_char_whiteout(layers.upper / "dir")
    assert not (m / "dir").exists()


def test_mkdir_over_whiteout_is_opaque(std):
    layers, m = std
    for root, dirs, files in os.walk(m / "dir", topdown=False):
        for f in files:
            os.unlink(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(m / "dir")
    os.mkdir(m / "dir")
    assert os.listdir(m / "dir") == []
    assert os.getxattr(layers.upper / "dir", "trusted.overlay.opaque") == b"y"
    os.mkdir(m / "fresh")
    assert "trusted.overlay.opaque" not in os.listxattr(layers.upper / "fresh")
    # a file created over a whiteout replaces it
    (m / "a.txt").unlink()
    (m / "a.txt").write_text("again")
    assert (layers.upper / "a.txt").read_text() == "again"


def test_create_mkdir_symlink_mknod(std):
    layers, m = std
    old = os.umask(0o022)
    try:
        fd = os.open(m / "dir/new.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        os.write(fd, b"created")
        os.close(fd)
        os.mkdir(m / "dir/newdir", 0o777)
        os.symlink("../a.txt", m / "dir/sl")
        os.mkfifo(m / "dir/pipe", 0o600)
        os.mknod(m / "dir/chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    finally:
        os.umask(old)
    assert (m / "dir/new.txt").read_text() == "created"
    assert stat.S_IMODE(os.stat(m / "dir/new.txt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(m / "dir/newdir").st_mode) == 0o755
    assert os.readlink(m / "dir/sl") == "../a.txt"
    assert (m / "dir/sl").read_text() == "lower-a"
    assert stat.S_ISFIFO(os.stat(m / "dir/pipe").st_mode)
    st = os.stat(m / "dir/chr")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert (layers.upper / "dir/new.txt").read_text() == "created"
    with pytest.raises(FileExistsError):
        os.mkdir(m / "dir/l2.txt")


def test_hard_link_of_lower_file_is_one_inode(std):
    layers, m = std
    os.link(m / "b.txt", m / "dir/b-link")
    a, b = os.stat(m / "b.txt"), os.stat(m / "dir/b-link")
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    with open(m / "dir/b-link", "a") as f:
        f.write("+x")
    assert (m / "b.txt").read_text() == "lower-b+x"
    (m / "b.txt").unlink()
    assert (m / "dir/b-link").read_text() == "lower-b+x"
    assert os.stat(m / "dir/b-link").st_nlink == 1


# ---------------------------------------------------------------- rename

def test_rename_files(std):
    layers, m = std
    ino = os.stat(m / "a.txt").st_ino
    os.rename(m / "a.txt", m / "dir/moved")
    assert (m / "dir/moved").read_text() == "lower-a"
    assert os.stat(m / "dir/moved").st_ino == ino
    assert not (m / "a.txt").exists()
    assert is_char_whiteout(layers.upper / "a.txt")
    os.rename(m / "b.txt", m / "dir/l2.txt")            # over a lower file
    assert (m / "dir/l2.txt").read_text() == "lower-b"
    (m / "u").write_text("u")
    os.rename(m / "u", m / "u2")                         # pure upper: no whiteout
    assert not os.path.lexists(layers.upper / "u")


def test_rename_dir_exdev_by_default(std):
    layers, m = std
    with pytest.raises(OSError) as ei:
        os.rename(m / "dir", m / "dir2")
    assert ei.value.errno == errno.EXDEV
    os.mkdir(m / "up")
    (m / "up/f").write_text("f")
    os.rename(m / "up", m / "up2")                       # pure upper dirs move
    assert (m / "up2/f").read_text() == "f"


def test_rename_dir_with_redirect_dir(make_layers, ref_mount):
    layers = make_layers([LOWER_TOP, LOWER_BOTTOM])
    m = ref_mount(layers, {"redirect_dir": True})
    before = sorted(os.listdir(m / "dir"))
    os.rename(m / "dir", m / "dir2")
    assert sorted(os.listdir(m / "dir2")) == before
    assert (m / "dir2/l2.txt").read_text() == "two"
    assert not (m / "dir").exists()
    assert os.getxattr(layers.upper / "dir2", "trusted.overlay.redirect") == b"/dir"
    os.mkdir(m / "dir")
    assert os.listdir(m / "dir") == []
    os.rename(m / "dir2", m / "empty/nested")            # again, into another dir
    assert sorted(os.listdir(m / "empty/nested")) == before
    ref_mount.umount(m)
    m = ref_mount(layers, {"redirect_dir": True})        # the format persists
    assert sorted(os.listdir(m / "empty/nested")) == before
    assert (m / "empty/nested/sub/deep.txt").read_text() == "deep"


def test_rename_errors(std):
    _, m = std
    os.mkdir(m / "d1")
    cases = [
        (m / "d1", m / "b.txt", errno.ENOTDIR),
        (m / "b.txt", m / "d1", errno.EISDIR),
        (m / "empty", m / "dir", errno.ENOTEMPTY),
        (m / "d1", m / "d1/inner", errno.EINVAL),
        (m / "nonexistent", m / "x", errno.ENOENT),
    ]
    for a, b, code in cases:
        with pytest.raises(OSError) as ei:
            os.rename(a, b)
        assert ei.value.errno == code, (a, b)


# ---------------------------------------------------------------- misc

def test_statfs_fsync_append_direct(std):
    layers, m = std
    sv = os.statvfs(m)
    assert sv.f_bsize > 0 and sv.f_blocks > 0
    fd = os.open(m / "a.txt", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+1")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    fd = os.open(m / "a.txt", os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"+2")
    os.close(fd)
    assert (m / "a.txt").read_text() == "lower-a+1+2"
    with pytest.raises(OSError) as ei:
        os.open(m / "b.txt", os.O_RDONLY | os.O_DIRECT)
    assert ei.value.errno == errno.EINVAL


def test_fallocate(std):
    _, m = std
    fd = os.open(m / "b.txt", os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, 1 << 16)   # glibc falls back to writing if FUSE lacks it
    finally:
        os.close(fd)
    assert os.stat(m / "b.txt").st_size == 1 << 16
    assert (m / "b.txt").read_bytes()[:7] == b"lower-b"


@pytest.mark.xfail(strict=True, raises=OSError,
                   reason="pyfuse3 3.x wires no fallocate member into its fuse_lowlevel_ops "
                          "(init_fuse_ops), so libfuse answers FUSE_FALLOCATE with ENOSYS and "
                          "the kernel gives EOPNOTSUPP; see 'fallocate' in overlay_ref/README.md")
def test_fallocate_syscall(std):
    layers, m = std
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    fd = os.open(m / "b.txt", os.O_RDWR)
    try:
        if libc.fallocate(fd, 0, 0, 1 << 16) != 0:
            e = ctypes.get_errno()
            assert e == errno.EOPNOTSUPP
            raise OSError(e, os.strerror(e))
        assert os.fstat(fd).st_size == 1 << 16
        assert os.pread(fd, 7, 0) == b"lower-b"
    finally:
        os.close(fd)


def _old_atime_layers(make_layers, atime_ns):
    """One lower file "f" with mtime 2000-01-01 and the given atime (the checksums of the
    layers are taken with O_NOATIME, so they keep it)."""
    layers = make_layers([{"f": "lower-f"}])
    os.utime(layers.lowers[0] / "f", ns=(atime_ns, 946684800 * 10**9))
    layers.rehash()
    assert os.stat(layers.lowers[0] / "f").st_atime_ns == atime_ns
    return layers


def test_atime_read_lower_file_relatime(make_layers, ref_mount):
    """relatime on the overlay object: reading a lower file whose atime is not newer than its
    mtime updates st_atime, without a copy-up and without touching the lower file; the atime is
    kept in memory and goes to the upper file with a later copy-up."""
    old = 946684800 * 10**9
    layers = _old_atime_layers(make_layers, old)
    m = ref_mount(layers)
    assert os.stat(m / "f").st_atime_ns == old
    t0 = time.time_ns()
    assert (m / "f").read_bytes() == b"lower-f"
    at = os.stat(m / "f").st_atime_ns
    assert at >= t0 - 10**9
    assert os.stat(m / "f").st_mtime_ns == old
    assert os.listdir(layers.upper) == []                          # no copy-up
    assert os.stat(layers.lowers[0] / "f").st_atime_ns == old      # lower untouched
    # relatime: atime now newer than mtime/ctime -> a second read leaves it alone
    fd = os.open(m / "f", os.O_RDONLY)
    os.pread(fd, 100, 0)
    assert os.fstat(fd).st_atime_ns == at
    os.close(fd)
    # a metadata copy-up carries the object's atime to the upper file
    os.chmod(m / "f", 0o600)
    assert os.stat(layers.upper / "f").st_atime_ns == at
    assert os.stat(m / "f").st_atime_ns == at
    assert os.stat(layers.lowers[0] / "f").st_atime_ns == old


def test_atime_read_lower_file_recent_atime_kept(make_layers, ref_mount):
    """relatime: an atime newer than mtime and ctime and less than 24 h old is not updated."""
    recent = time.time_ns() + 3600 * 10**9       # newer than the ctime utime() gives the file
    layers = _old_atime_layers(make_layers, recent)
    m = ref_mount(layers)
    assert (m / "f").read_bytes() == b"lower-f"
    assert os.stat(m / "f").st_atime_ns == recent
    assert os.listdir(layers.upper) == []


def test_uid_switch_with_allow_other(make_layers, ref_mount):
    layers = make_layers([{"pub": {}, "secret": "s"}])
    os.chmod(layers.lowers[0] / "pub", 0o777)
    os.chmod(layers.lowers[0] / "secret", 0o600)
    layers.rehash()
    mnt = Path(tempfile.mkdtemp(prefix="kproto-ovl-uid-"))   # traversable by uid 65534
    os.chmod(mnt, 0o755)
    m = ref_mount(layers, mnt=mnt)
    code = (f"import os\nopen({str(m / 'pub/mine')!r}, 'w').write('x')\n"
            f"try:\n    open({str(m / 'secret')!r}).read()\nexcept PermissionError:\n    print('EACCES')\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        "/usr/bin/python3", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "EACCES"
    st = os.stat(m / "pub/mine")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert os.stat(layers.upper / "pub/mine").st_uid == 65534
    ref_mount.umount(m)
    os.rmdir(mnt)
