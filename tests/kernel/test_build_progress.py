"""The build's progress: objects counted from make's output as it runs (the full log still kept), the
expected count and duration remembered per object tree and per config, and what the user sees for a
first, a repeated and an incremental build of the fake kernel tree."""
from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest

from kproto_helpers import FAKE_KERNEL, make_patch
from rig.core import progress
from rig.core.errors import InfraError
from rig.kernel import build, kconfig, patches, tree

# Captured from `make O=... -j3 bzImage` of linux 6.12 (kbuild's quiet mode), trimmed: the lines that
# count are the two-space-indented command lines; make's own chatter, compiler warnings with their
# source excerpts and the final "Kernel: ... is ready" do not.
MAKE_OUTPUT = """\
make[1]: Entering directory '/var/cache/kproto/build/3f2a9c1e0b7d4e55'
  SYNC    include/config/auto.conf
  GEN     Makefile
  HOSTCC  scripts/basic/fixdep
  HOSTCC  scripts/kconfig/conf.o
  HOSTLD  scripts/kconfig/conf
  WRAP    arch/x86/include/generated/uapi/asm/bpf_perf_event.h
  SYSHDR  arch/x86/include/generated/uapi/asm/unistd_32.h
  SYSTBL  arch/x86/include/generated/asm/syscalls_64.h
  UPD     include/generated/uapi/linux/version.h
  CC      scripts/mod/empty.o
  MKELF   scripts/mod/elfconfig.h
  HOSTCC  scripts/mod/modpost.o
  CC      kernel/bounds.s
  CHKSHA1 ../include/linux/atomic/atomic-arch-fallback.h
  CALL    ../scripts/checksyscalls.sh
  DESCEND objtool
  INSTALL libsubcmd_headers
  CC      /var/cache/kproto/build/3f2a9c1e0b7d4e55/tools/objtool/libsubcmd/exec-cmd.o
  LDS     arch/x86/kernel/vmlinux.lds
  AS      arch/x86/entry/entry_64.o
  CC      init/main.o
../fs/overlayfs/copy_up.c: In function 'ovl_copy_up_one':
../fs/overlayfs/copy_up.c:1042:13: warning: unused variable 'err' [-Wunused-variable]
 1042 |         int err;
      |             ^~~
  CC      fs/overlayfs/super.o
  CC      fs/overlayfs/copy_up.o
  CC [M]  fs/overlayfs/file.o
  AR      fs/overlayfs/built-in.a
  AR      fs/built-in.a
  LD      vmlinux.o
  OBJTOOL vmlinux.o
  MODPOST Module.symvers
  LD      .tmp_vmlinux1
  NM      .tmp_vmlinux1.syms
  KSYMS   .tmp_vmlinux1.kallsyms.S
  AS      .tmp_vmlinux1.kallsyms.o
  LD      vmlinux
  SORTTAB vmlinux
  SYSMAP  System.map
  OBJCOPY arch/x86/boot/compressed/vmlinux.bin
  ZOFFSET arch/x86/boot/zoffset.h
  AS      arch/x86/boot/header.o
  LD      arch/x86/boot/setup.elf
  BUILD   arch/x86/boot/bzImage
Kernel: arch/x86/boot/bzImage is ready  (#1)
make[1]: Leaving directory '/var/cache/kproto/build/3f2a9c1e0b7d4e55'
"""
SAMPLE_OBJECTS = 41       # the command lines above


def say_into(out: list[str]):
    return out.append


# ---------------------------------------------------------------- counting

def test_objects_are_counted_from_kbuilds_quiet_output():
    assert build.count_objects(MAKE_OUTPUT) == SAMPLE_OBJECTS
    assert build.count_objects(MAKE_OUTPUT.encode()) == SAMPLE_OBJECTS


@pytest.mark.parametrize("line", [
    "make[1]: Entering directory '/x'", "Kernel: arch/x86/boot/bzImage is ready  (#1)",
    " 1042 |         int err;", "      |             ^~~",
    "../fs/overlayfs/copy_up.c:1042:13: warning: unused variable 'err' [-Wunused-variable]",
    "   CC      indented-three.o", "",
])
def test_lines_that_are_not_kbuild_commands_do_not_count(line):
    assert build.count_objects(line + "\n") == 0


def test_counting_does_not_depend_on_how_the_output_is_chunked():
    data = MAKE_OUTPUT.encode()
    for size in (1, 7, 64, 4096):
        c = build.ObjectCounter()
        for i in range(0, len(data), size):
            c.feed(data[i:i + size])
        c.close()
        assert c.objects == SAMPLE_OBJECTS, size
        assert c.last == "arch/x86/boot/bzImage"


def test_a_last_line_without_newline_counts_once_closed():
    c = build.ObjectCounter()
    c.feed(b"  CC      a.o\n  LD      vmlinux")
    assert c.objects == 1
    c.close()
    assert c.objects == 2


