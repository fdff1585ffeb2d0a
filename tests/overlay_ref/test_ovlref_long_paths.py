"""Long and deep paths: PATH_MAX-1 (4095) bytes below the mount point, with the longest
components (15 directories of NAME_MAX bytes + a NAME_MAX leaf) and with the most components
(2047 one-byte directories + a one-byte leaf), on lower-only, upper-only and merged directories,
and deeper than PATH_MAX through directory fds.  Every operation the overlay serves is done on
such paths through the reference and through the host kernel's overlayfs on identical layers;
the outcomes, the trees, and each one's layers read by the other must agree.  A path string of
PATH_MAX or more bytes is ENAMETOOLONG (the kernel refuses it before any filesystem sees it).

A test cannot hand the mount point + 4095 bytes to a syscall (more than PATH_MAX): everything is
done relative to an fd of the mount point or of a deep directory (``dir_fd=``), or from a cwd
inside the mount (truncate and the xattr calls have no ``*at`` form) -- as a real program
reaches such paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from ovl_helpers import attempt, requires_fuse, walk_fd, xattr_path

pytestmark = [pytest.mark.fuse, requires_fuse]

PATH_MAX = 4096
NAME_MAX = 255
D_RO = os.O_RDONLY | os.O_DIRECTORY


class Chain:
    """Two sibling directories ``d`` and ``d2`` as deep as a ``leaf_len``-byte name in them
    makes a path of exactly PATH_MAX-1 bytes."""

    def __init__(self, comps: list[bytes], last2: bytes, leaf_len: int):
        self.comps = comps
        self.comps2 = comps[:-1] + [last2]
        self.d = b"/".join(comps)
        self.d2 = b"/".join(self.comps2)
        self.leaf_len = leaf_len
        assert len(self.full(b"f")) == len(self.full2(b"f")) == PATH_MAX - 1
        assert max(len(c) for c in comps + [last2, self.leaf(b"f")]) <= NAME_MAX

    def leaf(self, tag: bytes) -> bytes:
        return tag * self.leaf_len

    def full(self, tag: bytes) -> bytes:
        return self.d + b"/" + self.leaf(tag)

    def full2(self, tag: bytes) -> bytes:
        return self.d2 + b"/" + self.leaf(tag)


CHAINS = {
    # the longest components: 15 x 255 + 14 slashes, leaf 255
    "long": Chain([b"%02d" % i + b"L" * (NAME_MAX - 2) for i in range(15)],
                  b"99" + b"M" * (NAME_MAX - 2), NAME_MAX),
    # the most components: 2047 x "a", leaf 1 byte
    "deep": Chain([b"a"] * 2047, b"b", 1),
}

# files and directories in the deep directory ``d`` (tags; names are tag * leaf_len)
FILES = {b"f": b"orig-f", b"g": b"orig-g", b"h": b"orig-h", b"i": b"orig-i",
         b"j": b"orig-j-data", b"k": b"orig-k", b"u": b"orig-u"}
DIRS = [b"e", b"t"]        # e: empty; t: holds a file "x"
# merged layout: these are in the upper layer's d, the rest (and all dirs) in the lower's d;
# "u" is in both
MERGED_UPPER = {b"g", b"k", b"u"}


def _chain_dirs(root: Path, ch: Chain) -> tuple[int, int]:
    """mkdir -p d and d2 below root; fds of both."""
    out = []
    for comps in (ch.comps, ch.comps2):
        fd = os.open(root, D_RO)
        for c in comps:
            try:
                os.mkdir(c, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(c, D_RO | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out.append(fd)
    return out[0], out[1]


def _put(dfd: int, name: bytes, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _populate(root: Path, ch: Chain, files: dict, dirs: list) -> None:
    dfd, d2fd = _chain_dirs(root, ch)
    try:
        for tag, data in files.items():
            _put(dfd, ch.leaf(tag), data)
        for tag in dirs:
            os.mkdir(ch.leaf(tag), 0o755, dir_fd=dfd)
            if tag == b"t":
                tfd = os.open(ch.leaf(tag), D_RO, dir_fd=dfd)
                try:
                    _put(tfd, ch.leaf(b"x"), b"in-t")
                finally:
                    os.close(tfd)
    finally:
        os.close(dfd)
        os.close(d2fd)


def deep_layers(make_layers, ch: Chain, layout: str):
    layers = make_layers([{} if layout != "upper" else {"z": "z"}])
    lower, upper = layers.lowers[0], layers.upper
    if layout == "lower":
        _populate(lower, ch, FILES, DIRS)
    elif layout == "upper":
        _populate(upper, ch, FILES, DIRS)
    else:
        _populate(lower, ch, {t: v for t, v in FILES.items()
                              if t not in MERGED_UPPER or t == b"u"}, DIRS)
        _populate(upper, ch, {t: b"upper-" + v for t, v in FILES.items()
                              if t in MERGED_UPPER}, [])
    layers.rehash()
    return layers


# ---------------------------------------------------------------- observing

def summary(st: os.stat_result) -> tuple:
    extra = ()
    if stat.S_ISREG(st.st_mode):
        extra = (st.st_size, st.st_nlink)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        extra = (st.st_rdev,)
    return (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid) + extra


def stat_at(dfd, path, **kw):
    return summary(os.stat(path, dir_fd=dfd, follow_symlinks=False, **kw))


def read_at(dfd, path) -> bytes:
    fd = os.open(path, os.O_RDONLY, dir_fd=dfd)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def put_in(dfd, dirpath, name, data) -> None:
    """Create ``name`` in ``dirpath`` through an fd of it (the path may exceed PATH_MAX)."""
    fd = os.open(dirpath, D_RO, dir_fd=dfd)
    try:
        _put(fd, name, data)
    finally:
        os.close(fd)


def unlink_in(dfd, dirpath, name) -> None:
    fd = os.open(dirpath, D_RO, dir_fd=dfd)
    try:
        os.unlink(name, dir_fd=fd)
    finally:
        os.close(fd)


def ls_at(dfd, path) -> list:
    fd = os.open(path, D_RO, dir_fd=dfd)
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def user_xattrs(path_or_fd) -> list:
    return sorted((x, os.getxattr(path_or_fd, x)) for x in os.listxattr(path_or_fd)
                  if x.startswith("user."))


@contextlib.contextmanager
def cwd(path):
    saved = os.open(".", D_RO)
    try:
        os.chdir(path)
        yield
    finally:
        os.fchdir(saved)
        os.close(saved)


def deep_view(root: Path) -> list:
    """What a POSIX user sees in the tree (any depth), minus inode numbers, directory sizes
    and link counts, and times."""
    out = []
    for rel, dfd, name, st in walk_fd(root):
        if name == b".":
            continue
        ent = [rel] + list(summary(st))
        if stat.S_ISREG(st.st_mode):
            ent.append(hashlib.sha256(read_at(dfd, name)).hexdigest()[:16])
        elif stat.S_ISLNK(st.st_mode):
            ent.append(os.readlink(name, dir_fd=dfd))
        xp = xattr_path(dfd, name)
        xs = sorted(x for x in os.listxattr(xp, follow_symlinks=False)
                    if x.startswith(("user.", "trusted.")))
        ent.append([(x, os.getxattr(xp, x, follow_symlinks=False)) for x in xs])
        out.append(ent)
    return out


def _short(v):
    if isinstance(v, (bytes, str)) and len(v) > 80:
        return f"<{len(v)} chars ...{v[-40:]!r}>"
    if isinstance(v, (list, tuple)):
        return type(v)(_short(x) for x in v)
    return v


def assert_same(a, b, what: str) -> None:
    """Equality of two observation dicts / views, reporting the first difference briefly
    (paths here are 4 KB long)."""
    if a == b:
        return
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if a.get(k) != b.get(k):
                raise AssertionError(f"{what}: {k!r}: {_short(a.get(k))!r} != {_short(b.get(k))!r}")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise AssertionError(f"{what}: entry {i}: {_short(x)!r} != {_short(y)!r}")
    raise AssertionError(f"{what}: {len(a)} entries != {len(b)} entries")


# ---------------------------------------------------------------- the scenario

def scenario(m: Path, ch: Chain, layout: str) -> dict:
    """Every operation on PATH_MAX-1 byte paths (and deeper); returns {step: outcome}."""
    F, F2, L = ch.full, ch.full2, ch.leaf
    obs: dict = {}
    mfd = os.open(m, D_RO)
    try:
        obs["stat f"] = attempt(stat_at, mfd, F(b"f"))
        obs["read f"] = attempt(read_at, mfd, F(b"f"))
        obs["ls d"] = attempt(ls_at, mfd, ch.d)
        obs["ls d2"] = attempt(ls_at, mfd, ch.d2)
        obs["ls t"] = attempt(ls_at, mfd, F(b"t"))

        # create, open, write, read
        def create():
            fd = os.open(F(b"n"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=mfd)
            try:
                os.write(fd, b"new-data")
                return os.pread(fd, 100, 0), summary(os.fstat(fd))
            finally:
                os.close(fd)
        obs["create n"] = attempt(create)
        obs["read n"] = attempt(read_at, mfd, F(b"n"))
        obs["create n again"] = attempt(os.open, F(b"n"), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                                        dir_fd=mfd)

        # copy-up of a deep lower file by open for write: content preserved
        def append():
            fd = os.open(F(b"f"), os.O_WRONLY | os.O_APPEND, dir_fd=mfd)
            try:
                os.write(fd, b"+more")
            finally:
                os.close(fd)
        obs["append f"] = attempt(append)
        obs["read f after append"] = attempt(read_at, mfd, F(b"f"))

        # metadata (each on a file not copied up yet: chmod/chown/utime copy up)
        obs["chmod h"] = attempt(os.chmod, F(b"h"), 0o600, dir_fd=mfd)
        obs["stat h"] = attempt(stat_at, mfd, F(b"h"))
        obs["chown i"] = attempt(os.chown, F(b"i"), 123, 456, dir_fd=mfd)
        obs["stat i"] = attempt(stat_at, mfd, F(b"i"))
        obs["utime d"] = attempt(os.utime, ch.d, ns=(1_000_000_000, 2_000_000_000),
                                 dir_fd=mfd)
        obs["mtime d"] = attempt(lambda: os.stat(ch.d, dir_fd=mfd).st_mtime_ns)
        obs["utime i"] = attempt(os.utime, F(b"i"), ns=(3_000_000_000, 4_000_000_000),
                                 dir_fd=mfd)
        obs["mtime i"] = attempt(lambda: os.stat(F(b"i"), dir_fd=mfd).st_mtime_ns)
        obs["read i"] = attempt(read_at, mfd, F(b"i"))

        # truncate: by path (no *at form: from a cwd in the mount), and O_TRUNC
        with cwd(m):
            obs["truncate j"] = attempt(os.truncate, F(b"j"), 4)
            obs["truncate missing"] = attempt(os.truncate, F(b"0"), 4)
            # xattrs by path, on a file not copied up yet
            obs["setxattr j"] = attempt(os.setxattr, F(b"j"), "user.p", b"q")
            obs["xattrs j"] = attempt(user_xattrs, F(b"j"))
            obs["removexattr j"] = attempt(os.removexattr, F(b"j"), "user.p")
            obs["removexattr j absent"] = attempt(os.removexattr, F(b"j"), "user.p")
            obs["getxattr k absent"] = attempt(os.getxattr, F(b"k"), "user.none")
        obs["read j"] = attempt(read_at, mfd, F(b"j"))
        obs["otrunc k"] = attempt(lambda: os.close(os.open(F(b"k"), os.O_WRONLY | os.O_TRUNC,
                                                           dir_fd=mfd)))
        obs["stat k"] = attempt(stat_at, mfd, F(b"k"))

        # xattrs through an fd of the deep file
        def fd_xattrs():
            fd = os.open(F(b"f"), os.O_RDONLY, dir_fd=mfd)
            try:
                os.setxattr(fd, "user.k", b"v")
                return user_xattrs(fd)
            finally:
                os.close(fd)
        obs["xattrs f"] = attempt(fd_xattrs)

        # hard links: within d, and into d2 (between deep directories)
        obs["link h l"] = attempt(os.link, F(b"h"), F(b"l"), src_dir_fd=mfd, dst_dir_fd=mfd)
        obs["link h d2/l"] = attempt(os.link, F(b"h"), F2(b"l"), src_dir_fd=mfd,
                                     dst_dir_fd=mfd)
        obs["link u (lower) d2/v"] = attempt(os.link, F(b"u"), F2(b"v"), src_dir_fd=mfd,
                                             dst_dir_fd=mfd)
        obs["links"] = attempt(lambda: [
            os.stat(F(b"h"), dir_fd=mfd).st_ino == os.stat(F2(b"l"), dir_fd=mfd).st_ino,
            os.stat(F(b"l"), dir_fd=mfd).st_nlink, stat_at(mfd, F2(b"l"))])
        obs["link exists"] = attempt(os.link, F(b"h"), F(b"f"), src_dir_fd=mfd,
                                     dst_dir_fd=mfd)

        # mkdir / rmdir (a new dir, and a lower/upper empty dir: whiteout when lower)
        obs["mkdir m"] = attempt(os.mkdir, F(b"m"), 0o750, dir_fd=mfd)
        obs["stat m"] = attempt(stat_at, mfd, F(b"m"))
        obs["mkdir m again"] = attempt(os.mkdir, F(b"m"), dir_fd=mfd)
        obs["fill m"] = attempt(put_in, mfd, F(b"m"), L(b"x"), b"in-m")    # beyond PATH_MAX
        obs["unlink m/x"] = attempt(unlink_in, mfd, F(b"m"), L(b"x"))
        obs["rmdir m"] = attempt(os.rmdir, F(b"m"), dir_fd=mfd)
        # the same name, a new directory: nothing of the old one may show through
        obs["mkdir m 2"] = attempt(os.mkdir, F(b"m"), 0o700, dir_fd=mfd)
        obs["fill m 2"] = attempt(put_in, mfd, F(b"m"), L(b"y"), b"in-m2")
        obs["ls m 2"] = attempt(ls_at, mfd, F(b"m"))
        obs["rmdir m 2"] = attempt(os.rmdir, F(b"m"), dir_fd=mfd)
        obs["rmdir e"] = attempt(os.rmdir, F(b"e"), dir_fd=mfd)
        obs["rmdir t (not empty)"] = attempt(os.rmdir, F(b"t"), dir_fd=mfd)
        obs["stat e"] = attempt(stat_at, mfd, F(b"e"))
        obs["mkdir e again"] = attempt(os.mkdir, F(b"e"), 0o700, dir_fd=mfd)
        obs["ls e"] = attempt(ls_at, mfd, F(b"e"))

        # special files
        obs["mkfifo p"] = attempt(os.mkfifo, F(b"p"), 0o640, dir_fd=mfd)
        obs["stat p"] = attempt(stat_at, mfd, F(b"p"))
        obs["mknod c"] = attempt(os.mknod, F(b"c"), stat.S_IFCHR | 0o600, os.makedev(1, 3),
                                 dir_fd=mfd)
        obs["stat c"] = attempt(stat_at, mfd, F(b"c"))
        obs["mknod q"] = attempt(os.mknod, F(b"q"), stat.S_IFIFO | 0o604, dir_fd=mfd)
        obs["stat q"] = attempt(stat_at, mfd, F(b"q"))

        # symlinks: a short target, and one of PATH_MAX-1 bytes
        obs["symlink s"] = attempt(os.symlink, L(b"f"), F(b"s"), dir_fd=mfd)
        obs["readlink s"] = attempt(os.readlink, F(b"s"), dir_fd=mfd)
        obs["read via s"] = attempt(read_at, mfd, F(b"s"))
        obs["symlink y"] = attempt(os.symlink, F(b"f"), F(b"y"), dir_fd=mfd)
        obs["readlink y"] = attempt(os.readlink, F(b"y"), dir_fd=mfd)
        obs["chown y"] = attempt(os.chown, F(b"y"), 7, 8, dir_fd=mfd, follow_symlinks=False)
        obs["stat y"] = attempt(stat_at, mfd, F(b"y"))

        # rename: within d, between d and d2, over an existing file, directories
        obs["rename g r"] = attempt(os.rename, F(b"g"), F(b"r"), src_dir_fd=mfd,
                                    dst_dir_fd=mfd)
        obs["read r"] = attempt(read_at, mfd, F(b"r"))
        obs["stat g"] = attempt(stat_at, mfd, F(b"g"))
        obs["rename r d2/r"] = attempt(os.rename, F(b"r"), F2(b"r"), src_dir_fd=mfd,
                                       dst_dir_fd=mfd)
        obs["read d2/r"] = attempt(read_at, mfd, F2(b"r"))
        obs["rename i d2/r (over)"] = attempt(os.rename, F(b"i"), F2(b"r"), src_dir_fd=mfd,
                                              dst_dir_fd=mfd)
        obs["read d2/r again"] = attempt(read_at, mfd, F2(b"r"))
        # t is a lower dir (EXDEV without redirect_dir, like overlayfs) or an upper one
        obs["rename t d2/t"] = attempt(os.rename, F(b"t"), F2(b"t"), src_dir_fd=mfd,
                                       dst_dir_fd=mfd)
        obs["ls d2/t"] = attempt(ls_at, mfd, F2(b"t"))
        obs["mkdir w"] = attempt(os.mkdir, F(b"w"), dir_fd=mfd)
        obs["fill w"] = attempt(put_in, mfd, F(b"w"), L(b"x"), b"in-w")
        obs["rename w d2/w"] = attempt(os.rename, F(b"w"), F2(b"w"), src_dir_fd=mfd,
                                       dst_dir_fd=mfd)
        obs["mkdir w 2"] = attempt(os.mkdir, F(b"w"), dir_fd=mfd)
        obs["fill w 2"] = attempt(put_in, mfd, F(b"w"), L(b"y"), b"in-w2")
        obs["ls w 2"] = attempt(ls_at, mfd, F(b"w"))
        obs["ls d2/w"] = attempt(ls_at, mfd, F2(b"w"))
        obs["unlink d2/w/x"] = attempt(unlink_in, mfd, F2(b"w"), L(b"x"))
        obs["rename d2/w e (over empty)"] = attempt(os.rename, F2(b"w"), F(b"e"),
                                                    src_dir_fd=mfd, dst_dir_fd=mfd)
        obs["rename d2 into itself"] = attempt(os.rename, ch.d2, F2(b"z"), src_dir_fd=mfd,
                                               dst_dir_fd=mfd)

        # deeper than PATH_MAX, through directory fds
        def beyond():
            out = []
            dfd = os.open(ch.d, D_RO, dir_fd=mfd)
            try:
                out.append(attempt(os.mkdir, L(b"x"), 0o755, dir_fd=dfd))
                xfd = os.open(L(b"x"), D_RO, dir_fd=dfd)
                try:
                    out.append(attempt(_put, xfd, L(b"n"), b"deeper"))
                    out.append(attempt(read_at, xfd, L(b"n")))
                    out.append(attempt(os.mkdir, L(b"x"), dir_fd=xfd))
                    out.append(attempt(os.rename, L(b"f"), L(b"f"), src_dir_fd=dfd,
                                       dst_dir_fd=xfd))
                    out.append(attempt(read_at, xfd, L(b"f")))
                    out.append(attempt(os.rename, L(b"u"), L(b"u"), src_dir_fd=dfd,
                                       dst_dir_fd=xfd))
                    out.append(attempt(read_at, xfd, L(b"u")))
                    out.append(attempt(os.link, L(b"h"), L(b"h"), src_dir_fd=dfd,
                                       dst_dir_fd=xfd))
                    out.append(attempt(os.symlink, b"t", L(b"s"), dir_fd=xfd))
                    out.append(attempt(os.mkfifo, L(b"p"), dir_fd=xfd))
                    out.append(attempt(os.chmod, L(b"n"), 0o604, dir_fd=xfd))
                    out.append(attempt(stat_at, xfd, L(b"n")))
                    out.append(attempt(ls_at, dfd, L(b"x")))
                    out.append(attempt(os.unlink, L(b"n"), dir_fd=xfd))
                    out.append(attempt(os.rmdir, L(b"x"), dir_fd=xfd))
                    out.append(attempt(ls_at, dfd, L(b"x")))
                finally:
                    os.close(xfd)
            finally:
                os.close(dfd)
            return out
        obs["beyond PATH_MAX"] = attempt(beyond)

        # unlink: a new file, a lower (or upper, or merged) file
        obs["unlink n"] = attempt(os.unlink, F(b"n"), dir_fd=mfd)
        obs["unlink k"] = attempt(os.unlink, F(b"k"), dir_fd=mfd)
        obs["unlink s"] = attempt(os.unlink, F(b"s"), dir_fd=mfd)
        obs["unlink missing"] = attempt(os.unlink, F(b"0"), dir_fd=mfd)
        obs["stat k after unlink"] = attempt(stat_at, mfd, F(b"k"))
        obs["create k again"] = attempt(_put, mfd, F(b"k"), b"recreated")
        obs["read k"] = attempt(read_at, mfd, F(b"k"))

        # too long: a path string of PATH_MAX or more bytes, a component of NAME_MAX+1
        for n in (PATH_MAX, PATH_MAX + 1):
            p = ch.d + b"/" + b"n" * (n - len(ch.d) - 1)
            assert len(p) == n
            obs[f"stat {n}"] = attempt(os.stat, p, dir_fd=mfd)
            obs[f"create {n}"] = attempt(os.open, p, os.O_CREAT | os.O_WRONLY, dir_fd=mfd)
            obs[f"mkdir {n}"] = attempt(os.mkdir, p, dir_fd=mfd)
            obs[f"rename to {n}"] = attempt(os.rename, F(b"j"), p, src_dir_fd=mfd,
                                            dst_dir_fd=mfd)
        dfd = os.open(ch.d, D_RO, dir_fd=mfd)
        try:
            big = b"n" * (NAME_MAX + 1)
            obs["create NAME_MAX+1"] = attempt(os.open, big, os.O_CREAT | os.O_WRONLY,
                                               dir_fd=dfd)
            obs["stat NAME_MAX+1"] = attempt(os.stat, big, dir_fd=dfd)
        finally:
            os.close(dfd)

        obs["ls d end"] = attempt(ls_at, mfd, ch.d)
        obs["ls d2 end"] = attempt(ls_at, mfd, ch.d2)
    finally:
        os.close(mfd)
    return obs


TOO_LONG = {f"{op} {n}" for op in ("stat", "create", "mkdir", "rename to")
            for n in (PATH_MAX, PATH_MAX + 1)} | {"create NAME_MAX+1", "stat NAME_MAX+1"}


def check_reference(obs: dict, ch: Chain, layout: str) -> None:
    """What must hold on the reference whatever the kernel does."""
    for k in TOO_LONG:
        assert obs[k] == "ENAMETOOLONG", (k, obs[k])

    def flat(v):
        if isinstance(v, (list, tuple)):
            for x in v:
                yield from flat(x)
        else:
            yield v
    bad = [k for k, v in obs.items() if k not in TOO_LONG and "ENAMETOOLONG" in flat(v)]
    assert not bad, f"ENAMETOOLONG on a path the kernel overlay accepts: {bad}"
    orig = b"orig-f"
    assert obs["read f"] == orig
    assert obs["read f after append"] == orig + b"+more"
    assert obs["create n"] == (b"new-data", (stat.S_IFREG, "0o640", 0, 0, 8, 1))
    assert obs["stat i"][2:4] == (123, 456)
    assert obs["read j"] == b"orig"
    assert obs["stat c"][-1] == os.makedev(1, 3)
    assert obs["readlink y"] == ch.full(b"f")
    assert obs["links"][0] is True and obs["links"][1] == 3
    assert obs["rename t d2/t"] == ("EXDEV" if layout != "upper" else "ok")
    leaves = {t: os.fsdecode(ch.leaf(t.encode())) for t in "fuhspxy"}
    assert obs["beyond PATH_MAX"][-1] == sorted(leaves[t] for t in "fuhsp")
    # a name reused by a new directory (after rmdir, after a rename) shows only the new one
    assert obs["ls m 2"] == obs["ls w 2"] == [leaves["y"]]
    assert obs["ls d2/w"] == [leaves["x"]]


# ---------------------------------------------------------------- the tests

@pytest.fixture
def rm_deep(tmp_path):
    """Requested first, so torn down last (after the mounts are gone): removes the layer trees,
    which are too deep for shutil.rmtree (recursion) and pytest's own cleanup."""
    yield
    for d in tmp_path.glob("ovl*"):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(d)], check=False)


