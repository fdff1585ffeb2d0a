"""`kproto check` on real series against the default base (Debian's linux-source-6.12, tag kproto-base).

The series under tests/data/series/ were made with tests/data/series/make-series.sh (git format-patch from a
`git clone --shared` of the base). The checks apply them in the shared default source tree through
rig.kernel.tree's locked applied(), which restores the base; the tests assert that too.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.check import validate as checkmod
from rig.kernel import patches as patchmod
from rig.kernel import tree as treemod
from rig.cli.main import main

SERIES = Path(__file__).resolve().parent.parent / "data" / "series"
CLEAN = SERIES / "clean"
NOAPPLY = SERIES / "noapply"
BUILDBREAK = SERIES / "buildbreak"
CHECKPATCH = SERIES / "checkpatch"

needs_base = pytest.mark.skipif(not treemod.DEFAULT_TARBALL.is_file(),
                                reason="needs Debian linux-source-6.12 (the default base)")


def kproto(*args: str):
    res = CliRunner().invoke(main, ["check", *args], catch_exceptions=False)
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def base_tree():
    if not treemod.DEFAULT_TARBALL.is_file():
        pytest.skip("needs Debian linux-source-6.12 (the default base)")
    tree = treemod.default_source()
    yield tree
    assert tree.is_at_base(), "kproto check left the shared source tree off its base"


# --- parsers, on the tools' real output format --------------------------------------------------------

CHECKPATCH_OUT = """\
ERROR:TRAILING_WHITESPACE: trailing whitespace
#19: FILE: fs/overlayfs/file.c:430:
+^Iif(realfile == NULL)   $

CHECK:COMPARISON_TO_NULL: Comparison to NULL could be written "!realfile"
#19: FILE: fs/overlayfs/file.c:430:
+	if(realfile == NULL)

ERROR:MISSING_SIGN_OFF: Missing Signed-off-by: line(s)

