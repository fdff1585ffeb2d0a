"""The reference's fast paths (issue 20: metadata, readdir and multi-lower speed) give the same
results as the slow ones: readdir answering lookups from what opendir listed, negative lookup
entries, copy-ups/writes/listings served on the event loop when every layer is a memory
filesystem (tmpfs), attribute-only invalidation after the copy-up of a never-opened file, and
the one helper of mknod/mkdir/symlink/create.  Each runs on disk (the tests' tmp directory) and
on tmpfs layers, with ``inline`` on and off, and the differential scenarios run on tmpfs too."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ovl_helpers import WHITEOUT, XWHITEOUT, Layers, attempt, opaque, requires_fuse, symlink

pytestmark = [pytest.mark.fuse, requires_fuse]


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "tmpfs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "kproto-test", str(d)],
                   check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture(params=["disk", "tmpfs"])
def where(request, tmp_path):
    """A directory for the layers: on the tests' filesystem, or on a fresh tmpfs (where the
    reference serves copy-ups, listings and writes on its event loop)."""
    if request.param == "disk":
        return tmp_path
    return request.getfixturevalue("tmpfs")


def _layers(base: Path, name: str, lowers, upper=None) -> Layers:
    return Layers(base / name, lowers, upper)


# three lower layers: shadowed names, whiteouts of both kinds, an opaque directory, a zero-size
# file carrying the whiteout xattr where it does not count (no opaque=x / whiteouts marker),
# symlinks, fifos, hard links, and upper entries over all of it
L0 = {
    "d": {"a": "top a", "wh": WHITEOUT, "sl": symlink("a"), "up": "lower up",
          "sub": {"s0": "s0"}, "e": {}},
    "xw": {"gone": XWHITEOUT, "kept": "kept"},
    "opq": opaque({"o0": "o0"}),
    "hl1": "hard-linked",
}
L1 = {
    "d": {"a": "mid a", "b": "mid b", "wh": "whited out", "sub": {"s1": "s1"},
          "f1": ("fifo",)},
    "xw": {"gone": "hidden by an xattr whiteout"},
    "opq": {"o1": "hidden"},
}
L2 = {
    "d": {"a": "bottom a", "c": "bottom c", "sub": {"s2": "s2"}, "file_or_dir": "file"},
    "opq": {"o2": "hidden"},
}
UP = {"d": {"u": "upper u", "up": "upper up", "file_or_dir": {"x": "x"}}}


def _build(base: Path, name: str) -> Layers:
    layers = _layers(base, name, [L0, L1, L2], UP)
    os.link(layers.lowers[0] / "hl1", layers.lowers[0] / "d" / "hl2")
    # a zero-size file with the whiteout xattr in a directory not marked as holding whiteouts:
    # listed by readdir, not found by lookup (as before the readdir fast path)
    z = layers.lowers[1] / "d" / "zero"
    z.write_bytes(b"")
    os.setxattr(z, "trusted.overlay.whiteout", b"y")
    layers.rehash()
    return layers


def _listing(root: Path, check_ino: bool = True) -> dict:
    """Every directory's entries with what lstat gives, reached by listing only (each name's
    first access is its readdir entry); with ``check_ino`` the listing's d_ino must be the
    st_ino (the reference; overlayfs gives merged directories' real d_ino)."""
    out = {}
    stack = [root]
    while stack:
        d = stack.pop()
        ents = {}
        with os.scandir(d) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    # overlayfs lists a zero-size file carrying the whiteout xattr in a
                    # directory not marked as holding such whiteouts, and its lookup finds
                    # nothing; the reference does not list it
                    assert not check_ino, e.path
                    continue
                if check_ino:
                    assert e.inode() == st.st_ino, e.path
                data = None
                if stat.S_ISREG(st.st_mode):
                    data = Path(e.path).read_bytes()
                elif stat.S_ISLNK(st.st_mode):
                    data = os.readlink(e.path)
                ents[e.name] = (stat.S_IFMT(st.st_mode), st.st_size if not
                                stat.S_ISDIR(st.st_mode) else None, st.st_nlink if not
                                stat.S_ISDIR(st.st_mode) else None, data)
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
        out[str(d.relative_to(root))] = ents
    return out


def _by_path(root: Path, listing: dict) -> dict:
    """The same, every name reached by a path lookup in a fresh mount (no listing)."""
    out = {}
    for d, ents in listing.items():
        got = {}
        for name in ents:
            p = root / d / name
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            got[name] = (stat.S_IFMT(st.st_mode), st.st_size if not stat.S_ISDIR(st.st_mode)
                         else None, st.st_nlink if not stat.S_ISDIR(st.st_mode) else None, data)
        out[d] = got
    return out


@pytest.mark.parametrize("inline", ["on", "off"])
def test_cold_listing_matches_lookups_and_kernel(inline, where, ref_mount, kernel_mount):
    layers = _build(where, "t")
    m = ref_mount(layers, {"inline": inline})
    listed = _listing(m)
    # the hard-linked lower file: one object by both names, found through the listing
    assert os.lstat(m / "hl1").st_ino == os.lstat(m / "d" / "hl2").st_ino
    ref_mount.umount(m)
    m = ref_mount(layers, {"inline": inline})
    assert _by_path(m, listed) == listed
    ref_mount.umount(m)
    km = kernel_mount(layers, "redirect_dir=off")
    klisted = _listing(km, check_ino=False)
    kernel_mount.umount(km)
    assert "zero" not in listed["d"] and "zero" not in klisted["d"]
    assert listed == klisted
    assert sorted(listed["d"]) == ["a", "b", "c", "e", "f1", "file_or_dir", "hl2", "sl", "sub",
                                   "u", "up"]
    assert listed["d"]["a"][3] == b"top a" and listed["d"]["up"][3] == b"upper up"
    assert sorted(listed["d/sub"]) == ["s0", "s1", "s2"]
    assert sorted(listed["opq"]) == ["o0"] and sorted(listed["xw"]) == ["kept"]


@pytest.mark.parametrize("inline", ["on", "off"])
def test_names_removed_during_a_listing_stay_removed(inline, where, ref_mount):
    """readdir makes nodes from the opendir snapshot only while no name changed: entries
    unlinked (whited out) or renamed while a listing is read are not brought back."""
    n = 3000
    lower0 = {f"x{i:05d}": "x" for i in range(0, n, 2)}
    lower1 = {f"x{i:05d}": "y" for i in range(1, n, 2)}
    layers = _layers(where, "t", [{"d": lower0}, {"d": lower1}])
    m = ref_mount(layers, {"inline": inline})
    d = m / "d"
    seen = []
    removed = set()
    with os.scandir(d) as it:
        for e in it:
            seen.append(e.name)
            if len(seen) == 1:
                # everything not listed yet: half unlinked (whiteouts), half renamed
                for i in range(n):
                    name = f"x{i:05d}"
                    if name == e.name:
                        continue
                    if i % 2:
                        os.unlink(d / name)
                    else:
                        os.rename(d / name, d / (name + ".moved"))
                    removed.add(name)
    now = set(os.listdir(d))
    assert not (now & removed)
    for name in sorted(removed)[:200] + sorted(removed)[-200:]:
        assert not os.path.lexists(d / name)
    assert len(now) == 1 + len([x for x in removed if int(x[1:]) % 2 == 0])
    ref_mount.umount(m)
    m = ref_mount(layers, {"inline": inline})
    assert set(os.listdir(m / "d")) == now


@pytest.mark.parametrize("inline", ["on", "off"])
def test_negative_lookups_follow_changes(inline, where, ref_mount):
    """A name looked up and not found (a negative entry the kernel may keep) shows as soon
    as it is made through the mount, whichever way, and is gone when removed."""
    layers = _layers(where, "t", [{"d": {"low": "low", "sub": {"s": "s"}}}, {"d": {"wh": "x"}}])
    m = ref_mount(layers, {"inline": inline, "attr_timeout": "30"})
    d = m / "d"
    for _ in range(2):
        for name in ("n1", "n2", "n3", "n4", "n5", "n6", "n7"):
            assert not os.path.lexists(d / name)
        (d / "n1").write_text("one")
        os.mkdir(d / "n2")
        os.symlink("low", d / "n3")
        os.mkfifo(d / "n4")
        os.link(d / "low", d / "n5")
        os.rename(d / "low", d / "n6")
        os.rename(d / "n6", d / "low")
        os.mkdir(d / "n7")
        assert (d / "n1").read_text() == "one" and os.path.isdir(d / "n2")
        assert os.readlink(d / "n3") == "low" and stat.S_ISFIFO(os.lstat(d / "n4").st_mode)
        assert (d / "n5").read_text() == "low" and not os.path.lexists(d / "n6")
        for name in ("n1", "n3", "n4", "n5"):
            os.unlink(d / name)
        os.rmdir(d / "n2")
        os.rmdir(d / "n7")
    # a whited-out lower name, looked up negative, made again
    os.unlink(d / "wh")
    assert not os.path.lexists(d / "wh")
    (d / "wh").write_text("new")
    assert (d / "wh").read_text() == "new"
    ref_mount.umount(m)


@pytest.mark.parametrize("inline", ["on", "off"])
@pytest.mark.parametrize("size", [10, 300 << 10])
def test_copy_up_small_and_big_files(inline, size, where, ref_mount):
    """Copy-ups by chmod, open for writing, append, truncate and rename of never-opened lower
    files (on tmpfs a small file is copied up on the event loop); the data and attributes are
    the lower file's, and the overlay's stat shows the upper file's ctime at once (the kernel's
    cached attributes are dropped)."""
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    names = ["chmod", "wronly", "append", "trunc", "rename", "utime"]
    layers = _layers(where, "t", [{"d": {n: data for n in names}}])
    for n in names:
        os.chmod(layers.lowers[0] / "d" / n, 0o640)
        os.utime(layers.lowers[0] / "d" / n, ns=(1_000_000_000, 2_000_000_000))
    layers.rehash()
    m = ref_mount(layers, {"inline": inline, "attr_timeout": "30"})
    d = m / "d"
    before = {n: os.lstat(d / n) for n in names}
    os.chmod(d / "chmod", 0o600)
    os.close(os.open(d / "wronly", os.O_WRONLY))
    with open(d / "append", "ab") as f:
        f.write(b"+")
    os.truncate(d / "trunc", 5)
    os.rename(d / "rename", d / "renamed")
    os.utime(d / "utime", ns=(3_000_000_000, 4_000_000_000))
    up = layers.upper / "d"
    assert (up / "chmod").read_bytes() == data and (d / "chmod").read_bytes() == data
    assert stat.S_IMODE(os.lstat(d / "chmod").st_mode) == 0o600
    assert (up / "wronly").read_bytes() == data
    st, ust = os.lstat(d / "wronly"), os.lstat(up / "wronly")
    assert st.st_ino == before["wronly"].st_ino
    assert st.st_ctime_ns == ust.st_ctime_ns and st.st_mtime_ns == 2_000_000_000
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_size == size
    assert (d / "append").read_bytes() == data + b"+" == (up / "append").read_bytes()
    assert (d / "trunc").read_bytes() == data[:5]
    assert (up / "renamed").read_bytes() == data and not os.path.lexists(d / "rename")
    assert os.lstat(d / "renamed").st_ino == before["rename"].st_ino
    st = os.lstat(d / "utime")
    assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_000, 4_000_000_000)
    assert (up / "utime").read_bytes() == data
    assert os.listdir(layers.work / "work") == []
    ref_mount.umount(m)