CASES = [(c, lay, None) for c in CHAINS for lay in ("lower", "upper", "merged")] + [
    # a daemon keeping 2 directory fds: every walk, eviction and invalidation path is taken
    ("long", lay, 2) for lay in ("lower", "upper", "merged")]


@pytest.mark.parametrize("chain,layout,cache", CASES,
                         ids=[f"{c}-{lay}" + (f"-cache{n}" if n else "") for c, lay, n in CASES])
def test_long_paths_like_kernel(chain, layout, cache, rm_deep, make_layers, ref_mount,
                                kernel_mount):
    ch = CHAINS[chain]

    # the reference works on the layers, then the kernel reads them
    lr = deep_layers(make_layers, ch, layout)
    m = ref_mount(lr, {"dirfd_cache": str(cache)} if cache else None)
    obs_ref = scenario(m, ch, layout)
    view_ref = deep_view(m)
    ref_mount.umount(m)
    check_reference(obs_ref, ch, layout)
    km = kernel_mount(lr)
    assert_same(deep_view(km), view_ref, "the kernel sees the reference's layers differently")
    kernel_mount.umount(km)

    # the kernel works on identical layers, then the reference reads them
    lk = deep_layers(make_layers, ch, layout)
    km = kernel_mount(lk)
    obs_k = scenario(km, ch, layout)
    view_k = deep_view(km)
    kernel_mount.umount(km)
    m = ref_mount(lk, {"dirfd_cache": str(cache)} if cache else None)
    assert_same(deep_view(m), view_k, "the reference sees the kernel's layers differently")
    ref_mount.umount(m)

    assert_same(obs_ref, obs_k, "outcome differs from the kernel overlay")
    assert_same(view_ref, view_k, "tree differs from the kernel overlay's")


