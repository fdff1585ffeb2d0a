"""`kproto nightly` names the first bad patch of a regressed series (rig/nightly/bisecting.py, issue 19 §3).

The whole nightly on the embedded cluster with real (fake) kernels: the tiny fake kernel tree as the
kernel source (real, seconds-long builds of a pretend bzImage), kproto test's real orchestration on fake
machines that act on what each bzImage holds (as in tests/suite/test_bisect.py), and the bisect fixture
series tests/data/patches/bisect/ (0002 WARNs on b_read's boot, 0003 makes a_read read stale data)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

import pytest

from fake_machine import FakeKernel, FakeTest, log
from kproto_helpers import DATA, FAKE_KERNEL
from rig.kernel import prepare
from rig.nightly import bisecting
from rig.nightly.config import load_config
from rig.nightly.history import history_text
from rig.nightly.run import run as nightly_run
from rig.nightly.store import Store
from rig.report.model import Report
from rig.suite import bisect, testrun

SUITE = DATA / "fake_suite"
SERIES = DATA / "patches" / "bisect"
WARN = log("warn-on-6.12.log")
WARN_SIG = "warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"


def patches(*numbers: int) -> list[Path]:
    return [next(SERIES.glob(f"{n:04d}-*.patch")) for n in numbers]


@pytest.fixture
def fake_source(tmp_path) -> Path:
    """The fake kernel tree as a source tarball, with the checkpatch / get_maintainer stand-ins the
    nightly's pre-build pass runs."""
    src = tmp_path / "src" / "linux-fake"
    shutil.copytree(FAKE_KERNEL, src)
    for f in (DATA / "nightly" / "fakekernel-scripts").iterdir():
        shutil.copy2(f, src / "scripts" / f.name)
    tb = tmp_path / "src" / "linux-fake.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(src, arcname="linux-fake")
    return tb


