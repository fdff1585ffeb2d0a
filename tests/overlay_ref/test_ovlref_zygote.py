"""The mount(8) helper's template process (overlay_ref/zygote.py): the first mount starts it, later
mounts are forked from it, it exits when idle or when its code changed, and umount knows its daemons."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import overlay_ref
from overlay_ref import daemon, procs, rundir, zygote
from ovl_helpers import cmdline as _cmdline, daemon_pid as _daemon_pid, requires_fuse, run_helper

REPO = Path(overlay_ref.__file__).resolve().parents[1]

pytestmark = [pytest.mark.fuse, requires_fuse]


@pytest.fixture
def template(monkeypatch):
    """The template on (idle exit after 20 s unless a test says otherwise); at teardown no template of
    this checkout is left running."""
    monkeypatch.setenv(zygote.ENV_SWITCH, "1")
    monkeypatch.setenv(zygote.ENV_IDLE, "20")
    _stop()
    yield
    _stop()


def _stop() -> None:
    """SIGTERM the running template; it leaves as when idle: its socket and pidfile removed.  A
    template still starting (a helper's Popen, no pidfile yet) is waited for and stopped too."""
    deadline = time.monotonic() + 15
    while True:
        pid = zygote.stop()
        if pid is not None:
            assert not procs._pid_alive(pid)
            state = Path(rundir.runtime_dir())
            assert not (state / zygote.names()[0]).exists() and not (state / zygote.names()[2]).exists()
        if not _templates():
            return
        assert time.monotonic() < deadline, f"templates left running: {_templates()}"
        time.sleep(0.05)


def _templates() -> list[int]:
    """Pids of this interpreter's template processes, running or still starting."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                argv = _cmdline(int(d))
            except (OSError, ValueError):        # gone, or not UTF-8 (not ours)
                continue
            if argv[:1] == [sys.executable] and "_zygote" in argv:
                pids.append(int(d))
    return pids


def _wait(cond, t: float = 10.0) -> bool:
    deadline = time.monotonic() + t
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _helper(layers, lowerdir: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    """The helper script as mount(8) runs it, with this interpreter (so the template is this
    checkout's, the tag zygote.running_pid() looks for)."""
    return run_helper(layers, cwd=cwd, lowerdir=lowerdir)


def _umount_quietly(mnt) -> None:
    """`overlay_ref umount` recognises the daemon (no warning), and the daemon exits."""
    pid = _daemon_pid(mnt)
    r = subprocess.run([sys.executable, "-m", "overlay_ref", "umount", str(mnt)], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert _wait(lambda: not procs._pid_alive(pid))


def _cleanup(*layer_sets) -> None:
    for layers in layer_sets:
        if daemon.is_mounted(str(layers.mnt)):
            subprocess.run(["umount", "-l", str(layers.mnt)], capture_output=True)


def test_the_first_mount_starts_the_template_and_the_next_is_forked_from_it(template, make_layers):
    first = make_layers([{"a": "1"}])
    second = make_layers([{"b": "2"}, {"c": "3"}])
    try:
        r = _helper(first)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "overlay_ref.mount_helper" in _cmdline(_daemon_pid(first.mnt))   # mounted by the helper itself
        assert _wait(lambda: zygote.running_pid() is not None), "no template started after the first mount"
        tpl = zygote.running_pid()
        assert tpl is not None
        assert "_zygote" in _cmdline(tpl) and os.readlink(f"/proc/{tpl}/cwd") == "/"

        r = _helper(second)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        pid = _daemon_pid(second.mnt)
        assert "_zygote" in _cmdline(pid) and pid != tpl       # forked from the template
        # a daemon as the helper's own fork is: a session of its own (not the template's, not ours),
        # not the template's child, cwd /, stdio on /dev/null
        assert os.getsid(pid) not in (os.getsid(tpl), os.getsid(0))
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) != tpl
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)} == {os.devnull}
        assert sorted(os.listdir(second.mnt)) == ["b", "c"]
        assert (first.mnt / "a").read_text() == "1"
        # umount knows it by the start time in its pidfile (its command line does not name the mount)
        assert str(second.mnt) not in _cmdline(pid)
        _umount_quietly(second.mnt)
        _umount_quietly(first.mnt)
        assert zygote.running_pid() == tpl                       # the template stays for the next mount
    finally:
        _cleanup(first, second)