@pytest.mark.parametrize("inline", ["on", "off"])
def test_opened_file_copy_up_drops_cached_pages(inline, where, ref_mount):
    """A lower file read (pages in the FUSE cache) and then truncated through O_TRUNC (a
    copy-up without data): a new read sees the new data, not the cached pages."""
    layers = _layers(where, "t", [{"f": "old data" * 1000}])
    m = ref_mount(layers, {"inline": inline})
    assert (m / "f").read_text() == "old data" * 1000
    with open(m / "f", "w") as f:
        f.write("new")
    assert (m / "f").read_text() == "new"
    ref_mount.umount(m)


@pytest.mark.parametrize("inline", ["on", "off"])
def test_create_operations_over_whiteouts(inline, where, ref_mount):
    """mknod/mkdir/symlink/create (one helper): on a fresh name, over a char whiteout and over
    an xattr whiteout; owner from a setgid parent; directories over whiteouts are opaque;
    nothing is left in the work directory."""
    lower = {"d": {"f": "f", "dd": {"x": "x"}, "s": "s", "p": "p", "c": "c"},
             "xd": {"f": "f", "dd": {"x": "x"}, "s": "s", "p": "p", "c": "c"}}
    upper = {"d": {"f": WHITEOUT, "dd": WHITEOUT, "s": WHITEOUT, "p": WHITEOUT, "c": WHITEOUT},
             "xd": {"f": XWHITEOUT, "dd": XWHITEOUT, "s": XWHITEOUT, "p": XWHITEOUT,
                    "c": XWHITEOUT}}
    layers = _layers(where, "t", [lower], upper)
    os.chown(layers.upper / "d", 0, 4242)
    os.chmod(layers.upper / "d", 0o2775)
    m = ref_mount(layers, {"inline": inline})
    old = os.umask(0o022)
    try:
        for dname in ("d", "xd"):
            d = m / dname
            for pfx in ("", "new-"):
                assert not os.path.lexists(d / (pfx + "f"))
                fd = os.open(d / (pfx + "f"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                os.write(fd, b"created")
                os.close(fd)
                os.mkdir(d / (pfx + "dd"), 0o777)
                os.symlink("target", d / (pfx + "s"))
                os.mkfifo(d / (pfx + "p"), 0o600)
                os.mknod(d / (pfx + "c"), stat.S_IFCHR | 0o640, os.makedev(1, 3))
                assert (d / (pfx + "f")).read_text() == "created"
                assert stat.S_IMODE(os.lstat(d / (pfx + "f")).st_mode) == 0o644
                st = os.lstat(d / (pfx + "dd"))
                assert stat.S_ISDIR(st.st_mode) and os.listdir(d / (pfx + "dd")) == []
                assert stat.S_IMODE(st.st_mode) & 0o777 == 0o755
                assert os.readlink(d / (pfx + "s")) == "target"
                assert stat.S_ISFIFO(os.lstat(d / (pfx + "p")).st_mode)
                st = os.lstat(d / (pfx + "c"))
                assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
                assert stat.S_IMODE(st.st_mode) == 0o640
                ud = layers.upper / dname / (pfx + "dd")
                opq = os.getxattr(ud, "trusted.overlay.opaque") \
                    if "trusted.overlay.opaque" in os.listxattr(ud) else None
                assert opq == (b"y" if pfx == "" else None)
                for n in ("f", "dd", "s", "p", "c"):
                    st = os.lstat(m / dname / (pfx + n))
                    ust = os.lstat(layers.upper / dname / (pfx + n))
                    assert st.st_uid == ust.st_uid == 0
                    assert st.st_gid == (4242 if dname == "d" else 0)
                    assert st.st_gid == ust.st_gid
                if dname == "d":
                    assert os.lstat(d / (pfx + "dd")).st_mode & stat.S_ISGID
            with pytest.raises(FileExistsError):
                os.mkdir(d / "f")
            with pytest.raises(FileExistsError):
                os.symlink("x", d / "dd")
    finally:
        os.umask(old)
    assert os.listdir(layers.work / "work") == []
    ref_mount.umount(m)


def test_differential_scenarios_on_tmpfs(tmpfs, ref_mount, kernel_mount):
    """The differential scenarios (test_ovlref_differential) with every layer on tmpfs, where
    the reference serves copy-ups, listings and writes on its event loop."""
    import test_ovlref_differential as diff
    for name, (fn, redirect) in diff.SCENARIOS.items():
        kopts = "redirect_dir=on" if redirect else "redirect_dir=off"
        ropts = {"redirect_dir": "on" if redirect else "off"}
        lr = Layers(tmpfs / f"r-{name}", [diff.TOP, diff.BOTTOM])
        m = ref_mount(lr, ropts)
        obs_ref = fn(m)
        view_ref = diff.view(m)
        ref_mount.umount(m)
        lk = Layers(tmpfs / f"k-{name}", [diff.TOP, diff.BOTTOM])
        km = kernel_mount(lk, kopts)
        obs_k = fn(km)
        view_k = diff.view(km)
        kernel_mount.umount(km)
        assert obs_ref == obs_k, name
        assert view_ref == view_k, name


def _lookups(root: Path, names: list[str]) -> list:
    out = []
    for n in names:
        try:
            st = os.lstat(root / n)
        except OSError as e:
            out.append((n, e.errno))
            continue
        data = (root / n).read_bytes() if stat.S_ISREG(st.st_mode) else None
        out.append((n, stat.S_IFMT(st.st_mode), data))
    return out


@pytest.mark.parametrize("inline", ["on", "off"])
@pytest.mark.parametrize("list_first", [False, True])
def test_lookups_in_multi_lower_dirs(inline, list_first, where, ref_mount, kernel_mount):
    """Many lookups in directories merged from three lower layers (after a few, the reference
    answers from the names of each lower directory, listed once; or from opendir's listing):
    the same answers as overlayfs for names in each layer, shadowed, whited out, hidden by an
    opaque directory, absent everywhere, and after unlink/create/rename through the mount."""
    o = [{}, {}, {}]                     # "o" of the middle layer is opaque
    lowers = [{"d": {}, "o": o[0]}, {"d": {}, "o": opaque(o[1])}, {"d": {}, "o": o[2]}]
    names = []
    for i in range(60):
        layer = i % 3
        lowers[layer]["d"][f"n{i}"] = f"layer{layer}-{i}"
        o[layer][f"n{i}"] = f"layer{layer}-{i}"
        if i % 5 == 0 and layer < 2:
            lowers[layer + 1]["d"][f"n{i}"] = "shadowed"
        if i % 7 == 0 and layer == 2:
            lowers[0]["d"][f"n{i}"] = WHITEOUT
        names += [f"d/n{i}", f"o/n{i}", f"d/absent{i}", f"o/absent{i}"]
    lowers[2]["d"]["sub"] = {"deep": "deep"}
    names += ["d/sub/deep", "d/sub/none"]

    def run(m: Path) -> list:
        if list_first:
            os.listdir(m / "d")
            os.listdir(m / "o")
        obs = [_lookups(m, names) for _ in range(3)]
        obs.append([attempt(os.unlink, m / f"d/n{i}") for i in range(0, 60, 4)])
        for i in range(1, 60, 8):
            (m / f"d/absent{i}").write_text("made")
        obs.append([attempt(os.rename, m / f"d/n{i}", m / f"d/absent{i}")
                    for i in range(2, 60, 8)])
        obs.append(_lookups(m, names))
        obs.append(sorted(os.listdir(m / "d")))
        return obs

    lr = _layers(where, "r", lowers)
    m = ref_mount(lr, {"inline": inline})
    obs_ref = run(m)
    ref_mount.umount(m)
    lk = _layers(where, "k", lowers)
    km = kernel_mount(lk, "redirect_dir=off")
    obs_k = run(km)
    kernel_mount.umount(km)
    assert obs_ref[0] == obs_ref[1] == obs_ref[2]
    assert obs_ref == obs_k