# ---------------------------------------------------------------- the fake tree, really built

@pytest.fixture
def src(kcache, fake_tarball):
    return tree.open_source(str(fake_tarball))


def _objdir(src) -> Path:
    return build.objdir_for(src, kconfig.requested())


def _lines(out: list[str], what: str) -> list[str]:
    return [l for l in out if l.startswith(f"building {what} kernel: ")]


def test_first_build_counts_objects_and_remembers_them(src, kcache, monkeypatch):
    monkeypatch.setenv("FAKE_BUILD_SLEEP", "1")
    monkeypatch.setattr(build, "shipped_estimates", dict)     # a config kproto never measured
    out: list[str] = []
    k = build.build(src, [], progress=out.append)
    stage = next(l for l in out if l.startswith("building baseline kernel ("))
    assert "make -j" in stage and "full build, the first of this config" in stage and "log " in stage
    # CC file.o, CC copy_up.o, SLEEP, BUILD
    assert re.fullmatch(r"built baseline kernel: 4 objects in \d+ s", out[-1]), out
    stats = json.loads((_objdir(src) / build.STATS).read_text())
    assert stats["full"]["objects"] == 4 and stats["full"]["seconds"] >= 1
    assert json.loads((kcache / "build" / build.STATS).read_text())  # per config, for other object trees
    assert json.loads((k.bzimage.parent / "meta.json").read_text())["objects"] == 4
    log = (_objdir(src).parent / f"{_objdir(src).name}.log").read_text()
    assert "  CC      fs/overlayfs/file.o" in log and "  BUILD   arch/x86/boot/bzImage" in log  # the full log


def test_the_next_full_build_of_the_config_shows_done_of_expected(src, kcache, monkeypatch):
    monkeypatch.setenv("FAKE_BUILD_SLEEP", "2")
    build.build(src, [], progress=lambda m: None)
    shutil.rmtree(kcache / "kernels")
    shutil.rmtree(_objdir(src))            # a fresh object tree, same config: the per-config record counts
    out: list[str] = []
    build.build(src, [], progress=out.append)
    stage = next(l for l in out if l.startswith("building baseline kernel ("))
    assert re.search(r"full build of ~4 objects, last one took \d+ s", stage), stage
    # during the 2 s link step make prints nothing: the count so far shows against the expected 4
    assert any(re.match(r"building baseline kernel: 3/4 objects \(75%\), .*ETA", l) for l in _lines(out, "baseline")), out
    assert out[-1].startswith("built baseline kernel: 4 objects in ")


def test_the_first_build_on_a_new_machine_expects_kprotos_measured_count(src, kcache, monkeypatch):
    """No build of this config anywhere in the cache: the count and time kproto measured for it on the
    same stable series (build-estimates.json) give done/expected, the time scaled to this machine's CPUs;
    a Debian point update of linux-source (6.12.117 -> 6.12.118) keeps the estimate, a new series does not."""
    key = build._stats_key(build.kconfig.requested(()), build.arch.load().make_target)
    monkeypatch.setattr(build, "shipped_estimates",
                        lambda: {key: {"objects": 4, "seconds": 30.0, "cpus": 2, "kernel": src.version()}})
    monkeypatch.setattr(build.os, "cpu_count", lambda: 1)
    out: list[str] = []
    build.build(src, [], progress=out.append)
    stage = next(l for l in out if l.startswith("building baseline kernel ("))
    assert ("full build of ~4 objects, about 1 min 00 s here (kproto's measurement of this config on "
            f"{src.version()})") in stage, stage
    # another point release of the same series: the same estimate, naming the version it was measured on
    series = ".".join(src.version().split(".")[:2])

    def again(measured_on: str) -> str:
        shutil.rmtree(kcache / "kernels")
        shutil.rmtree(_objdir(src))
        (kcache / "build" / build.STATS).unlink()
        monkeypatch.setattr(build, "shipped_estimates",
                            lambda: {key: {"objects": 4, "seconds": 30.0, "cpus": 2, "kernel": measured_on}})
        lines: list[str] = []
        build.build(src, [], progress=lines.append)
        return next(l for l in lines if l.startswith("building baseline kernel ("))
    assert f"full build of ~4 objects, about 1 min 00 s here (kproto's measurement of this config on " \
        f"{series}.9999)" in again(f"{series}.9999")
    # another series: no estimate
    major, minor = src.version().split(".")[:2]
    assert "the first of this config" in again(f"{major}.{int(minor) + 1}.0")


def test_same_series_compares_major_and_minor():
    assert build.same_series("6.12.117", "6.12.118")
    assert build.same_series("6.12", "6.12.3-rc1")
    assert not build.same_series("6.12.117", "6.13.0")
    assert not build.same_series("6.1.2", "6.12.2")
    assert not build.same_series("None", "6.12.1")


