"""Files hard-linked on a lower layer are one overlay object in the reference (real FUSE mounts):
one st_ino and the lower st_nlink before and after copy-up, a write through one name is seen
through every other, and the copy-up copies the data once and leaves the names hard-linked in
the upper layer (what overlayfs does with index=on)."""

from __future__ import annotations

import os
import stat

import pytest

from ovl_helpers import requires_fuse

pytestmark = [pytest.mark.fuse, requires_fuse]


def linked_layers(make_layers, lowers, links, upper=None):
    """Layers from ``lowers`` specs, then ``links``: [(layer, existing, new name)] hard links."""
    layers = make_layers(lowers, upper)
    for i, src, dst in links:
        os.link(layers.lowers[i] / src, layers.lowers[i] / dst)
    layers.rehash()
    return layers


@pytest.fixture
def ab(make_layers, ref_mount):
    """Lower "a" and "d/b" are one file (nlink 2)."""
    layers = linked_layers(make_layers, [{"a": "linked-data\n", "d": {"x": "x"}}],
                           [(0, "a", "d/b")])
    return layers, ref_mount(layers)


def upper_same_inode(layers, *names):
    sts = [os.lstat(layers.upper / n) for n in names]
    return len({(s.st_dev, s.st_ino) for s in sts}) == 1 and all(
        s.st_nlink == len(names) for s in sts)


def test_one_inode_before_copy_up(ab):
    layers, m = ab
    a, b = os.stat(m / "a"), os.stat(m / "d/b")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    assert not (layers.upper / "a").exists() and not (layers.upper / "d").exists()


def test_append_via_one_name_seen_via_the_other(ab):
    layers, m = ab
    before = os.stat(m / "a")
    rofd = os.open(m / "d/b", os.O_RDONLY)
    try:
        with open(m / "a", "a") as f:
            f.write("more\n")
        assert (m / "d/b").read_text() == "linked-data\nmore\n"
        assert os.pread(rofd, 100, 0) == b"linked-data\nmore\n"
        a, b = os.stat(m / "a"), os.stat(m / "d/b")
        assert a.st_ino == b.st_ino == before.st_ino
        assert a.st_nlink == b.st_nlink == 2
        assert os.fstat(rofd).st_ino == before.st_ino and os.fstat(rofd).st_size == 17
    finally:
        os.close(rofd)
    # copied once: both names are hard links of one upper inode
    assert upper_same_inode(layers, "a", "d/b")
    assert (layers.upper / "d/b").read_text() == "linked-data\nmore\n"
    # and a later write through the other name is seen through the first
    with open(m / "d/b", "a") as f:
        f.write("via-b\n")
    assert (m / "a").read_text() == "linked-data\nmore\nvia-b\n"
    os.link(m / "d/b", m / "c")
    assert os.stat(m / "c").st_ino == before.st_ino
    assert os.stat(m / "a").st_nlink == os.stat(m / "c").st_nlink == 3
    assert upper_same_inode(layers, "a", "d/b", "c")


def test_copy_up_links_names_never_looked_up(ab, ref_mount):
    """The other name was never looked up in this mount: the copy-up still links it (so the
    object stays one after a remount, without an index)."""
    layers, m = ab
    with open(m / "a", "a") as f:
        f.write("more\n")
    assert upper_same_inode(layers, "a", "d/b")
    assert os.stat(m / "d/b").st_ino == os.stat(m / "a").st_ino
    ref_mount.umount(m)
    m = ref_mount(layers)
    a, b = os.stat(m / "a"), os.stat(m / "d/b")
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    with open(m / "d/b", "a") as f:
        f.write("after-remount\n")
    assert (m / "a").read_text() == "linked-data\nmore\nafter-remount\n"


@pytest.mark.parametrize("how", ["chmod", "truncate", "setxattr", "utime", "open_trunc"])
def test_metadata_copy_up_through_other_name(how, ab):
    layers, m = ab
    ino = os.stat(m / "a").st_ino
    b = m / "d/b"
    if how == "chmod":
        os.chmod(b, 0o600)
    elif how == "truncate":
        os.truncate(b, 3)
    elif how == "setxattr":
        os.setxattr(b, "user.k", b"v")
    elif how == "utime":
        os.utime(b, ns=(10**9, 2 * 10**9))
    else:
        with open(b, "w") as f:
            f.write("new")
    a = os.stat(m / "a")
    assert a.st_ino == ino and a.st_nlink == 2
    assert os.stat(b) == a
    assert (m / "a").read_bytes() == b.read_bytes()
    if how == "setxattr":
        assert os.getxattr(m / "a", "user.k") == b"v"
    assert upper_same_inode(layers, "a", "d/b")