def test_relative_layers_and_bad_input_through_the_template(template, make_layers):
    """The daemon reads relative layer paths in the caller's directory, and bad input gets mount(8)'s
    exit code 1 and the same one line as without a template."""
    warm = make_layers([{"w": "0"}])
    layers = make_layers([{"a": "1"}])
    try:
        assert _helper(warm).returncode == 0
        assert _wait(lambda: zygote.running_pid() is not None)
        bad = _helper(layers, lowerdir="no-such-dir", cwd=layers.upper.parent)
        zygote_off = dict(os.environ, KPROTO_OVL_ZYGOTE="0")
        os.environ, saved = zygote_off, os.environ
        try:
            bad_without = _helper(layers, lowerdir="no-such-dir", cwd=layers.upper.parent)
        finally:
            os.environ = saved
        assert bad.returncode == bad_without.returncode == 1
        assert bad.stderr == bad_without.stderr
        assert bad.stderr.count("\n") == 1 and "no-such-dir" in bad.stderr, bad.stderr
        assert not daemon.is_mounted(str(layers.mnt))

        lower = Path(layers.lowerdir)
        r = _helper(layers, lowerdir=os.path.relpath(lower, layers.upper.parent), cwd=layers.upper.parent)
        assert r.returncode == 0, r.stderr
        assert "_zygote" in _cmdline(_daemon_pid(layers.mnt))
        assert (layers.mnt / "a").read_text() == "1"
        _umount_quietly(layers.mnt)
        _umount_quietly(warm.mnt)
    finally:
        _cleanup(warm, layers)


def test_the_template_exits_when_idle_and_a_dead_ones_socket_is_no_obstacle(template, monkeypatch, make_layers):
    monkeypatch.setenv(zygote.ENV_IDLE, "1")
    a, b = make_layers([{"a": "1"}]), make_layers([{"b": "2"}])
    try:
        assert _helper(a).returncode == 0
        assert _wait(lambda: zygote.running_pid() is not None)
        tpl = zygote.running_pid()
        assert tpl is not None
        assert _wait(lambda: not procs._pid_alive(tpl)), "the template did not exit when idle"
        sock = Path(rundir.runtime_dir()) / zygote.names()[0]
        assert not sock.exists()
        _umount_quietly(a.mnt)

        # killed, it leaves its socket: the next mount still works, by itself, and starts a new one
        monkeypatch.setenv(zygote.ENV_IDLE, "20")
        assert _helper(a).returncode == 0
        assert _wait(lambda: zygote.running_pid() is not None)
        tpl = zygote.running_pid()
        assert tpl is not None
        os.kill(tpl, signal.SIGKILL)
        assert _wait(lambda: not procs._pid_alive(tpl))
        assert sock.exists()
        r = _helper(b)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "overlay_ref.mount_helper" in _cmdline(_daemon_pid(b.mnt))
        assert _wait(lambda: zygote.running_pid() not in (None, tpl)), "no new template"
        _umount_quietly(a.mnt)
        _umount_quietly(b.mnt)
    finally:
        _cleanup(a, b)


def test_a_template_whose_code_changed_exits_and_the_mount_still_works(template, make_layers):
    a, b = make_layers([{"a": "1"}]), make_layers([{"b": "2"}])
    src = REPO / "overlay_ref" / "errors.py"
    st = src.stat()
    try:
        assert _helper(a).returncode == 0
        assert _wait(lambda: zygote.running_pid() is not None)
        tpl = zygote.running_pid()
        assert tpl is not None
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))    # "edited"
        r = _helper(b)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert "overlay_ref.mount_helper" in _cmdline(_daemon_pid(b.mnt)), "the old template served it"
        assert _wait(lambda: not procs._pid_alive(tpl)), "the old template did not exit"
        # it gave up its lock before it answered: the helper's new template (the new code) runs
        assert _wait(lambda: zygote.running_pid() not in (None, tpl)), "no template with the new code"
        _umount_quietly(a.mnt)
        _umount_quietly(b.mnt)
    finally:
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        _cleanup(a, b)


def test_turned_off_no_template_starts(template, monkeypatch, make_layers):
    monkeypatch.setenv(zygote.ENV_SWITCH, "0")
    a = make_layers([{"a": "1"}])
    try:
        assert _helper(a).returncode == 0
        time.sleep(1.0)
        assert zygote.running_pid() is None and not _templates()
        assert "overlay_ref.mount_helper" in _cmdline(_daemon_pid(a.mnt))
        _umount_quietly(a.mnt)
    finally:
        _cleanup(a)
