"""THE JUnit writer (xml.etree): Case + to_xml for anything that reports test cases (kproto test,
run-tests, nightly), and to_junit for a list of compare.TestVerdict.

Output: `<testsuites>` holding one `<testsuite name tests failures errors skipped [time]>` (the totals on
both), one `<testcase classname name [time]>` per Case, pretty-printed, with an XML declaration. Text that
XML 1.0 cannot carry (control characters, lone surrogates) is written as \\xNN.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from rig.analysis import verdict

if TYPE_CHECKING:
    from rig.analysis.compare import TestVerdict

COLUMNS = ("reference", "baseline", "patched")
DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass
class Case:
    """One <testcase>. failure / error: the first line is the element's `message` attribute (what a CI
    list shows), the lines after it its text. skipped: the <skipped> element's `message`. None: absent."""
    name: str
    classname: str
    failure: str | None = None
    error: str | None = None
    skipped: str | None = None
    system_out: str | None = None
    time: float | None = None


def _xml_text(s: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", s)


def _outcome(parent: ET.Element, tag: str, what: str) -> None:
    message, _, text = what.partition("\n")
    el = ET.SubElement(parent, tag, message=_xml_text(message))
    if text:
        el.text = _xml_text(text)


def _totals(el: ET.Element, name: str, cases: list[Case]) -> None:
    el.set("name", _xml_text(name))
    el.set("tests", str(len(cases)))
    el.set("failures", str(sum(c.failure is not None for c in cases)))
    el.set("errors", str(sum(c.error is not None for c in cases)))
    el.set("skipped", str(sum(c.skipped is not None for c in cases)))


def to_xml(suite: str, cases: list[Case]) -> str:
    """The JUnit XML of CASES as test suite SUITE (see the module docstring)."""
    root = ET.Element("testsuites")
    _totals(root, suite, cases)
    ts = ET.SubElement(root, "testsuite")
    _totals(ts, suite, cases)
    times = [c.time for c in cases if c.time is not None]
    if times:
        ts.set("time", f"{sum(times):.3f}")
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=_xml_text(c.classname), name=_xml_text(c.name))
        if c.time is not None:
            tc.set("time", f"{c.time:.3f}")
        if c.error is not None:
            _outcome(tc, "error", c.error)
        elif c.failure is not None:
            _outcome(tc, "failure", c.failure)
        elif c.skipped is not None:
            ET.SubElement(tc, "skipped", message=_xml_text(c.skipped))
        if c.system_out:
            ET.SubElement(tc, "system-out").text = _xml_text(c.system_out)
    ET.indent(root, space="  ")
    return DECLARATION + "\n" + ET.tostring(root, encoding="unicode") + "\n"


def case_of(v: TestVerdict, classname: str, columns: Sequence[str] = COLUMNS) -> Case:
    """One test's verdict as a Case: regressed, flaky and unexplained diverges are failures (message: the
    status and the regression's reason, else the differing keys), error is an error, a known divergence
    is skipped (with the doc reference), match and fixed pass; every non-match with differing
    observations carries them (COLUMNS: which sides) as system-out. time: the patched run's duration."""
    body = "\n".join(v.diff_lines(columns))
    c = Case(name=v.name, classname=classname, time=float((v.patched or {}).get("duration_s") or 0))
    if v.status == verdict.TestStatus.ERROR:
        c.error = f"{v.reason or 'error'}\n{body}"
    elif verdict.is_failure(v.status, v.known):
        what = v.reason if v.status == verdict.TestStatus.REGRESSED and v.reason \
            else ", ".join(d.key for d in v.diffs[:8])
        c.failure = f"{v.status}: {what}\n{body}"
    elif v.status == verdict.TestStatus.DIVERGES:
        c.skipped = f"known divergence: {v.known}"
    if v.status != verdict.TestStatus.MATCH and body:
        c.system_out = f"{v.status}\n{body}"
    return c


def to_junit(verdicts: list[TestVerdict], suite_name: str, columns: Sequence[str] = COLUMNS) -> str:
    """JUnit XML of compared tests (`kproto test --junit`, `kproto run-tests --junit`, nightly): one case
    per verdict (case_of), classname SUITE_NAME."""
    return to_xml(suite_name, [case_of(v, suite_name, columns) for v in verdicts])
