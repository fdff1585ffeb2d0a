"""The `kproto test` report: verdict rules, the model's JSON codec, terminal summary, HTML (rendered in headless
Chromium)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from rig.report import html, terminal
from rig.report import model as report
from rig.analysis import verdict as verdictmod
from rig.analysis.splats import Splat
from rig.suite.results import KernelRun


def _test(name, status, diffs=(), known=None, side_effects=(), error=None):
    return {"name": name, "status": status, "known": known, "side_effects": list(side_effects),
            "diffs": [{"key": k, "reference": r, "baseline": b, "patched": p} for k, r, b, p in diffs],
            "reference": {"status": "ok"}, "baseline": {"status": "ok"},
            "patched": {"status": "ok" if not error else "error", "error": error}}


def _run(results):
    r = KernelRun(label="x", kernel=None)
    r.results = results
    return r


SPLAT = {"kind": "lockdep", "title": "possible deadlock in ovl_mmap", "log": "WARNING: possible circular locking\n-> #0", "count": 1}


def _report(verdict="regressed"):
    return report.Report(
        verdict=verdict, kernel={"source": "/usr/src/linux-source-6.12.tar.xz", "version": "6.12.117+", "accel": "tcg"},
        patches=[{"path": "/x/ovl-copyup.patch", "sha256": "ab" * 32}],
        tests=[_test("mmap_shared_ro_after_copyup", "fixed", [("map_after_copyup", "NEWDATA", "foo-low", "NEWDATA")]),
               _test("rfc_read_ro_fd_after_copyup", "match", side_effects=["src: copied up here, not by the reference"]),
               _test("readdir_after_copyup", "regressed", [("listing", "a,b", "a,b", "a")])],
        splats={"baseline": [], "patched": [SPLAT], "new": [SPLAT]},
        timings={"build_s": 21.0, "boot_s": 4.0, "tests_s": 16.0, "total_s": 41.5},
        reasons=["1 test(s) regressed: readdir_after_copyup"])


@pytest.mark.parametrize("statuses,new,base_ok,want", [
    ({"t": "match"}, [], True, "clean"),
    ({"t": "fixed"}, [], True, "clean"),
    ({"t": "diverges"}, [], True, "clean"),                 # diverged before too: not the patch's fault
    ({"t": "regressed"}, [], True, "regressed"),
    ({"t": "match"}, [Splat(**SPLAT)], True, "regressed"),   # a new splat alone regresses
    ({"t": "error"}, [], True, "regressed"),                # errors only on the patched kernel
    ({"t": "error"}, [], False, "clean"),                   # erred on the baseline too
])
def test_verdict_rules(statuses, new, base_ok, want):
    tests = [_test(n, s) for n, s in statuses.items()]
    base = _run({n: {"status": "ok" if base_ok else "error"} for n in statuses})
    patched = _run({n: {"status": "ok" if s != "error" else "error"} for n, s in statuses.items()})
    verdict, reasons = verdictmod.verdict_of(tests, new, base, patched, {n: {"status": "ok"} for n in statuses})
    assert verdict == want
    assert bool(reasons) == (want != "clean")


def test_reference_failure_is_an_error_not_a_verdict_on_the_patch():
    verdict, reasons = verdictmod.verdict_of([_test("t", "match")], [], _run({}), _run({}),
                                          {"t": {"status": "error", "error": "daemon died"}})
    assert verdict == "error" and "daemon died" in reasons[0]


def test_terminal_summary_puts_regressions_first_with_their_observations():
    text = terminal.render(_report())
    lines = text.splitlines()
    first = next(i for i, l in enumerate(lines) if "REGRESSED" in l and "readdir_after_copyup" in l)
    fixed = next(i for i, l in enumerate(lines) if "FIXED" in l)
    assert first < fixed
    assert "listing: a,b | a,b | a" in text
    assert "side effect: src: copied up here" in terminal.render(_report(), verbose=True)   # a matching test's
    assert "NEW SPLATS in the patched kernel (1):" in text and "possible deadlock in ovl_mmap" in text
    assert lines[-1].startswith("VERDICT: REGRESSED (1 test(s) regressed")
    assert "total 41.5 s" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by setup.sh")
def test_html_report_renders_in_chromium(tmp_path):
    page = tmp_path / "r.html"
    page.write_text(html.render(_report()))
    profile = tempfile.mkdtemp(prefix="kproto-chromium-")
    try:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert 'id="verdict"' in dom and ">regressed<" in dom
    assert "readdir_after_copyup" in dom and "map_after_copyup" in dom and "NEWDATA" in dom
    assert "possible deadlock in ovl_mmap" in dom


def test_flaky_needs_attention_unless_allowed_and_regressions_win():
    tests = [_test("t", "flaky"), _test("u", "match")]
    runs = _run({"t": {"status": "ok"}, "u": {"status": "ok"}})
    ref = {"t": {"status": "ok"}, "u": {"status": "ok"}}
    assert verdictmod.verdict_of(tests, [], runs, runs, ref)[0] == "flaky"
    assert verdictmod.verdict_of(tests, [], runs, runs, ref, allow_flaky=True) == ("clean", [])
    tests.append(_test("v", "regressed"))
    assert verdictmod.verdict_of(tests, [], runs, runs, ref, allow_flaky=True)[0] == "regressed"
    assert verdictmod.verdict_of(tests, [], runs, runs, ref)[0] == "regressed"


def test_terminal_shows_the_boot_counts_and_signature_of_a_new_splat():
    rep = _report()
    rep.splats["new"] = [dict(SPLAT, signature="lockdep-cycle:&mm->mmap_lock|x",
                              boots={"patched": "3/3", "baseline": "0/3"})]
    rep.tests[2]["status"] = "flaky"
    rep.tests[2]["reason"] = "outcome varies across boots of the patched kernel [patched-1: ok; patched-2: error]"
    out = terminal.render(rep)
    assert "possible deadlock in ovl_mmap  [seen in 3/3 of all patched boots, 0/3 of all baseline boots]" in out
    assert "signature: lockdep-cycle:&mm->mmap_lock|x" in out
    assert "FLAKY" in out and "patched-2: error" in out


def _many(n_match: int, others=("regressed",), baseline_splats=0, new_splat=True) -> report.Report:
    rep = _report()
    rep.tests = ([_test(f"other_{i}", st, [("k", "r", "b", "p")]) for i, st in enumerate(others)]
                 + [_test(f"same_{i:02d}", "match") for i in range(n_match)])
    base = [dict(SPLAT, kind="warn", title=f"WARNING in base_{i}") for i in range(baseline_splats)]
    rep.splats = {"baseline": base, "patched": base + ([SPLAT] if new_splat else []),
                  "new": [SPLAT] if new_splat else []}
    return rep


def test_by_default_the_report_lists_what_does_not_match_and_counts_the_rest():
    out = terminal.render(_many(34, others=("regressed", "fixed"), baseline_splats=2))
    lines = out.splitlines()
    assert any(l.startswith("  REGRESSED") and "other_0" in l for l in lines)
    assert any(l.startswith("  FIXED") and "other_1" in l for l in lines)
    assert not [l for l in lines if "same_" in l]                       # no matching test by name
    assert "  34 more tests match the reference (-v lists them)" in lines
    assert "tests: 1 regressed, 1 fixed, 34 match" in lines              # the counts line is unchanged
    assert "NEW SPLATS in the patched kernel (1):" in out and "possible deadlock in ovl_mmap" in out
    assert "base_0" not in out                                           # the baseline's splats: a count
    assert "  (2 splats in the baseline too; -v lists them)" in lines


def test_verbose_lists_every_test_and_every_splat():
    out = terminal.render(_many(34, baseline_splats=2), verbose=True)
    lines = out.splitlines()
    assert sum(1 for l in lines if l.startswith("  MATCH") and "same_" in l) == 34
    assert "match the reference" not in out and "-v lists" not in out
    assert "  (also in baseline) warn: WARNING in base_0" in lines and "  (also in baseline) warn: WARNING in base_1" in lines


@pytest.mark.parametrize("n_match, others, line", [
    (1, ("regressed",), "  1 more test matches the reference (-v lists it)"),
    (36, (), "  all 36 tests match the reference (-v lists them)"),
    (1, (), "  1 test matches the reference (-v lists it)"),
])
def test_the_count_of_matching_tests_reads_as_english(n_match, others, line):
    out = terminal.render(_many(n_match, others=others, new_splat=False))
    assert line in out.splitlines(), out
    if not others:                                   # nothing to list: no empty table header either
        assert "STATUS" not in out


def test_matching_tests_with_side_effects_are_counted_as_such():
    rep = _many(3)
    rep.tests[1]["side_effects"] = ["src: copied up here, not by the reference"]
    out = terminal.render(rep)
    assert "  3 more tests match the reference (1 with side effects; -v lists them)" in out.splitlines()
    assert "side effect: src: copied up here" in terminal.render(rep, verbose=True)


def test_no_new_splat_and_baseline_splats_are_one_line_by_default():
    out = terminal.render(_many(2, baseline_splats=1, new_splat=False))
    assert "splats: none new (baseline 1, patched 1)" in out and "base_0" not in out
    assert "(also in baseline) warn: WARNING in base_0" in terminal.render(_many(2, baseline_splats=1, new_splat=False),
                                                                           verbose=True)


def test_counts_in_the_report_agree_with_their_nouns():
    rep = _many(2)
    rep.checks = {"patches": [{"checkpatch": {"errors": 1, "warnings": 2}}]}
    out = terminal.render(rep)
    assert "checkpatch: 1 error, 2 warnings over 1 patch (kproto check PATCH... for the findings)" in out
    rep.checks = {"patches": [{"checkpatch": {"errors": 0, "warnings": 1}}, {"checkpatch": {}}]}
    assert "checkpatch: 0 errors, 1 warning over 2 patches" in terminal.render(rep)


def test_json_codec_round_trip(tmp_path):
    import json
    from rig.analysis.verdict import TestStatus, Verdict
    rep = _report()
    assert rep.verdict is Verdict.REGRESSED                    # a plain string is made the enum
    rep.checks = {"patches": [], "to": ["a@b"]}
    p = tmp_path / "report.json"
    rep.write_json(p)
    raw = json.loads(p.read_text())
    assert raw["verdict"] == "regressed" and type(raw["verdict"]) is str
    assert list(raw) == ["verdict", "kernel", "patches", "tests", "splats", "timings", "reasons", "notes", "checks"]
    back = report.Report.read_json(p)
    assert back.as_json() == rep.as_json() and back.verdict is Verdict.REGRESSED
    assert [(v.name, v.status) for v in back.verdicts] == [(t["name"], t["status"]) for t in rep.tests]
    assert all(type(v.status) is TestStatus for v in back.verdicts)
    assert back.verdicts[2].diffs[0].key == "listing"
    with pytest.raises(ValueError):
        report.Report(verdict="splendid", kernel={}, patches=[], tests=[], splats={}, timings={})
