"""The outputs of compared tests: run-tests' table (rig/report/terminal.format_table), JUnit
(rig/report/junit.to_junit) and KTAP (rig/report/ktap.to_ktap)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from kproto_helpers import five_verdicts, res
from rig.analysis import compare
from rig.analysis.known import Known, KnownEntry
from rig.report import junit, ktap, terminal


GOOD, BAD, TIMEOUT = res(data="NEW"), res(data="old"), res(status="timeout")
KNOWN = Known([KnownEntry(tests=("mmap_*",), keys=("map_*", "upper:*"), doc="overlayfs.rst (b)")])


def _verdicts():
    return five_verdicts(KNOWN)


def test_format_table_shows_differing_observations():
    out = terminal.format_table(_verdicts())
    lines = out.splitlines()
    assert lines[0].split() == ["TEST", "STATUS"]
    assert any(ln.startswith("c_regressed") and ln.endswith("regressed") for ln in lines)
    assert "diverges (known)" in out and "known: overlayfs.rst (b)" in out
    rows = [ln.split() for ln in lines if ln.strip().startswith("data")]
    assert ["data", "NEW", "old", "NEW"] in rows and ["data", "NEW", "NEW", "old"] in rows  # fixed, regressed
    assert "! patched timeout" in out
    assert lines[-1] == "5 tests: 1 match, 1 fixed, 1 regressed, 1 diverges, 1 error (1 known)"
    two = terminal.format_table(compare.compare_target({"t": GOOD}, {"t": BAD}, None),
                                columns=("reference", "patched:host"))
    assert "host" in two and "baseline" not in two


def test_format_table_of_one_test_says_test():
    out = terminal.format_table(compare.compare_target({"t": GOOD}, {"t": GOOD}, None))
    assert out.splitlines()[-1] == "1 test: 1 match"


def test_junit_and_ktap():
    vs = _verdicts()
    root = ET.fromstring(junit.to_junit(vs, "suite"))
    suite = root.find("testsuite")
    assert suite.get("tests") == "5" and suite.get("failures") == "1" and suite.get("errors") == "1"
    assert suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["c_regressed"].find("failure") is not None
    assert "data" in cases["c_regressed"].find("failure").text
    assert cases["e_error"].find("error") is not None
    assert cases["mmap_known"].find("skipped") is not None
    assert cases["a_match"].find("failure") is None
    ktap_lines = ktap.to_ktap(vs).splitlines()
    assert ktap_lines[:2] == ["KTAP version 1", "1..5"]
    assert "ok 1 a_match" in ktap_lines and "ok 2 b_fixed # fixed" in ktap_lines
    assert "not ok 3 c_regressed # regressed" in ktap_lines
    assert any(ln.startswith("ok 5 mmap_known # SKIP known divergence") for ln in ktap_lines)
    assert "not ok 4 e_error # error" in ktap_lines
    assert any(ln.startswith("# c_regressed: data:") for ln in ktap_lines)


def test_junit_keeps_what_compare_to_junit_wrote():
    """The attributes and texts of the hand-built writer this replaced, case by case."""
    vs = _verdicts()
    root = ET.fromstring(junit.to_junit(vs, "suite"))
    assert root.tag == "testsuites" and root.get("name") == "suite"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": "5", "failures": "1", "errors": "1", "skipped": "1"}
    suite = root.find("testsuite")
    assert suite.get("time") == "0.500"          # 5 patched results of 0.1 s
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert all(c.get("classname") == "suite" for c in cases.values())
    assert cases["a_match"].get("time") == "0.100" and list(cases["a_match"]) == []
    assert cases["e_error"].get("time") == "0.100"
    reg = cases["c_regressed"]
    assert reg.find("failure").get("message").startswith("regressed: new divergence on data")
    assert reg.find("failure").text == "data: reference='NEW', baseline='NEW', patched='old'"
    assert reg.find("system-out").text == "regressed\ndata: reference='NEW', baseline='NEW', patched='old'"
    assert cases["e_error"].find("error").get("message") == "patched timeout: timeout!"
    assert cases["mmap_known"].find("skipped").get("message") == "known divergence: overlayfs.rst (b)"
    fixed = cases["b_fixed"]
    assert fixed.find("failure") is None and fixed.find("system-out").text.startswith("fixed\ndata: ")
    # columns pick the sides shown
    two = ET.fromstring(junit.to_junit(compare.compare_target({"t": GOOD}, {"t": BAD}, None), "s",
                                       columns=("reference", "patched")))
    f = two.find("testsuite/testcase/failure")
    assert f.get("message") == "diverges: data" and f.text == "data: reference='NEW', patched='old'"


def test_flaky_is_a_failure_and_unexplained_diverges_too():
    vs = [compare.TestVerdict(name="f", status="flaky", reason="varies"),
          compare.TestVerdict(name="d", status="diverges"),
          compare.TestVerdict(name="k", status="diverges", known="doc")]
    root = ET.fromstring(junit.to_junit(vs, "s"))
    assert root.get("failures") == "2" and root.get("skipped") == "1"
    ktap_lines = ktap.to_ktap(vs).splitlines()
    assert "not ok 1 f # flaky" in ktap_lines and "not ok 2 d # diverges" in ktap_lines
    assert "ok 3 k # SKIP known divergence: doc" in ktap_lines


def test_regressed_reason_in_table_junit_and_ktap():
    vs = compare.compare_run({"t": res(a="ok", b="ok")}, {"t": res(a="bad", b="ok")},
                             {"t": res(a="bad", b="bad")}, Known())
    reason = "new divergence on b (reference 'ok', baseline 'ok', patched 'bad')"
    assert f"    ! {reason}" in terminal.format_table(vs).splitlines()
    failure = ET.fromstring(junit.to_junit(vs, "s")).find("testsuite/testcase/failure")
    assert failure.get("message") == f"regressed: {reason}"
    k = ktap.to_ktap(vs).splitlines()
    assert f"# t: {reason}" in k and "not ok 1 t # regressed" in k

