"""Ideal copy-up consistency: the four docs/design.md §2 probes, stable st_ino, and several
processes at once."""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ovl_helpers import requires_fuse

pytestmark = [pytest.mark.fuse, requires_fuse]

EXPECTED = {1: "barbaz", 2: "size=6 same_ino=1 same_mtime=1", 3: "barbaz", 4: "barbaz"}


@pytest.mark.parametrize("probe", [1, 2, 3, 4])
def test_design_probes_give_new_data(probe, probe_bin, make_layers, ref_mount):
    layers = make_layers([{"f": "foo"}])
    m = ref_mount(layers)
    r = subprocess.run([str(probe_bin), str(probe), str(m / "f")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == EXPECTED[probe]
    assert (layers.upper / "f").read_text() == "barbaz"


def test_design_probes_on_host_kernel(probe_bin, make_layers, kernel_mount):
    """Not a rule of the reference: documents what the host kernel answers (probes 1, 2 are
    POSIX there since 4.19; 3 and 4 show stale lower data on kernels without the fix)."""
    layers = make_layers([{f"f{i}": "foo" for i in range(1, 5)}])
    m = kernel_mount(layers)
    out = {}
    for i in range(1, 5):
        r = subprocess.run([str(probe_bin), str(i), str(m / f"f{i}")], capture_output=True,
                           text=True, timeout=60)
        out[i] = r.stdout.strip()
    assert out[1] == EXPECTED[1]
    assert out[2].startswith("size=6")
    print("host kernel probes:", out)


def test_python_mmap_before_and_after_copy_up(make_layers, ref_mount):
    layers = make_layers([{"f": "foo" + "\0" * 4093}])
    m = ref_mount(layers)
    with open(m / "f", "rb") as ro:
        before = mmap.mmap(ro.fileno(), 4096, mmap.MAP_SHARED, mmap.PROT_READ)
        assert before[:3] == b"foo"
        with open(m / "f", "r+b") as rw:
            rw.write(b"bar")
            rw.flush()
            after = mmap.mmap(ro.fileno(), 4096, mmap.MAP_SHARED, mmap.PROT_READ)
            assert before[:3] == b"bar"
            assert after[:3] == b"bar"
            # a writable shared mapping of the upper file is seen by the read-only mapping
            wmap = mmap.mmap(rw.fileno(), 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            wmap[:3] = b"qux"
            wmap.flush()
            assert before[:3] == b"qux" and after[:3] == b"qux"
            assert os.pread(ro.fileno(), 3, 0) == b"qux"
            wmap.close()
        after.close()
        before.close()
    assert (layers.upper / "f").read_bytes()[:3] == b"qux"


def test_st_ino_stable_across_copy_up_and_rename(make_layers, ref_mount):
    layers = make_layers([{"d": {"f": "x"}, "g": "y"}])
    m = ref_mount(layers, {"redirect_dir": True})
    ino_f, ino_d, ino_g = (os.stat(m / p).st_ino for p in ("d/f", "d", "g"))
    fd = os.open(m / "d/f", os.O_RDONLY)
    with open(m / "d/f", "a") as f:
        f.write("z")
    assert os.fstat(fd).st_ino == ino_f
    assert os.fstat(fd).st_size == 2
    assert os.pread(fd, 10, 0) == b"xz"
    os.close(fd)
    os.rename(m / "d", m / "d2")
    os.rename(m / "g", m / "d2/g")
    assert os.stat(m / "d2").st_ino == ino_d
    assert os.stat(m / "d2/f").st_ino == ino_f
    assert os.stat(m / "d2/g").st_ino == ino_g
    # the readdir d_ino agrees with stat
    with os.scandir(m / "d2") as it:
        for e in it:
            assert e.inode() == os.stat(e.path, follow_symlinks=False).st_ino


def test_fstat_on_old_fd_after_chmod_copy_up(make_layers, ref_mount):
    layers = make_layers([{"f": "data"}])
    m = ref_mount(layers)
    fd = os.open(m / "f", os.O_RDONLY)
    os.chmod(m / "f", 0o600)
    os.chown(m / "f", 11, 12)
    st = os.fstat(fd)
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 11, 12)
    os.close(fd)


_WORKER = r"""
import os, sys, hashlib
path, idx, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = bytes([65 + idx]) * 4096
fd = os.open(path, os.O_RDWR)
for i in range(n):
    os.pwrite(fd, block, (idx * n + i) * 4096)
for i in range(n):
    assert os.pread(fd, 4096, (idx * n + i) * 4096) == block
os.close(fd)
print("ok")
"""


@pytest.mark.parametrize("inline", ["on", "off"])
def test_concurrent_processes(inline, make_layers, ref_mount):
    nproc, nblocks = 6, 64
    files = {f"f{i}": os.urandom(256 * 1024) for i in range(8)}
    layers = make_layers([dict(files), {"shared": b"\0" * (nproc * nblocks * 4096)}])
    m = ref_mount(layers, {"inline": inline})
    # several writers on one (lower, so copied up by whichever comes first) file
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(m / "shared"), str(i),
                               str(nblocks)], stdout=subprocess.PIPE, text=True)
             for i in range(nproc)]

    # meanwhile readers and copy-ups of other files from threads
    def churn(name):
        data = (m / name).read_bytes()
        assert data == files[name]
        with open(m / name, "ab") as f:
            f.write(b"tail")
        assert (m / name).read_bytes() == files[name] + b"tail"
        os.rename(m / name, m / (name + ".moved"))
        return hashlib.sha256((m / (name + ".moved")).read_bytes()).hexdigest()

    with ThreadPoolExecutor(8) as ex:
        digests = list(ex.map(churn, files))
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok"
    data = (m / "shared").read_bytes()
    for i in range(nproc):
        assert data[i * nblocks * 4096:(i + 1) * nblocks * 4096] == bytes([65 + i]) * nblocks * 4096
    for name, dg in zip(files, digests):
        assert dg == hashlib.sha256(files[name] + b"tail").hexdigest()
    assert sorted(os.listdir(m)) == sorted([n + ".moved" for n in files] + ["shared"])