MOVE_DEPTH = {"long": 8, "deep": 1000}      # a directory ~2000 bytes below the mount point
MOVED_NAME = {"long": b"77" + b"N" * (NAME_MAX - 2), "deep": b"c"}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_deep_redirect(chain, rm_deep, make_layers, ref_mount, kernel_mount):
    """redirect_dir: a lower directory ~2000 bytes below the mount point, with the rest of
    the chain below it, is renamed; everything below it stays reachable (PATH_MAX-1 bytes and
    deeper), also after a remount and through the kernel (its absolute redirect is followed
    from the layer roots).  A redirect too long for the upper filesystem's xattrs (the
    directory t at PATH_MAX-1 bytes) gives EXDEV and changes nothing, as overlayfs gives EXDEV
    for redirects longer than its redirect_max (256)."""
    ch = CHAINS[chain]
    k = MOVE_DEPTH[chain]
    old = b"/".join(ch.comps[:k])
    new = b"/".join(ch.comps[:k - 1] + [MOVED_NAME[chain]])
    rest = ch.d[len(old):]                       # "/..." below the moved directory
    layers = deep_layers(make_layers, ch, "lower")
    x = os.fsdecode(ch.leaf(b"x"))

    def check(mfd, moved: bool):
        obs = {}
        d = (new if moved else old) + rest
        obs["read f"] = attempt(read_at, mfd, d + b"/" + ch.leaf(b"f"))
        obs["ls t"] = attempt(ls_at, mfd, d + b"/" + ch.leaf(b"t"))
        obs["stat old"] = attempt(stat_at, mfd, old) if moved else "ENOENT"
        obs["ls d2"] = attempt(ls_at, mfd, (new if moved else old) + ch.d2[len(old):])

        def deeper():                            # t/x: deeper than PATH_MAX
            tfd = os.open(d + b"/" + ch.leaf(b"t"), D_RO, dir_fd=mfd)
            try:
                return read_at(tfd, ch.leaf(b"x"))
            finally:
                os.close(tfd)
        obs["read t/x"] = attempt(deeper)
        assert obs == {"read f": b"orig-f", "ls t": [x], "stat old": "ENOENT",
                       "ls d2": [], "read t/x": b"in-t"}, _short(obs)

    m = ref_mount(layers, {"redirect_dir": "on"})
    mfd = os.open(m, D_RO)
    try:
        check(mfd, False)
        r = attempt(os.rename, ch.full(b"t"), ch.full2(b"t"), src_dir_fd=mfd, dst_dir_fd=mfd)
        assert r in ("ok", "EXDEV")
        if r == "EXDEV":                         # nothing changed
            assert attempt(ls_at, mfd, ch.full(b"t")) == [x]
            assert attempt(stat_at, mfd, ch.full2(b"t")) == "ENOENT"
        else:
            assert attempt(ls_at, mfd, ch.full2(b"t")) == [x]
            assert attempt(os.rename, ch.full2(b"t"), ch.full(b"t"), src_dir_fd=mfd,
                           dst_dir_fd=mfd) == "ok"
        assert attempt(os.rename, old, new, src_dir_fd=mfd, dst_dir_fd=mfd) == "ok"
        check(mfd, True)
    finally:
        os.close(mfd)
    ref_mount.umount(m)
    m = ref_mount(layers, {"redirect_dir": "on"})
    mfd = os.open(m, D_RO)
    try:
        check(mfd, True)
        view_ref = deep_view(m)
    finally:
        os.close(mfd)
    ref_mount.umount(m)
    km = kernel_mount(layers, "redirect_dir=on")
    assert_same(deep_view(km), view_ref, "the kernel sees the reference's layers differently")
    kernel_mount.umount(km)


