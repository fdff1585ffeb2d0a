"""The read path: reads of files on a memory filesystem (tmpfs, which refuses RWF_NOWAIT) are
served on the event loop, and must give the same data as the thread path -- full, short at end
of file, after a copy-up swapped the real fd, after the name is gone; and the mount's readahead
(``read_ahead_kb``, default 1024 KiB)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

import overlay_ref
from overlay_ref.errors import BadInput
from ovl_helpers import Layers, requires_fuse

pytestmark = [pytest.mark.fuse, requires_fuse]

MiB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path):
    d = tmp_path / "tmpfs"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=True)


def _bdi_read_ahead_kb(mnt: Path) -> int:
    dev = None
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        if f[4] == str(mnt):
            dev = f[2]
    assert dev is not None
    return int(Path(f"/sys/class/bdi/{dev}/read_ahead_kb").read_text())


@pytest.mark.parametrize("where", ["tmpfs", "disk"])
@pytest.mark.parametrize("inline", ["on", "off"])
def test_reads_give_the_backing_data(where, inline, tmpfs, tmp_path, ref_mount):
    base = tmpfs if where == "tmpfs" else tmp_path
    data = os.urandom(3 * MiB + 1234)           # not a multiple of a page or a request
    layers = Layers(base / "ovl", [{"big": data, "small": "abc"}], {"up": data[::-1]})
    m = ref_mount(layers, {"inline": inline})
    for name, want in (("big", data), ("small", b"abc"), ("up", data[::-1])):
        fd = os.open(m / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            got = b"".join(iter(lambda: os.read(fd, 256 * 1024), b""))
            assert got == want, name
            tail = max(0, len(want) - 10)
            assert os.pread(fd, 100, tail) == want[tail:]                 # short, at EOF
            assert os.pread(fd, 100, len(want) + 10) == b""
        finally:
            os.close(fd)
    # a handle opened before a copy-up reads the new data (the real fd was swapped)
    ro = os.open(m / "big", os.O_RDONLY)
    try:
        assert os.pread(ro, 4, 0) == data[:4]
        with open(m / "big", "r+b") as f:
            f.write(b"NEW!")
        os.posix_fadvise(ro, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(ro, 8, 0) == b"NEW!" + data[4:8]
        os.unlink(m / "big")
        os.posix_fadvise(ro, 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(ro, 8, 0) == b"NEW!" + data[4:8]
        assert os.fstat(ro).st_size == len(data)
    finally:
        os.close(ro)
    ref_mount.umount(m)
    assert stat.S_ISCHR(os.lstat(layers.upper / "big").st_mode)        # the whiteout


def test_read_ahead_kb(make_layers, ref_mount, tmp_path):
    layers = make_layers([{"f": "x"}])
    m = ref_mount(layers)
    os.listdir(m)                           # the INIT reply has been processed
    assert _bdi_read_ahead_kb(m) == 1024
    ref_mount.umount(m)
    m = ref_mount(layers, {"read_ahead_kb": "256"})
    os.listdir(m)
    assert _bdi_read_ahead_kb(m) == 256
    ref_mount.umount(m)
    m = ref_mount(layers, {"read_ahead_kb": "kernel"})
    os.listdir(m)
    assert _bdi_read_ahead_kb(m) != 1024     # the kernel's own default (128 KiB today)
    ref_mount.umount(m)
    with pytest.raises(BadInput):
        overlay_ref.mount([str(layers.lowers[0])], str(layers.upper), str(layers.work),
                          str(m), {"read_ahead_kb": "lots"})
