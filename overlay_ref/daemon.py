"""Mounting, serving and unmounting the reference overlay: the mount table, serve() (mount and
serve in this process), spawn() (start a daemon, wait until it has mounted) and umount()."""

from __future__ import annotations

import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from .config import OverlayConfig
from .errors import BadInput, OverlayRefError, _warn, from_ready_error_line, ready_error_line
from .procs import _children, _reap
from .rundir import (RunDir, RuntimeDirError, _pidname, _read_pidfile_entry, _remove_pidfile,
                     _write_pidfile, open_runtime_dir)

READY_TIMEOUT = 30.0


# ---------------------------------------------------------------- mount table

def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_entry(mountpoint: str) -> dict | None:
    """The /proc/self/mountinfo entry of ``mountpoint`` (last one wins), or None."""
    mp = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if _unescape(parts[4]) == mp:
                    sep = parts.index("-")
                    found = {"fstype": parts[sep + 1], "source": _unescape(parts[sep + 2]),
                             "options": parts[5]}
    except OSError:
        return None
    return found


def is_mounted(mountpoint: str) -> bool:
    return mount_entry(mountpoint) is not None


# ---------------------------------------------------------------- serving

log = logging.getLogger("overlay_ref")


def _mount_dev(mountpoint: str) -> str | None:
    """MAJOR:MINOR of the filesystem mounted last on ``mountpoint``, from /proc/self/mountinfo
    (a stat of the mount point would be a FUSE request the daemon is not serving yet)."""
    dev = None
    # realpath of the parent only: resolving the mount point itself would stat it (FUSE)
    mountpoint = os.path.join(os.path.realpath(os.path.dirname(mountpoint)),
                              os.path.basename(mountpoint))
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
                if mp == os.fsencode(mountpoint):
                    dev = fields[2].decode()
    except (OSError, IndexError):
        return None
    return dev


def _set_read_ahead(mountpoint: str, kb: int) -> None:
    """Set the readahead of the new FUSE mount (its bdi's ``read_ahead_kb``).  The kernel's
    default for FUSE is 128 KiB, so a sequential read reaches the daemon as 128 KiB requests,
    each paying the per-request cost of FUSE and pyfuse3; with 1 MiB (the largest request
    libfuse 3 negotiates, max_pages 256) a quarter of that.  Only root may write it: anyone
    else keeps the kernel's default (logged)."""
    dev = _mount_dev(mountpoint)
    if dev is None:
        log.info("read_ahead_kb: %s not found in /proc/self/mountinfo", mountpoint)
        return
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(f"{kb}\n")
    except OSError as e:
        log.info("read_ahead_kb: cannot set it for %s (bdi %s): %s", mountpoint, dev,
                 e.strerror)


def serve(cfg: OverlayConfig, ready_fd: int | None = None, run_dir: str | None = None) -> None:
    """Mount and serve in this process until unmounted (or SIGTERM/SIGINT).  The pidfile goes
    to ``run_dir`` (default: the runtime directory of this euid), which is verified first."""
    import pyfuse3
    import trio

    from .fs import OverlayFS

    handlers: list[logging.Handler] = []
    if cfg.log:
        handlers.append(logging.FileHandler(cfg.log))
        logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.INFO,
                            handlers=handlers,
                            format="%(asctime)s %(process)d %(levelname)s %(message)s")

    def _report(e: OverlayRefError) -> None:
        if ready_fd is not None:
            os.write(ready_fd, ready_error_line(e))
            os.close(ready_fd)

    rd: RunDir | None = None
    try:
        cfg.validate()
        rd = open_runtime_dir(run_dir)            # refused before anything is mounted
        if is_mounted(cfg.mountpoint) and _stale(cfg.mountpoint):
            raise OverlayRefError(f"{cfg.mountpoint}: stale mount (Transport endpoint is not "
                                  "connected); umount it first")
        ops = OverlayFS(cfg)
        opts = set(pyfuse3.default_options)
        opts.add("fsname=kproto-ovl")
        opts.add("subtype=kproto-ovl")
        if cfg.allow_other:
            opts.add("allow_other")
        opts.update(cfg.fuse_extra)
        try:
            pyfuse3.init(ops, cfg.mountpoint, opts)
        except RuntimeError as e:
            raise OverlayRefError(f"FUSE mount of {cfg.mountpoint} failed: {e}") from None
    except OverlayRefError as e:
        if rd is not None:
            rd.close()
        _report(e)
        raise

    if cfg.read_ahead_kb is not None:
        ra_kb = cfg.read_ahead_kb
        ops.after_init = lambda: _set_read_ahead(cfg.mountpoint, ra_kb)

    pidname = _pidname(cfg.mountpoint)
    try:
        _write_pidfile(rd, pidname, os.getpid())
    except (OSError, OverlayRefError) as e:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            pass
        rd.close()
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        err = OverlayRefError(f"cannot write pidfile {os.path.join(rd.path, pidname)}: {why}")
        _report(err)
        raise err from None
    if ready_fd is not None:
        os.write(ready_fd, f"OK {os.getpid()}\n".encode())
        os.close(ready_fd)

    async def _main():
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            ops._trio_token = trio.lowlevel.current_trio_token()

            async def _signals():
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                               signal.SIGHUP) as sigs:
                    async for _ in sigs:
                        pyfuse3.terminate()
                        return
            nursery.start_soon(_signals)
            try:
                await pyfuse3.main(min_tasks=1, max_tasks=64)
            finally:
                ops.nursery = None
                nursery.cancel_scope.cancel()

    try:
        trio.run(_main)
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            pass
        _remove_pidfile(rd, pidname, only_pid=os.getpid())
        rd.close()