def test_long_copy_up_does_not_stall_other_io(make_layers, ref_mount):
    layers = make_layers([{"small": "s" * 8192}])
    with open(layers.lowers[0] / "big", "wb") as f:
        f.truncate(768 << 20)                    # sparse in the lower, 768 MiB to copy up
    layers.rehash()
    m = ref_mount(layers)
    fd = os.open(m / "small", os.O_RDONLY)
    os.stat(m / "big")
    done = []

    def copy_up():
        os.close(os.open(m / "big", os.O_WRONLY))
        done.append(True)

    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(copy_up)
        import time
        deadline = time.monotonic() + 10
        while not os.listdir(layers.work / "work") and time.monotonic() < deadline:
            time.sleep(0.005)
        assert os.listdir(layers.work / "work"), "copy-up did not start"
        # reads on an open file and namespace operations elsewhere are answered while the
        # copy-up runs
        for i in range(20):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)    # make it ask the daemon
            assert os.pread(fd, 100, i * 100) == b"s" * 100
            os.fstat(fd)
        (m / "new").write_text("n")
        assert sorted(os.listdir(m)) == ["big", "new", "small"]
        os.unlink(m / "new")
        assert not done, "copy-up finished too fast to test anything"
        fut.result(timeout=300)
    os.close(fd)
    assert os.stat(layers.upper / "big").st_size == 768 << 20


