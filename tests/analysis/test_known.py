"""rig/analysis/known.py: the known-divergence loader (validation), compare's explain, fuzz's match_op."""
from __future__ import annotations

import fnmatch

import pytest

from rig.analysis import known as knownmod
from rig.analysis.known import Known, KnownEntry, load_known
from rig.core import paths
from rig.core.errors import BadInput
from rig.guest import harness

KNOWN = Known([KnownEntry(tests=("mmap_*",), keys=("map_*", "upper:*"), doc="overlayfs.rst (b)"),
               KnownEntry(tests=("mmap_x",), keys=("extra",), doc="other doc")])


@pytest.mark.parametrize("name, keys, expect", [
    ("mmap_x", ["map_after"], "overlayfs.rst (b)"),
    ("mmap_x", ["map_after", "upper:foo"], "overlayfs.rst (b)"),
    ("mmap_x", ["map_after", "extra"], "overlayfs.rst (b); other doc"),
    ("mmap_x", ["map_after", "unrelated"], None),      # every differing key must be known
    ("rfc_read", ["map_after"], None),
    ("mmap_x", [], None),
])
def test_known_explain(name, keys, expect):
    assert KNOWN.explain(name, keys) == expect


def test_repo_known_divergences_file_is_valid():
    known = load_known()
    names = {s.name for s in harness.load_specs(paths.GUEST_TESTS)}
    assert len(known.entries) >= 5
    for e in known.entries:
        assert "Documentation/filesystems/overlayfs.rst" in e.doc or e.doc.startswith("POSIX ")   # cite the rule
        assert e.tests or e.fuzz_ops
        if e.tests:
            assert any(any(fnmatch.fnmatchcase(n, t) for n in names) for t in e.tests), e.tests
    # the undocumented mmap-after-copy-up bug (docs/design.md §2 case 4) must not be excused
    assert known.explain("mmap_shared_ro_after_copyup", ["map_after_copyup"]) is None
    assert known.explain("mmap_shared_ro_before_copyup", ["map_after_write"]) is not None


def test_missing_file_is_no_entries(tmp_path):
    assert load_known(tmp_path / "missing.toml").entries == []
    assert load_known(str(tmp_path / "missing.toml")) == Known()


def test_entries_with_all_fields_and_fuzz_only_entries_load(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text('[[divergence]]\ntests = ["mmap_*"]\nkeys = ["map_*"]\ndoc = "overlayfs.rst (b)"\nnote = "stale"\n'
                 'fuzz_ops = ["mread", "mwrite"]\n'
                 '[[divergence]]\nfuzz_ops = ["rename*"]\ndoc = "overlayfs.rst, redirect_dir"\n')
    a, b = load_known(p).entries
    assert a == KnownEntry(("mmap_*",), ("map_*",), "overlayfs.rst (b)", "stale", ("mread", "mwrite"))
    assert (b.tests, b.keys, b.fuzz_ops, b.note) == ((), (), ("rename*",), "")
    assert not b.covers("rename_dir", "anything")           # fuzz-only: never explains a guest test


@pytest.mark.parametrize("body, problem", [
    ('tests = ["a"]\ndoc = "d"\n', "needs tests and keys"),                         # keys missing
    ('keys = ["a"]\ndoc = "d"\n', "needs tests and keys"),                          # tests missing
    ('doc = "d"\nnote = "n"\n', "needs tests and keys"),                            # neither, no fuzz_ops
    ('tests = ["a"]\nkeys = ["k"]\n', "needs doc"),
    ('tests = ["a"]\nkeys = ["k"]\ndoc = " "\n', "needs doc"),
    ('tests = "a"\nkeys = ["k"]\ndoc = "d"\n', "tests must be a non-empty list"),
    ('tests = []\nkeys = ["k"]\ndoc = "d"\n', "tests must be a non-empty list"),
    ('tests = ["a"]\nkeys = [1]\ndoc = "d"\n', "keys must hold non-empty strings"),
    ('fuzz_ops = []\ndoc = "d"\n', "fuzz_ops must be a non-empty list"),
    ('fuzz_op = ["rename"]\ndoc = "d"\n', "unknown field(s) fuzz_op"),              # a typo is not ignored
    ('tests = ["a"]\nkeys = ["k"]\ndoc = "d"\nnote = 3\n', "note must be a string"),
])
def test_bad_entry_is_named_by_file_and_number(tmp_path, body, problem):
    p = tmp_path / "k.toml"
    p.write_text('[[divergence]]\ntests = ["ok"]\nkeys = ["k"]\ndoc = "fine"\n\n[[divergence]]\n' + body)
    with pytest.raises(BadInput) as e:
        load_known(p)
    assert str(e.value).startswith(f"{p}: divergence 2: ") and problem in str(e.value)


@pytest.mark.parametrize("text, problem", [
    ("[[divergence]\n", "k.toml: "),                                    # not TOML
    ('[[divergences]]\ntests = ["a"]\n', "only [[divergence]] entries, not divergences"),
    ('divergence = 3\n', "only [[divergence]] entries"),
])
def test_bad_file_is_named(tmp_path, text, problem):
    p = tmp_path / "k.toml"
    p.write_text(text)
    with pytest.raises(BadInput, match=str(p)) as e:
        load_known(p)
    assert problem in str(e.value)


def test_entries_are_frozen_and_lists_become_tuples():
    e = KnownEntry(tests=["t"], keys=["k"], doc="d")
    assert e.tests == ("t",) and e.keys == ("k",) and e.fuzz_ops == () and hash(e)
    with pytest.raises(AttributeError):
        e.doc = "x"


# ---------------------------------------------------------------- fuzz: match_op

FUZZ = Known([KnownEntry(tests=("mmap_*",), keys=("map_*",), doc="d1", note="stale map"),
              KnownEntry(tests=("dir_rename_*",), keys=("rename_*",), doc="d2", note="EXDEV", fuzz_ops=("rename",)),
              KnownEntry(tests=(), keys=(), doc="d3", note="xattr", fuzz_ops=("*xattr",))])


@pytest.mark.parametrize("kind, pseudo, note", [
    ("mread", "map_read", "stale map"),          # no fuzz_ops: a keys glob matches the pseudo key
    ("mwrite", "map_write", "stale map"),
    ("rename", "op_rename", "EXDEV"),            # fuzz_ops glob matches the kind
    ("setxattr", "op_setxattr", "xattr"),        # fuzz_ops are globs too
    ("removexattr", "op_removexattr", "xattr"),
    ("fstat", "op_fstat", None),
    ("renameat2", "rename_x", None),             # an entry WITH fuzz_ops is not matched by its keys
])
def test_match_op(kind, pseudo, note):
    hit = FUZZ.match_op(kind, pseudo)
    assert (hit.note if hit else None) == note


def test_match_op_first_entry_wins_and_empty_known_matches_nothing():
    k = Known([KnownEntry(tests=(), keys=(), doc="a", fuzz_ops=("m*",)),
               KnownEntry(tests=("t",), keys=("map_*",), doc="b")])
    assert k.match_op("mread", "map_read").doc == "a"
    assert Known().match_op("mread", "map_read") is None
    assert knownmod.FILE_NAME == "known_divergences.toml"
