"""The daemon's process, seen from mount/umount: is a pid the overlay_ref daemon of a mountpoint,
is it alive, and waiting for it to exit (SIGTERM, then SIGKILL, through a pidfd)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

from .errors import _warn
from .rundir import start_time

_children: dict[int, subprocess.Popen] = {}     # daemons spawn() started, by pid

_NO_CMDLINE = "has no command line (exiting, or a kernel thread)"


def daemon_mismatch(pid: int, mountpoint: str, started: int | None = None) -> str | None:
    """None when ``pid`` is an overlay_ref daemon of ``mountpoint`` running as our euid (its
    /proc/PID/status real and effective uid are ours, its command line names overlay_ref, and
    either names the mountpoint or ``pid`` is the process that started at ``started``, the start
    time its pidfile recorded: a daemon forked from the mount(8) helper's template process has
    the template's command line); else why not."""
    mp = os.path.abspath(mountpoint)
    euid = os.geteuid()
    if pid <= 1:
        return f"pid {pid} is not a daemon pid"
    if pid == os.getpid():
        return f"pid {pid} is this process"
    try:
        with open(f"/proc/{pid}/status") as f:
            uids = next((line.split()[1:3] for line in f if line.startswith("Uid:")), None)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return f"pid {pid} does not exist"
    except OSError as e:
        return f"cannot inspect pid {pid}: {e.strerror}"
    if not uids or [int(u) for u in uids] != [euid, euid]:
        return f"pid {pid} runs as uid {'/'.join(uids or ['?'])}, not {euid}"
    args = [a.decode(errors="surrogateescape") for a in raw.split(b"\0")]
    if args and args[-1] == "":
        args.pop()
    if not args:
        return f"pid {pid} {_NO_CMDLINE}"
    shown = " ".join(args)[:200]
    idx = next((i for i, a in enumerate(args) if "overlay_ref" in a), None)
    if idx is None:
        return f"pid {pid} is not overlay_ref ({shown})"
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = "/"
    if not any(os.path.normpath(os.path.join(cwd, a)) == mp for a in args[idx + 1:] if a):
        if started is not None and start_time(pid) == started:
            return None
        return f"pid {pid} does not serve {mp} ({shown})"
    return None


def _pid_alive(pid: int) -> bool:
    ch = _children.get(pid)
    if ch is not None:
        return ch.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _verify_daemon(pid: int, mountpoint: str, started: int | None = None) -> str | None:
    """daemon_mismatch(), except that a process that exits meanwhile is no mismatch (a daemon
    that is exiting after the unmount has no command line for a moment)."""
    why = daemon_mismatch(pid, mountpoint, started)
    deadline = time.monotonic() + 1.0
    while (why is not None and why.endswith(_NO_CMDLINE) and _pid_alive(pid)
           and time.monotonic() < deadline):
        time.sleep(0.02)
        why = daemon_mismatch(pid, mountpoint, started)
    if why is not None and not _pid_alive(pid):
        return None
    return why


def _wait_exit(pid: int, pidfd: int | None, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``pid`` to exit: woken by its pidfd (readable once the
    process has exited) when there is one, else polling every 20 ms."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if pidfd is not None:
            if select.select([pidfd], [], [], min(left, 0.5))[0]:
                time.sleep(0.001)         # exited: let _pid_alive see it (never a busy loop)
        else:
            time.sleep(min(left, 0.02))


def _reap(pid: int, wait: float, mountpoint: str, started: int | None = None) -> None:
    """Wait for the daemon ``pid`` of ``mountpoint`` to exit; SIGTERM, then SIGKILL it if it
    does not.  Nothing is waited for or signalled unless ``pid`` is that daemon
    (daemon_mismatch); the signals go through a pidfd taken before the check, so a pid reused
    after the check is not hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None                      # already gone (and reaped)
    except OSError:
        pidfd = None
    try:
        why = _verify_daemon(pid, mountpoint, started)
        if why is not None:
            _warn(f"not signalling pid {pid} from the pidfile of {mountpoint}: {why}")
            return
        _wait_exit(pid, pidfd, wait)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _pid_alive(pid):
                break
            why = _verify_daemon(pid, mountpoint, started)
            if why is not None:
                _warn(f"not signalling pid {pid} from the pidfile of {mountpoint}: {why}")
                return
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, sig)
                else:
                    os.kill(pid, sig)
            except ProcessLookupError:
                break
            _wait_exit(pid, pidfd, 3)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    ch = _children.pop(pid, None)
    if ch is not None:
        try:
            ch.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