def test_unlink_during_copy_up_does_not_resurrect(make_layers, ref_mount):
    import time
    layers = make_layers([{"keep": "k"}])
    with open(layers.lowers[0] / "big", "wb") as f:
        f.truncate(768 << 20)
    layers.rehash()
    m = ref_mount(layers)
    os.stat(m / "big")
    results = []

    def writer():
        try:
            os.close(os.open(m / "big", os.O_WRONLY))
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    def second_writer():            # waits for the same copy-up instead of starting another
        try:
            os.close(os.open(m / "big", os.O_RDWR))
            results.append("ok")
        except OSError as e:
            results.append(e.errno)

    with ThreadPoolExecutor(2) as ex:
        f1 = ex.submit(writer)
        deadline = time.monotonic() + 10
        while not os.listdir(layers.work / "work") and time.monotonic() < deadline:
            time.sleep(0.005)
        f2 = ex.submit(second_writer)
        os.unlink(m / "big")
        f1.result(timeout=300)
        f2.result(timeout=300)
    assert not os.path.exists(m / "big")
    assert "big" not in os.listdir(m)
    st = os.lstat(layers.upper / "big")
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000     # a whiteout
    assert os.listdir(layers.work / "work") == []


# ---------------------------------------------------------------- open fds outliving their name

@pytest.mark.parametrize("inline", ["on", "off"])
def test_ro_fd_after_truncate_copy_up_and_unlink(inline, make_layers, ref_mount):
    """The fuzzer's case: an fd opened on a lower-only file, then copy-up + truncate by path,
    then unlink: the fd reads the object's current (now nameless) backing file, i.e. EOF."""
    layers = make_layers([{"a": "lower data 0123456789"}])
    m = ref_mount(layers, {"inline": inline})
    fd = os.open(m / "a", os.O_RDONLY)
    os.truncate(m / "a", 0)
    os.unlink(m / "a")
    assert os.read(fd, 16) == b""
    assert os.pread(fd, 16, 0) == b""
    assert os.fstat(fd).st_size == 0
    os.close(fd)
    assert os.listdir(m) == []


def test_fds_after_copy_up_and_unlink(make_layers, ref_mount):
    """After unlink, fds opened before and after the copy-up still see one object: pread,
    fstat, mmap (old mapping and a new one) and ftruncate/write through the rw fd."""
    data = b"foo" + b"\0" * 4093
    layers = make_layers([{"f": data}])
    m = ref_mount(layers)
    ro = os.open(m / "f", os.O_RDONLY)
    ino = os.fstat(ro).st_ino
    before = mmap.mmap(ro, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
    rw = os.open(m / "f", os.O_RDWR)                 # copy-up
    os.pwrite(rw, b"bar", 0)
    os.unlink(m / "f")
    assert not os.path.exists(m / "f")
    assert os.pread(ro, 3, 0) == b"bar"
    assert before[:3] == b"bar"
    after = mmap.mmap(ro, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
    assert after[:3] == b"bar"
    st = os.fstat(ro)
    assert (st.st_ino, st.st_size, st.st_nlink) == (ino, 4096, 0)
    os.ftruncate(rw, 2)                              # via the rw fd, after unlink
    assert os.fstat(ro).st_size == 2 and os.fstat(rw).st_size == 2
    assert os.pread(ro, 16, 0) == b"ba"
    os.pwrite(rw, b"zap", 0)
    assert os.pread(ro, 16, 0) == b"zap"
    assert os.fstat(ro).st_size == 3
    after.close()
    before.close()
    os.close(rw)
    os.close(ro)
    assert os.listdir(m) == []
    st = os.lstat(layers.upper / "f")
    assert st.st_rdev == 0 and (st.st_mode & 0o170000) == 0o020000     # a whiteout
    assert os.listdir(layers.work / "work") == []


def test_ro_fd_after_chmod_copy_up_and_rename_over(make_layers, ref_mount):
    """Replacing an open file by rename (its only name goes away) after a metadata copy-up."""
    layers = make_layers([{"a": "aaaa", "b": "bbbb"}])
    m = ref_mount(layers)
    fd = os.open(m / "a", os.O_RDONLY)
    os.chmod(m / "a", 0o600)                         # copy-up, fd swapped to the upper file
    os.rename(m / "b", m / "a")
    assert os.pread(fd, 16, 0) == b"aaaa"
    st = os.fstat(fd)
    assert st.st_mode & 0o777 == 0o600 and st.st_size == 4
    os.close(fd)
    assert (m / "a").read_bytes() == b"bbbb"