# ---------------------------------------------------------------- the daemon's side, in-process

def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_dirfd_cache_pins_evicts_invalidates(tmp_path):
    """The directory fd cache: bounded, an evicted or invalidated entry's fd stays usable
    until its last user releases it (then it is closed), a moved directory's path is
    forgotten, and a walk that raced with an invalidation does not keep what it opened."""
    from overlay_ref.dirfds import _DirFds
    r = tmp_path / "r"
    (r / "a/b/c").mkdir(parents=True)
    (r / "x/y").mkdir(parents=True)
    before = _fd_count()
    c = _DirFds({0: os.open(r, os.O_PATH | os.O_DIRECTORY)}, 2)
    e = c.acquire(0, b"a/b/c")
    assert os.fstat(e.fd).st_ino == os.stat(r / "a/b/c").st_ino
    e2 = c.acquire(0, b"x/y")
    assert len(c) <= 2 and not e.live            # evicted, but pinned: still open
    assert os.fstat(e.fd).st_ino == os.stat(r / "a/b/c").st_ino
    c.release(e)
    assert e.fd == -1
    c.release(e2)
    c.release(c.acquire(0, b"x/y"))
    assert c.acquire(0, b"x/y") is e2              # a hit (now "protected")
    c.release(e2)
    os.rename(r / "x", r / "z")
    c.invalidate(0, b"x")
    assert not e2.live and e2.fd == -1
    with pytest.raises(FileNotFoundError):
        c.acquire(0, b"x/y")
    e3 = c.acquire(0, b"z/y")
    assert os.fstat(e3.fd).st_ino == os.stat(r / "z/y").st_ino
    c.release(e3)
    with pytest.raises(NotADirectoryError):
        (r / "f").write_text("f")
        c.acquire(0, b"f/g")
    with pytest.raises(FileNotFoundError):
        c.acquire(0, b"z/../z")
    # a walk started before an invalidation: its fd is used once, not cached
    gen = c.gen
    c.invalidate(0, b"q")
    ent = c._insert(0, b"a", os.open(r / "a", os.O_PATH | os.O_DIRECTORY), gen)
    assert not ent.live and c._peek((0, b"a")) is None
    c.release(ent)
    c.close()
    assert _fd_count() == before


