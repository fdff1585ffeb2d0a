"""kproto fuzz: a finding as a C reproducer and as a guest test."""
from __future__ import annotations

import json
import subprocess

from fuzz_helpers import needs_root
from rig.fuzz import emit
from rig.fuzz.findings import Difference, Finding


@needs_root
def test_reproducer_prints_what_the_interpreter_prints(target, tmp_path):
    """The emitted C replays the ops with the same formatting (fmt.h inlined) as the interpreter."""
    ops = ["open 0 a RDONLY", "mmap 0 0 r shared", "truncate a 3", "fstat 0", "pread 0 16 0", "mread 0 0 8",
           "mkdir d/x 0700", "readdir d", "symlink n t", "lstat t", "setxattr a user.j v2", "listxattr a",
           "utimens b 1000000000", "stat b", "chmod b 0444", "stat b", "open 1 b WRONLY|APPEND", "write 1 NEW",
           "fsync 1", "flock 1 ex", "close 1", "rename b d/y", "link a d/z", "unlink a", "rmdir d"]
    host = target("host")
    expect = host.run([ops])[0]
    f = Finding(ops=ops, diff=Difference(len(ops) - 1, expect.lines[-1], "x", "rmdir", ("status",)),
                reference_lines=expect.lines, target_lines=expect.lines)
    src = tmp_path / "r.c"
    src.write_text(emit.reproducer_c(f, "host"))
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "r"), str(src)], check=True)
    host.remount()
    slot = host.base() / "s0000"
    out = subprocess.run([str(tmp_path / "r"), str(slot)], capture_output=True, text=True)
    lines = [l.split(": ", 1)[1] for l in out.stdout.splitlines() if ": " in l and l.split(":")[0].isdigit()]
    assert lines == expect.lines
    assert out.returncode == 0 and "OK: same as the reference" in out.stdout


def _finding(ops, kind="stat", fields=("status",)):
    return Finding(ops=list(ops), diff=Difference(op_index=len(ops) - 1, reference="ok", target="ENOENT",
                                                  kind=kind, fields=tuple(fields)),
                   reference_lines=[], target_lines=[])


def test_findings_become_guest_tests_only_where_asked_and_once_per_signature(tmp_path):
    f1 = _finding(["open 0 a RDONLY", "truncate a 3", "stat a"])
    emit.emit_finding(f1, tmp_path / "findings", None, "host kernel overlayfs")
    assert f1.reproducer is not None and f1.reproducer.is_file() and f1.guest_test is None   # default: no suite change
    tests = tmp_path / "suite"
    emit.emit_finding(f1, tmp_path / "findings", tests, "host kernel overlayfs")
    assert f1.guest_test == tests / f"fuzz_{f1.id}.c" and (tests / f"fuzz_{f1.id}.toml").is_file()
    # same kinds of operations and the same first difference, other arguments: a duplicate
    f2 = _finding(["open 0 a RDONLY", "truncate a 7", "stat a"])
    assert f2.id != f1.id
    emit.emit_finding(f2, tmp_path / "findings", tests, "host kernel overlayfs")
    assert f2.guest_test is None and f2.duplicate_of == f"fuzz_{f1.id}"
    assert sorted(p.name for p in tests.glob("*.c")) == [f"fuzz_{f1.id}.c"]
    # another first difference is another test
    f3 = _finding(["open 0 a RDONLY", "truncate a 7", "stat a"], fields=("size",))
    emit.emit_finding(f3, tmp_path / "findings", tests, "host kernel overlayfs")
    assert f3.guest_test is not None
    d = json.loads((tmp_path / "findings" / f1.id / "result.json").read_text())
    assert d["ops"] == f1.ops and d["key"] == "stat:status" and "known" not in d


def test_a_known_finding_says_so(tmp_path):
    from rig.analysis.known import KnownEntry
    f = _finding(["open 0 a RDONLY", "mmap 0 0 r shared", "truncate a 3", "mread 0 0 16"], kind="mread",
                 fields=("data",))
    f.known = KnownEntry(tests=("mmap_*",), keys=("map_*",), doc="overlayfs.rst (b)", note="stale map")
    assert " * Known divergence: stale map (overlayfs.rst (b))" in emit.reproducer_c(f, "host")
    assert f.as_json()["known"] == {"doc": "overlayfs.rst (b)", "note": "stale map"}
    f.known = KnownEntry(tests=(), keys=(), doc="d", fuzz_ops=("mread",))
    assert f.as_json()["known"] == {"doc": "d"}


def test_guest_test_builds_static_and_its_spec_is_the_fixture(tmp_path):
    import tomllib
    f = _finding(["open 0 a RDONLY", "mmap 0 0 r shared", "truncate a 3", "mread 0 0 16"], kind="mread")
    emit.emit_finding(f, tmp_path / "findings", tmp_path / "tests", "host")
    spec = tomllib.loads((tmp_path / "tests" / f"fuzz_{f.id}.toml").read_text())
    assert [e["path"] for e in spec["lower"][0]["entries"]] == ["a", "b", "d", "d/f", "s", "w", "kproto-warn"]
    assert spec["lower"][0]["entries"][0]["xattrs"] == {"user.k": "v1"}
    assert [(e["path"], e["type"]) for e in spec["upper"]["entries"]] == [("w", "whiteout"), ("u", "file")]
    assert "fuzz" in spec["tags"] and any(t.startswith("fuzzsig:") for t in spec["tags"])
    subprocess.run(["gcc", "-O0", "-Wall", "-Werror", "-o", str(tmp_path / "gt"),
                    str(tmp_path / "tests" / f"fuzz_{f.id}.c")], check=True)
