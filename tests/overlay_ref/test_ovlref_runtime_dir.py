"""The daemon's runtime directory (pidfiles) is private: a directory, symlink or pidfile planted
by someone else is refused or replaced, never written through, and umount signals only a pid
that really is the overlay_ref daemon of that mountpoint.

Every test runs with XDG_RUNTIME_DIR (and TMPDIR) pointing at its own tmp_path, so the state
lives in ``<tmp>/xdg/kproto-ovl`` and the real /tmp state of other tests is never touched."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import overlay_ref
from overlay_ref import daemon, procs, rundir
from ovl_helpers import cmdline, requires_fuse

REPO = Path(overlay_ref.__file__).resolve().parents[1]
NOBODY = 65534


@pytest.fixture
def xdg(tmp_path, monkeypatch) -> Path:
    """A private XDG_RUNTIME_DIR (0700, ours); TMPDIR private too.  Returns the state dir path
    the daemon must use (not created)."""
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    t = tmp_path / "tmp"
    t.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    monkeypatch.setenv("TMPDIR", str(t))
    monkeypatch.setattr(tempfile, "tempdir", None)
    state = d / "kproto-ovl"
    assert rundir.runtime_dir() == str(state)
    return state


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "overlay_ref", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def pidname(mnt) -> str:
    return hashlib.sha1(os.path.abspath(str(mnt)).encode()).hexdigest()[:16] + ".pid"


def snapshot(p: Path):
    """Everything observable about p (lstat, and its contents / listing)."""
    st = os.lstat(p)
    info = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_ino,
            st.st_mtime_ns, st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return info, sorted(os.listdir(p))
    if stat.S_ISREG(st.st_mode):
        return info, p.read_bytes()
    if stat.S_ISLNK(st.st_mode):
        return info, os.readlink(p)
    return info, None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, t: float = 10) -> bool:
    deadline = time.monotonic() + t
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _mount(layers, xdg) -> tuple[Path, int]:
    """Mount LAYERS with the CLI; the daemon's pidfile in XDG and the pid it names."""
    r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt)
    assert r.returncode == 0, r.stderr
    pidfile = xdg / pidname(layers.mnt)
    return pidfile, int(pidfile.read_text().split()[0])


def _cleanup(mnt, *pids):
    if daemon.is_mounted(str(mnt)):
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    if daemon.is_mounted(str(mnt)):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    for pid in pids:
        if pid and _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _serving_pid(mnt) -> int | None:
    """The overlay_ref daemon serving mnt, found without the pidfile (for clean-up)."""
    for d in os.listdir("/proc"):
        if d.isdigit() and procs.daemon_mismatch(int(d), str(mnt)) is None:
            return int(d)
    return None


# ---------------------------------------------------------------- the rule

