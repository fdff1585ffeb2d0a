"""Faults and bad input (issue: the rig never hangs, never loses work, never leaves a VM or mount behind).

Fast rows use the tiny fake kernel tree; the VM rows boot the real baseline kernel (slow)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kproto_helpers import FAKE_KERNEL, make_patch

REPO = Path(__file__).resolve().parents[2]
KPROTO = [sys.executable, "-m", "rig.cli.main"]


def kproto(*args, env=None, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*KPROTO, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def _edit(new: str):
    def edit(work: Path):
        f = work / "fs/overlayfs/file.c"
        f.write_text(f.read_text().replace("return 0;", new))
    return edit


def _tree_clean(cache: Path) -> bool:
    [src] = [p for p in (cache / "src").iterdir() if p.is_dir() and not p.name.startswith(".")]
    st = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--ignored"], capture_output=True,
                        text=True).stdout
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD", "kproto-base^{commit}"],
                          capture_output=True, text=True).stdout.split()
    return st == "" and head[0] == head[1]


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("content,words", [
    (None, ["not found", "missing.patch"]),
    (b"", ["empty", "missing.patch"]),
    (b"\x00\x01\x02ELF", ["binary", "missing.patch"]),
    (b"hello\nthis is not a diff\n", ["not a patch", "missing.patch"]),
])
def test_bad_patch_is_exit_2_with_one_line_naming_the_file(tmp_path, kcache, content, words):
    p = tmp_path / "missing.patch"
    if content is not None:
        p.write_bytes(content)
    proc = kproto("test", str(p))
    assert proc.returncode == 2, proc.stderr
    err = [l for l in proc.stderr.splitlines() if l.startswith("kproto: error:")]
    assert len(err) == 1 and all(w in err[0] for w in words), proc.stderr
    assert "Traceback" not in proc.stderr


def test_patch_that_does_not_apply_leaves_the_tree_byte_identical(tmp_path, kcache, fake_tarball):
    bad = make_patch(FAKE_KERNEL, _edit("return 2;"), "ovl: two", tmp_path / "two.patch")
    bad.write_text(bad.read_text().replace("-\treturn 0;", "-\treturn 99;"))
    proc = kproto("build", "--kernel-src", str(fake_tarball), str(bad))
    assert proc.returncode == 2
    assert "two.patch" in proc.stderr and "fs/overlayfs/file.c:" in proc.stderr
    assert _tree_clean(kcache)


def test_bad_options_are_exit_2(tmp_path, kcache):
    assert kproto("test").returncode == 2                                    # no PATCH
    assert kproto("test", "patches/ovl-copyup.patch", "--timeout", "-3").returncode == 2
    proc = kproto("test", "patches/ovl-copyup.patch", "--config", str(tmp_path / "nope.config"))
    assert proc.returncode == 2 and "nope.config" in proc.stderr


def test_missing_qemu_is_a_one_line_error_naming_the_package(tmp_path, kcache):
    from rig.machine import qemu as vmmod
    from rig.core.errors import MissingTool
    old = os.environ["PATH"]
    os.environ["PATH"] = str(tmp_path)          # nothing on PATH
    try:
        with pytest.raises(MissingTool, match=r"qemu-system-x86_64 is not installed \(apt-get install qemu-system-x86\)"):
            vmmod.VM(bzimage=tmp_path / "bzImage", run_dir=tmp_path / "run").start()
    finally:
        os.environ["PATH"] = old


def test_missing_build_tools_are_named(tmp_path, kcache, fake_tarball, monkeypatch):
    from rig.kernel import build
    from rig.kernel import tree
    from rig.core.errors import MissingTool
    src = tree.open_source(str(fake_tarball))
    monkeypatch.setattr(build, "REQUIRED_TOOLS", {"kproto-no-such-compiler": "gcc"})
    with pytest.raises(MissingTool, match=r"kproto-no-such-compiler is not installed \(apt-get install gcc\)"):
        build.build(src, [], progress=lambda m: None)


def test_disk_full_is_a_one_line_infrastructure_error(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        (small / "filler").write_bytes(b"x" * (60 * 1024))
        tb = tmp_path / "linux-fake.tar"
        import tarfile
        with tarfile.open(tb, "w") as tf:
            tf.add(FAKE_KERNEL, arcname="linux-fake")
        proc = kproto("build", "--kernel-src", str(tb), env={"KPROTO_CACHE": str(small / "cache")})
        assert proc.returncode == 3, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "disk full" in proc.stderr or "No space left" in proc.stderr
    finally:
        subprocess.run(["umount", str(small)], check=True)


# ------------------------------------------------------------------------ interrupts and concurrency

def test_interrupted_build_restores_the_tree_and_writes_no_cache_entry(tmp_path, kcache, fake_tarball):
    p = make_patch(FAKE_KERNEL, _edit("return 1;"), "ovl: one", tmp_path / "one.patch")
    proc = subprocess.Popen([*KPROTO, "build", "--kernel-src", str(fake_tarball), str(p)], cwd=REPO,
                            env={**os.environ, "FAKE_BUILD_SLEEP": "30"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    objlogs = kcache / "build"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:              # wait until the patched build is in its link step
        logs = list(objlogs.glob("*.log")) if objlogs.exists() else []
        if any("SLEEP" in l.read_text() for l in logs):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("build never reached its link step")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert "interrupted" in err
    assert _tree_clean(kcache)
    kernels = kcache / "kernels"
    assert not kernels.exists() or not any(kernels.iterdir())


def test_two_runs_at_once_are_serialised_and_both_correct(tmp_path, kcache, fake_tarball):
    a = make_patch(FAKE_KERNEL, _edit("return 111;"), "ovl: a", tmp_path / "a.patch")
    b = make_patch(FAKE_KERNEL, _edit("return 222;"), "ovl: b", tmp_path / "b.patch")
    env = {**os.environ, "FAKE_BUILD_SLEEP": "1"}
    procs = [subprocess.Popen([*KPROTO, "build", "--kernel-src", str(fake_tarball), str(x)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for x in (a, b)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    img_a, img_b = (Path(o[0].strip()) for o in outs)
    assert img_a != img_b
    assert "return 111;" in img_a.read_text(errors="replace") and "return 222;" not in img_a.read_text(errors="replace")
    assert "return 222;" in img_b.read_text(errors="replace")
    assert _tree_clean(kcache)


def test_locks_tell_the_user_who_they_wait_for(tmp_path):
    from rig.core.locks import locked
    lock = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from rig.core.locks import locked
with locked(Path({str(lock)!r})):
    print('held', flush=True); time.sleep(2)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.monotonic()
    with locked(lock, "test lock"):
        waited = time.monotonic() - t0
    holder.wait(timeout=10)
    assert waited > 0.5          # it really waited for the other holder


@pytest.mark.fuse
def test_reference_daemon_killed_mid_test_is_an_infrastructure_error(tmp_path):
    """The reference overlay's daemon dies while a test runs: the test is an error (not a divergence),
    the mount is cleaned up, the lower layer is untouched, and `kproto test` would call it infra."""
    import threading
    from rig.guest import harness
    from rig.guest import programs as guest_build
    from rig.analysis import verdict as verdictmod
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "common.h").symlink_to(REPO / "guest_tests" / "common.h")
    (suite / "slow_reader.c").write_text(
        '#include "common.h"\nint main(int argc, char **argv)\n{\n\tchar buf[32] = {0};\n\tinit(argc, argv);\n'
        '\tint fd = xopen(P("foo"), O_RDONLY);\n\tsleep(4);\n\tssize_t n = pread(fd, buf, 16, 0);\n'
        '\tobs_rc("pread", n);\n\treturn 0;\n}\n')
    (suite / "slow_reader.toml").write_text('description = "reads after a pause"\ntimeout = 30\n'
                                            '[[lower]]\n[[lower.entries]]\npath = "foo"\ncontent = "data\\n"\n')
    bins = guest_build.build(suite, cache=tmp_path / "cache")
    work = tmp_path / "work"
    killed = []

    def kill_daemon():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            with open("/proc/mounts") as fh:
                if not any(str(work) in l for l in fh):
                    continue                      # not mounted yet: the daemon is not serving
            time.sleep(0.5)
            for cmd in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    text = cmd.read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "overlay_ref" in text and str(work) in text:
                    os.kill(int(cmd.parent.name), signal.SIGKILL)
                    killed.append(int(cmd.parent.name))
                    return

    th = threading.Thread(target=kill_daemon)
    th.start()
    [res] = harness.run_tests(bins=bins, tests=suite, work=work, target="ref", emit=None,
                              ref_python=sys.executable)
    th.join()
    assert killed, "the reference daemon was never found"
    assert res["status"] == "error" and "daemon died" in res["error"], res
    assert res["lower_modified"] is False
    with open("/proc/mounts") as fh:
        assert not [l for l in fh if str(work) in l], "the dead FUSE mount must be cleaned up"
    verdict, reasons = verdictmod.verdict_of([], [], None, None, {"slow_reader": res})
    assert verdict == "error" and "reference overlay failed" in reasons[0]
