"""rig/analysis/compare.py: comparison rules, status rules (table-driven), known qualification, the JSON codec.
The outputs (table, JUnit, KTAP) are tested in tests/report/test_outputs.py, the loader in test_known.py."""
from __future__ import annotations

import pytest

from rig.analysis import compare
from rig.analysis.compare import TestVerdict
from rig.analysis.known import Known, KnownEntry
from kproto_helpers import five_verdicts, res


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
    (GOOD, BAD, OTHER_BAD, "regressed"),  # a different wrong value than the baseline's is a new divergence
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
    # the baseline diverged on a only; the patched fixes a but diverges on b and c, where the baseline
    # agreed: new divergences, so regressed (this was "diverges" before the "one patch, one answer" rule)
    [v] = compare.compare_run({"t": res(a=1, b=2)}, {"t": res(a=9, b=2)}, {"t": res(a=1, b=3, c=4)}, None)
    assert v.status == "regressed"
    assert [(d.key, d.reference, d.baseline, d.patched) for d in v.diffs] == [
        ("a", "1", "9", "1"), ("b", "2", "2", "3"), ("c", None, None, "4")]
    assert v.reason == ("new divergence on b (reference '2', baseline '2', patched '3'); "
                        "new divergence on c (reference (absent), baseline (absent), patched '4')")


# ---------------------------------------------------------------- new divergences (one patch, one answer)

def _run1(ref, base, pat, known=None):
    [v] = compare.compare_run({"t": ref}, {"t": base}, {"t": pat}, known or Known())
    return v


def test_new_divergence_next_to_a_known_one_is_a_regression():
    """(1) the baseline diverges on a; the patched keeps that same wrong a and ALSO diverges on b."""
    known = Known([KnownEntry(tests=["t"], keys=["a", "b"], doc="overlayfs.rst (x)")])
    v = _run1(res(a="ok", b="ok"), res(a="bad", b="ok"), res(a="bad", b="bad"), known)
    assert v.status == "regressed" and v.known is None
    assert v.reason == "new divergence on b (reference 'ok', baseline 'ok', patched 'bad')"
    assert "on a " not in v.reason
    assert [d.key for d in v.diffs] == ["a", "b"]
    assert compare.unexplained([v]) == [v]       # counted against the patch even though a and b are known


def test_different_wrong_value_is_a_regression():
    """(2) the patched holds a different wrong value on a than the baseline."""
    v = _run1(res(a="ok"), res(a="bad"), res(a="worse"))
    assert v.status == "regressed"
    assert v.reason == "new divergence on a (reference 'ok', baseline 'bad', patched 'worse')"
    # ... also when the difference is only on the upper layer's data digest
    ent = dict(F, sha256="1" * 64, lower=dict(LOW, sha256="0" * 64), xattr_sha256={})
    v = _run1(res(upper={"f": dict(ent, sha256="2" * 64)}), res(upper={"f": ent}),
              res(upper={"f": dict(ent, sha256="3" * 64)}))
    assert v.status == "regressed" and "upper:f" in v.reason and "sha256=3333" in v.reason


def test_same_wrong_value_stays_diverges():
    """(3) the patched keeps exactly the baseline's wrong value: diverges, known-qualified as before."""
    known = Known([KnownEntry(tests=["t"], keys=["a"], doc="overlayfs.rst (x)")])
    v = _run1(res(a="ok", b="ok"), res(a="bad", b="ok"), res(a="bad", b="ok"), known)
    assert (v.status, v.known, v.reason) == ("diverges", "overlayfs.rst (x)", None)


@pytest.mark.parametrize("base", [ERR, TIMEOUT, None])
def test_baseline_without_results_patched_diverges_stays_diverges(base):
    """Without a baseline that ran, old wrong values cannot be told from new ones: diverges, as before."""
    [v] = compare.compare_run({"t": GOOD}, {} if base is None else {"t": base}, {"t": OTHER_BAD}, Known())
    assert v.status == "diverges" and v.reason is None


def test_many_new_divergences_reason_is_capped():
    ref = res(**{f"k{i}": "ok" for i in range(20)})
    v = _run1(ref, ref, res(**{f"k{i}": "bad" for i in range(20)}))
    assert v.status == "regressed"
    assert v.reason.count("new divergence on ") == compare.NEW_REASON_DETAILED
    assert "17 more new divergence(s): " in v.reason and v.reason.endswith(", …")
    long = _run1(res(a="x"), res(a="x"), res(a="y" * 500)).reason
    assert len(long) < 200 and "…" in long


# ---------------------------------------------------------------- what is compared

F = {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": 3, "xattrs": {}, "in_lower": True,
     "whiteout": False}
# what the harness records since it keeps data digests and the lower file (upper_state)
LOW = {"layer": 0, "type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": 3, "sha256": "a" * 64,
       "xattr_sha256": {"user.k": "b" * 64}}