def test_runtime_dir_rule(tmp_path, monkeypatch):
    euid = os.geteuid()
    monkeypatch.setattr(rundir, "_RUN_USER", str(tmp_path / "run-user"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    os.chmod(xdg, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert rundir.runtime_dir() == str(xdg / "kproto-ovl")
    # an unusable XDG_RUNTIME_DIR (group/other access, a symlink, relative, missing) is skipped
    os.chmod(xdg, 0o755)
    assert rundir.runtime_dir() == str(tmp_path / "tmp" / f"kproto-ovl-{euid}")
    os.chmod(xdg, 0o700)
    (tmp_path / "xdg-link").symlink_to(xdg)
    for bad in (str(tmp_path / "xdg-link"), "xdg", str(tmp_path / "missing")):
        monkeypatch.setenv("XDG_RUNTIME_DIR", bad)
        assert rundir.runtime_dir() == str(tmp_path / "tmp" / f"kproto-ovl-{euid}")
    # /run/user/<euid> when it exists and is ours
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    ru = tmp_path / "run-user" / str(euid)
    ru.mkdir(parents=True, mode=0o700)
    os.chmod(ru, 0o700)
    assert rundir.runtime_dir() == str(ru / "kproto-ovl")
    os.chown(ru, NOBODY, NOBODY)
    assert rundir.runtime_dir() == str(tmp_path / "tmp" / f"kproto-ovl-{euid}")
    # the fallback is created 0700 and verified
    with rundir.open_runtime_dir() as rd:
        st = os.lstat(rd.path)
        assert rd.path == str(tmp_path / "tmp" / f"kproto-ovl-{euid}")
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == euid


def test_created_0700_despite_umask(xdg):
    old = os.umask(0o000)
    try:
        rundir.open_runtime_dir().close()
    finally:
        os.umask(old)
    st = os.lstat(xdg)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


# ---------------------------------------------------------------- planted runtime directory

def _plant(kind: str, state: Path, tmp_path: Path) -> Path | None:
    """Plant the state dir; return a directory/file of ours that must stay untouched."""
    if kind == "other_owner":
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)
    elif kind == "mode_0777":
        state.mkdir()
        os.chmod(state, 0o777)
    elif kind == "symlink":
        target = tmp_path / "attacker-target"
        target.mkdir(mode=0o700)
        os.chmod(target, 0o700)
        state.symlink_to(target)
        return target
    elif kind == "regular_file":
        state.write_text("not a directory\n")
    return None


EXPECTED = {
    "other_owner": f"it is owned by uid {NOBODY} (mode 0700)",
    "mode_0777": "it has mode 0777 (group/other access",
    "symlink": "it is a symlink (to ",
    "regular_file": "it is a regular file",
}


def _check_refusal(stderr: str, state: Path, kind: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert f"unsafe runtime directory {state}:" in line, line
    assert EXPECTED[kind] in line, line
    assert f"owned by uid {os.geteuid()} with mode 0700" in line, line
    assert f"rm -rf -- {state}" in line and "XDG_RUNTIME_DIR" in line, line


@pytest.mark.fuse
@requires_fuse
@pytest.mark.parametrize("kind", ["other_owner", "mode_0777", "symlink", "regular_file"])
def test_planted_runtime_dir_refused(kind, xdg, tmp_path, make_layers):
    layers = make_layers([{"a": "1"}])
    target = _plant(kind, xdg, tmp_path)
    before = snapshot(xdg)
    before_target = snapshot(target) if target else None
    try:
        # the CLI (spawns a daemon)
        r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt)
        assert r.returncode == 3, (r.returncode, r.stderr)
        _check_refusal(r.stderr, xdg, kind)
        assert not daemon.is_mounted(str(layers.mnt))
        # the daemon body itself (foreground), the library and the mount(8) helper
        p = subprocess.Popen([sys.executable, "-m", "overlay_ref", "mount", layers.lowerdir,
                              str(layers.upper), str(layers.work), str(layers.mnt),
                              "--foreground"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            pytest.fail("the foreground daemon did not refuse the planted runtime directory")
        assert p.returncode == 3, err
        _check_refusal(err, xdg, kind)
        with pytest.raises(rundir.RuntimeDirError, match="unsafe runtime directory"):
            overlay_ref.mount([str(layers.lowers[0])], str(layers.upper), str(layers.work),
                              str(layers.mnt))
        with pytest.raises(rundir.RuntimeDirError, match="unsafe runtime directory"):
            rundir.pidfile_for(str(layers.mnt))
        env = dict(os.environ, KPROTO_OVL_PYTHON=sys.executable)
        r = subprocess.run([str(REPO / "overlay_ref" / "mount.fuse.kproto-ovl"), "kproto-ovl",
                            str(layers.mnt), "-o", f"lowerdir={layers.lowerdir},"
                            f"upperdir={layers.upper},workdir={layers.work}"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 32, r.stderr
        assert f"unsafe runtime directory {xdg}:" in r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
        # nothing was written into (or through) the planted path
        assert snapshot(xdg) == before
        if target is not None:
            assert snapshot(target) == before_target
    finally:
        _cleanup(layers.mnt, _serving_pid(layers.mnt))


# ---------------------------------------------------------------- planted pidfile

@pytest.mark.fuse
@requires_fuse
def test_planted_pidfile_symlink_not_written_through(xdg, tmp_path, make_layers):
    layers = make_layers([{"a": "1"}])
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o644)
    before = snapshot(victim)
    rundir.open_runtime_dir().close()                  # a good, private state dir
    link = xdg / pidname(layers.mnt)
    link.symlink_to(victim)
    pid = None
    try:
        r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt)
        if r.returncode == 0:
            # replaced safely: the pidfile is now a regular 0600 file of ours
            st = os.lstat(link)
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.geteuid()
            pid = int(link.read_text().split()[0])
            assert procs.daemon_mismatch(pid, str(layers.mnt)) is None
            assert (layers.mnt / "a").read_text() == "1"
        else:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert not daemon.is_mounted(str(layers.mnt))
        assert snapshot(victim) == before
        assert sorted(os.listdir(xdg)) == [pidname(layers.mnt)]   # no temporary left behind
        if pid is None:
            return
        # the reading side: a symlink planted at the pidfile is not followed either
        victim2 = tmp_path / "victim2"
        victim2.write_text(f"{pid}\n")
        link.unlink()
        link.symlink_to(victim2)
        before2 = snapshot(victim2)
        r = cli("umount", layers.mnt)
        assert r.returncode == 0, r.stderr
        assert "is a symlink; not following it" in r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
        assert _wait_gone(pid)                          # the daemon exits once unmounted
        assert snapshot(victim2) == before2 and snapshot(victim) == before
        assert not os.path.lexists(link)                # the planted link is removed, unfollowed
    finally:
        _cleanup(layers.mnt, pid)
    layers.check_lowers()


# ---------------------------------------------------------------- umount signals only our daemon

def _decoy(kind: str, mnt: Path) -> subprocess.Popen:
    if kind == "sleep":
        return subprocess.Popen(["sleep", "60"])
    code = "import time; time.sleep(60)"
    # a command line that names overlay_ref and a mountpoint, as the daemon's does
    if kind == "other_uid":
        return subprocess.Popen([sys.executable, "-c", code, "-m", "overlay_ref", "_serve",
                                 str(mnt)], user=NOBODY, group=NOBODY, cwd="/")
    assert kind == "other_mountpoint"
    return subprocess.Popen([sys.executable, "-c", code, "-m", "overlay_ref", "_serve",
                             str(mnt) + "-other"], cwd="/")


@pytest.mark.fuse
@requires_fuse
@pytest.mark.parametrize("kind,why", [("sleep", "is not overlay_ref (sleep 60)"),
                                      ("other_uid", f"runs as uid {NOBODY}/{NOBODY}, not"),
                                      ("other_mountpoint", "does not serve")])
def test_umount_does_not_signal_unrelated_pid(kind, why, xdg, make_layers):
    layers = make_layers([{"a": "1"}])
    decoy = _decoy(kind, layers.mnt)
    pid = None
    try:
        pidfile, pid = _mount(layers, xdg)
        assert procs.daemon_mismatch(pid, str(layers.mnt)) is None
        assert procs.daemon_mismatch(decoy.pid, str(layers.mnt)) is not None
        pidfile.write_text(f"{decoy.pid}\n")            # the pidfile now names the decoy
        t0 = time.monotonic()
        r = cli("umount", layers.mnt)
        assert r.returncode == 0, r.stderr
        assert f"not signalling pid {decoy.pid}" in r.stderr and why in r.stderr, r.stderr
        assert time.monotonic() - t0 < 8, "umount waited for an unrelated process"
        assert not daemon.is_mounted(str(layers.mnt))
        time.sleep(0.3)
        assert decoy.poll() is None, "umount signalled an unrelated process"
        assert _wait_gone(pid)                          # the real daemon exits by itself
        assert not pidfile.exists()
    finally:
        _cleanup(layers.mnt, pid)
        decoy.kill()
        decoy.wait()
    layers.check_lowers()


@pytest.mark.fuse
@requires_fuse
def test_umount_with_unsafe_runtime_dir_does_not_use_pidfile(xdg, make_layers):
    layers = make_layers([{"a": "1"}])
    decoy = subprocess.Popen(["sleep", "60"])
    pid = None
    try:
        pidfile, pid = _mount(layers, xdg)
        pidfile.write_text(f"{decoy.pid}\n")
        os.chmod(xdg, 0o777)                            # now anyone could have written it
        r = cli("umount", layers.mnt)
        assert r.returncode == 0, r.stderr
        assert "not using the daemon's pidfile: unsafe runtime directory" in r.stderr
        assert "it has mode 0777" in r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
        assert _wait_gone(pid)
        time.sleep(0.3)
        assert decoy.poll() is None
    finally:
        _cleanup(layers.mnt, pid)
        decoy.kill()
        decoy.wait()


# ---------------------------------------------------------------- the normal case

@pytest.mark.fuse
@requires_fuse
def test_mount_umount_private_state(xdg, make_layers):
    layers = make_layers([{"a": "1"}, {"b": "2"}])
    pid = None
    try:
        r = cli("mount", layers.lowerdir, layers.upper, layers.work, layers.mnt)
        assert r.returncode == 0, r.stderr
        st = os.lstat(xdg)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.geteuid()
        pidfile = xdg / pidname(layers.mnt)
        assert rundir.pidfile_for(str(layers.mnt)) == str(pidfile)
        pst = os.lstat(pidfile)
        assert stat.S_ISREG(pst.st_mode) and stat.S_IMODE(pst.st_mode) == 0o600
        pid = int(pidfile.read_text().split()[0])
        assert procs.daemon_mismatch(pid, str(layers.mnt)) is None
        assert sorted(os.listdir(layers.mnt)) == ["a", "b"]
        assert sorted(os.listdir(xdg)) == [pidfile.name]
        r = cli("umount", layers.mnt)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert not daemon.is_mounted(str(layers.mnt))
        assert _wait_gone(pid)
        assert os.listdir(xdg) == []
    finally:
        _cleanup(layers.mnt, pid)
    layers.check_lowers()


@pytest.mark.fuse
@requires_fuse
def test_library_mount_tmp_fallback(tmp_path, monkeypatch, make_layers, capfd):
    """No XDG_RUNTIME_DIR, no /run/user/<euid>: the state goes to $TMPDIR/kproto-ovl-<euid>
    (chosen by the caller and handed to the daemon), 0700; umount reaps the daemon quietly."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(rundir, "_RUN_USER", str(tmp_path / "no-run-user"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    state = tmp_path / "tmp" / f"kproto-ovl-{os.geteuid()}"
    assert rundir.runtime_dir() == str(state)
    layers = make_layers([{"a": "1"}])
    pid = None
    try:
        pid = overlay_ref.mount([str(layers.lowers[0])], str(layers.upper), str(layers.work),
                                str(layers.mnt))
        assert stat.S_IMODE(os.lstat(state).st_mode) == 0o700
        assert int((state / pidname(layers.mnt)).read_text().split()[0]) == pid
        overlay_ref.umount(str(layers.mnt))
        assert not _alive(pid) and not daemon.is_mounted(str(layers.mnt))
        assert os.listdir(state) == []
        assert "warning" not in capfd.readouterr().err
    finally:
        _cleanup(layers.mnt, pid)


def test_a_recorded_start_time_identifies_a_daemon_whose_command_line_does_not_name_the_mount(tmp_path):
    """A daemon forked by the helper's template has the template's command line; umount accepts it only
    as the very process its pidfile recorded (same start time), never by pid alone, never another uid."""
    mnt = tmp_path / "mnt"
    decoy = _decoy("other_mountpoint", mnt)          # names overlay_ref, runs as us, another mount point
    other = _decoy("other_uid", mnt)
    try:
        assert _wait_cmdline(decoy.pid) and _wait_cmdline(other.pid)
        started = rundir.start_time(decoy.pid)
        assert started is not None
        assert "does not serve" in procs.daemon_mismatch(decoy.pid, str(mnt))
        assert procs.daemon_mismatch(decoy.pid, str(mnt), started) is None
        assert "does not serve" in procs.daemon_mismatch(decoy.pid, str(mnt), started + 1)
        assert "runs as uid" in procs.daemon_mismatch(other.pid, str(mnt), rundir.start_time(other.pid))
    finally:
        for p in (decoy, other):
            p.kill()
            p.wait()


def _wait_cmdline(pid: int, t: float = 10.0) -> bool:
    """The decoy has exec'ed (its command line is python's with our arguments, not pytest's)."""
    deadline = time.monotonic() + t
    while time.monotonic() < deadline:
        if "_serve" in cmdline(pid):
            return True
        time.sleep(0.02)
    return False
