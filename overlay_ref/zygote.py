"""The mount(8) helper's template process: one interpreter with the daemon's imports done, which
forks a daemon for each mount and exits when no mount came for a while.

Why: a mount through mount(8) used to start Python and import pyfuse3, trio and the package
(about 0.1 s warm, 0.2 s after drop_caches), and outside suites remount after every step.  With a
template running, the helper only connects, sends its arguments and waits for the daemon's
``OK pid`` / ``ERR code message`` line.

- The first mount through the helper mounts as before (the helper forks into the daemon) and then
  starts a template (``python -P -m overlay_ref _zygote``); later mounts go through it.
- The template listens on ``zygote-<tag>.sock`` in the private runtime directory (rundir.py: 0700,
  owner verified), ``<tag>`` naming this interpreter and this copy of the package, so each checkout
  has its own.  It accepts only peers of its own uid (SO_PEERCRED).  One template per tag: it holds
  an flock on ``zygote-<tag>.lock`` while it runs.
- Per request it forks twice (the daemon is a new session whose parent is init, as the helper's
  fork was), the daemon enters the caller's directory to read relative layer paths, goes to ``/``
  and serves with the connection as its ready pipe.
- It exits after ``KPROTO_OVL_ZYGOTE_IDLE`` seconds (default 30) without a request, and when the
  package's source files changed since it started (the request is answered ``STALE`` and the helper
  mounts by itself, then starts a template with the new code: the old one gave up its socket,
  pidfile and lock before answering).  ``KPROTO_OVL_ZYGOTE=0`` turns it off: every mount starts its
  own interpreter.
- Its daemons run with the environment of the mount that started the template (the daemon reads
  none of it: the runtime directory is passed on, the rest comes in the request).
- umount knows a daemon forked here by the pid and start time in its pidfile (its command line is
  the template's, which does not name the mount point)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Callable

from .errors import OverlayRefError, from_ready_error_line, ready_error_line

if TYPE_CHECKING:
    from .rundir import RunDir

ENV_SWITCH = "KPROTO_OVL_ZYGOTE"          # "0": no template; mount(8) starts an interpreter per mount
ENV_IDLE = "KPROTO_OVL_ZYGOTE_IDLE"       # seconds a template waits for the next mount before it exits
IDLE_S = 30.0
REPLY_TIMEOUT = 60.0                      # the daemon's own mount time limit is 30 s (daemon.READY_TIMEOUT)
MAX_REQUEST = 1 << 16

PKG = os.path.dirname(os.path.abspath(__file__))


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def idle_seconds() -> float:
    try:
        return max(0.1, float(os.environ.get(ENV_IDLE, IDLE_S)))
    except ValueError:
        return IDLE_S


def tag() -> str:
    """This interpreter and this copy of the package."""
    return hashlib.sha1(f"{sys.executable}\0{PKG}".encode()).hexdigest()[:12]


def names() -> tuple[str, str, str]:
    """The socket, lock and pidfile names of this tag's template in the runtime directory."""
    t = tag()
    return f"zygote-{t}.sock", f"zygote-{t}.lock", f"zygote-{t}.pid"


