"""The names of lower directories the reference keeps to skip layers in lookups (namei's
``_lower_absent``): same answers as asking the layers, bounded, huge directories not relisted.
Runs the operations object without mounting it (no FUSE needed)."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from overlay_ref import namei
from overlay_ref.config import OverlayConfig
from overlay_ref.fs import OverlayFS


@pytest.fixture
def ops(tmp_path):
    lowers = [tmp_path / f"l{i}" for i in range(3)]
    for i, lo in enumerate(lowers):
        for d in ("a", "b", "c"):
            (lo / d).mkdir(parents=True)
            for k in range(i, 30, 3):
                (lo / d / f"n{k}").write_text(f"{i}")
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "m").mkdir()
    cfg = OverlayConfig.build([str(x) for x in lowers], str(tmp_path / "u"), str(tmp_path / "w"),
                              str(tmp_path / "m"), {"inline": "off"})
    fs = OverlayFS(cfg)
    try:
        yield fs
    finally:
        fs.close()


def _look(fs: OverlayFS, path: str):
    node = fs.nodes[pyfuse3.ROOT_INODE]
    for comp in path.split("/"):
        a = fs._lookup_op(node.ino, comp.encode())
        if a.st_ino == 0:
            return None
        node = fs.nodes[a.st_ino]
    with fs.lock:
        return (node.lowers, node.kind)


def test_answers_do_not_change_once_names_are_kept(ops):
    names = [f"{d}/n{k}" for d in ("a", "b") for k in range(35)]
    first = [_look(ops, n) for n in names]
    assert ops.lower_dir_names, "no lower directory was listed"
    again = [_look(ops, n) for n in names] + [_look(ops, f"c/n{k}") for k in range(35)]
    assert again[:len(first)] == first
    for k in range(35):
        got = again[len(first) + k]
        if k < 30:
            assert got is not None and got[0] == [(k % 3, f"c/n{k}".encode())]
        else:
            assert got is None
    assert ops.lower_dir_total == sum(len(v) for v in ops.lower_dir_names.values())


def test_kept_names_are_bounded(ops, monkeypatch):
    monkeypatch.setattr(namei, "_LOWER_LIST_DIRS", 2)
    for d in ("a", "b", "c"):
        for k in range(12):
            _look(ops, f"{d}/x{k}")
    assert len(ops.lower_dir_names) <= 2
    assert ops.lower_dir_total == sum(len(v) for v in ops.lower_dir_names.values())
    monkeypatch.setattr(namei, "_LOWER_LIST_NAMES", 8)      # 10 names per dir: too many
    ops.lower_dir_names.clear()
    ops.lower_dir_total = 0
    ops.lower_dir_hits.clear()
    listed = []
    real_open_dir = ops._open_dir

    def counting_open_dir(layer, rel):
        listed.append((layer, rel))
        return real_open_dir(layer, rel)
    monkeypatch.setattr(ops, "_open_dir", counting_open_dir)
    for k in range(40):
        assert _look(ops, f"a/y{k}") is None
    assert not ops.lower_dir_names and ops.lower_dir_total == 0
    assert sorted(listed) == [(0, b"a"), (1, b"a"), (2, b"a")]   # once each, not again


def test_missing_directory_of_a_layer_counts_as_empty(ops):
    with ops.lock:
        got = [ops._lower_absent(1, b"nodir/x") for _ in range(namei._LOWER_LIST_AFTER + 2)]
        assert got == [False] * (namei._LOWER_LIST_AFTER - 1) + [True] * 3
        assert ops.lower_dir_names[(1, b"nodir")] == frozenset()
        with pytest.raises(OSError) as ei:
            ops._at(1, b"nodir/x").release()
        assert ei.value.errno == errno.ENOENT
    assert os.path.isdir(ops.cfg.lowers[1])