def _stale(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno in (107, 5)       # ENOTCONN, EIO
    return False


class _Forked:
    """A daemon forked from this process, seen through the few calls spawn() makes on a Popen."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG if deadline is not None else 0)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            else:
                time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def detached_stdio(cfg: OverlayConfig) -> tuple[int, int]:
    """The fds a detached daemon's stdio goes to: (/dev/null for stdin, the log or /dev/null for
    stdout and stderr)."""
    out = os.open(cfg.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644) \
        if cfg.log else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return null, out


def serve_detached(cfg: OverlayConfig, ready_fd: int, run_dir: str, stdio: tuple[int, int]) -> int:
    """The body of a forked daemon (the helper's fork, the template's): fds 0-2 on STDIO
    (detached_stdio()), then serve(); returns the exit status.  serve() reports its own errors on
    the ready pipe; anything else goes to the log (the waiting side gets EOF)."""
    null, out = stdio
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)                               # sys.std* write to the new fds 0-2
    try:
        serve(cfg, ready_fd=ready_fd, run_dir=run_dir)
    except OverlayRefError as e:                  # serve() reported it on the ready pipe
        return e.exit_code
    except BaseException as e:                    # noqa: BLE001 - the waiting side gets EOF
        try:
            os.write(2, f"overlay_ref daemon: {type(e).__name__}: {e}\n".encode())
        except OSError:
            pass
        return 3
    return 0


def _fork_daemon(cfg: OverlayConfig, w: int, r: int, run_dir: str) -> _Forked:
    """Fork this (single-threaded) process into the daemon: what spawn() does without starting a
    second interpreter and importing the package again, which is most of a mount's cost."""
    null, out = stdio = detached_stdio(cfg)
    sys.stdout.flush()                            # nothing of ours is written twice by the child
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(out)
        os.close(null)
        return _Forked(pid)
    code = 3
    try:                                          # the child: never returns into the caller
        os.close(r)
        os.setsid()
        os.chdir("/")
        code = serve_detached(cfg, w, run_dir, stdio)
    finally:
        os._exit(code)


def spawn(cfg: OverlayConfig, fork: bool = False) -> int:
    """Start a daemon serving ``cfg``; return its pid once the mount is ready.

    With ``fork`` (for entry points that exit right after: the mount(8) helper and ``python -m
    overlay_ref mount``), the daemon is a fork of this process when it is single-threaded, which
    saves an interpreter start and the package's imports per mount; the daemon's command line is
    then the caller's, which must name the absolute mount point (umount() checks it).  Otherwise
    (a library caller, maybe threaded), a new interpreter runs ``python -m overlay_ref _serve``."""
    cfg.validate()
    with open_runtime_dir() as rd:                # refused here, before anything is started
        run_dir = rd.path
    r, w = os.pipe()
    proc: subprocess.Popen | _Forked
    if fork and threading.active_count() == 1:
        try:
            proc = _fork_daemon(cfg, w, r, run_dir)
        finally:
            os.close(w)
    else:
        proc = _popen_daemon(cfg, w, run_dir)
        _children[proc.pid] = proc
    return _await_ready(cfg, proc, r)


