"""rig/guest/programs.py: THE static-program cache (compile_dir), build() of the guest tests, staging."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import warnings
import zipfile
from pathlib import Path

import pytest

from rig.guest import programs as guest_build
from rig.core import paths
from rig.core.errors import BuildError, MissingTool


def _src(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}   # nothing pointing at the checkout
OK_C = '#include "h.h"\n#include <stdio.h>\nint main(void) { printf("v=%d\\n", V); return 0; }\n'


def test_build_static_cached_by_content(tmp_path):
    src = _src(tmp_path, one__c=OK_C, h__h="#define V 1\n")
    cache = tmp_path / "cache"
    out = guest_build.build(src, cache=cache)
    assert out.parent == cache / "guest_bins" and (out / "one").is_file()
    assert subprocess.run(["file", str(out / "one")], capture_output=True, text=True).stdout.count("statically") \
        or b"ld-linux" not in (out / "one").read_bytes()
    assert subprocess.run([str(out / "one")], capture_output=True, text=True).stdout == "v=1\n"
    mtime = (out / "one").stat().st_mtime_ns
    assert guest_build.build(src, cache=cache) == out and (out / "one").stat().st_mtime_ns == mtime
    (src / "h.h").write_text("#define V 2\n")             # a header change rebuilds
    out2 = guest_build.build(src, cache=cache)
    assert out2 != out and subprocess.run([str(out2 / "one")], capture_output=True, text=True).stdout == "v=2\n"
    assert not [p for p in (cache / "guest_bins").iterdir() if p.name.startswith(".build-")]


def test_uses_kproto_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "kc"))
    out = guest_build.build(_src(tmp_path, one__c=OK_C, h__h="#define V 1\n"))
    assert out.parent == tmp_path / "kc" / "guest_bins"


def test_compile_error_names_the_file(tmp_path):
    src = _src(tmp_path, good__c=OK_C, h__h="#define V 1\n", broken__c="int main(void) { return nope; }\n")
    with pytest.raises(BuildError) as ei:
        guest_build.build(src, cache=tmp_path / "cache")
    assert "broken.c" in ei.value.message and "\n" not in ei.value.message
    assert "nope" in ei.value.detail
    assert not list((tmp_path / "cache" / "guest_bins").iterdir())


def test_missing_compiler_is_one_line(tmp_path):
    with pytest.raises(MissingTool) as ei:
        guest_build.build(_src(tmp_path, one__c=OK_C), cache=tmp_path / "c", cc="no-such-gcc-kproto")
    assert "no-such-gcc-kproto" in ei.value.message and "\n" not in ei.value.message


def test_missing_static_libc(tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text('#!/bin/sh\ncase "$1" in --version) echo fakecc 1;; *) echo "cannot find -lc" >&2; exit 1;; esac\n')
    fake.chmod(0o755)
    with pytest.raises(MissingTool) as ei:
        guest_build.build(_src(tmp_path, one__c=OK_C), cache=tmp_path / "c", cc=str(fake))
    assert "libc6-dev" in ei.value.message


def test_no_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BuildError):
        guest_build.build(tmp_path / "empty", cache=tmp_path / "c")


def test_repo_suite_builds_and_stages(tmp_path):
    bins = guest_build.build(cache=tmp_path / "cache")
    progs = sorted(p.stem for p in paths.GUEST_TESTS.glob("*.c"))
    assert sorted(os.listdir(bins)) == progs
    guest = guest_build.stage(tmp_path / "run", bins=bins)
    assert guest == tmp_path / "run" / "guest"
    assert sorted(os.listdir(guest / "bins")) == progs
    with zipfile.ZipFile(guest / "harness.zip") as zf:
        staged = zf.namelist()
        assert zf.read("rig/guest/harness.py") == guest_build.HARNESS.read_bytes()
    mods = ["rig/__init__.py", *(f"rig/guest/{m}" for m in guest_build.HARNESS_MODULES)]
    assert sorted(staged) == sorted(mods + [m + "c" for m in mods])       # each module beside its byte code
    assert not (guest / "harness.py").exists() and not (guest / "py").exists()
    assert (guest / "tests" / "specs.json").is_file()
    assert (guest / "tests" / "known_divergences.toml").is_file()
    assert (guest / "tests" / "fixtures" / "basic.toml").is_file()
    assert (guest / "tests" / "rfc_read_ro_fd_after_copyup.toml").is_file()
    assert os.access(guest / "bins" / progs[0], os.X_OK)
    # staged specs load on their own (the guest has nothing else)
    p = subprocess.run(["/usr/bin/python3", "-S", "-c",
                        "import sys; from rig.guest import harness; "
                        "print(len(harness.load_specs(sys.argv[1])))", str(guest / "tests")],
                       capture_output=True, text=True, cwd="/", env={**CLEAN_ENV, "PYTHONPATH": str(guest / "harness.zip")})
    assert p.stdout.strip() == str(len(progs)), p.stderr
    guest_build.stage(tmp_path / "run", bins=bins)       # re-staging replaces cleanly
    shutil.rmtree(tmp_path / "run")


# ---------------------------------------------------------------- compile_dir (bench and fuzz use it too)

def _versioned_cc(tmp_path: Path, version: str) -> Path:
    """A gcc wrapper whose --version line is VERSION_FILE's content."""
    vf = tmp_path / "ccversion"
    vf.write_text(version + "\n")
    cc = tmp_path / "vcc"
    cc.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then cat {vf}; else exec gcc "$@"; fi\n')
    cc.chmod(0o755)
    return cc


