"""kproto nightly (rig/nightly/config.py, diff.py, run.py, reports.py, summary.py, history.py, subcommands.py):
config, diff rules, run bookkeeping, reports, lock, history (fast, no VM), and two real nightly runs against
one kernel (slow)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.nightly import reports, stages, subcommands
from rig.nightly.config import KernelCfg, SeriesCfg, load_config
from rig.nightly.diff import bench_change, diff, exit_code_for
from rig.nightly.run import run as nightly_run
from rig.cli.main import main
from rig.core.errors import BadInput, BuildError, PatchError
from rig.report.model import Report
from rig.nightly.record import SeriesRecord
from rig.nightly.store import Store

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
FIX = DATA / "patches"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ================================================================ helpers

def write_config(tmp: Path, name: str, series: list[tuple[str, list[Path]]], tests: str = "rfc_read",
                 extra: str = "") -> Path:
    lines = [f'output = "{tmp / "out"}"', f'db = "{tmp / "out" / "history.sqlite"}"', f'tests = "{tests}"', extra,
             "", "[[kernel]]", 'name = "debian-6.12"', 'source = "default"', ""]
    for sname, paths in series:
        lines += ["[[series]]", f'name = "{sname}"', "paths = [" + ", ".join(f'"{p}"' for p in paths) + "]", ""]
    p = tmp / name
    p.write_text("\n".join(lines))
    return p


def fake_report(tests: dict[str, str], new_splats: tuple[str, ...] = (), verdict: str | None = None) -> Report:
    ts = [{"name": n, "status": s, "known": None,
           "diffs": [] if s in ("match", "fixed") else [{"key": "data", "reference": "bar", "baseline": "bar", "patched": "foo"}],
           "reference": {"observations": {"data": "bar"}}, "baseline": {}, "patched": {"observations": {"data": "x"}},
           "reason": None} for n, s in tests.items()]
    sp = [{"kind": "warning", "title": t, "log": "..."} for t in new_splats]
    return Report(verdict=verdict or ("regressed" if sp or "regressed" in tests.values() else "clean"),
                  kernel={"source": "/usr/src/linux-source-6.12.tar.xz", "version": "6.12.117+", "base": "c1112cf8ff42"},
                  patches=[], tests=ts, splats={"baseline": [], "patched": sp, "new": sp},
                  timings={"build_s": 1.0, "boot_s": 2.0, "tests_s": 3.0, "total_s": 6.0})


class Fake:
    """test_fn for rig.nightly.run.run(): behaviour per series, keyed by the first patch file name."""

    def __init__(self, plan: dict[str, object]):
        self.plan = plan
        self.calls: list[str] = []

    def __call__(self, opts):
        key = Path(opts.patches[0]).name
        self.calls.append(key)
        what = self.plan[key]
        if isinstance(what, BaseException):
            raise what
        return what


def fake_kernel(k, say):
    return {"source": "/usr/src/linux-source-6.12.tar.xz", "version": "6.12.117+", "commit_id": "c1112cf8ff426a58"}


V1, V2 = REPO / "patches" / "ovl-copyup.patch", REPO / "patches" / "ovl-copyup-v2.patch"
NOAPPLY, STALE = FIX / "does-not-apply.patch", DATA / "nightly" / "stale-read.patch"


# ================================================================ config

def test_config_parses_and_resolves_relative_paths(tmp_path):
    (tmp_path / "p").mkdir()
    shutil.copy(V1, tmp_path / "p" / "0001-a.patch")
    cfg_path = tmp_path / "n.toml"
    cfg_path.write_text('output = "rep"\ntests = "rfc_read"\nbench = true\nhistory = 5\n'
                        '[[series]]\nname = "dir-series"\npaths = ["p"]\n')
    cfg = load_config(cfg_path)
    assert cfg.output == tmp_path / "rep" and cfg.db == tmp_path / "rep" / "history.sqlite"
    assert cfg.lock_path == tmp_path / "rep" / "history.sqlite.lock"
    assert [k.name for k in cfg.kernels] == ["default"] and cfg.kernels[0].source is None
    assert cfg.series[0].paths == [tmp_path / "p"] and cfg.series[0].kernels == ["default"]
    assert cfg.series[0].tests == "rfc_read" and cfg.bench and cfg.history == 5
    assert len(cfg.digest()) == 64


@pytest.mark.parametrize("body, msg", [
    ('tests = "x"\n[[series]]\nname = "a"\npaths = ["P"]\n', "`output`"),
    ('output = "o"\n', "at least one `\\[\\[series\\]\\]`"),
    ('output = "o"\nbogus = 1\n[[series]]\nname = "a"\npaths = ["P"]\n', "unknown key.*bogus"),
    ('output = "o"\n[[series]]\nname = "a"\npaths = ["missing.patch"]\n', "missing.patch does not exist"),
    ('output = "o"\n[[series]]\nname = "a b"\npaths = ["P"]\n', "needs a `name`"),
    ('output = "o"\n[[series]]\nname = "a"\npaths = ["P"]\n[[series]]\nname = "a"\npaths = ["P"]\n', "duplicate"),
    ('output = "o"\ntests = "no_such_test_xyz"\n[[series]]\nname = "a"\npaths = ["P"]\n', "selects no guest test"),
    ('output = "o"\n[[series]]\nname = "a"\npaths = ["P"]\nkernels = ["nope"]\n', "configured kernels"),
    ('output = "o"\n[[kernel]]\nname = "k"\nsource = "/no/such/tree"\n[[series]]\nname = "a"\npaths = ["P"]\n', "does not exist"),
    ('output = "o"\nbench = "yes"\n[[series]]\nname = "a"\npaths = ["P"]\n', "`bench`"),
    ('output = "o"\n[[series]\n', "not valid TOML"),
])
def test_bad_config_is_exit_2(tmp_path, body, msg):
    p = tmp_path / "n.toml"
    p.write_text(body.replace('"P"', f'"{V1}"'))
    with pytest.raises(BadInput, match=msg):
        load_config(p)
    res = CliRunner().invoke(main, ["nightly", str(p)])
    assert res.exit_code == 2, res.output


def test_missing_config_is_exit_2(tmp_path):
    res = CliRunner().invoke(main, ["nightly", str(tmp_path / "none.toml")])
    assert res.exit_code == 2 and "not found" in res.output


# ================================================================ diff rules

def srec(name="s", outcome="tested", tests=None, patched=(), baseline=(), bench=(), h="h1", kernel="k") -> SeriesRecord:
    sp = [{"kind": "warning", "title": t} for t in patched]
    bs = [{"kind": "warning", "title": t} for t in baseline]
    return SeriesRecord(kernel=kernel, name=name, outcome=outcome, patches=[{"path": f"/{name}.patch", "sha256": h}],
                        series_hash=h, tests=[{"name": n, "status": s, "known": k}
                                              for n, (s, k) in ((n, v if isinstance(v, tuple) else (v, None))
                                                                for n, v in (tests or {}).items())],
                        splats={"baseline": bs, "patched": sp, "new": [s for s in sp if s["title"] not in set(baseline)]},
                        bench=list(bench), error=None if outcome == "tested" else "why")


def kinds(changes, severity=None):
    return sorted((c["kind"], c["series"], c["subject"]) for c in changes if severity is None or c["severity"] == severity)


def test_diff_first_run_is_empty():
    assert diff(None, [srec()]) == []


@pytest.mark.parametrize("before, after, kind, severity", [
    ("tested", "apply-failed", "series-stopped-applying", "regression"),
    ("tested", "build-failed", "series-stopped-building", "regression"),
    ("build-failed", "apply-failed", "series-stopped-applying", "regression"),
    ("tested", "boot-failed", "series-stopped-booting", "regression"),
    ("apply-failed", "tested", "series-recovered", "improvement"),
    ("build-failed", "boot-failed", "series-recovered", "improvement"),
    ("tested", "error", "series-error", "info"),
    ("error", "tested", "series-recovered", "info"),
])
def test_diff_series_stages(before, after, kind, severity):
    ch = diff([srec(outcome=before)], [srec(outcome=after)])
    assert [(c["kind"], c["severity"], c["before"], c["after"]) for c in ch] == [(kind, severity, before, after)]


def test_diff_same_stage_failure_is_not_a_change():
    assert diff([srec(outcome="apply-failed")], [srec(outcome="apply-failed")]) == []


def test_diff_tests():
    prev = srec(tests={"a": "match", "b": "diverges", "c": "fixed", "d": "regressed", "e": ("diverges", "doc"),
                       "gone": "match"})
    cur = srec(tests={"a": "regressed", "b": "fixed", "c": "error", "d": "diverges", "e": ("diverges", "doc"),
                      "new": "diverges"})
    ch = diff([prev], [cur])
    assert kinds(ch, "regression") == [("test-newly-failing", "s", "a"), ("test-newly-failing", "s", "c")]
    assert kinds(ch, "improvement") == [("test-newly-fixed", "s", "b")]
    assert kinds(ch, "info") == [("test-added", "s", "new"), ("test-removed", "s", "gone"),
                                 ("test-status-changed", "s", "d")]
    a = next(c for c in ch if c["subject"] == "a")
    assert (a["before"], a["after"]) == ("match", "regressed")


def test_diff_known_divergence_counts_as_ok():
    ch = diff([srec(tests={"x": ("diverges", "doc")})], [srec(tests={"x": "regressed"})])
    assert kinds(ch, "regression") == [("test-newly-failing", "s", "x")]


def test_diff_tests_not_listed_when_series_did_not_get_there():
    ch = diff([srec(tests={"a": "match"})], [srec(outcome="build-failed")])
    assert kinds(ch) == [("series-stopped-building", "s", None)]


def test_diff_splats():
    ch = diff([srec(patched=["old", "fixed-one"])], [srec(patched=["old", "WARNING in ovl_copy_up_one"])])
    assert kinds(ch, "regression") == [("new-splat", "s", "WARNING in ovl_copy_up_one")]
    assert kinds(ch, "improvement") == [("splat-gone", "s", "fixed-one")]
    # a splat the baseline kernel shows too is still new for the nightly, and says so
    ch = diff([srec()], [srec(patched=["b"], baseline=["b"])])
    assert [(c["kind"], c["detail"]) for c in ch] == [("new-splat", "also in the baseline kernel")]
    # a series that was not tested last time: splats new against its own baseline count
    ch = diff([srec(outcome="apply-failed")], [srec(patched=["n"])])
    assert kinds(ch, "regression") == [("new-splat", "s", "n")]


def _sp(title, sig=None, kind="lockdep"):
    d = {"kind": kind, "title": title}
    if sig:
        d["signature"] = sig
    return d


def sig_rec(patched, baseline=(), name="s") -> SeriesRecord:
    r = srec(name)
    r.splats = {"baseline": list(baseline), "patched": list(patched), "new": []}
    return r


CYCLE = "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]|&type->i_mutex_dir_key|sb_writers"


def test_diff_splats_by_signature_not_title():
    prev = sig_rec([_sp("possible deadlock in filldir64", CYCLE)])
    # the same cycle, closed by another edge this time: another title, the same signature -> no change
    assert diff([prev], [sig_rec([_sp("possible deadlock in fault_in_readable", CYCLE)])]) == []
    # another cycle under the old title is new, and the old one is gone
    other = "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]"
    ch = diff([prev], [sig_rec([_sp("possible deadlock in filldir64", other)])])
    assert kinds(ch) == [("new-splat", "s", "possible deadlock in filldir64"),
                         ("splat-gone", "s", "possible deadlock in filldir64")]
    # "also in the baseline kernel" goes by signature too
    ch = diff([sig_rec([])], [sig_rec([_sp("possible deadlock in fault_in_readable", CYCLE)],
                                              baseline=[_sp("possible deadlock in filldir64", CYCLE)])])
    assert [(c["kind"], c["subject"], c["detail"]) for c in ch] == [
        ("new-splat", "possible deadlock in fault_in_readable", "also in the baseline kernel")]


def test_diff_splats_from_history_rows_without_signature_go_by_title():
    # rows recorded before signatures existed: compared by title, so upgrading kproto reports nothing
    prev = sig_rec([_sp("possible deadlock in filldir64"), _sp("WARNING in ovl_read_iter", kind="warning")])
    cur = sig_rec([_sp("possible deadlock in filldir64", CYCLE),
                   _sp("WARNING in ovl_read_iter", "warning:ovl_read_iter@fs/overlayfs/file.c", kind="warning")])
    assert diff([prev], [cur]) == []
    ch = diff([prev], [sig_rec([_sp("possible deadlock in fault_in_readable", CYCLE)])])
    assert kinds(ch) == [("new-splat", "s", "possible deadlock in fault_in_readable"),
                         ("splat-gone", "s", "WARNING in ovl_read_iter"),
                         ("splat-gone", "s", "possible deadlock in filldir64")]


def test_diff_series_added_removed_patches_changed_kernel_moved():
    ch = diff([srec("a"), srec("b")], [srec("a", h="h2"), srec("c")],
                      prev_kernels=[{"name": "k", "version": "6.12.117", "commit_id": "aaa"}],
                      cur_kernels=[{"name": "k", "version": "6.12.118", "commit_id": "bbb"}])
    assert kinds(ch) == [("kernel-changed", None, "k"), ("series-added", "c", None),
                         ("series-patches-changed", "a", None), ("series-removed", "b", None)]
    assert all(c["severity"] == "info" for c in ch)


def bm(name, change, ci=None, unit="MB/s", med=100.0):
    return {"name": name, "unit": unit, "baseline_median": 100.0, "patched_median": med, "change_pct": change,
            "ci95_pct": ci or [change - 1, change + 1], "significant": abs(change) > 1, "runs": 5}


def test_bench_noise_band():
    assert bench_change(bm("r", 0.0), bm("r", 4.0), 5.0) is None            # inside the configured band
    assert bench_change(bm("r", 0.0), bm("r", -6.0), 5.0) == (-6.0, 5.0)
    # a wide confidence interval widens the band
    assert bench_change(bm("r", 0.0, [-10, 10]), bm("r", -8.0), 5.0) is None
    assert bench_change(bm("r", 0.0, [-10, 10]), bm("r", -11.0), 5.0) == (-11.0, 10.0)


def test_diff_bench_direction_by_unit():
    prev = srec(bench=[bm("read", 0.0), bm("lat", 0.0, unit="us"), bm("odd", 0.0, unit="widgets"), bm("same", 1.0)])
    cur = srec(bench=[bm("read", -20.0, med=80.0), bm("lat", -20.0, unit="us"), bm("odd", 30.0, unit="widgets"),
                      bm("same", 2.0)])
    ch = diff([prev], [cur], noise_pct=5.0)
    sev = {c["subject"]: c["severity"] for c in ch}
    assert sev == {"read": "regression", "lat": "improvement", "odd": "info"}
    read = next(c for c in ch if c["subject"] == "read")
    assert (read["before"], read["after"]) == ("+0.0%", "-20.0%") and "80 MB/s" in read["detail"]


def test_exit_code_rules():
    reg = [{"severity": "regression"}]
    assert exit_code_for(reg, [srec(outcome="error")], ["k"]) == 1
    assert exit_code_for([{"severity": "info"}], [srec(outcome="error")], []) == 3
    assert exit_code_for([], [srec()], ["kernel k: BuildError"]) == 3
    assert exit_code_for([{"severity": "improvement"}], [srec(outcome="apply-failed")], []) == 0


# ================================================================ runs with a fake kproto test

def test_two_fake_runs_store_diff_and_reports(tmp_path):
    c1 = write_config(tmp_path, "n1.toml", [("v1", [V1]), ("v2", [V2])])
    c2 = write_config(tmp_path, "n2.toml", [("v1", [NOAPPLY]), ("v2", [V2, STALE])])
    r1 = nightly_run(load_config(c1), say=lambda m: None, kernel_fn=fake_kernel, test_fn=Fake({
        "ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match", "mmap_shared_ro_after_copyup": "fixed"}),
        "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match", "mmap_shared_ro_after_copyup": "fixed"})}))
    assert r1.exit_code == 0 and r1.changes == []
    assert "first complete run" in r1.summary
    r2 = nightly_run(load_config(c2), say=lambda m: None, kernel_fn=fake_kernel, test_fn=Fake({
        "does-not-apply.patch": PatchError("does-not-apply.patch does not apply to the base: hunk at fs/overlayfs/file.c:427 failed"),
        "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "regressed", "mmap_shared_ro_after_copyup": "fixed"},
                                           new_splats=("WARNING in ovl_read_iter",))}))
    assert r2.exit_code == 1
    assert kinds(r2.changes, "regression") == [("new-splat", "v2", "WARNING in ovl_read_iter"),
                                               ("series-stopped-applying", "v1", None),
                                               ("test-newly-failing", "v2", "rfc_read_ro_fd_after_copyup")]
    assert ("series-patches-changed", "v1", None) in kinds(r2.changes, "info")

    conn = sqlite3.connect(tmp_path / "out" / "history.sqlite")
    assert conn.execute("SELECT id, complete, state, exit_code, previous_run FROM runs ORDER BY id").fetchall() == [
        (1, 1, "complete", 0, None), (2, 1, "complete", 1, 1)]
    assert conn.execute("SELECT run_id, name, outcome, applies, builds, verdict FROM series ORDER BY id").fetchall() == [
        (1, "v1", "tested", 1, 1, "clean"), (1, "v2", "tested", 1, 1, "clean"),
        (2, "v1", "apply-failed", 0, None, None), (2, "v2", "tested", 1, 1, "regressed")]
    assert conn.execute("SELECT error FROM series WHERE run_id = 2 AND name = 'v1'").fetchone()[0].startswith("does-not-apply.patch")

    d = r2.report_dir
    assert (tmp_path / "out" / "latest").resolve() == d.resolve()
    assert {p.name for p in d.iterdir()} >= {"report.html", "report.json", "summary.txt", "nightly.log", "junit"}
    j = json.loads((d / "report.json").read_text())
    assert j["exit_code"] == 1 and j["previous_run"] == 1 and j["run"]["state"] == "complete"
    assert j["summary"]["regressions"] == 3
    # JUnit per series: the failed stage as one failing case, the tests for the tested series
    ju1 = ET.parse(d / "junit" / "debian-6.12--v1.xml").getroot()
    assert ju1.find(".//testcase").get("name") == "apply" and ju1.find(".//failure") is not None
    ju2 = ET.parse(d / "junit" / "debian-6.12--v2.xml").getroot()
    assert sorted(tc.get("name") for tc in ju2.iter("testcase")) == ["mmap_shared_ro_after_copyup", "rfc_read_ro_fd_after_copyup"]
    summary = (d / "summary.txt").read_text()
    assert summary.startswith("kproto nightly run 2: REGRESSED -- 3 regression(s)")
    assert "  - v1: no longer applies (last run: tested)" in summary
    assert "test rfc_read_ro_fd_after_copyup: match -> regressed" in summary


def splat_report(*logs: str) -> Report:
    """A kproto test report whose patched kernel showed the splats of these console-log fixtures."""
    from rig.analysis.splats import scan_file
    sp = [s.as_json() for log in logs for s in scan_file(DATA / "logs" / log)]
    return Report(verdict="regressed" if sp else "clean",
                  kernel={"source": "/usr/src/linux-source-6.12.tar.xz", "version": "6.12.117+", "base": "c1112cf8ff42"},
                  patches=[], tests=[], splats={"baseline": [], "patched": sp, "new": sp},
                  timings={"build_s": 1.0, "boot_s": 2.0, "tests_s": 3.0, "total_s": 6.0})


def test_nightly_title_changed_signature_did_not_is_no_new_splat(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v1", [V1])])

    def night(log):
        return nightly_run(load_config(c), say=lambda m: None, kernel_fn=fake_kernel,
                           test_fn=Fake({"ovl-copyup.patch": splat_report(log)}))
    night("lockdep-cycle-filldir-6.12.log")
    r2 = night("lockdep-cycle-faultin-6.12.log")       # same cycle, closed by another edge: another title
    assert [c for c in r2.changes if "splat" in c["kind"]] == []
    r3 = night("lockdep-abba-6.12.log")                # another cycle
    assert kinds(r3.changes) == [("new-splat", "v1", "possible deadlock in ovl_copy_up_start"),
                                 ("splat-gone", "v1", "possible deadlock in lock_mm_and_find_vma")]
    conn = sqlite3.connect(tmp_path / "out" / "history.sqlite")
    rows = conn.execute("SELECT s.run_id, p.title, p.signature, p.is_new FROM splats p JOIN series s"
                        " ON s.id = p.series_id ORDER BY p.id").fetchall()
    assert rows == [(1, "possible deadlock in iterate_dir", CYCLE, 1),
                    (2, "possible deadlock in lock_mm_and_find_vma", CYCLE, 1),
                    (3, "possible deadlock in ovl_copy_up_start",
                     "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]", 1)]


def test_rig_error_in_one_series_does_not_stop_the_others(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v1", [V1]), ("v2", [V2])])
    fake = Fake({"ovl-copyup.patch": RuntimeError("rig bug"), "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})})
    r = nightly_run(load_config(c), say=lambda m: None, kernel_fn=fake_kernel, test_fn=fake)
    assert fake.calls == ["ovl-copyup.patch", "ovl-copyup-v2.patch"]
    assert [(s.name, s.outcome) for s in r.series] == [("v1", "error"), ("v2", "tested")]
    assert r.exit_code == 3 and "RuntimeError: rig bug" in r.summary


def test_kernel_failure_is_infra_and_run_completes(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v1", [V1])])

    def broken(k, say):
        raise BuildError("baseline kernel did not build")
    r = nightly_run(load_config(c), say=lambda m: None, kernel_fn=broken, test_fn=Fake({}))
    assert r.exit_code == 3 and r.series[0].outcome == "error"
    with Store.open(tmp_path / "out" / "history.sqlite") as st:
        assert st.kernels(r.run_id)[0]["error"] == "baseline kernel did not build"
        assert st.run(r.run_id)["complete"] == 1


def test_run_interrupted_halfway_stays_incomplete(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v1", [V1]), ("v2", [V2])])
    fake = Fake({"ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"}),
                 "ovl-copyup-v2.patch": KeyboardInterrupt()})            # Ctrl-C / SIGTERM during series 2
    with pytest.raises(KeyboardInterrupt):
        nightly_run(load_config(c), say=lambda m: None, kernel_fn=fake_kernel, test_fn=fake)
    with Store.open(tmp_path / "out" / "history.sqlite") as st:
        [run] = st.runs()
        assert (run["complete"], run["state"], run["exit_code"]) == (0, "interrupted", 3)
        assert "interrupted" in run["error"] and run["finished"]
        assert [s["name"] for s in st.series_rows(run["id"])] == ["v1"]      # what got done is kept
    # the next run has nothing to compare with: an incomplete run is never the reference
    ok = Fake({"ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "regressed"}),
               "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})})
    r = nightly_run(load_config(c), say=lambda m: None, kernel_fn=fake_kernel, test_fn=ok)
    assert r.changes == [] and r.exit_code == 0 and r.run_id == 2


def test_run_failing_at_the_end_stays_incomplete(tmp_path, monkeypatch):
    c = write_config(tmp_path, "n.toml", [("v1", [V1])])

    def full(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(reports, "write_reports", full)
    with pytest.raises(OSError):
        nightly_run(load_config(c), say=lambda m: None, kernel_fn=fake_kernel,
                    test_fn=Fake({"ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})}))
    with Store.open(tmp_path / "out" / "history.sqlite") as st:
        [run] = st.runs()
        assert (run["complete"], run["state"]) == (0, "failed") and "No space left" in run["error"]
        assert st.last_complete_run() is None
    log = next((tmp_path / "out" / "runs").iterdir()) / "nightly.log"
    assert "stored as incomplete" in log.read_text()


def test_second_nightly_is_refused_while_one_holds_the_lock(tmp_path, monkeypatch):
    c = write_config(tmp_path, "n.toml", [("v1", [V1])])
    cfg = load_config(c)

    def no_kernel(k, say):            # must never get this far
        raise AssertionError("the second nightly started working")
    monkeypatch.setattr(stages, "prepare_kernel", no_kernel)
    cfg.lock_path.parent.mkdir(parents=True)
    fd = os.open(cfg.lock_path, os.O_RDWR | os.O_CREAT)      # flock: per open file, so this conflicts in-process too
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, b"4242\n")
    try:
        res = CliRunner().invoke(main, ["nightly", str(c)])
        assert res.exit_code == 3, res.output
        err = [l for l in res.output.splitlines() if l.strip()]
        assert len(err) == 1, err
        assert err[0].startswith("kproto: error: another kproto nightly is running (pid 4242 holds ")
        assert not cfg.db.exists()
    finally:
        os.close(fd)
    # released: the next one runs
    r = nightly_run(cfg, say=lambda m: None, kernel_fn=fake_kernel,
                    test_fn=Fake({"ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})}))
    assert r.exit_code == 0


def test_abandoned_run_is_marked_by_the_next(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v1", [V1])])
    cfg = load_config(c)
    p = subprocess.Popen(["true"]); p.wait()
    with Store.open(cfg.db) as st:
        dead = st.begin_run("x", pid=p.pid)            # as if SIGKILLed mid-run
    nightly_run(cfg, say=lambda m: None, kernel_fn=fake_kernel,
                test_fn=Fake({"ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})}))
    with Store.open(cfg.db) as st:
        assert st.run(dead)["state"] == "abandoned" and st.run(dead)["complete"] == 0


def test_junit_per_series_for_each_outcome():
    """reports.junit_for through rig.report.junit: a rig error is an <error>, a stage failure a <failure>
    named after the stage, a tested series one case per test (from the stored tests when the verdict
    objects are gone, as for history rows)."""
    err = ET.fromstring(reports.junit_for(srec(outcome="error")).split("\n", 1)[1])
    case = err.find(".//testcase")
    assert case.get("name") == "rig" and case.get("classname") == "nightly.k.s"
    assert case.find("error").get("message") == "error: why" and case.find("error").text == "why"
    boot = ET.fromstring(reports.junit_for(srec(outcome="boot-failed")).split("\n", 1)[1])
    assert boot.find(".//testcase").get("name") == "boot" and boot.get("failures") == "1"
    tested = ET.fromstring(reports.junit_for(srec(tests={"a": "match", "b": "regressed"})).split("\n", 1)[1])
    assert sorted(tc.get("name") for tc in tested.iter("testcase")) == ["a", "b"]
    assert tested.get("tests") == "2" and tested.get("failures") == "1"


# ================================================================ history command

def test_history_cli(tmp_path):
    c1 = write_config(tmp_path, "n1.toml", [("v1", [V1]), ("v2", [V2])])
    c2 = write_config(tmp_path, "n2.toml", [("v1", [NOAPPLY]), ("v2", [V2])])
    nightly_run(load_config(c1), say=lambda m: None, kernel_fn=fake_kernel, test_fn=Fake({
        "ovl-copyup.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"}),
        "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "match"})}))
    nightly_run(load_config(c2), say=lambda m: None, kernel_fn=fake_kernel, test_fn=Fake({
        "does-not-apply.patch": PatchError("does not apply"),
        "ovl-copyup-v2.patch": fake_report({"rfc_read_ro_fd_after_copyup": "regressed"})}))
    db = str(tmp_path / "out" / "history.sqlite")
    r = CliRunner().invoke(main, ["history", "--db", db])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split()[:5] == ["RUN", "STARTED", "TOOK", "STATE", "EXIT"]
    assert lines[1].split()[0] == "#2" and "complete" in lines[1] and lines[1].split()[4:7] == ["1", "1/2", "2"]
    r = CliRunner().invoke(main, ["history", "-c", str(c2), "--test", "rfc_read"])
    assert r.exit_code == 0, r.output
    rows = {l.split()[0]: l.split()[1:] for l in r.output.splitlines()}
    assert rows["SERIES"] == ["TEST", "#1", "#2"]
    assert rows["v1"] == ["rfc_read_ro_fd_after_copyup", "match", "apply-failed"]
    assert rows["v2"] == ["rfc_read_ro_fd_after_copyup", "match", "regressed"]
    r = CliRunner().invoke(main, ["history", "--db", db, "--series", "v1", "--json"])
    out = json.loads(r.output)
    assert [(o["run"], o["outcome"]) for o in out] == [(2, "apply-failed"), (1, "tested")]
    r = CliRunner().invoke(main, ["history", "--db", str(tmp_path / "none.sqlite")])
    assert r.exit_code == 2 and "no nightly history database" in r.output


# ================================================================ HTML in a real browser

def chromium_dom(html: Path, tmp: Path) -> str:
    """The DOM of HTML after Chromium parsed and laid it out (headless, no network, throwaway profile)."""
    prof = Path(tempfile.mkdtemp(prefix="chromium-prof-", dir=tmp))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={prof}", "--dump-dom", html.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def chromium_screenshot(html: Path, tmp: Path) -> bytes:
    prof = Path(tempfile.mkdtemp(prefix="chromium-prof-", dir=tmp))
    png = tmp / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={prof}", "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={png}",
           html.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, start_new_session=True)
    assert p.returncode == 0 and png.is_file(), p.stderr[-2000:]
    return png.read_bytes()


def parse_dom(dom: str) -> ET.Element:
    """Chromium's serialised DOM is well-formed enough for html5-less parsing after dropping the doctype."""
    import html.parser

    class P(html.parser.HTMLParser):
        VOID = {"meta", "br", "link", "img", "input", "hr"}

        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.root = ET.Element("root")
            self.stack = [self.root]

        def handle_starttag(self, tag, attrs):
            el = ET.SubElement(self.stack[-1], tag, {k: v or "" for k, v in attrs})
            if tag not in self.VOID:
                self.stack.append(el)

        def handle_startendtag(self, tag, attrs):
            ET.SubElement(self.stack[-1], tag, {k: v or "" for k, v in attrs})

        def handle_endtag(self, tag):
            for i in range(len(self.stack) - 1, 0, -1):
                if self.stack[i].tag == tag:
                    del self.stack[i:]
                    break

        def handle_data(self, data):
            cur = self.stack[-1]
            if len(cur):
                cur[-1].tail = (cur[-1].tail or "") + data
            else:
                cur.text = (cur.text or "") + data

    p = P()
    p.feed(dom)
    return p.root