def _popen_daemon(cfg: OverlayConfig, w: int, run_dir: str) -> subprocess.Popen:
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "overlay_ref", "_serve", "--ready-fd", str(w),
           "--run-dir", run_dir, ":".join(cfg.lowers), cfg.upper, cfg.work, cfg.mountpoint]
    opts = []
    if cfg.redirect_dir:
        opts.append("redirect_dir=on")
    elif not cfg.follow_redirects:
        opts.append("redirect_dir=nofollow")
    if cfg.userxattr:
        opts.append("userxattr")
    opts.append(f"allow_other={'on' if cfg.allow_other else 'off'}")
    opts.append(f"attr_timeout={cfg.attr_timeout}")
    if cfg.log:
        opts.append(f"log={cfg.log}")
    if cfg.debug:
        opts.append("debug")
    if not cfg.inline:
        opts.append("inline=off")
    opts.append(f"dirfd_cache={cfg.dirfd_cache}")
    opts.append(f"read_ahead_kb={'kernel' if cfg.read_ahead_kb is None else cfg.read_ahead_kb}")
    opts.extend(cfg.fuse_extra)
    cmd += ["-o", ",".join(opts)]
    errlog = open(cfg.log, "ab") if cfg.log else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, pass_fds=(w,), start_new_session=True, env=env,
                                stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                cwd="/")
    finally:
        os.close(w)
        if not isinstance(errlog, int):         # not subprocess.DEVNULL
            errlog.close()


def _await_ready(cfg: OverlayConfig, proc: subprocess.Popen | _Forked, r: int) -> int:
    """Wait for the daemon's ``OK pid`` / ``ERR code message`` line on the ready pipe ``r``."""
    buf = b""
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise OverlayRefError(f"daemon did not mount {cfg.mountpoint} within "
                                      f"{READY_TIMEOUT:.0f} s")
            rl, _, _ = select.select([r], [], [], left)
            if not rl:
                continue
            chunk = os.read(r, 4096)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(r)
    line = buf.decode(errors="replace").strip()
    if line.startswith("OK"):
        return proc.pid
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _children.pop(proc.pid, None)
    if line.startswith("ERR"):
        raise from_ready_error_line(line)
    raise OverlayRefError(f"daemon exited with status {proc.returncode} before the mount "
                          f"was ready")


# ---------------------------------------------------------------- unmounting

def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        return subprocess.CompletedProcess(cmd, 127, "", str(e))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", "timed out")


def umount(mountpoint: str, wait: float = 10.0) -> None:
    mp = os.path.abspath(mountpoint)
    if not is_mounted(mp):
        raise BadInput(f"{mp} is not mounted")
    ent = mount_entry(mp)
    pid = started = None
    pidname = _pidname(mp)
    rd: RunDir | None = None
    try:
        rd = open_runtime_dir(create=False)
        if rd is not None:
            pid, started = _read_pidfile_entry(rd, pidname)
    except RuntimeDirError as e:
        _warn(f"not using the daemon's pidfile: {e}")
    try:
        _unmount(mp, ent)
        if pid is not None:
            _reap(pid, wait, mp, started)
        if rd is not None:
            _remove_pidfile(rd, pidname, only_pid=pid)
    finally:
        if rd is not None:
            rd.close()


def _unmount(mp: str, ent: dict | None) -> None:
    errors = []
    is_fuse = ent is not None and ent["fstype"].startswith("fuse")
    attempts = ([["fusermount3", "-u", mp]] if is_fuse else []) + [["umount", mp]]
    attempts += ([["fusermount3", "-uz", mp]] if is_fuse else []) + [["umount", "-l", mp]]
    for cmd in attempts:
        res = _run(cmd)
        if res.returncode == 0 and not is_mounted(mp):
            break
        errors.append((res.stderr or res.stdout).strip().splitlines()[-1:] or [""])
    if is_mounted(mp):
        msg = "; ".join(e[0] for e in errors if e and e[0]) or "unknown error"
        raise OverlayRefError(f"cannot unmount {mp}: {msg}")