NAME_ARGS = {"symlink": (1,), "rename": (0, 1), "replace": (0, 1), "link": (0, 1)}
WATCHED = ["open", "stat", "lstat", "mkdir", "rename", "replace", "link", "symlink", "unlink",
           "rmdir", "chmod", "chown", "lchown", "utime", "truncate", "mknod", "mkfifo",
           "getxattr", "setxattr", "listxattr", "removexattr", "readlink", "scandir",
           "listdir", "statvfs", "access", "chdir"]


@pytest.mark.parametrize("cache", [256, 1])
def test_daemon_syscalls_get_one_component(cache, tmp_path, monkeypatch):
    """Every operation of the daemon (called in-process, no FUSE) on PATH_MAX-1 byte paths of
    lower, upper and merged directories hands the kernel no path but single components
    (relative to a directory fd) and /proc/self/fd/N/component for the xattr calls, and
    leaves no fd open behind (also with a one-entry directory fd cache)."""
    from types import SimpleNamespace

    import pyfuse3
    from overlay_ref.config import OverlayConfig
    from overlay_ref.fs import OverlayFS

    ch = CHAINS["long"]
    L = ch.leaf
    base = tmp_path / "inproc"
    dirs = {n: base / n for n in ("lower", "upper", "work", "mnt")}
    for d in dirs.values():
        d.mkdir(parents=True)
    _populate(dirs["lower"], ch, FILES, DIRS)
    _populate(dirs["upper"], ch, {b"g": b"upper-g"}, [])      # d and d2 merged
    lch = Chain([b"lo" + b"L" * (NAME_MAX - 2)] + ch.comps[1:], ch.comps2[-1], NAME_MAX)
    _populate(dirs["lower"], lch, {b"f": b"lf", b"j": b"lj"}, [])   # lower-only d
    before = _fd_count()
    o = OverlayFS(OverlayConfig.build([str(dirs["lower"])], str(dirs["upper"]),
                                      str(dirs["work"]), str(dirs["mnt"]),
                                      {"dirfd_cache": str(cache)}))
    bad: list = []
    layers_dir = os.fsencode(base)
    for name in WATCHED:
        real = getattr(os, name)

        def wrapper(*args, _real=real, _name=name, **kw):
            for i in NAME_ARGS.get(_name, (0,)):
                if i < len(args) and isinstance(args[i], (bytes, str)):
                    p = os.fsencode(args[i])
                    if p.startswith(b"/proc/self/fd/"):
                        p = p.split(b"/", 5)[-1]
                    elif p.startswith(b"/") and not p.startswith(layers_dir):
                        continue        # not a layer (ctypes' find_library: /dev/null)
                    if len(p) > NAME_MAX or (b"/" in p and p != b"/proc/self/fd"):
                        bad.append((_name, _short(p)))
            return _real(*args, **kw)
        monkeypatch.setattr(os, name, wrapper)
    ctx = SimpleNamespace(uid=0, gid=0, pid=0, umask=0o022)

    def walk(comps):
        ino = pyfuse3.ROOT_INODE
        for c in comps:
            ino = o._lookup_op(ino, c).st_ino
        return ino

    def child(parent, tag):
        return o._lookup_op(parent, L(tag)).st_ino

    try:
        d, d2 = walk(ch.comps), walk(ch.comps2)
        lonly = walk(lch.comps)
        f = child(d, b"f")
        fi = o._open_op(f, os.O_RDWR)                       # copy-up of a lower file
        o._write_op(fi.fh, 6, b"+w")
        assert o._read_op(fi.fh, 0, 100) == b"orig-f+w"
        o._release_op(fi.fh)
        fi, _ = o._create_op(d, L(b"n"), 0o644, os.O_RDWR, ctx)
        o._release_op(fi.fh)
        o._mkdir_op(d, L(b"m"), 0o755, ctx)
        o._mknod_op(d, L(b"p"), stat.S_IFIFO | 0o644, 0, ctx)
        s = o._symlink_op(d, L(b"s"), ch.full(b"f"), ctx).st_ino
        assert o._readlink_op(s) == ch.full(b"f")
        o._link_op(child(d, b"h"), d2, L(b"l"))
        every = SimpleNamespace(update_mode=True, update_uid=True, update_gid=True,
                                update_size=True, update_atime=True, update_mtime=True)
        o._setattr_op(child(d, b"i"), SimpleNamespace(st_mode=0o600, st_uid=1, st_gid=2,
                                                      st_size=3, st_atime_ns=10**9,
                                                      st_mtime_ns=2 * 10**9), every, None)
        o._setattr_op(child(lonly, b"j"), SimpleNamespace(st_size=1), SimpleNamespace(
            update_mode=False, update_uid=False, update_gid=False, update_size=True,
            update_atime=False, update_mtime=False), None)
        j = child(d, b"j")
        o._setxattr_op(j, b"user.a", b"b")
        assert o._getxattr_op(j, b"user.a") == b"b"
        assert b"user.a" in o._listxattr_op(j)
        o._removexattr_op(j, b"user.a")
        fh = o._opendir_op(d)
        names = [n for _, n, _ in o._readdir_batch(o.dirhandles[fh], 0, 100)]
        assert L(b"g") in names and L(b"n") in names and L(b"f") in names
        o._fsyncdir_op(fh)
        o.dirhandles.pop(fh)
        o._rename_op(d, L(b"g"), d2, L(b"r"), 0)              # upper-only file
        o._rename_op(d, L(b"u"), d2, L(b"u"), 0)              # lower file: whiteout left
        o._rename_op(d, L(b"m"), d2, L(b"m"), 0)              # upper dir: invalidation
        o._rename_op(d, L(b"n"), d2, L(b"r"), 2)              # RENAME_EXCHANGE
        o._rmdir_op(d, L(b"e"))                               # lower dir: whiteout
        o._rmdir_op(d2, L(b"m"))
        o._unlink_op(d, L(b"k"))
        o._unlink_op(lonly, L(b"f"))
        assert sorted(o.merged_names(o.nodes[d2])) == [L(b"l"), L(b"r"), L(b"u")]
        o._statfs_op()
        o._getattr_op(lonly)
    finally:
        monkeypatch.undo()
        o.close()
    assert not bad, bad[:5]
    assert _fd_count() == before