def test_whited_out_name_is_not_linked(ab):
    layers, m = ab
    (m / "d/b").unlink()
    assert not (m / "d/b").exists()
    with open(m / "a", "a") as f:
        f.write("more\n")
    st = os.lstat(layers.upper / "d/b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0       # still the whiteout
    assert os.lstat(layers.upper / "a").st_nlink == 1
    assert os.stat(m / "a").st_nlink == 1
    assert sorted(os.listdir(m / "d")) == ["x"]


def test_rename_of_other_name_before_copy_up(ab):
    layers, m = ab
    ino = os.stat(m / "a").st_ino
    os.stat(m / "d/b")
    os.rename(m / "d/b", m / "d/c")
    assert os.stat(m / "d/c").st_ino == ino
    assert not (m / "d/b").exists()
    with open(m / "d/c", "a") as f:
        f.write("more\n")
    assert (m / "a").read_text() == "linked-data\nmore\n"
    assert upper_same_inode(layers, "a", "d/c")
    st = os.lstat(layers.upper / "d/b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_unlink_copied_up_name_keeps_other(ab):
    layers, m = ab
    with open(m / "d/b", "a") as f:
        f.write("more\n")
    (m / "a").unlink()
    assert (m / "d/b").read_text() == "linked-data\nmore\n"
    assert os.stat(m / "d/b").st_nlink == 1
    assert stat.S_ISCHR(os.lstat(layers.upper / "a").st_mode)


def test_name_shadowed_by_a_higher_layer_is_another_object(make_layers, ref_mount):
    """Lower1 "a" and "b" are linked, but lower0's "b" hides lower1's: a's copy-up must not
    touch b."""
    layers = linked_layers(make_layers, [{"b": "top-b"}, {"a": "linked"}], [(1, "a", "b")])
    m = ref_mount(layers)
    assert os.stat(m / "a").st_ino != os.stat(m / "b").st_ino
    assert os.stat(m / "a").st_nlink == 2          # the lower one (a hidden name counts)
    with open(m / "a", "a") as f:
        f.write("+")
    assert (m / "b").read_text() == "top-b"
    assert not (layers.upper / "b").exists()
    assert os.lstat(layers.upper / "a").st_nlink == 1


def test_three_names_across_layers_and_dirs(make_layers, ref_mount):
    layers = linked_layers(make_layers, [{"top": "t"}, {"p": {"q": {"a": "deep"}}, "e": {}}],
                           [(1, "p/q/a", "b"), (1, "p/q/a", "e/c")])
    m = ref_mount(layers)
    inos = {os.stat(m / n).st_ino for n in ("p/q/a", "b", "e/c")}
    assert len(inos) == 1
    os.stat(m / "b")
    with open(m / "b", "r+") as f:
        f.write("DE")
    for n in ("p/q/a", "b", "e/c"):
        assert (m / n).read_text() == "DEep"
        assert os.stat(m / n).st_nlink == 3 and os.stat(m / n).st_ino in inos
    assert upper_same_inode(layers, "p/q/a", "b", "e/c")


def test_layers_produced_mount_on_kernel(ab, ref_mount, kernel_mount):
    """The upper the reference wrote is plain overlayfs format: the kernel sees both names as
    one hard-linked upper file."""
    layers, m = ab
    with open(m / "a", "a") as f:
        f.write("more\n")
    ref_mount.umount(m)
    km = kernel_mount(layers)
    try:
        a, b = os.stat(km / "a"), os.stat(km / "d/b")
        assert a.st_ino == b.st_ino and a.st_nlink == 2
        assert (km / "d/b").read_text() == "linked-data\nmore\n"
    finally:
        kernel_mount.umount(km)


def _scenario(m):
    out = {}
    sa, sb = os.stat(m / "a"), os.stat(m / "b")
    out["before"] = (sa.st_nlink, sa.st_ino == sb.st_ino)
    rofd = os.open(m / "b", os.O_RDONLY)
    try:
        with open(m / "a", "a") as f:
            f.write("more\n")
        out["data_b"] = (m / "b").read_text()
        out["ro_fd_b"] = os.pread(rofd, 100, 0)
    finally:
        os.close(rofd)
    sa2, sb2 = os.stat(m / "a"), os.stat(m / "b")
    out["after"] = (sa2.st_nlink, sb2.st_nlink, sa2.st_ino == sb2.st_ino, sa2.st_ino == sa.st_ino)
    os.link(m / "b", m / "c")
    out["c"] = (os.stat(m / "c").st_nlink, (m / "c").read_text())
    return out


def test_agrees_with_kernel_index_on(make_layers, ref_mount, kernel_mount):
    spec = [{"a": "linked-data\n"}]
    lr = linked_layers(make_layers, spec, [(0, "a", "b")])
    lk = linked_layers(make_layers, spec, [(0, "a", "b")])
    mr = ref_mount(lr)
    ref = _scenario(mr)
    km = kernel_mount(lk, "index=on")
    try:
        ker = _scenario(km)
    finally:
        kernel_mount.umount(km)
    assert ref == ker
    assert ref["after"] == (2, 2, True, True) and ref["c"] == (3, "linked-data\nmore\n")


def test_open_file_unlinked_then_other_name_looked_up(ab):
    """An open lower file whose only looked-up name is removed is still the object the other
    lower name shows: same st_ino, and a write through that name reaches the open fd."""
    layers, m = ab
    fd = os.open(m / "a", os.O_RDONLY)
    try:
        ino = os.fstat(fd).st_ino
        (m / "a").unlink()
        assert os.stat(m / "d/b").st_ino == ino
        with open(m / "d/b", "a") as f:
            f.write("more\n")
        assert os.pread(fd, 100, 0) == b"linked-data\nmore\n"
        assert os.stat(m / "d/b").st_nlink == 1
    finally:
        os.close(fd)
    assert os.lstat(layers.upper / "d/b").st_nlink == 1
    assert stat.S_ISCHR(os.lstat(layers.upper / "a").st_mode)