def test_compile_dir_cache_hit_and_layout(tmp_path):
    src = _src(tmp_path, one__c=OK_C, two__c=OK_C, h__h="#define V 3\n")
    out = guest_build.compile_dir(src, cache_name="bench_bins", what="benchmark program", cache=tmp_path / "c")
    assert out.parent == tmp_path / "c" / "bench_bins" and len(out.name) == 16
    assert sorted(os.listdir(out)) == ["one", "two"]
    assert subprocess.run([str(out / "two")], capture_output=True, text=True).stdout == "v=3\n"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755             # readable by the guest's other uids
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = guest_build.compile_dir(src, cache_name="bench_bins", what="benchmark program", cache=tmp_path / "c")
    assert again == out and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # another cache name is another cache
    other = guest_build.compile_dir(src, cache_name="fuzz", what="x", cache=tmp_path / "c")
    assert other.parent.name == "fuzz" and other.name == out.name


def test_compile_dir_sources_subset(tmp_path):
    src = _src(tmp_path, one__c=OK_C, h__h="#define V 1\n", broken__c="int main(void) { return nope; }\n")
    out = guest_build.compile_dir(src, cache_name="fuzz", what="fuzz interpreter", cache=tmp_path / "c",
                                  sources=[src / "one.c"])
    assert os.listdir(out) == ["one"]
    # the key covers only the chosen sources (and every header): a change elsewhere is no rebuild
    (src / "broken.c").write_text("int main(void) { return 1; }\n")
    assert guest_build.compile_dir(src, cache_name="fuzz", what="fuzz interpreter", cache=tmp_path / "c",
                                   sources=[src / "one.c"]) == out
    (src / "h.h").write_text("#define V 9\n")
    assert guest_build.compile_dir(src, cache_name="fuzz", what="fuzz interpreter", cache=tmp_path / "c",
                                   sources=[src / "one.c"]) != out
    with pytest.raises(BuildError):
        guest_build.compile_dir(src, cache_name="fuzz", what="x", cache=tmp_path / "c",
                                sources=[tmp_path / "elsewhere.c"])


