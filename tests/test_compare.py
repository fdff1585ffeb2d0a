"""rig/compare.py: comparison rules, status rules (table-driven), known divergences, output formats."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from rig import compare, paths
from rig.compare import Known, KnownEntry, TestVerdict
from rig.guest import harness


def res(status="ok", exit_code=0, signal=None, upper=None, lower_modified=False, **obs) -> dict:
    return {"status": status, "observations": {k: str(v) for k, v in obs.items()}, "exit_code": exit_code,
            "signal": signal, "upper": upper or {}, "stderr": "", "duration_s": 0.1,
            "error": None if status == "ok" else f"{status}!", "lower_modified": lower_modified}


GOOD = res(data="NEW")
BAD = res(data="old")
OTHER_BAD = res(data="other")
ERR = res(status="error")
TIMEOUT = res(status="timeout")


# ---------------------------------------------------------------- status rules

@pytest.mark.parametrize("ref, base, pat, status", [
    (GOOD, GOOD, GOOD, "match"),
    (GOOD, None, GOOD, "match"),          # baseline not run
    (GOOD, BAD, GOOD, "fixed"),
    (GOOD, ERR, GOOD, "fixed"),           # e.g. the baseline deadlocked, the patch fixes it
    (GOOD, GOOD, BAD, "regressed"),
    (GOOD, BAD, BAD, "diverges"),
    (GOOD, BAD, OTHER_BAD, "diverges"),
    (GOOD, None, BAD, "diverges"),
    (GOOD, ERR, BAD, "diverges"),
    (GOOD, GOOD, ERR, "error"),
    (GOOD, GOOD, TIMEOUT, "error"),
    (ERR, GOOD, GOOD, "error"),
    (GOOD, GOOD, None, "error"),          # missing patched result
    (None, GOOD, GOOD, "error"),
])
def test_compare_run_status(ref, base, pat, status):
    pick = lambda r: {} if r is None else {"t": r}  # noqa: E731
    [v] = compare.compare_run(pick(ref), pick(base), pick(pat), Known())
    assert v.status == status
    if status in ("fixed", "regressed", "diverges") and base is not ERR:
        assert v.diffs and v.diffs[0].key == "data"


@pytest.mark.parametrize("ref, tgt, status", [
    (GOOD, GOOD, "match"), (GOOD, BAD, "diverges"), (GOOD, ERR, "error"), (ERR, GOOD, "error"),
    (GOOD, TIMEOUT, "error"), (GOOD, None, "error"), (None, GOOD, "error"),
])
def test_compare_target_status(ref, tgt, status):
    pick = lambda r: {} if r is None else {"t": r}  # noqa: E731
    [v] = compare.compare_target(pick(ref), pick(tgt), Known())
    assert v.status == status
    if status == "error":
        assert v.reason


def test_diffs_side_by_side():
    [v] = compare.compare_run({"t": res(a=1, b=2)}, {"t": res(a=9, b=2)}, {"t": res(a=1, b=3, c=4)}, None)
    assert v.status == "diverges"
    assert [(d.key, d.reference, d.baseline, d.patched) for d in v.diffs] == [
        ("a", "1", "9", "1"), ("b", "2", "2", "3"), ("c", None, None, "4")]


# ---------------------------------------------------------------- what is compared

F = {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": 3, "xattrs": {}, "in_lower": True,
     "whiteout": False}


@pytest.mark.parametrize("a, b, differ", [
    ({"exit_code": 0}, {"exit_code": 1}, ["exit_code"]),
    ({"exit_code": None, "signal": None}, {"exit_code": None, "signal": 11}, ["signal"]),
    ({"lower_modified": False}, {"lower_modified": True}, ["lower_modified"]),
    ({"upper": {"f": F}}, {"upper": {"f": dict(F, xattrs={"trusted.overlay.origin": None})}}, []),
    ({"upper": {"f": F}}, {"upper": {"f": dict(F, size=4)}}, ["upper:f"]),
    ({"upper": {"f": F}}, {"upper": {"f": dict(F, mode="0600")}}, ["upper:f"]),
    ({"upper": {"f": F}}, {"upper": {"f": dict(F, uid=5)}}, ["upper:f"]),
    ({"upper": {"f": F}}, {"upper": {}}, []),            # an extra copy-up: a side effect, not a divergence
    ({"upper": {"f": dict(F, in_lower=False)}}, {"upper": {}}, ["upper:f"]),      # a new file is not
    ({"upper": {"w": dict(F, type="char", mode="0000", whiteout=True)}},
     {"upper": {"w": dict(F, type="char", mode="0644", whiteout=True)}}, []),          # whiteout mode
    ({"upper": {"w": dict(F, type="char", whiteout=True)}},
     {"upper": {"w": dict(F, type="file", whiteout=True, xattrs={"user.overlay.whiteout": "y"})}}, []),
    ({"upper": {"d": dict(F, type="dir", xattrs={"trusted.overlay.opaque": "y"})}},
     {"upper": {"d": dict(F, type="dir")}}, ["upper:d"]),                               # opaque over lower
    ({"upper": {"d": dict(F, type="dir", in_lower=False, xattrs={"trusted.overlay.opaque": "y"})}},
     {"upper": {"d": dict(F, type="dir", in_lower=False)}}, []),                        # nothing below
    ({"upper": {"d": dict(F, type="dir", size=4096, xattrs={"trusted.overlay.redirect": "/x"})}},
     {"upper": {"d": dict(F, type="dir", size=60, xattrs={"trusted.overlay.redirect": "x"})}}, []),
    ({"upper": {"l": dict(F, type="symlink", mode="0777", target="a")}},
     {"upper": {"l": dict(F, type="symlink", mode="0777", target="b")}}, ["upper:l"]),
])
def test_comparable_parts(a, b, differ):
    ra, rb = res(), res()
    ra.update(a)
    rb.update(b)
    assert compare.diff_keys(ra, rb) == differ


# ---------------------------------------------------------------- known divergences

KNOWN = Known([KnownEntry(tests=["mmap_*"], keys=["map_*", "upper:*"], doc="overlayfs.rst (b)"),
               KnownEntry(tests=["mmap_x"], keys=["extra"], doc="other doc")])


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


def test_known_qualifies_diverges_and_fixed_still_reported():
    ref, base, pat = res(map_a="NEW"), res(map_a="old"), res(map_a="NEW")
    [v] = compare.compare_run({"mmap_x": ref}, {"mmap_x": base}, {"mmap_x": pat}, KNOWN)
    assert (v.status, v.known) == ("fixed", "overlayfs.rst (b)")
    [v] = compare.compare_run({"mmap_x": ref}, {"mmap_x": base}, {"mmap_x": base}, KNOWN)
    assert (v.status, v.known) == ("diverges", "overlayfs.rst (b)")
    [v] = compare.compare_run({"mmap_x": ref}, {"mmap_x": ref}, {"mmap_x": base}, KNOWN)
    assert (v.status, v.known) == ("regressed", None)
    [v] = compare.compare_target({"mmap_x": ref}, {"mmap_x": base}, KNOWN)
    assert (v.status, v.known) == ("diverges", "overlayfs.rst (b)")
    assert compare.unexplained([v]) == []


def test_repo_known_divergences_file_is_valid():
    known = compare.load_known()
    names = {s.name for s in harness.load_specs(paths.GUEST_TESTS)}
    assert len(known.entries) >= 5
    for e in known.entries:
        assert "Documentation/filesystems/overlayfs.rst" in e.doc or e.doc.startswith("POSIX ")   # cite the rule
        assert any(any(__import__("fnmatch").fnmatchcase(n, t) for n in names) for t in e.tests), e.tests
    # the undocumented mmap-after-copy-up bug (DESIGN.md §2.4) must not be excused
    assert known.explain("mmap_shared_ro_after_copyup", ["map_after_copyup"]) is None
    assert known.explain("mmap_shared_ro_before_copyup", ["map_after_write"]) is not None


def test_load_known_rejects_bad_entries(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text('[[divergence]]\ntests = ["a"]\n')
    with pytest.raises(compare.BadInput):
        compare.load_known(p)
    assert compare.load_known(tmp_path / "missing.toml").entries == []


# ---------------------------------------------------------------- output

def _verdicts():
    return compare.compare_run(
        {"a_match": GOOD, "b_fixed": GOOD, "c_regressed": GOOD, "mmap_known": res(map_a="NEW"), "e_error": GOOD},
        {"a_match": GOOD, "b_fixed": BAD, "c_regressed": GOOD, "mmap_known": res(map_a="old"), "e_error": GOOD},
        {"a_match": GOOD, "b_fixed": GOOD, "c_regressed": BAD, "mmap_known": res(map_a="old"), "e_error": TIMEOUT},
        KNOWN)


def test_format_table_shows_differing_observations():
    out = compare.format_table(_verdicts())
    lines = out.splitlines()
    assert lines[0].split() == ["TEST", "STATUS"]
    assert any(ln.startswith("c_regressed") and ln.endswith("regressed") for ln in lines)
    assert "diverges (known)" in out and "known: overlayfs.rst (b)" in out
    rows = [ln.split() for ln in lines if ln.strip().startswith("data")]
    assert ["data", "NEW", "old", "NEW"] in rows and ["data", "NEW", "NEW", "old"] in rows  # fixed, regressed
    assert "! patched timeout" in out
    assert lines[-1] == "5 tests: 1 match, 1 fixed, 1 regressed, 1 diverges, 1 error (1 known)"
    two = compare.format_table(compare.compare_target({"t": GOOD}, {"t": BAD}, None),
                               columns=("reference", "patched:host"))
    assert "host" in two and "baseline" not in two


def test_junit_and_ktap():
    vs = _verdicts()
    root = ET.fromstring(compare.to_junit(vs, "suite"))
    suite = root.find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "1" and suite.get("errors") == "1"
    assert suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["c_regressed"].find("failure") is not None
    assert "data" in cases["c_regressed"].find("failure").text
    assert cases["e_error"].find("error") is not None
    assert cases["mmap_known"].find("skipped") is not None
    assert cases["a_match"].find("failure") is None
    ktap = compare.to_ktap(vs).splitlines()
    assert ktap[:2] == ["KTAP version 1", "1..5"]
    assert "ok 1 a_match" in ktap and "ok 2 b_fixed # fixed" in ktap
    assert "not ok 3 c_regressed # regressed" in ktap
    assert any(ln.startswith("ok 5 mmap_known # SKIP known divergence") for ln in ktap)
    assert "not ok 4 e_error # error" in ktap
    assert any(ln.startswith("# c_regressed: data:") for ln in ktap)


def test_as_json_contract():
    j = _verdicts()[2].as_json()
    assert set(j) >= {"name", "status", "known", "diffs", "reference", "baseline", "patched"}
    assert set(j["patched"]) == {"observations", "exit_code", "signal", "upper", "status", "error"}
    assert j["diffs"] == [{"key": "data", "reference": "NEW", "baseline": "NEW", "patched": "old"}]
    t = compare.compare_target({"t": GOOD}, {"t": BAD}, None)[0].as_target_json()
    assert t["diffs"] == [{"key": "data", "reference": "NEW", "target": "old"}] and "target" in t
    assert isinstance(TestVerdict(name="x", status="match").as_json()["reference"], dict)


def test_extra_copy_up_is_reported_as_a_side_effect_not_a_regression():
    ok = {"status": "ok", "observations": {"data": "x"}, "exit_code": 0, "signal": None, "upper": {}}
    copied = dict(ok, upper={"src": {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": 12,
                                     "xattrs": {}, "in_lower": True}})
    [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": copied}, compare.Known())
    assert v.status == "match"
    assert v.side_effects == ["src: copied up here, not by the reference"]
    assert v.as_json()["side_effects"] == v.side_effects