total: 2 errors, 0 warnings, 1 checks, 8 lines checked
"""


def test_parse_checkpatch_counts_and_locates_findings():
    cp = checkmod.parse_checkpatch(CHECKPATCH_OUT)
    assert (cp["errors"], cp["warnings"], cp["checks"]) == (2, 0, 1)
    assert [(f["level"], f["type"], f["file"], f["line"]) for f in cp["findings"]] == [
        ("ERROR", "TRAILING_WHITESPACE", "fs/overlayfs/file.c", 430),
        ("CHECK", "COMPARISON_TO_NULL", "fs/overlayfs/file.c", 430),
        ("ERROR", "MISSING_SIGN_OFF", None, None)]


def test_parse_get_maintainer_splits_to_and_cc():
    out = ("Miklos Szeredi <miklos@szeredi.hu> (supporter:OVERLAY FILESYSTEM)\n"
           "Jane Doe <jane@example.org> (reviewer:OVERLAY FILESYSTEM)\n"
           "linux-unionfs@vger.kernel.org (open list:OVERLAY FILESYSTEM)\n")
    m = checkmod.parse_get_maintainer(out)
    assert [x["address"] for x in m if x["to"]] == ["Miklos Szeredi <miklos@szeredi.hu>"]
    assert [x["address"] for x in m if not x["to"]] == ["Jane Doe <jane@example.org>", "linux-unionfs@vger.kernel.org"]


# --- the CLI on real series ----------------------------------------------------------------------------

@needs_base
def test_clean_series_is_ready(base_tree, tmp_path):
    out_json = tmp_path / "check.json"
    code, out = kproto(str(CLEAN), "--json", str(out_json))
    assert code == 0, out
    assert "READY to post" in out
    assert "cover letter: [PATCH 0/2] ovl: mmap the copied-up file" in out
    assert "[1/2] 0001-ovl-document-that-ovl_mmap-maps-the-real-file.patch" in out
    assert "[2/2] 0002-ovl-map-the-current-real-file-in-ovl_mmap.patch" in out
    assert out.count("applies:    yes") == 2 and out.count("checkpatch: 0 errors, 0 warnings") == 2
    assert "To: Miklos Szeredi <miklos@szeredi.hu>, Amir Goldstein <amir73il@gmail.com>" in out
    assert "Cc: linux-unionfs@vger.kernel.org" in out
    res = json.loads(out_json.read_text())
    assert res["ready"] is True and res["exit_code"] == 0
    assert [p["applies"] for p in res["patches"]] == [True, True]
    assert [p["checkpatch"]["errors"] for p in res["patches"]] == [0, 0]
    # the unpacked Debian linux-source's version (6.12.117, 6.12.118 after a point update, ...)
    assert res["kernel"]["version"] == base_tree.version() and res["kernel"]["base"] == base_tree.base


@needs_base
def test_mbox_series_is_split_and_reported_per_patch(base_tree):
    code, out = kproto(str(SERIES / "clean.mbox"))
    assert code == 0, out
    assert "cover letter: [PATCH 0/2] ovl: mmap the copied-up file" in out
    assert "[1/2] clean.mbox#2" in out and "[2/2] clean.mbox#3" in out
    assert "subject:    [PATCH 2/2] ovl: map the current real file in ovl_mmap" in out


@needs_base
def test_second_patch_does_not_apply(base_tree, tmp_path):
    out_json = tmp_path / "check.json"
    code, out = kproto(str(NOAPPLY), "--json", str(out_json))
    assert code == 2, out
    name = "0002-ovl-say-what-ovl_fsync-holds-after-ovl_real_fdget_me.patch"
    assert (f"NOT READY: patch 2/2 {name} does not apply (hunk at fs/overlayfs/file.c:399)") in out
    assert f"applies:    NO: {name} does not apply on the base + patch 1: hunk at fs/overlayfs/file.c:399" in out
    res = json.loads(out_json.read_text())
    assert [p["applies"] for p in res["patches"]] == [True, False]
    assert res["patches"][1]["hunk"] == "fs/overlayfs/file.c:399"
    assert base_tree.is_at_base()


@needs_base
def test_checkpatch_errors_are_findings(base_tree, tmp_path):
    out_json = tmp_path / "check.json"
    code, out = kproto(str(CHECKPATCH), "--json", str(out_json))
    assert code == 1, out
    assert "NOT READY: patch 2/2 0002-ovl-refuse-mmap-without-a-real-file.patch: checkpatch: 3 errors" in out
    assert "ERROR:TRAILING_WHITESPACE fs/overlayfs/file.c:430: trailing whitespace" in out
    assert "ERROR:SPACING fs/overlayfs/file.c:430: space required before the open parenthesis '('" in out
    assert "ERROR:MISSING_SIGN_OFF Missing Signed-off-by: line(s)" in out
    assert "COMPARISON_TO_NULL" not in out          # a --strict CHECK only
    res = json.loads(out_json.read_text())
    assert [p["checkpatch"]["errors"] for p in res["patches"]] == [0, 3]
    assert [p["applies"] for p in res["patches"]] == [True, True]


@needs_base
def test_strict_is_passed_to_checkpatch(base_tree):
    code, out = kproto("--strict", str(CHECKPATCH))
    assert code == 1, out
    assert "checkpatch: 0 errors, 0 warnings, 0 checks" in out          # patch 1
    assert "checkpatch: 3 errors, 0 warnings, 1 checks" in out          # patch 2
    assert 'CHECK:COMPARISON_TO_NULL fs/overlayfs/file.c:430: Comparison to NULL could be written "!realfile"' in out


@needs_base
def test_test_report_appends_testing_section(base_tree):
    code, out = kproto(str(CLEAN), "--test-report", str(SERIES / "test-report.json"))
    assert code == 0, out
    assert out.index("READY to post") < out.index("Testing:")
    assert "  Fixed by this series" in out


@pytest.mark.parametrize("args,msg", [
    (["/nonexistent/0001-x.patch"], "patch not found: /nonexistent/0001-x.patch"),
    ([str(SERIES / "make-series.sh")], "is not a patch"),
    ([str(CLEAN), "--bench-report", str(SERIES / "bench-report.json")], "--bench-report needs --test-report"),
])
def test_bad_input_exits_2(args, msg):
    code, out = kproto(*args)
    assert code == 2
    assert msg in out


@needs_base
def test_run_checks_api_is_json_able(base_tree):
    res = checkmod.run_checks(base_tree, patchmod.expand([CLEAN]))
    json.dumps(res)
    assert [(Path(p["path"]).name, p["applies"], p["checkpatch"]["errors"]) for p in res["patches"]] == [
        ("0001-ovl-document-that-ovl_mmap-maps-the-real-file.patch", True, 0),
        ("0002-ovl-map-the-current-real-file-in-ovl_mmap.patch", True, 0)]
    assert res["patches"][1]["subject"] == "[PATCH 2/2] ovl: map the current real file in ovl_mmap"
    assert "linux-unionfs@vger.kernel.org" in res["maintainers"]
    assert all(p["build"] is None for p in res["patches"])     # no build unless asked


# --- builds (incremental in the baseline's object tree; ~15-60 s each) ------------------------------

@needs_base
@pytest.mark.slow
def test_each_names_the_first_patch_that_breaks_the_build(base_tree, tmp_path):
    out_json = tmp_path / "check.json"
    code, out = kproto("--each", str(BUILDBREAK), "--json", str(out_json))
    assert code == 1, out
    assert "NOT READY: patch 1/2 0001-ovl-map-the-current-real-file-in-ovl_mmap.patch breaks the build" in out
    assert "fs/overlayfs/file.c:426:37: error: ‘real’ undeclared" in out
    assert "build:      not tried (an earlier patch breaks the build)" in out
    res = json.loads(out_json.read_text())
    assert res["patches"][0]["build"]["ok"] is False and res["patches"][1]["build"] is None
    assert res["built"] == "each"


@needs_base
@pytest.mark.slow
def test_each_builds_every_patch_of_a_clean_series(base_tree):
    code, out = kproto("--each", str(CLEAN))
    assert code == 0, out
    assert out.count(f"build:      ok (linux {base_tree.version()}") == 2
    assert "READY to post" in out