@pytest.mark.parametrize("inline", ["on", "off"])
def test_concurrent_moves_with_tiny_dirfd_cache(inline, make_layers, ref_mount):
    """Threads move upper directories back and forth, copy up, create, rename and remove below
    lower ones, and stat each other's paths, through a daemon keeping 3 directory fds and no
    kernel entry cache: every result a thread can be sure of is right (a stale directory fd
    would show another directory's file), and so is the tree afterwards."""
    from concurrent.futures import ThreadPoolExecutor
    n = 4
    layers = make_layers([{f"l{i}": {"a": {"b": {"f": f"L{i}"}}} for i in range(n)}],
                         {f"u{i}": {"a": {"b": {"f": f"U{i}"}}} for i in range(n)})
    m = ref_mount(layers, {"dirfd_cache": "3", "inline": inline, "attr_timeout": "0"})

    def mover(i):
        for k in range(12):
            os.rename(m / f"u{i}", m / f"w{i}")
            # the old names are new directories now: nothing of the moved ones shows there
            os.makedirs(m / f"u{i}/a/b")
            (m / f"u{i}/a/b/n").write_text(f"N{k}")
            assert os.listdir(m / f"u{i}/a/b") == ["n"]
            assert (m / f"w{i}/a/b/f").read_text() == f"U{i}"
            assert os.listdir(m / f"w{i}/a/b") == ["f"]
            os.rename(m / f"w{i}/a", m / f"w{i}/c")
            os.mkdir(m / f"w{i}/a")
            assert os.listdir(m / f"w{i}/a") == []
            assert (m / f"w{i}/c/b/f").read_text() == f"U{i}"
            os.rmdir(m / f"w{i}/a")
            os.rename(m / f"w{i}/c", m / f"w{i}/a")
            os.unlink(m / f"u{i}/a/b/n")
            os.rmdir(m / f"u{i}/a/b")
            os.rmdir(m / f"u{i}/a")
            os.rename(m / f"w{i}", m / f"u{i}")
            assert (m / f"u{i}/a/b/f").read_text() == f"U{i}"

    def lower_worker(i):
        d = m / f"l{i}/a/b"
        for k in range(12):
            (d / f"g{k}").write_text(f"G{i}.{k}")
            assert (d / "f").read_text() == f"L{i}"
            os.rename(d / f"g{k}", m / f"l{i}/a/g{k}")
            os.mkdir(d / f"d{k}")
            (d / f"d{k}/x").write_text("x")
            os.unlink(d / f"d{k}/x")
            os.rmdir(d / f"d{k}")
            assert (m / f"l{i}/a/g{k}").read_text() == f"G{i}.{k}"

    def statter(_):
        for _ in range(60):
            for i in range(n):
                for p in (f"u{i}/a/b/f", f"w{i}/a/b/f", f"l{i}/a/b/f"):
                    try:
                        os.stat(m / p)
                    except FileNotFoundError:
                        pass

    with ThreadPoolExecutor(2 * n + 2) as ex:
        futs = ([ex.submit(mover, i) for i in range(n)]
                + [ex.submit(lower_worker, i) for i in range(n)]
                + [ex.submit(statter, j) for j in range(2)])
        for f in futs:
            f.result()
    for i in range(n):
        assert (m / f"u{i}/a/b/f").read_text() == f"U{i}"
        assert (m / f"l{i}/a/b/f").read_text() == f"L{i}"
        assert sorted(os.listdir(m / f"l{i}/a")) == sorted(["b"] + [f"g{k}" for k in range(12)])
        assert os.listdir(m / f"l{i}/a/b") == ["f"]
        assert (layers.upper / f"l{i}/a/g7").read_text() == f"G{i}.7"
    assert sorted(os.listdir(m)) == sorted([f"u{i}" for i in range(n)] +
                                           [f"l{i}" for i in range(n)])
