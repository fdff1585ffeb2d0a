"""kproto fuzz: comparison, known divergences, the search loop and minimise, and the done-when of
issue 11 (slow)."""
from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from fuzz_helpers import LENGTH, SEED, needs_ref, needs_root
from rig.analysis.known import load_known
from rig.core.errors import BadInput
from rig.fuzz import emit, interp as interpmod, search
from rig.fuzz.findings import Difference, first_difference, known_entry
from rig.fuzz.fixture import spec_text
from rig.fuzz.interp import SeqResult
from rig.fuzz.ops import op_kind
from rig.guest.mount import Mounter


# ------------------------------------------------------------------ pure
def test_first_difference_keys():
    ops = ["open 0 a RDONLY", "fstat 0"]
    r = SeqResult(["ok", "ok type=reg mode=0644 size=3 nlink=1 ino=i1 mtime=first"], "exit=0")
    t = SeqResult(["ok", "ok type=reg mode=0644 size=15 nlink=1 ino=i1 mtime=first"], "exit=0")
    d = first_difference(ops, r, t)
    assert d is not None and (d.op_index, d.kind, d.key) == (1, "fstat", "fstat:size")
    assert first_difference(ops, r, r) is None
    t2 = SeqResult(r.lines, "signal=SIGSEGV")
    d2 = first_difference(ops, r, t2)
    assert d2 is not None and d2.key == "exit:end"


def test_known_divergence_matching(tmp_path):
    """Through THE loader: fuzz_ops globs match the op's kind, keys globs its pseudo key (map_read ...)."""
    f = tmp_path / "known.toml"
    f.write_text('[[divergence]]\ntests = ["mmap_*"]\nkeys = ["map_*"]\ndoc = "rst (b)"\nnote = "stale map"\n'
                 '[[divergence]]\nfuzz_ops = ["rename"]\ndoc = "rst, redirect_dir"\nnote = "EXDEV"\n'
                 '[[divergence]]\ntests = ["t"]\nkeys = ["op_fsync"]\ndoc = "no note"\n')
    known = load_known(f)

    def mk(kind):
        return known_entry(known, Difference(0, "a", "b", kind, ("status",)))
    assert mk("mread").note == "stale map" and mk("munmap").note == "stale map"
    assert mk("rename").note == "EXDEV"
    assert mk("fsync").doc == "no note" and mk("fstat") is None and mk("exit") is None
    assert load_known(tmp_path / "missing.toml").entries == []


def test_budget_parse():
    assert search.parse_budget("10m") == 600 and search.parse_budget("90s") == 90 and search.parse_budget("5") == 5
    with pytest.raises(BadInput):
        search.parse_budget("ten")


def test_fuzz_needs_a_bound(target):
    with pytest.raises(BadInput):
        search.fuzz(target("plain"), target("plain"), seed=SEED)


# ------------------------------------------------------------------ the search on real targets
@needs_root
def test_host_vs_host_reports_nothing(target):
    res = search.fuzz(target("host"), target("host"), seed=SEED, max_sequences=1500, include_known=True)
    assert res.sequences_run >= 1500 and res.findings == []


@needs_ref
def test_a_padded_finding_is_shrunk_to_the_one_minimal_sequence(target):
    """The 10-op report of the mmap copy-up divergence seen by a user: four of its ops do the work."""
    padded = ["open 0 a RDONLY", "mmap 0 0 r shared", "open 0 a RDONLY", "stat a", "open 0 a RDONLY",
              "truncate a 3", "open 0 a RDONLY", "stat a", "stat a", "mread 0 0 16"]
    host, ref = target("host"), target("ref")
    r, t = ref.run([padded])[0], host.run([padded])[0]
    d = first_difference(padded, r, t)
    assert d is not None and d.kind == "mread"
    ops, r2, t2, d2 = search.minimise(padded, d.key, ref, host)
    assert ops == ["open 0 a RDONLY", "mmap 0 0 r shared", "truncate a 3", "mread 0 0 16"]
    assert d2 is not None and d2.key == d.key
    # 1-minimal: removing any single op loses the divergence, checked on both targets
    for i in range(len(ops)):
        cand = ops[:i] + ops[i + 1:]
        dd = first_difference(cand, ref.run([cand])[0], host.run([cand])[0])
        assert dd is None or dd.key != d.key, (cand, dd)


# ------------------------------------------------------------------ done-when (slow)
def _mount_overlay(base: Path, ref: bool):
    """Fuzz fixture (slot 0) on a fresh mount (THE mounter); returns (merged slot dir, unmount callable)."""
    for d in ("lower", "upper", "work", "merged"):
        (base / d).mkdir(parents=True)
    (base / "spec").write_text(spec_text())
    interp = interpmod.build_interpreter()
    subprocess.run([str(interp), "setup", str(base / "spec"), str(base / "lower"), str(base / "upper"), "1"], check=True)
    m = base / "merged"
    mounter = Mounter("ref" if ref else "overlay")
    mounter.mount([base / "lower"], base / "upper", base / "work", m, [])
    return m / "s0000", lambda: mounter.umount(m)


@pytest.mark.slow
@needs_ref
def test_rediscovers_mmap_copyup_divergence(target, tmp_path):
    logs: list[str] = []
    res = search.fuzz(target("host"), target("ref"), seed=SEED, max_sequences=LENGTH, include_known=True,
                      progress=logs.append)
    mm = [f for f in res.findings if f.diff.kind == "mread"]
    assert mm, f"no mmap finding in {res.sequences_run} sequences: {[f.ops for f in res.findings]}\n" + "\n".join(logs)
    f = mm[0]
    assert len(f.ops) <= 6, f.ops
    kinds = [op_kind(o) for o in f.ops]
    assert "mmap" in kinds and f.ops[0].startswith("open") and "RDONLY" in f.ops[0]
    # the mapping is made from the read-only fd before the modification that copies the file up
    assert kinds.index("mmap") < max(i for i, k in enumerate(kinds) if k in ("open", "truncate", "write", "pwrite",
                                                                              "ftruncate") and i > 0)
    emit.emit_finding(f, tmp_path / "findings", tmp_path / "tests", "host kernel overlayfs", "test")
    assert f.reproducer is not None
    exe = tmp_path / "repro"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", str(exe), str(f.reproducer)], check=True)
    results = {}
    for name, ref in (("host", False), ("ref", True)):
        slot, umount = _mount_overlay(tmp_path / name, ref)
        try:
            results[name] = subprocess.run([str(exe), str(slot)], capture_output=True, text=True, timeout=60)
        finally:
            umount()
    assert results["host"].returncode == 1 and "DIVERGES" in results["host"].stdout, results["host"].stdout
    assert results["ref"].returncode == 0 and "OK" in results["ref"].stdout, results["ref"].stdout
    # the guest test: a .c that builds static, a .toml the harness can read
    spec = tomllib.loads((tmp_path / "tests" / f"fuzz_{f.id}.toml").read_text())
    assert spec["lower"][0]["entries"][0]["path"] == "a" and spec["upper"]["entries"]
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "gt"),
                    str(tmp_path / "tests" / f"fuzz_{f.id}.c")], check=True)


@pytest.mark.slow
@needs_ref
def test_reference_vs_itself_reports_nothing(target):
    res = search.fuzz(target("ref"), target("ref"), seed=SEED, max_sequences=LENGTH, include_known=True)
    assert res.sequences_run >= LENGTH
    assert res.findings == [], [(f.ops, f.diff) for f in res.findings]
