"""`kproto bisect` on the tiny fake kernel tree: real (fake) builds of every prefix, replaying fake machines
that act on what the prefix's bzImage holds (the fake tree's image is its sources), the real reference.

tests/data/patches/bisect/ (make-series.sh): 0001 comment, 0002 WARN on copy up (b_read's boot prints a
WARNING), 0003 stale reads (a_read observes the wrong data), 0004 comment."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_machine import FakeKernel, FakeTest, log
from kproto_helpers import DATA, FAKE_KERNEL
from rig.core.errors import BadInput, PatchError
from rig.suite import bisect

SUITE = DATA / "fake_suite"
SERIES = DATA / "patches" / "bisect"
WARN = log("warn-on-6.12.log")
WARN_SIG = "warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"
pytestmark = pytest.mark.usefixtures("fast_runner")


def patches(*numbers: int) -> list[Path]:
    return [next(SERIES.glob(f"{n:04d}-*.patch")) for n in numbers]


class Machines:
    """bisect's machine hook: one FakeKernel per kernel booted, scripted by what its image holds."""

    def __init__(self, tmp: Path, flaky_warn: bool = False, baseline_warns: bool = False,
                 stale_fails: str | None = None) -> None:
        self.tmp, self.flaky_warn, self.baseline_warns = tmp, flaky_warn, baseline_warns
        self.stale_fails = stale_fails          # a_read's harness status with 0003 (default: wrong data)
        self.booted: list[tuple[str, FakeKernel]] = []       # (label, kernel) per step and side

    def __call__(self, kernel, label: str):
        image = kernel.bzimage.read_text(errors="replace")
        warn = "kproto-fixture: warn" in image or self.baseline_warns
        stale = "kproto-fixture: stale read" in image

        def script(name: str, boot: int, m) -> FakeTest:
            if name == "a_read" and label == "baseline" and self.stale_fails == "baseline":
                return FakeTest(status="error")
            if name == "a_read" and stale:
                return FakeTest(status="error") if self.stale_fails == "error" else FakeTest(observations={"data": "?"})
            if name == "b_read" and warn and (boot == 1 or not self.flaky_warn or stale):
                return FakeTest(console=WARN, taint=1 << 9)
            return FakeTest()
        fk = FakeKernel(script, boot_fails=stale and self.stale_fails == "boot")
        self.booted.append((label, fk))
        return fk.factory(Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"{label}-")))

    def ran(self, label: str) -> list[str]:
        return [t for lab, k in self.booted if lab == label for _, t in k.ran]


def _bisect(tmp_path, fake_tarball, series, criterion, machines=None, **kw) -> bisect.BisectResult:
    opts = bisect.BisectOptions(patches=series, criterion=criterion, kernel_src=str(fake_tarball), suite=SUITE,
                                machines=machines or Machines(tmp_path), progress=lambda m: None, **kw)
    return bisect.run(opts)


def prefixes(res) -> list[tuple[int, str]]:
    return [(s.prefix, s.verdict) for s in res.steps]


def test_the_third_patch_breaks_a_read(tmp_path, kcache, fake_tarball):
    m = Machines(tmp_path)
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_read"), m)
    assert res.result == "found" and res.first_bad == 3 and res.exit_code == 1
    assert prefixes(res) == [(0, "good"), (4, "bad"), (2, "good"), (3, "bad")]     # log2(4) steps after the ends
    assert set(m.ran("patched")) == {"a_read"}                  # only the test the criterion needs
    assert m.ran("baseline") == ["a_read"]                      # once: every later step reuses its results
    j = res.as_json()
    assert j["criterion"] == {"kind": "test", "value": "a_read"}
    assert j["first_bad"]["index"] == 3 and j["first_bad"]["subject"] == "ovl: read through the file opened at open time"
    assert j["first_bad"]["sha256"] == bisect.patch_json(res.series, 3)["sha256"]
    step3 = j["steps"][-1]
    assert step3["prefix"] == 3 and step3["patch"]["path"].endswith("0003-ovl-read-through-the-file-opened-at-open-time.patch")
    assert step3["evidence"]["test"]["status"] == "regressed" and step3["evidence"]["test"]["boots"] == {"baseline": 1, "patched": 1}
    out = bisect.render(res)
    assert f"first bad patch: 0003 ovl: read through the file opened at open time ({res.series[2].sha256[:12]})" in out