class Machines:
    """One FakeKernel per kernel booted, scripted by what its (fake) bzImage holds: a_read reads stale data
    with 0003; b_read's boot WARNs with 0002 when WARN is set."""

    def __init__(self, tmp: Path, warn: bool = False) -> None:
        self.tmp, self.warn = tmp, warn
        self.booted: list[tuple[str, str, FakeKernel]] = []    # (label, kernel key, kernel)

    def __call__(self, kernel, label: str):
        image = kernel.bzimage.read_text(errors="replace")
        warn = self.warn and "kproto-fixture: warn" in image
        stale = "kproto-fixture: stale read" in image

        def script(name: str, boot: int, m) -> FakeTest:
            if name == "a_read" and stale:
                return FakeTest(observations={"data": "?"})
            if name == "b_read" and warn:
                return FakeTest(console=WARN, taint=1 << 9)
            return FakeTest()
        fk = FakeKernel(script)
        self.booted.append((label, kernel.key, fk))
        return fk.factory(Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{label}-")))

    def runs_of(self, key: str) -> int:
        """How many kproto test runs booted the kernel KEY as the patched one."""
        return sum(1 for lab, k, _ in self.booted if lab == "patched" and k == key)


class Stand:
    """The nightly's test_fn and bisect_fn: kproto test and kproto bisect themselves, on the fake machines
    and the fake suite."""

    def __init__(self, machines: Machines) -> None:
        self.m = machines
        self.bisected: list[list[str]] = []                 # the series bisect_fn was asked about
        self.wholes: list[Report | None] = []

    def test_fn(self, opts: testrun.TestOptions) -> Report:
        prep = prepare.prepare(prepare.KernelSpec(opts.kernel_src, tuple(opts.config)), opts.patches, lambda m: None)
        assert prep.baseline is not None
        factories = {"baseline": self.m(prep.baseline, "baseline"), "patched": self.m(prep.patched, "patched")}
        return testrun.run(dataclasses.replace(opts, suite=SUITE, checks=False, machine_factories=factories))

    def bisect_fn(self, opts: bisect.BisectOptions) -> bisect.BisectResult:
        self.bisected.append([p.path.name for p in prepare.open_series(opts.patches)])
        self.wholes.append(opts.whole)
        return bisect.run(dataclasses.replace(opts, suite=SUITE, machines=self.m))


def write_config(d: Path, source: Path, series: list[tuple[str, list[Path]]]) -> Path:
    lines = [f'output = "{d / "out"}"', "", "[[kernel]]", 'name = "fake"', f'source = "{source}"', ""]
    for name, paths in series:
        lines += ["[[series]]", f'name = "{name}"', "paths = [" + ", ".join(f'"{p}"' for p in paths) + "]", ""]
    p = d / "nightly.toml"
    p.write_text("\n".join(lines))
    return p


def run_nightly(tmp_path: Path, source: Path, series: list[tuple[str, list[Path]]], warn: bool = False):
    m = Machines(tmp_path, warn=warn)
    stand = Stand(m)
    cfg = load_config(write_config(tmp_path, source, series))
    res = nightly_run(cfg, say=lambda msg: None, test_fn=stand.test_fn, bisect_fn=stand.bisect_fn)
    return res, stand, m


pytestmark = pytest.mark.usefixtures("fast_runner", "kcache")


def test_nightly_names_the_first_bad_patch_of_a_regressed_series(tmp_path, fake_source):
    res, stand, m = run_nightly(tmp_path, fake_source, [("stale", [SERIES]), ("clean", patches(1, 2))])
    by = {s.name: s for s in res.series}
    assert by["stale"].verdict == "regressed" and by["clean"].verdict == "clean"
    assert res.exit_code == 0            # the first complete run: nothing to compare with, so no regression

    # the regressed series was bisected, the clean one not at all
    assert stand.bisected == [[p.name for p in patches(1, 2, 3, 4)]]
    b = by["stale"].bisect
    assert b is not None and by["clean"].bisect is None
    assert b["result"] == "found" and b["bisected"] is True
    assert b["criterion"] == {"kind": "test", "value": "a_read"}
    assert b["first_bad"]["index"] == 3
    assert Path(b["first_bad"]["path"]).name == "0003-ovl-read-through-the-file-opened-at-open-time.patch"
    assert b["first_bad"]["subject"] == "ovl: read through the file opened at open time"
    assert [(s["prefix"], s["verdict"]) for s in b["steps"]] == [(0, "good"), (4, "bad"), (2, "good"), (3, "bad")]

    # reuse: the whole-series step is the nightly's own kproto test run (its report, its cached kernel),
    # so the whole series' patched kernel was booted once, by the nightly's test
    assert stand.wholes[0] is not None
    whole = next(s for s in b["steps"] if s["prefix"] == 4)
    assert whole["evidence"]["report"]["reused"] is True and whole["evidence"]["build"]["cached"] is True
    key4 = prepare.prepare(prepare.KernelSpec(str(fake_source)), [SERIES], lambda msg: None).patched.key
    assert m.runs_of(key4) == 1
    # the prefixes were built, not the baseline again
    assert all(s["evidence"]["build"]["ok"] for s in b["steps"] if s["prefix"] in (2, 3))

    # the terminal summary and summary.txt
    line = ("first bad patch: 0003-ovl-read-through-the-file-opened-at-open-time.patch "
            "(guest test a_read regresses; bad with patches 1..3/4:")
    assert line in res.summary
    summary = (res.report_dir / "summary.txt").read_text()
    assert line in summary and "good with 1..2/4; 4 step(s))" in summary
    clean_line = next(i for i, l in enumerate(summary.splitlines()) if l.strip().startswith("clean "))
    assert "first bad patch" not in summary.splitlines()[clean_line + 1]
    assert summary.count("first bad patch") == 1

    # report.json: series[].bisect, null for the clean series
    j = json.loads((res.report_dir / "report.json").read_text())
    js = {s["name"]: s for s in j["series"]}
    assert js["clean"]["bisect"] is None
    assert js["stale"]["bisect"]["first_bad"]["index"] == 3 and js["stale"]["bisect"]["evidence"] == b["evidence"]

    # report.html
    html = (res.report_dir / "report.html").read_text()
    assert 'data-first-bad="0003-ovl-read-through-the-file-opened-at-open-time.patch"' in html
    assert html.count('class="bisect"') == 1

    # the history: the series row keeps it, `kproto history --series` shows it
    db = tmp_path / "out" / "history.sqlite"
    with Store.open(db) as st:
        back = {s.name: s for s in st.load_series(res.run_id)}
        assert back["stale"].bisect == b and back["clean"].bisect is None
        rows = json.loads(history_text(st, series="*", as_json=True))
        assert {r["series"]: r["first_bad"] for r in rows} == {
            "stale": "0003-ovl-read-through-the-file-opened-at-open-time.patch", "clean": None}
        assert "0003-ovl-read-through-the-file-opened-at-open-time.patch" in history_text(st, series="stale")
    c = sqlite3.connect(db)
    assert c.execute("SELECT name, bisect IS NULL FROM series ORDER BY id").fetchall() == [("stale", 0), ("clean", 1)]
    c.close()


def test_a_new_splat_is_bisected_by_its_signature_and_one_patch_is_named_without_bisecting(tmp_path, fake_source):
    res, stand, m = run_nightly(tmp_path, fake_source, [("warn", patches(1, 2)), ("one", patches(1)),
                                                       ("onewarn", [SERIES / "0002-ovl-warn-once-on-copy-up.patch"])],
                                warn=True)
    by = {s.name: s for s in res.series}
    b = by["warn"].bisect
    assert by["warn"].verdict == "regressed" and b is not None
    assert b["criterion"] == {"kind": "splat", "value": WARN_SIG}
    assert b["first_bad"]["index"] == 2 and b["bisected"] is True
    # a one-patch series that regresses names its patch; bisect is not asked
    one = by["onewarn"]
    assert one.verdict == "regressed" and one.bisect is not None and one.bisect["bisected"] is False
    assert Path(one.bisect["first_bad"]["path"]).name == "0002-ovl-warn-once-on-copy-up.patch"
    assert one.bisect["steps"] == [] and "not bisected" in one.bisect["evidence"]
    assert stand.bisected == [[p.name for p in patches(1, 2)]]
    # a clean one-patch series: no entry
    assert by["one"].verdict == "clean" and by["one"].bisect is None
    assert "first bad patch: 0002-ovl-warn-once-on-copy-up.patch (the series' only patch, not bisected" in res.summary


# ---------------------------------------------------------------- the criterion and the entry (pure)

def test_criterion_is_the_first_regressed_test_else_the_first_new_splat():
    tests = [{"name": "a", "status": "match"}, {"name": "b", "status": "regressed"}, {"name": "c", "status": "regressed"}]
    assert bisecting.criterion_for(tests, {}) == bisect.Criterion("test", "b")
    sp = {"new": [{"title": "WARNING in x", "signature": "warning:x@f.c"}, {"title": "y"}]}
    assert bisecting.criterion_for(tests[:1], sp) == bisect.Criterion("splat", "warning:x@f.c")
    assert bisecting.criterion_for([], {"new": [{"title": "WARNING in y"}]}) == bisect.Criterion("splat", "WARNING in y")
    err = [{"name": "e", "status": "error", "baseline": {"status": "error"}},
           {"name": "f", "status": "error", "reason": "the patched kernel did not boot", "baseline": {"status": "ok"}}]
    assert bisecting.criterion_for(tests[:1] + err, {"new": []}) == bisect.Criterion("test", "f")
    with pytest.raises(bisecting.NoCriterion):
        bisecting.criterion_for(tests[:1] + err[:1], {"new": []})
    assert bisecting.needs_bisect("tested", "regressed")
    assert not bisecting.needs_bisect("tested", "clean") and not bisecting.needs_bisect("build-failed", None)


def test_a_failing_bisection_is_an_error_entry_not_a_failed_series(tmp_path):
    def broken(opts):
        raise bisect.BadInput("the whole series cannot be tested for test a_read: does not build")
    e = bisecting.first_bad(patches(1, 2), None, (), None, [{"name": "a_read", "status": "regressed"}], {}, None,
                            lambda m: None, enabled=True, bisect_fn=broken)
    assert e is not None and e["result"] == "error" and e["first_bad"] is None
    assert e["message"].startswith("bisect failed: the whole series cannot be tested")
    assert bisecting.text(e).startswith("bisect: error: bisect failed")
    # bisection off (stand-in kernels): several patches get no entry, one patch is still named
    assert bisecting.first_bad(patches(1, 2), None, (), None, [{"name": "a_read", "status": "regressed"}], {}, None,
                               lambda m: None, enabled=False) is None
    one = bisecting.first_bad(patches(3), None, (), None, [{"name": "a_read", "status": "regressed"}], {}, None,
                              lambda m: None, enabled=False)
    assert one is not None and one["first_bad"]["index"] == 1 and one["criterion"] == {"kind": "test", "value": "a_read"}
