"""What the commands print while they work and at the end (issue 17's progress and report polish): one line
per kernel saying how it was got, n/N of the tests done in run-tests, the short report by default and
everything with -v. Fast: the fake kernel tree, a canned report, a harness that replays results."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from kproto_helpers import res
from rig.analysis.verdict import Verdict
from rig.cli.main import main
from rig.core import paths
from rig.guest import harness
from rig.report.model import Report
from rig.suite import runtests, testrun


def _kernel_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if re.match(r"kproto: (built \w+ kernel:|linux \S+: )", l)]


def test_kproto_build_says_once_how_it_got_the_kernel(kcache, fake_tarball):
    first = CliRunner().invoke(main, ["build", "--kernel-src", str(fake_tarball)])
    assert first.exit_code == 0, first.output
    assert [re.sub(r"\d+ s", "T", l) for l in _kernel_lines(first.stderr)] == \
        ["kproto: built baseline kernel: 3 objects in T"], first.stderr
    again = CliRunner().invoke(main, ["build", "--kernel-src", str(fake_tarball)])
    assert again.exit_code == 0, again.output
    assert _kernel_lines(again.stderr) == ["kproto: linux 6.12.0-fake: cached"], again.stderr
    assert first.stdout == again.stdout and first.stdout.strip().endswith("bzImage")


def _canned(n_match: int) -> Report:
    def t(name, status):
        return {"name": name, "status": status, "diffs": [], "reference": {"status": "ok"},
                "baseline": {"status": "ok"}, "patched": {"status": "ok"}}
    return Report(verdict=Verdict.REGRESSED, kernel={"version": "6.12.0-fake", "source": "x", "accel": "tcg"},
                  patches=[{"path": "/p/one.patch"}],
                  tests=[t("broken_one", "regressed")] + [t(f"fine_{i:02d}", "match") for i in range(n_match)],
                  splats={"baseline": [{"kind": "warn", "title": "WARNING in old_code", "log": ""}], "patched": [],
                          "new": []},
                  timings={"total_s": 1.0}, reasons=["1 test regressed: broken_one"])


@pytest.mark.parametrize("args, lists_all", [([], False), (["-v"], True), (["--verbose"], True)])
def test_kproto_test_report_is_short_by_default_and_whole_with_v(monkeypatch, tmp_path, args, lists_all):
    monkeypatch.setattr(testrun, "run", lambda opts: _canned(34))
    patch = tmp_path / "one.patch"
    patch.write_text("")
    r = CliRunner().invoke(main, ["test", *args, str(patch)])
    assert r.exit_code == 1, r.output
    out = r.stdout
    assert "broken_one" in out
    assert sum(1 for l in out.splitlines() if "fine_" in l) == (34 if lists_all else 0)
    assert ("34 more tests match the reference (-v lists them)" in out) is not lists_all
    assert ("(also in baseline) warn: WARNING in old_code" in out) is lists_all


def test_kproto_run_tests_shows_n_of_n_tests_done(monkeypatch, tmp_path):
    monkeypatch.setattr(runtests, "_check_root", lambda: None)
    monkeypatch.setattr(runtests.guest_build, "build", lambda d: tmp_path)

    def run_tests(bins, tests, work, target, pattern, timeout, emit, ref_python):
        out = []
        for spec in harness.select(harness.load_specs(tests), pattern):
            r = dict(res(data="x"), event="result", name=spec.name)
            emit(r)
            out.append(r)
        return out
    monkeypatch.setattr(runtests.harness, "run_tests", run_tests)
    names = [s.name for s in harness.select(harness.load_specs(paths.GUEST_TESTS), "rfc,mmap_shared")]
    assert len(names) > 1
    r = CliRunner().invoke(main, ["run-tests", "--target", "ref", "-k", "rfc,mmap_shared"])
    assert r.exit_code == 0, r.output
    lines = [l for l in r.stderr.splitlines() if l.startswith("kproto: [reference] ")]
    n = len(names)
    assert lines == [f"kproto: [reference] running {n} tests"] + \
        [f"kproto: [reference] {i}/{n} {name}: ok" for i, name in enumerate(names, 1)], r.stderr
    assert f"kproto: [ref] {n}/{n} {names[-1]}: ok" in r.stderr.splitlines()