def code_stamp() -> tuple[tuple[str, int, int], ...]:
    """The package's source files as (name, size, mtime): a template whose stamp differs from the
    files on disk runs old code."""
    out = []
    for n in sorted(os.listdir(PKG)):
        if n.endswith(".py"):
            st = os.stat(os.path.join(PKG, n))
            out.append((n, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _existing_runtime_dir() -> RunDir | None:
    """The verified runtime directory, open; None when there is none yet or it is unsafe (no
    template then: mounts refuse an unsafe one with their own message)."""
    from .rundir import RuntimeDirError, open_runtime_dir
    try:
        return open_runtime_dir(create=False)
    except RuntimeDirError:
        return None


def _runtime_path() -> str | None:
    rd = _existing_runtime_dir()
    if rd is None:
        return None
    rd.close()
    return rd.path


# ------------------------------------------------------------------ the helper's side

def mount(argv: list[str]) -> int | None:
    """Have a running template mount ARGV (mount(8)'s arguments): 0 once the daemon says the mount
    is ready; raises OverlayRefError/BadInput with the daemon's message; None when no template
    answered (none running, an old one, turned off): the caller mounts by itself."""
    if not enabled():
        return None
    run_dir = _runtime_path()
    if run_dir is None:
        return None
    path = os.path.join(run_dir, names()[0])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            s.connect(path)
        except OSError:                   # none (ENOENT), a dead one's socket (ECONNREFUSED), path too long
            return None
        s.settimeout(REPLY_TIMEOUT)
        s.sendall(json.dumps({"argv": argv, "cwd": os.getcwd()}).encode() + b"\n")
        buf = b""
        try:
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            raise OverlayRefError(f"the template process sent no answer within {REPLY_TIMEOUT:.0f} s")
        except OSError:                   # reset before any answer: the template was exiting
            if not buf:
                return None
            raise
    finally:
        s.close()
    line = buf.decode(errors="replace").strip()
    if not buf or line == "STALE":        # nothing was started: mount by ourselves
        return None
    if line.startswith("OK"):
        return 0
    if line.startswith("ERR"):
        raise from_ready_error_line(line)
    raise OverlayRefError(f"the daemon exited before the mount was ready ({line or 'no answer'})")


def start() -> None:
    """Start this tag's template in the background (it exits at once when one is already running).
    Nothing when turned off or when there is no runtime directory."""
    if not enabled():
        return
    run_dir = _runtime_path()
    if run_dir is None:
        return
    import subprocess
    env = dict(os.environ)
    parent = os.path.dirname(PKG)
    env["PYTHONPATH"] = parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    subprocess.Popen([sys.executable, "-P", "-m", "overlay_ref", "_zygote", "--run-dir", run_dir],
                     cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


def running_pid() -> int | None:
    """The pid of this tag's running template (from its pidfile), None when none runs."""
    from .procs import _pid_alive
    from .rundir import RuntimeDirError, _read_pidfile_entry, start_time
    rd = _existing_runtime_dir()
    if rd is None:
        return None
    try:
        pid, started = _read_pidfile_entry(rd, names()[2])
    except RuntimeDirError:
        return None
    finally:
        rd.close()
    if pid is None or not _pid_alive(pid) or start_time(pid) != started:
        return None
    return pid


def stop(timeout: float = 10.0) -> int | None:
    """SIGTERM this tag's running template and wait for it to exit (it removes its socket and
    pidfile as when idle); its pid, None when none was running."""
    from .procs import _wait_exit
    pid = running_pid()
    if pid is None:
        return None
    try:
        pidfd = os.pidfd_open(pid)        # taken before the signal: a reused pid is never hit
    except ProcessLookupError:
        return pid
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        _wait_exit(pid, pidfd, timeout)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)
    return pid


# ------------------------------------------------------------------ the template

def serve(run_dir: str | None = None) -> int:
    """Run the template until it has been idle for idle_seconds() or its code changed; 0 also when
    another template of this tag is already running (this one then exits at once)."""
    import fcntl
    import select

    # what every daemon needs, imported once here (the point of the template)
    import pyfuse3  # noqa: F401
    import trio  # noqa: F401

    from . import daemon, fs  # noqa: F401
    from .rundir import _remove_pidfile, _write_pidfile, open_runtime_dir

    def _terminate(_sig, _frame):     # SIGTERM/SIGHUP: leave as when idle (socket and pidfile removed)
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    sock_name, lock_name, pid_name = names()
    idle = idle_seconds()
    stamp = code_stamp()
    rd = open_runtime_dir(run_dir)
    lock = os.open(lock_name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=rd.fd)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0                      # one is running
        try:
            os.unlink(sock_name, dir_fd=rd.fd)      # a dead template's socket
        except FileNotFoundError:
            pass
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)
        try:
            srv.bind(os.path.join(rd.path, sock_name))
        finally:
            os.umask(old)
        srv.listen(32)
        _write_pidfile(rd, pid_name, os.getpid())
        left = False

        def leave() -> None:
            """Give up the name before the last answers: no new connection can come once the socket
            is unlinked, and with the pidfile gone and the lock released a new template can start at
            once (the helper that got STALE starts one with the new code)."""
            nonlocal left
            if left:
                return
            left = True
            try:
                os.unlink(sock_name, dir_fd=rd.fd)
            except FileNotFoundError:
                pass
            _remove_pidfile(rd, pid_name, only_pid=os.getpid())
            fcntl.flock(lock, fcntl.LOCK_UN)

        try:
            while True:
                if not select.select([srv], [], [], idle)[0]:
                    break
                conn, _ = srv.accept()
                if not _handle(conn, srv, lock, rd.path, stamp, leave):
                    break
            leave()
            # answer the connections already queued
            srv.setblocking(False)
            while True:
                try:
                    conn, _ = srv.accept()
                except BlockingIOError:
                    break
                conn.setblocking(True)
                _handle(conn, srv, lock, rd.path, stamp, leave)
        finally:
            leave()
            srv.close()
    finally:
        os.close(lock)
        rd.close()
    return 0


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _handle(conn: socket.socket, srv: socket.socket, lock: int, run_dir: str, stamp: tuple,
            leave: Callable[[], None]) -> bool:
    """Answer one request; False when this template should exit (its code changed: it LEAVEs before
    it answers STALE, so the helper's next template is not refused by this one's lock)."""
    with conn:
        if _peer_uid(conn) != os.geteuid():
            return True                   # closed unanswered: the runtime directory is 0700 anyway
        conn.settimeout(5)
        buf = b""
        try:
            while b"\n" not in buf and len(buf) < MAX_REQUEST:
                chunk = conn.recv(4096)
                if not chunk:
                    return True
                buf += chunk
            req = json.loads(buf)
            argv = [str(a) for a in req["argv"]]
            cwd = str(req["cwd"])
        except (OSError, ValueError, KeyError, TypeError):
            return True
        if code_stamp() != stamp:
            leave()
            try:
                conn.sendall(b"STALE\n")
            except OSError:
                pass
            return False
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                srv.close()
                os.close(lock)            # the lock is the template's alone
                os.setsid()
                if os.fork():             # the daemon's parent is init, as with the helper's own fork
                    code = 0
                else:
                    conn.settimeout(None)     # blocking again: the daemon writes its answer with os.write
                    code = _daemon(conn.detach(), argv, cwd, run_dir)
            finally:
                os._exit(code)
        os.waitpid(pid, 0)
    return True


def _daemon(ready: int, argv: list[str], cwd: str, run_dir: str) -> int:
    """The forked daemon: parse ARGV in the caller's directory CWD, then serve from / with READY as
    the ready pipe.  Returns the exit status."""
    from . import daemon
    from .mount_helper import config_from_argv
    try:
        os.chdir(cwd)
        cfg, _foreground = config_from_argv(argv)
        os.chdir("/")
    except (OverlayRefError, OSError) as e:
        err = e if isinstance(e, OverlayRefError) else OverlayRefError(f"cannot enter {cwd}: {e.strerror}")
        try:
            os.write(ready, ready_error_line(err))
        except OSError:
            pass
        return err.exit_code
    return daemon.serve_detached(cfg, ready, run_dir, daemon.detached_stdio(cfg))