C = dict(F, sha256="a" * 64, xattr_sha256={"user.k": "b" * 64}, lower=LOW)     # an exact copy-up


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
    # the data digest, when both sides recorded one
    ({"upper": {"f": C}}, {"upper": {"f": dict(C, sha256="c" * 64)}}, ["upper:f"]),
    ({"upper": {"f": F}}, {"upper": {"f": dict(C, sha256="c" * 64)}}, []),            # old cached side: size
    ({"upper": {"f": dict(C, sha256="c" * 64, xattrs={"trusted.overlay.metacopy": None})}},
     {"upper": {"f": C}}, []),                                                          # metacopy: no data
    ({"upper": {"f": dict(C, xattr_sha256={})}}, {"upper": {"f": C}}, []),              # xattrs: not compared
    # a one-sided copy-up is a side effect only when it equals its lower file
    ({"upper": {"f": C}}, {"upper": {}}, []),
    ({"upper": {"f": dict(C, mode="0600")}}, {"upper": {}}, ["upper:f"]),             # lost/extra chmod
    ({"upper": {"f": dict(C, sha256="c" * 64)}}, {"upper": {}}, ["upper:f"]),           # data differs
    ({"upper": {"f": dict(C, uid=7)}}, {"upper": {}}, ["upper:f"]),
    ({"upper": {"f": dict(C, xattr_sha256={})}}, {"upper": {}}, ["upper:f"]),          # lost an xattr
    ({"upper": {"f": dict(C, sha256=None)}}, {"upper": {}}, ["upper:f"]),               # unreadable: unproven
    ({"upper": {"f": dict(C, lower=None)}}, {"upper": {}}, ["upper:f"]),
    ({"upper": {"f": dict(C, lower=dict(LOW, type="symlink"))}}, {"upper": {}}, ["upper:f"]),
    ({"upper": {"f": dict(C, sha256="c" * 64, xattrs={"trusted.overlay.metacopy": None})}}, {"upper": {}}, []),
])
def test_comparable_parts(a, b, differ):
    ra, rb = res(), res()
    ra.update(a)
    rb.update(b)
    assert compare.diff_keys(ra, rb) == differ


# ---------------------------------------------------------------- known divergences

KNOWN = Known([KnownEntry(tests=["mmap_*"], keys=["map_*", "upper:*"], doc="overlayfs.rst (b)"),
               KnownEntry(tests=["mmap_x"], keys=["extra"], doc="other doc")])


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


def _verdicts():
    return five_verdicts(KNOWN)


def test_as_json_contract():
    j = _verdicts()[2].as_json()
    assert set(j) >= {"name", "status", "known", "diffs", "reference", "baseline", "patched"}
    assert set(j["patched"]) == {"observations", "exit_code", "signal", "upper", "status", "error"}
    assert j["diffs"] == [{"key": "data", "reference": "NEW", "baseline": "NEW", "patched": "old"}]
    t = compare.compare_target({"t": GOOD}, {"t": BAD}, None)[0].as_target_json()
    assert t["diffs"] == [{"key": "data", "reference": "NEW", "target": "old"}] and "target" in t
    assert isinstance(TestVerdict(name="x", status="match").as_json()["reference"], dict)


def _copied(ent=None):
    return {"status": "ok", "observations": {"data": "x"}, "exit_code": 0, "signal": None,
            "upper": {} if ent is None else {"src": ent}}


def test_extra_copy_up_equal_to_lower_is_a_side_effect():
    """(4) an exact copy-up the reference did not do: match, with a side effect."""
    ok = _copied()
    [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": _copied(C)}, Known())
    assert (v.status, v.diffs) == ("match", [])
    assert v.side_effects == ["src: copied up here, not by the reference"]


@pytest.mark.parametrize("bad, what", [
    (dict(C, mode="0600"), "mode"),                   # (5) copied up, then lost a chmod
    (dict(C, sha256="c" * 64), "data"),               # (6) copied up, then lost a write
])
def test_extra_copy_up_differing_from_lower_is_not_a_side_effect(bad, what):
    ok = _copied()
    [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": _copied(bad)}, Known())
    assert v.status == "regressed" and v.side_effects == []
    [d] = v.diffs
    assert d.key == "upper:src" and d.reference is None
    assert d.patched.endswith(f"(differs from lower: {what})")
    assert "new divergence on upper:src" in v.reason
    [t] = compare.compare_target({"t": ok}, {"t": _copied(bad)}, Known())
    assert t.status == "diverges"
    # the reference's own copy-up is held to the same rule
    [r] = compare.compare_target({"t": _copied(bad)}, {"t": ok}, Known())
    assert r.status == "diverges"
    # the reference chmod'ed / wrote it too (both sides copied up, equal): no difference
    [m] = compare.compare_target({"t": _copied(bad)}, {"t": _copied(bad)}, Known())
    assert m.status == "match"


def test_extra_copy_up_old_format_keeps_the_old_rule():
    """(7) results recorded before the harness kept sha256/lower (cached JSON): still a side effect."""
    ok = _copied()
    old = {k: v for k, v in C.items() if k not in ("sha256", "lower", "xattr_sha256")}
    for ent in (old, dict(old, mode="0600")):     # nothing to check against: the old behaviour
        [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": _copied(ent)}, Known())
        assert v.status == "match" and v.side_effects == ["src: copied up here, not by the reference"]
    # a new-format entry with only one of the two fields must still prove equality
    [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": _copied(dict(old, sha256="a" * 64))}, Known())
    assert v.status == "regressed"


def test_same_bad_copy_up_as_baseline_stays_diverges():
    ok, bad = _copied(), _copied(dict(C, mode="0600"))
    [v] = compare.compare_run({"t": ok}, {"t": bad}, {"t": bad}, Known())
    assert v.status == "diverges" and v.reason is None
    [v] = compare.compare_run({"t": ok}, {"t": bad}, {"t": _copied(dict(C, mode="0640"))}, Known())
    assert v.status == "regressed"


def test_extra_copy_up_is_reported_as_a_side_effect_not_a_regression():
    ok = {"status": "ok", "observations": {"data": "x"}, "exit_code": 0, "signal": None, "upper": {}}
    copied = dict(ok, upper={"src": {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "size": 12,
                                     "xattrs": {}, "in_lower": True}})
    [v] = compare.compare_run({"t": ok}, {"t": ok}, {"t": copied}, Known())
    assert v.status == "match"
    assert v.side_effects == ["src: copied up here, not by the reference"]
    assert v.as_json()["side_effects"] == v.side_effects
