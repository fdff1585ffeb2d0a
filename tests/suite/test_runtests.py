"""`kproto run-tests`: the whole suite on the reference and on the host kernel, for real."""
from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from kproto_helpers import res
from rig.cli import cmd_runtests
from rig.guest import harness
from rig.analysis import compare
from rig.suite import runtests
from rig.core.errors import InfraError

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay and FUSE mounts)")


def _mounts() -> list[str]:
    return [ln for ln in open("/proc/self/mounts").read().splitlines() if "kproto-run-tests" in ln]


@pytest.mark.parametrize("statuses, known, code", [
    (["match", "match"], [None, None], 0),
    (["match", "diverges"], [None, "doc"], 0),
    (["match", "diverges"], [None, None], 1),
    (["error", "diverges"], [None, None], 3),
    (["error", "match"], [None, None], 3),
])
def test_exit_code_rules(statuses, known, code):
    s = runtests.SuiteRun(target="host", verdicts=[compare.TestVerdict(name=f"t{i}", status=st, known=k)
                                                   for i, (st, k) in enumerate(zip(statuses, known))])
    assert s.exit_code() == code


def test_command_is_registered():
    from rig.cli.main import main
    assert main.get_command(None, "run-tests") is cmd_runtests.command
    r = CliRunner().invoke(main, ["run-tests", "--target", "nope"])
    assert r.exit_code == 2


FAKE_SUITE = Path(__file__).resolve().parents[1] / "data" / "fake_suite"


def _fake_harness(monkeypatch, tmp_path, failing=()):
    """run-tests without programs, mounts or FUSE: the harness replays a result per selected test."""
    monkeypatch.setattr(runtests, "_check_root", lambda: None)
    monkeypatch.setattr(runtests.guest_build, "build", lambda d: tmp_path)

    def run_tests(bins, tests, work, target, pattern, timeout, emit, ref_python):
        out = []
        for spec in harness.select(harness.load_specs(tests), pattern):
            emit({"event": "start", "name": spec.name})
            r = dict(res("error" if (target, spec.name) in failing else "ok", data="x"), event="result", name=spec.name)
            emit(r)
            out.append(r)
        emit({"event": "done"})
        return out
    monkeypatch.setattr(runtests.harness, "run_tests", run_tests)


def test_run_tests_progress_shows_n_of_n_tests_done(monkeypatch, tmp_path):
    _fake_harness(monkeypatch, tmp_path, failing={("overlay", "b_read")})
    out: list[str] = []
    run = runtests.run_suite("host", progress=out.append, tests_dir=FAKE_SUITE, work_root=tmp_path)
    assert out == ["[reference] running 2 tests", "[reference] 1/2 a_read: ok", "[reference] 2/2 b_read: ok",
                   "[host] running 2 tests", "[host] 1/2 a_read: ok", "[host] 2/2 b_read: error (error!)"]
    assert set(run.results) == {"a_read", "b_read"}
    one: list[str] = []
    runtests.run_suite("ref", pattern="a_read", progress=one.append, tests_dir=FAKE_SUITE, work_root=tmp_path)
    assert one == ["[reference] running 1 test", "[reference] 1/1 a_read: ok", "[ref] running 1 test", "[ref] 1/1 a_read: ok"]


def test_unknown_pattern_is_one_line_error():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with pytest.raises(InfraError, match="no guest test matches"):
        runtests.run_suite("host", "no_such_test_xyz")


@root_only
@pytest.mark.fuse
def test_run_tests_host_whole_suite(tmp_path):
    """Done-when of issue 4: on host the RFC read reproducer matches, mmap-after-copy-up diverges."""
    pytest.importorskip("overlay_ref")
    from rig.cli.main import main
    jpath, xpath = tmp_path / "r.json", tmp_path / "r.xml"
    r = CliRunner().invoke(main, ["run-tests", "--target", "host", "--json", str(jpath), "--junit", str(xpath)])
    assert r.exit_code in (0, 1), r.output
    data = json.loads(jpath.read_text())
    assert data["target"] == "host"
    by = {t["name"]: t for t in data["tests"]}
    assert len(by) >= 30 and all(t["status"] in ("match", "diverges", "error") for t in by.values())
    assert not [n for n, t in by.items() if t["status"] == "error"]
    assert by["rfc_read_ro_fd_after_copyup"]["status"] == "match"
    for n in ("mmap_shared_ro_after_copyup", "mmap_private_ro_after_copyup"):
        assert by[n]["status"] == "diverges" and by[n]["known"] is None
        assert {"key": "map_after_copyup", "reference": "NEWDATA", "target": "foo-low"} in by[n]["diffs"]
    assert by["mmap_shared_ro_before_copyup"]["status"] == "diverges" and by["mmap_shared_ro_before_copyup"]["known"]
    assert r.exit_code == 1                                  # the after-copy-up mmap bug is not excused
    assert "mmap_shared_ro_after_copyup" in r.output and "map_after_copyup" in r.output
    assert ET.parse(xpath).getroot().find("testsuite").get("tests") == str(len(by))
    assert not _mounts()


@root_only
@pytest.mark.fuse
def test_run_tests_ref_against_itself_is_clean(tmp_path):
    pytest.importorskip("overlay_ref")
    from rig.cli.main import main
    r = CliRunner().invoke(main, ["run-tests", "--target", "ref", "-k", "rfc,mmap_shared", "--ktap",
                                  "--json", str(tmp_path / "j.json")])
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("KTAP version 1")              # the progress lines are on stderr
    assert re.search(r"^kproto: \[ref\] (\d+)/\1 \w+: ok$", r.stderr, re.M), r.stderr
    data = json.loads((tmp_path / "j.json").read_text())
    assert {t["name"] for t in data["tests"]} >= {"rfc_read_ro_fd_after_copyup", "mmap_shared_ro_after_copyup"}
    assert all(t["status"] == "match" for t in data["tests"])
    assert not _mounts()