def text_of(el: ET.Element) -> str:
    return " ".join("".join(el.itertext()).split())


def check_rendered_report(html_path: Path, tmp: Path, expect_changes: list[tuple[str, str, str]],
                          bench_metric: str | None = None) -> ET.Element:
    dom = chromium_dom(html_path, tmp)
    root = parse_dom(dom)
    rows = [tr for tr in root.iter("tr") if "change" in tr.get("class", "").split()]
    got = sorted((tr.get("data-kind"), tr.get("data-series"), tr.get("data-subject")) for tr in rows)
    for want in expect_changes:
        assert want in got, (want, got)
    # the browser kept each change row inside the changes table
    table = next(t for t in root.iter("table") if t.get("id") == "changes")
    assert len([tr for tr in table.iter("tr") if "change" in tr.get("class", "")]) == len(rows)
    for tr in rows:
        if tr.get("data-kind") in {k for k, _, _ in expect_changes}:
            assert "regression" in tr.get("class") or "info" in tr.get("class") or "improvement" in tr.get("class")
    if bench_metric:
        svgs = [s for s in root.iter("svg") if s.get("data-metric") == bench_metric]
        assert svgs, "no bench chart in the rendered DOM"
        poly = next(svgs[0].iter("polyline"))
        pts = [tuple(map(float, p.split(","))) for p in poly.get("points").split()]
        assert len(pts) >= 2 and len({y for _, y in pts}) >= 2        # a line, not a dot
    return root


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (setup.sh installs it)")
def test_html_report_renders_in_chromium_with_diff_rows_and_bench_chart(tmp_path):
    c = write_config(tmp_path, "n.toml", [("v2", [V2])])
    cfg = load_config(c)
    changes_pct = [0.0, -1.0, -25.0]
    # bench figures come from `kproto bench --json`; stand in for it with fixed figures per night
    nm = subcommands
    orig = nm.run_bench
    cfg.bench = True
    try:
        for i, pct in enumerate(changes_pct):
            nm.run_bench = lambda k, s, say, pct=pct: ([bm("seq_read", pct, med=100 + pct)], None)
            r = nightly_run(cfg, say=lambda m: None, kernel_fn=fake_kernel, test_fn=Fake({"ovl-copyup-v2.patch": fake_report(
                {"rfc_read_ro_fd_after_copyup": "match" if i < 2 else "regressed"})}))
    finally:
        nm.run_bench = orig
    assert r.exit_code == 1
    root = check_rendered_report(r.report_dir / "report.html", tmp_path,
                                 [("test-newly-failing", "v2", "rfc_read_ro_fd_after_copyup"),
                                  ("bench-change", "v2", "seq_read")], bench_metric="seq_read")
    verdict = next(e for e in root.iter("span") if e.get("id") == "verdict")
    assert text_of(verdict) == "REGRESSED"
    hist = next(t for t in root.iter("table") if t.get("id") == "history")
    row = next(tr for tr in hist.iter("tr") if tr.get("data-test") == "rfc_read_ro_fd_after_copyup")
    assert [text_of(td) for td in row.findall("td")][1:] == ["match", "match", "regressed"]
    png = chromium_screenshot(r.report_dir / "report.html", tmp_path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# ================================================================ two real nightly runs (slow)

@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (setup.sh installs it)")
def test_two_real_nightly_runs(tmp_path):
    """Night 1: v1 and v2 of the RFC patch on the default kernel, two tests. Night 2: series v1 is replaced by
    a patch that does not apply, and series v2 gains stale-read.patch: reads through an fd opened before the
    copy-up go stale, so rfc_read regresses (match -> regressed) and mmap_shared_ro_after, which also reads
    through its ro fd, goes fixed -> regressed (a new wrong observation where the baseline agreed).
    Asserts the exit codes, the diff, the database rows and the HTML as Chromium renders it."""
    tests = "rfc_read,mmap_shared_ro_after"
    c1 = write_config(tmp_path, "night1.toml", [("v1", [V1]), ("v2", [V2])], tests=tests)
    c2 = write_config(tmp_path, "night2.toml", [("v1", [NOAPPLY]), ("v2", [V2, STALE])], tests=tests)
    kproto = [str(REPO / ".venv" / "bin" / "kproto")] if (REPO / ".venv" / "bin" / "kproto").exists() else ["kproto"]

    def night(cfg: Path) -> subprocess.CompletedProcess:
        return subprocess.run([*kproto, "nightly", str(cfg)], capture_output=True, text=True, timeout=1500)

    p1 = night(c1)
    print(p1.stdout, p1.stderr[-3000:])
    assert p1.returncode == 0, p1.stderr[-3000:]
    assert "kproto nightly run 1: OK" in p1.stdout
    p2 = night(c2)
    print(p2.stdout, p2.stderr[-3000:])
    assert p2.returncode == 1, p2.stderr[-3000:]

    assert_two_nights(tmp_path, c2, p2.stdout, kproto)


def assert_two_nights(tmp_path: Path, c2: Path, stdout2: str, kproto: list[str]) -> None:
    """What night 2 must have recorded and reported (split out so it can be re-checked on kept output)."""
    db = sqlite3.connect(tmp_path / "out" / "history.sqlite")
    assert db.execute("SELECT id, complete, state, exit_code, previous_run FROM runs ORDER BY id").fetchall() == [
        (1, 1, "complete", 0, None), (2, 1, "complete", 1, 1)]
    assert db.execute("SELECT run_id, name, outcome, applies, builds, boots, tested FROM series ORDER BY run_id, name").fetchall() == [
        (1, "v1", "tested", 1, 1, 1, 1), (1, "v2", "tested", 1, 1, 1, 1),
        (2, "v1", "apply-failed", 0, None, None, None), (2, "v2", "tested", 1, 1, 1, 1)]
    tr = dict(((r, s, t), st) for r, s, t, st in db.execute(
        "SELECT s.run_id, s.name, t.name, t.status FROM test_results t JOIN series s ON s.id = t.series_id"))
    assert tr[(1, "v1", "rfc_read_ro_fd_after_copyup")] == "match"
    assert tr[(1, "v2", "rfc_read_ro_fd_after_copyup")] == "match"
    assert tr[(1, "v2", "mmap_shared_ro_after_copyup")] == "fixed"
    assert tr[(2, "v2", "rfc_read_ro_fd_after_copyup")] == "regressed"
    # its read through the ro fd goes stale too: a new wrong observation where the baseline agreed
    assert tr[(2, "v2", "mmap_shared_ro_after_copyup")] == "regressed"
    assert not any(r == 2 and s == "v1" for r, s, _ in tr)
    kern = db.execute("SELECT version, commit_id FROM kernels WHERE run_id = 2").fetchone()
    assert kern[0].startswith("6.12") and len(kern[1]) == 40
    assert db.execute("SELECT count(*) FROM timings t JOIN series s ON s.id = t.series_id WHERE s.run_id = 2 AND t.key = 'total_s'").fetchone()[0] == 1

    regress = sorted(db.execute("SELECT kind, series, coalesce(subject, '') FROM changes WHERE run_id = 2 AND severity = 'regression'").fetchall())
    assert regress == [("series-stopped-applying", "v1", ""), ("test-newly-failing", "v2", "mmap_shared_ro_after_copyup"),
                       ("test-newly-failing", "v2", "rfc_read_ro_fd_after_copyup")]
    failing = {r[0]: (r[1], r[2]) for r in db.execute(
        "SELECT subject, before, after FROM changes WHERE run_id = 2 AND kind = 'test-newly-failing'")}
    assert failing == {"rfc_read_ro_fd_after_copyup": ("match", "regressed"), "mmap_shared_ro_after_copyup": ("fixed", "regressed")}
    assert ("series-patches-changed", "v2") in db.execute("SELECT kind, series FROM changes WHERE run_id = 2").fetchall()

    out = tmp_path / "out" / "latest"
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("kproto nightly run 2: REGRESSED -- 3 regression(s)")
    assert "  - v1: no longer applies (last run: tested)" in summary
    assert "  - v2: test rfc_read_ro_fd_after_copyup: match -> regressed" in summary
    assert summary == stdout2
    j = json.loads((out / "report.json").read_text())
    assert j["exit_code"] == 1 and {c["kind"] for c in j["changes"] if c["severity"] == "regression"} == {
        "series-stopped-applying", "test-newly-failing"}
    ju = ET.parse(out / "junit" / "debian-6.12--v2.xml").getroot()
    assert ju.get("failures") == "2"
    root = check_rendered_report(out / "report.html", tmp_path,
                                 [("series-stopped-applying", "v1", ""),
                                  ("test-newly-failing", "v2", "rfc_read_ro_fd_after_copyup"),
                                  ("test-newly-failing", "v2", "mmap_shared_ro_after_copyup")])
    series = {tr.get("data-series"): tr.get("data-outcome") for tr in root.iter("tr") if "series" in tr.get("class", "").split()}
    assert series == {"v1": "apply-failed", "v2": "tested"}
    r = subprocess.run([*kproto, "history", "-c", str(c2), "--test", "rfc_read"], capture_output=True, text=True)
    assert r.returncode == 0
    rows = {l.split()[0]: l.split()[1:] for l in r.stdout.splitlines()}
    assert rows["v1"] == ["rfc_read_ro_fd_after_copyup", "match", "apply-failed"]
    assert rows["v2"] == ["rfc_read_ro_fd_after_copyup", "match", "regressed"]


def test_documented_example_config_parses():
    cfg = load_config(DATA / "nightly" / "example.toml")
    assert [s.name for s in cfg.series] == ["ovl-copyup-v1", "ovl-copyup-v2"]
    assert cfg.series[0].paths[0].resolve() == V1 and cfg.kernels[0].source is None
    assert cfg.db == Path("/var/lib/kproto/nightly/history.sqlite")
    doc = (REPO / "docs" / "nightly.md").read_text()
    assert (DATA / "nightly" / "example.toml").read_text().split("\n", 2)[2].strip()[:200] in doc


def test_bench_goes_through_the_kproto_bench_json_contract(tmp_path, monkeypatch):
    calls = []

    def fake_sub(args, say, timeout):
        calls.append(args)
        out = Path(args[args.index("--json") + 1])
        out.write_text((DATA / "nightly" / "bench.json").read_text())
        return 1, "kproto: a metric regressed\n"             # exit 1 still leaves the JSON
    monkeypatch.setattr(subcommands, "run_kproto", fake_sub)
    k = KernelCfg(name="git", source="/src/linux", config=(Path("/f.config"),))
    s = SeriesCfg(name="v2", paths=[V2], kernels=["git"])
    metrics, err = subcommands.run_bench(k, s, lambda m: None)
    assert err is None and [m["name"] for m in metrics] == ["pread_4k_lower", "open_read_close_lower"]
    a = calls[0]
    assert a[0] == "bench" and str(V2) in a and a[a.index("--kernel-src") + 1] == "/src/linux"
    assert a[a.index("--config") + 1] == "/f.config"
    # no JSON at all: a note, not a crash
    monkeypatch.setattr(subcommands, "run_kproto", lambda args, say, timeout: (2, "Error: No such command 'bench'.\n"))
    metrics, err = subcommands.run_bench(k, s, lambda m: None)
    assert metrics == [] and "No such command" in err


def test_kproto_subcommand_terminates_the_child_on_interrupt(monkeypatch):
    import signal
    import sys
    import time

    seen = {}
    real_popen = subprocess.Popen

    def popen(cmd, **kw):
        p = real_popen([sys.executable, "-c", "import time; time.sleep(30)"], **kw)
        seen["p"] = p
        return p
    monkeypatch.setattr(subcommands.subprocess, "Popen", popen)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        t = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            subcommands.run_kproto(["bench"], lambda m: None, timeout=60)
        assert time.monotonic() - t < 20
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert seen["p"].returncode == -signal.SIGTERM


def test_fuzz_goes_through_the_kproto_fuzz_json_contract(tmp_path, monkeypatch):
    calls = []
    doc = {"target": "kernel", "seed": 1, "sequences_run": 64, "findings": [
        {"ops": ["open f O_RDONLY", "open f O_WRONLY", "pread f 0 3"],
         "first_difference": {"op_index": 2, "reference": "bar", "target": "foo"}, "reproducer": "/r/x.c"}]}

    def fake_sub(args, say, timeout):
        calls.append(args)
        Path(args[args.index("--json") + 1]).write_text(json.dumps(doc))
        return 1, ""
    monkeypatch.setattr(subcommands, "run_kproto", fake_sub)
    k = KernelCfg(name="debian-6.12", source=None)
    s = SeriesCfg(name="v2", paths=[V2], kernels=["debian-6.12"])
    findings, err = subcommands.run_fuzz(k, s, 300, lambda m: None, tmp_path / "fz")
    assert err is None and findings == doc["findings"]
    a = calls[0]
    assert a[:3] == ["fuzz", "--target", "kernel"] and a[a.index("--budget") + 1] == "300s"
    assert a[a.index("--seed") + 1] == "1" and "--no-tests" in a and a[a.index("--findings") + 1] == str(tmp_path / "fz")
    assert "--kernel-src" not in a and a[-1] == str(V2)