def test_the_second_patch_brings_the_warn(tmp_path, kcache, fake_tarball):
    m = Machines(tmp_path)
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), m)
    assert res.result == "found" and res.first_bad == 2
    assert prefixes(res) == [(0, "good"), (4, "bad"), (2, "bad"), (1, "good")]
    two = next(s for s in res.steps if s.prefix == 2)
    assert "seen in 3/3 patched boots, 0/3 baseline boots" in two.reason       # confirmed on fresh boots
    assert list(two.evidence["tests"]) == ["b_read"]
    # after the whole series ran, only the test that showed the splat runs
    assert [t for lab, k in m.booted[2:] if lab == "patched" for _, t in k.ran] == ["b_read"] * 4   # 2: 3 boots, 1: 1
    # the title works as well as the signature; the same guest test criterion names 0002 too
    by_title = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", "WARNING in ovl_copy_up_one"))
    assert by_title.first_bad == 2
    assert _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "b_read")).first_bad == 2


def test_a_series_that_does_not_regress_says_so(tmp_path, kcache, fake_tarball):
    res = _bisect(tmp_path, fake_tarball, patches(1, 2), bisect.Criterion("test", "a_read"))
    assert res.result == "no-regression" and res.exit_code == 0 and res.first_bad is None
    assert res.message.startswith("the series does not regress: a_read match")
    assert res.as_json()["first_bad"] is None
    assert "first bad patch" not in bisect.render(res)
    res = _bisect(tmp_path, fake_tarball, patches(1), bisect.Criterion("splat", WARN_SIG))
    assert res.result == "no-regression" and prefixes(res) == [(0, "good"), (1, "good")]


def test_one_unlucky_boot_does_not_make_a_step_bad(tmp_path, kcache, fake_tarball):
    # 0002 WARNs on the first boot only; with 0003 on every boot: the confirmation boots decide
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), Machines(tmp_path, flaky_warn=True))
    assert res.first_bad == 3
    two = next(s for s in res.steps if s.prefix == 2)
    assert two.verdict == "flaky" and "outcome varies across boots of the patched kernel" in two.reason
    assert [x["status"] for x in two.evidence["tests"]["b_read"]["evidence"]["patched"]] == ["ok"] * 3
    assert prefixes(res) == [(0, "good"), (4, "bad"), (2, "flaky"), (3, "bad")]
    # an intermittent bug: --flaky-bad counts the flaky step as bad
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), Machines(tmp_path, flaky_warn=True),
                  flaky_bad=True)
    assert res.first_bad == 2
    # a series that is only flaky as a whole is not bisected: it needs attention (exit 1), not a culprit
    res = _bisect(tmp_path, fake_tarball, patches(1, 2), bisect.Criterion("splat", WARN_SIG), Machines(tmp_path, flaky_warn=True))
    assert res.result == "flaky" and res.exit_code == 1 and res.first_bad is None and "--flaky-bad" in res.message


def test_a_test_that_errors_from_the_third_patch_on(tmp_path, kcache, fake_tarball, monkeypatch):
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_read"), Machines(tmp_path, stale_fails="error"))
    assert res.first_bad == 3
    three = res.steps[-1]
    assert three.reason.startswith("a_read fails on the prefix (ok on the baseline)")
    assert three.evidence["test"]["boots"] == {"baseline": 3, "patched": 3}     # an error is confirmed
    # a test that already fails on the baseline is not the series' fault (a fresh cache: new baseline results)
    (tmp_path / "cache2").mkdir()
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "cache2"))
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_read"), Machines(tmp_path, stale_fails="baseline"))
    assert res.result == "baseline-bad" and res.exit_code == 0 and "already fails on the baseline" in res.message