def test_compile_dir_key_covers_compiler_version(tmp_path):
    src = _src(tmp_path, one__c=OK_C, h__h="#define V 1\n")
    cc = _versioned_cc(tmp_path, "gcc (Fake) 12.2.0")
    a = guest_build.compile_dir(src, cache_name="b", what="x", cache=tmp_path / "c", cc=str(cc))
    assert guest_build.compile_dir(src, cache_name="b", what="x", cache=tmp_path / "c", cc=str(cc)) == a
    (tmp_path / "ccversion").write_text("gcc (Fake) 13.1.0\n")       # a compiler upgrade rebuilds
    b = guest_build.compile_dir(src, cache_name="b", what="x", cache=tmp_path / "c", cc=str(cc))
    assert b != a and (b / "one").is_file()
    (src / "one.c").write_text(OK_C + "/* edit */\n")                 # so does a source change
    assert guest_build.compile_dir(src, cache_name="b", what="x", cache=tmp_path / "c", cc=str(cc)) not in (a, b)


def test_compile_dir_error_names_what_and_file(tmp_path):
    src = _src(tmp_path, good__c=OK_C, h__h="#define V 1\n", bad__c="int main(void) { return nope; }\n")
    with pytest.raises(BuildError) as ei:
        guest_build.compile_dir(src, cache_name="bench_bins", what="benchmark program", cache=tmp_path / "c")
    assert ei.value.message == "benchmark program bad.c does not compile"
    assert "nope" in ei.value.detail
    assert not list((tmp_path / "c" / "bench_bins").iterdir())           # no half cache, no temp dir left
    with pytest.raises(MissingTool) as mt:
        guest_build.compile_dir(src, cache_name="b", what="x", cache=tmp_path / "c", cc="no-such-gcc-kproto")
    assert "no-such-gcc-kproto" in mt.value.message and "\n" not in mt.value.message


def test_staged_zip_runs_without_the_checkout(tmp_path):
    """The guest has only the run dir: the staged harness.zip runs the harness CLI with cwd / and a clean
    env, from its byte code (no module is compiled), and the zip is the same for the same modules."""
    bins = tmp_path / "bins"
    bins.mkdir()
    guest = guest_build.stage(tmp_path / "run", bins=bins)
    zpath = guest / "harness.zip"
    env = {**CLEAN_ENV, "PYTHONPATH": str(zpath)}
    p = subprocess.run(["/usr/bin/python3", "-S", "-m", "rig.guest.harness", "--help"], capture_output=True,
                       text=True, cwd="/", env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "--bins" in p.stdout and "--kernel-state" in p.stdout
    # loaded from the .pyc: a module whose source says otherwise still runs the staged byte code
    probe = tmp_path / "probe.zip"
    shutil.copy(zpath, probe)
    with zipfile.ZipFile(probe, "a") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # the duplicate name is the point
        zf.writestr("rig/guest/observe.py", "raise SystemExit('compiled from source')\n")
    p = subprocess.run(["/usr/bin/python3", "-S", "-W", "ignore", "-c",
                        "import rig.guest.observe as m; print(m.__file__, m.__spec__.loader.__class__.__name__)"],
                       capture_output=True, text=True, cwd="/", env={**CLEAN_ENV, "PYTHONPATH": str(probe)})
    assert p.returncode == 0 and p.stdout.split() == [str(probe / "rig" / "guest" / "observe.pyc"), "zipimporter"], \
        p.stdout + p.stderr
    assert stat.S_IMODE(zpath.stat().st_mode) == 0o644          # the guest may run the harness as another uid
    before = zpath.read_bytes()
    guest_build.stage(tmp_path / "run", bins=bins)
    assert zpath.read_bytes() == before


def test_guest_package_inits_are_import_free():
    """The staged tree holds rig/__init__.py and rig/guest/__init__.py: they must import nothing."""
    import ast
    for init in (guest_build.GUEST_PKG.parent / "__init__.py", guest_build.GUEST_PKG / "__init__.py"):
        tree = ast.parse(init.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], init
