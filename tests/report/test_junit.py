"""rig/report/junit.py: THE JUnit writer (Case, to_xml), read back with xml.etree."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from rig.report.junit import Case, to_xml


def test_counts_and_attributes():
    cases = [Case("ok", "k.suite", time=0.25),
             Case("broken", "k.suite", failure="regressed: b\nb: 1 | 2", time=1.0),
             Case("crashed", "k.suite", error="patched timeout: 60 s", time=60.0),
             Case("known", "k.suite", skipped="known divergence: overlayfs.rst (b)", time=0.5),
             Case("noisy", "k.suite", failure="flaky", system_out="flaky\nboots: 2/3")]
    text = to_xml("k.suite", cases)
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites ') and text.endswith("\n")
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    for el in (root, suite):
        assert {k: el.get(k) for k in ("name", "tests", "failures", "errors", "skipped")} == \
            {"name": "k.suite", "tests": "5", "failures": "2", "errors": "1", "skipped": "1"}
    assert suite.get("time") == "61.750" and root.get("time") is None
    by = {c.get("name"): c for c in suite.findall("testcase")}
    assert [c.get("name") for c in suite] == ["ok", "broken", "crashed", "known", "noisy"]
    assert by["ok"].get("classname") == "k.suite" and by["ok"].get("time") == "0.250" and list(by["ok"]) == []
    f = by["broken"].find("failure")
    assert (f.get("message"), f.text) == ("regressed: b", "b: 1 | 2")    # first line: message; the rest: text
    e = by["crashed"].find("error")
    assert (e.get("message"), e.text) == ("patched timeout: 60 s", None)
    assert by["known"].find("skipped").get("message") == "known divergence: overlayfs.rst (b)"
    assert by["noisy"].get("time") is None
    assert by["noisy"].find("system-out").text == "flaky\nboots: 2/3"


def test_pretty_and_empty():
    text = to_xml("s", [Case("a", "s")])
    assert "\n  <testsuite " in text and "\n    <testcase " in text
    root = ET.fromstring(to_xml("empty", []))
    assert root.find("testsuite").get("tests") == "0" and root.find("testsuite").get("time") is None


def test_escaping_and_characters_xml_cannot_carry():
    weird = 'a<b & "c" \x00\x1b end'
    root = ET.fromstring(to_xml("s<1>", [Case(weird, "s", failure=f"{weird}\n{weird}", system_out=weird)]))
    tc = root.find("testsuite/testcase")
    assert root.get("name") == "s<1>"
    assert tc.get("name") == 'a<b & "c" \\x00\\x1b end'
    assert tc.find("failure").get("message") == tc.find("failure").text == tc.get("name")


def test_error_wins_over_failure():
    tc = ET.fromstring(to_xml("s", [Case("x", "s", failure="f", error="e")])).find("testsuite/testcase")
    assert tc.find("error") is not None and tc.find("failure") is None
