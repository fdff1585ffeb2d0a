"""rig/analysis/verdict.py: statuses and verdicts are StrEnums (JSON and string comparisons unchanged), and
the per-status rules the outputs share."""
from __future__ import annotations

import json

import pytest

from rig.analysis import compare, verdict
from rig.analysis.verdict import TestStatus, Verdict
from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED


@pytest.mark.parametrize("enum", [TestStatus, Verdict])
def test_json_round_trip_and_string_behaviour(enum):
    for m in enum:
        assert json.dumps(m) == json.dumps(m.value) and json.loads(json.dumps({"s": m}))["s"] == m.value
        assert enum(json.loads(json.dumps(m))) is m
        assert m == m.value and str(m) == m.value and f"{m}" == m.value and m.upper() == m.value.upper()
        assert m in (m.value,) and {m.value: 1}[m] == 1 and hash(m) == hash(m.value)
    with pytest.raises(ValueError):
        enum("nonsense")


def test_the_values_are_the_documented_strings():
    assert [s.value for s in TestStatus] == ["match", "fixed", "regressed", "flaky", "diverges", "error"]
    assert [v.value for v in Verdict] == ["clean", "regressed", "flaky", "error"]


def test_test_verdict_takes_strings_and_writes_plain_json():
    v = compare.TestVerdict(name="t", status="diverges", known="doc")
    assert v.status is TestStatus.DIVERGES
    j = v.as_json()
    assert type(j["status"]) is str and json.loads(json.dumps(j))["status"] == "diverges"
    back = compare.TestVerdict.from_json(json.loads(json.dumps(j)))
    assert back == v and back.status is TestStatus.DIVERGES
    assert type(v.as_target_json()["status"]) is str
    with pytest.raises(ValueError):
        compare.TestVerdict(name="t", status="bogus")
    # a status set later as a plain string (rig/suite does) still counts and serialises
    v.status = "regressed"
    assert v.as_json()["status"] == "regressed" and compare.counts([v])["regressed"] == 1


def test_counts_keeps_every_status_in_order():
    c = compare.counts([compare.TestVerdict("a", TestStatus.DIVERGES, known="d"),
                        compare.TestVerdict("b", TestStatus.FIXED)])
    assert c == {"match": 0, "fixed": 1, "regressed": 0, "flaky": 0, "diverges": 1, "error": 0, "known": 1}
    assert all(type(k) is str for k in c)


def test_verdict_exit_codes():
    assert [Verdict(v).exit_code() for v in ("clean", "regressed", "flaky", "error")] == \
        [EXIT_CLEAN, EXIT_REGRESSED, EXIT_REGRESSED, EXIT_INFRA]


@pytest.mark.parametrize("status, known, label, passes, failure", [
    ("match", None, "match", True, False),
    ("fixed", None, "fixed", True, False),
    ("fixed", "doc", "fixed (was known)", True, False),
    ("diverges", "doc", "diverges (known)", True, False),
    ("diverges", None, "diverges", False, True),
    ("regressed", None, "regressed", False, True),
    ("flaky", None, "flaky", False, True),
    ("error", None, "error", False, False),
])
def test_status_rules(status, known, label, passes, failure):
    for s in (status, TestStatus(status)):
        assert verdict.label(s, known) == label and type(verdict.label(s, known)) is str
        assert verdict.passes(s, known) is passes
        assert verdict.is_failure(s, known) is failure


def test_order_puts_the_alarming_first():
    ordered = sorted(["match", "diverges", "fixed", "error", "flaky", "regressed", "other"], key=verdict.order)
    assert ordered == ["regressed", "flaky", "error", "fixed", "diverges", "match", "other"]