def test_a_prefix_that_does_not_boot_fails_its_tests(tmp_path, kcache, fake_tarball):
    m = Machines(tmp_path, stale_fails="boot")
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_read"), m)
    assert res.first_bad == 3 and "the patched kernel did not boot" in res.steps[-1].reason
    # but it cannot show a splat: a whole series that does not boot cannot be bisected for one
    with pytest.raises(BadInput, match="cannot be tested for splat"):
        _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), m)


def test_a_splat_the_baseline_already_shows_is_not_the_series(tmp_path, kcache, fake_tarball):
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), Machines(tmp_path, baseline_warns=True))
    assert res.result == "baseline-bad" and res.exit_code == 0 and res.first_bad is None
    assert prefixes(res) == [(0, "bad")]


def chain(tmp: Path, edits: list[tuple[str, str, str]]) -> list[Path]:
    """Successive format-patches against the fake tree: (subject, old, new) replaced in file.c each."""
    work = tmp / "chain"
    shutil.copytree(FAKE_KERNEL, work)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    git = lambda *a: subprocess.run(["git", "-C", str(work), *a], check=True, capture_output=True, env=env)
    git("init", "-q"); git("add", "-f", "-A"); git("commit", "-q", "-m", "base")
    f = work / "fs/overlayfs/file.c"
    for subject, old, new in edits:
        assert old in f.read_text()
        f.write_text(f.read_text().replace(old, new))
        git("commit", "-q", "-a", "-m", subject)
    git("format-patch", "-q", "-o", str(tmp / "series"), f"HEAD~{len(edits)}")
    return sorted((tmp / "series").glob("*.patch"))


BREAK = ("ovl: break the build", "return 0;", "return 0 +;")
FIX = ("ovl: fix the build", "return 0 +;", "return 1;")
STALE = ("ovl: stale reads", "return 1;", "return 1; /* kproto-fixture: stale read */")


def test_build_bisect_boots_nothing(tmp_path, kcache, fake_tarball):
    series = chain(tmp_path, [("ovl: one", "int ovl_mmap", "int ovl_mmap_one"), BREAK, ("ovl: more", "}", "}\n")])

    def no_machine(kernel, label):
        raise AssertionError("--build boots nothing")
    res = _bisect(tmp_path, fake_tarball, series, bisect.Criterion("build"), no_machine)
    assert res.result == "found" and res.first_bad == 2
    assert prefixes(res) == [(0, "good"), (3, "bad"), (1, "good"), (2, "bad")]
    assert "return 0 +" in " ".join(res.steps[-1].evidence["build"]["detail"]) or res.steps[-1].evidence["build"]["error"]


def test_a_prefix_that_does_not_build_is_skipped(tmp_path, kcache, fake_tarball):
    series = chain(tmp_path, [("ovl: one", "int ovl_mmap", "int ovl_mmap_one"), BREAK, FIX, STALE])
    res = _bisect(tmp_path, fake_tarball, series, bisect.Criterion("test", "a_read"))
    assert res.first_bad == 4 and ("skip" in {v for _, v in prefixes(res)})
    # 1 builds and is good, 2 does not build, 3 fixes it and brings the bug: 2 or 3
    series = chain(tmp_path / "b", [("ovl: one", "int ovl_mmap", "int ovl_mmap_one"), BREAK,
                                    ("ovl: fix it, stale", "return 0 +;", "return 1; /* kproto-fixture: stale read */")])
    res = _bisect(tmp_path, fake_tarball, series, bisect.Criterion("test", "a_read"))
    assert res.result == "range" and res.candidates == [2, 3] and res.exit_code == 1
    assert res.as_json()["first_bad"] is None and [c["index"] for c in res.as_json()["candidates"]] == [2, 3]


