"""rig/guest_build.py: static builds cached by content, one-line errors, staging for the VM."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rig import guest_build, paths
from rig.errors import BuildError, MissingTool


def _src(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    for name, text in files.items():
        (d / name.replace("__", ".")).write_text(text)
    return d


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
    assert (guest / "harness.py").read_text() == guest_build.HARNESS.read_text()
    assert (guest / "tests" / "known_divergences.toml").is_file()
    assert (guest / "tests" / "fixtures" / "basic.toml").is_file()
    assert (guest / "tests" / "rfc_read_ro_fd_after_copyup.toml").is_file()
    assert os.access(guest / "bins" / progs[0], os.X_OK)
    # staged specs load on their own (the guest has nothing else)
    p = subprocess.run(["/usr/bin/python3", "-S", "-c",
                        "import sys; sys.path.insert(0, sys.argv[1]); import harness; "
                        "print(len(harness.load_specs(sys.argv[2])))", str(guest), str(guest / "tests")],
                       capture_output=True, text=True)
    assert p.stdout.strip() == str(len(progs)), p.stderr
    guest_build.stage(tmp_path / "run", bins=bins)       # re-staging replaces cleanly
    shutil.rmtree(tmp_path / "run")