def test_the_shipped_estimate_names_the_default_config():
    """build-estimates.json must follow the fragment: a changed default config needs a new measurement
    (a cold `kproto build`, then copy its entry from $KPROTO_CACHE/build/kproto.build-stats.json)."""
    est = build.shipped_estimates()
    assert build.default_stats_key() in est, "update rig/kernel/build-estimates.json for the new fragment"
    e = est[build.default_stats_key()]
    assert e["objects"] > 1000 and e["seconds"] > 0 and e["cpus"] >= 1 and e["kernel"].startswith("6.12.")


def test_a_patched_build_says_incremental_at_once(src, tmp_path):
    build.build(src, [], progress=lambda m: None)

    def edit(work: Path):
        f = work / "fs/overlayfs/file.c"
        f.write_text(f.read_text().replace("return 0;", "return 1;"))
    p = patches.load(make_patch(FAKE_KERNEL, edit, "ovl: one", tmp_path / "one.patch"))
    out: list[str] = []
    build.build(src, [p], progress=out.append)
    assert "incremental in the existing object tree" in out[0], out
    assert re.fullmatch(r"built patched kernel: 2 objects in \d+ s \(incremental\)", out[-1]), out
    stats = json.loads((_objdir(src) / build.STATS).read_text())
    assert stats["incremental"]["objects"] == 2 and stats["full"]["objects"] == 3


def test_an_unfinished_build_is_resumed_without_a_made_up_total(src, kcache):
    build.build(src, [], progress=lambda m: None)
    shutil.rmtree(kcache / "kernels")
    (_objdir(src) / "arch/x86/boot/bzImage").unlink()     # as if the last build died in its link step
    (_objdir(src) / "fs/overlayfs/copy_up.o").unlink()
    out: list[str] = []
    build.build(src, [], progress=out.append)
    assert "finishing an earlier build" in out[0]
    assert out[-1].startswith("built baseline kernel: 2 objects in ") and out[-1].endswith("(resumed)")
    assert json.loads((_objdir(src) / build.STATS).read_text())["full"]["objects"] == 3   # not overwritten


def test_a_build_of_one_object_says_object(src, kcache):
    build.build(src, [], progress=lambda m: None)
    shutil.rmtree(kcache / "kernels")
    (_objdir(src) / "arch/x86/boot/bzImage").unlink()     # only the image to make again: BUILD, one object
    out: list[str] = []
    build.build(src, [], progress=out.append)
    assert re.fullmatch(r"built baseline kernel: 1 object in \d+ s \(resumed\)", out[-1]), out


def test_the_expected_count_of_a_full_build_agrees_with_its_noun(src, kcache):
    build.build(src, [], progress=lambda m: None)
    shutil.rmtree(kcache / "kernels")
    shutil.rmtree(_objdir(src))
    glob = kcache / "build" / build.STATS
    glob.write_text(json.dumps({k: dict(v, objects=1) for k, v in json.loads(glob.read_text()).items()}))
    out: list[str] = []
    build.build(src, [], progress=out.append)
    stage = next(l for l in out if l.startswith("building baseline kernel ("))
    # "~1 object" then the ETA (", ~N s") when the last build's time is known, else the log ("; log ...")
    assert re.search(r"full build of ~1 object[,;]", stage), stage


def test_live_line_on_a_terminal(src, monkeypatch):
    class TTY(io.StringIO):
        def isatty(self) -> bool:
            return True
    monkeypatch.setenv("FAKE_BUILD_SLEEP", "2")
    build.build(src, [], progress=lambda m: None)
    shutil.rmtree(_objdir(src))
    tty = TTY()
    rep = progress.Reporter(lambda m: tty.write(f"kproto: {m}\n"), terminal=lambda: tty, prefix="kproto: ")
    import rig.core.paths
    shutil.rmtree(rig.core.paths.cache_dir() / "kernels")
    build.build(src, [], progress=rep)
    raw = tty.getvalue()
    assert progress.CLEAR + "kproto: building baseline kernel: 3/4 objects (75%)" in raw
    shown = [l.split(progress.CLEAR)[-1] for l in raw.split("\n") if l.split(progress.CLEAR)[-1]]
    assert shown[-1].startswith("kproto: built baseline kernel: 4 objects in ")   # the live line is gone


def test_a_build_that_overruns_its_timeout_is_killed(src, monkeypatch, tmp_path):
    build.build(src, [], progress=lambda m: None)
    monkeypatch.setenv("FAKE_BUILD_SLEEP", "5")
    log = tmp_path / "make.log"
    counter = build.ObjectCounter()
    with pytest.raises(InfraError, match="timed out after 1 s"):
        build._make(src, _objdir(src), "bzImage", log=log, timeout=1.0, counter=counter)
    assert "  SLEEP   5" in log.read_text() and counter.objects == 1