def test_bad_inputs(tmp_path, kcache, fake_tarball):
    with pytest.raises(BadInput, match="no such guest test"):
        _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_rea"))
    with pytest.raises(PatchError):
        _bisect(tmp_path, fake_tarball, patches(1, 4), bisect.Criterion("test", "a_read"))
    with pytest.raises(BadInput, match="needs a value"):
        bisect.Criterion("splat", "")
    with pytest.raises(BadInput, match="selects no guest test"):
        _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("splat", WARN_SIG), pattern="zzz")
    assert not (kcache / "kernels").exists() or not any((kcache / "kernels").iterdir())   # nothing was built
    # a whole series that does not build cannot be bisected for a test (the build break can)
    broken = chain(tmp_path, [("ovl: one", "int ovl_mmap", "int ovl_mmap_one"), BREAK])
    with pytest.raises(BadInput, match="cannot be tested for test a_read: does not build"):
        _bisect(tmp_path, fake_tarball, broken, bisect.Criterion("test", "a_read"))


def test_cli(tmp_path, kcache, fake_tarball):
    from rig.cli.main import main
    series = chain(tmp_path, [("ovl: one", "int ovl_mmap", "int ovl_mmap_one"), BREAK])
    cli = CliRunner()
    r = cli.invoke(main, ["bisect", "--build", "--kernel-src", str(fake_tarball), "--json", str(tmp_path / "b.json"),
                          *map(str, series)])
    assert r.exit_code == 1, r.output
    assert "first bad patch: 0002 ovl: break the build (" in r.output
    j = json.loads((tmp_path / "b.json").read_text())
    assert j["criterion"] == {"kind": "build", "value": None} and j["first_bad"]["index"] == 2
    assert [s["prefix"] for s in j["steps"]] == [0, 2, 1]
    for args in ([], ["--build", "--test", "a_read"], ["--test", "a_read", "-k", "b"], ["--test", "no_such_test"],
                 ["--splat", "WARNING in x", "-k", "zzz"]):
        r = cli.invoke(main, ["bisect", *args, "--kernel-src", str(fake_tarball), str(series[0])])
        assert r.exit_code == 2, (args, r.output)
        assert "kproto: error: " in r.output


def test_a_whole_series_report_the_caller_has_is_not_run_again(tmp_path, kcache, fake_tarball):
    """The nightly hands bisect the series' own kproto test report: the whole series is not booted again,
    its kernel is a cache hit, and the answer is the same."""
    from rig.kernel import prepare
    from rig.suite import testrun
    m = Machines(tmp_path)
    prep = prepare.prepare(prepare.KernelSpec(str(fake_tarball)), [SERIES], lambda msg: None)
    whole = testrun.run(testrun.TestOptions(
        patches=[SERIES], kernel_src=str(fake_tarball), suite=SUITE, checks=False, allow_flaky=True,
        machine_factories={"baseline": m(prep.baseline, "baseline"), "patched": m(prep.patched, "patched")},
        progress=lambda msg: None))
    assert whole.verdict == "regressed"
    booted = len(m.booted)
    res = _bisect(tmp_path, fake_tarball, [SERIES], bisect.Criterion("test", "a_read"), m, whole=whole)
    assert res.result == "found" and res.first_bad == 3
    assert prefixes(res) == [(0, "good"), (4, "bad"), (2, "good"), (3, "bad")]
    four = next(s for s in res.steps if s.prefix == 4)
    assert four.evidence["report"]["reused"] is True and four.evidence["build"]["cached"] is True
    assert four.evidence["test"]["status"] == "regressed"
    # only prefixes 2 and 3 were booted (a baseline and a patched machine each): not the whole series again
    assert len(m.booted) - booted == 4
    assert [t for lab, k in m.booted[booted:] if lab == "patched" for _, t in k.ran] == ["a_read", "a_read"]
