"""Mounting, serving and unmounting the reference overlay."""

from __future__ import annotations

import hashlib
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

from .config import OverlayConfig
from .errors import BadInput, OverlayRefError

READY_TIMEOUT = 30.0
_children: dict[int, subprocess.Popen] = {}


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


# ---------------------------------------------------------------- pid files

def _run_dir() -> str:
    d = os.path.join(tempfile.gettempdir(), f"kproto-ovl-{os.geteuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def pidfile_for(mountpoint: str) -> str:
    h = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(_run_dir(), h + ".pid")


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


# ---------------------------------------------------------------- serving

def serve(cfg: OverlayConfig, ready_fd: int | None = None) -> None:
    """Mount and serve in this process until unmounted (or SIGTERM/SIGINT)."""
    import pyfuse3
    import trio

    from .fs import OverlayFS

    handlers: list[logging.Handler] = []
    if cfg.log:
        handlers.append(logging.FileHandler(cfg.log))
        logging.basicConfig(level=logging.DEBUG if cfg.debug else logging.INFO,
                            handlers=handlers,
                            format="%(asctime)s %(process)d %(levelname)s %(message)s")
    try:
        cfg.validate()
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
        if ready_fd is not None:
            os.write(ready_fd, f"ERR {e.exit_code} {e}\n".encode())
            os.close(ready_fd)
        raise

    pidfile = pidfile_for(cfg.mountpoint)
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
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
                await pyfuse3.main(min_tasks=2, max_tasks=64)
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
        try:
            with open(pidfile) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(pidfile)
        except OSError:
            pass


def _stale(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno in (107, 5)       # ENOTCONN, EIO
    return False


def spawn(cfg: OverlayConfig) -> int:
    """Start a daemon serving ``cfg``; return its pid once the mount is ready."""
    cfg.validate()
    r, w = os.pipe()
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "overlay_ref", "_serve", "--ready-fd", str(w),
           ":".join(cfg.lowers), cfg.upper, cfg.work, cfg.mountpoint]
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
    opts.extend(cfg.fuse_extra)
    cmd += ["-o", ",".join(opts)]
    errlog = open(cfg.log, "ab") if cfg.log else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, pass_fds=(w,), start_new_session=True, env=env,
                                stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
                                cwd="/")
    finally:
        os.close(w)
        if errlog is not subprocess.DEVNULL:
            errlog.close()
    _children[proc.pid] = proc
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
        _, code, msg = (line.split(" ", 2) + ["", ""])[:3]
        exc = BadInput if code == "2" else OverlayRefError
        raise exc(msg)
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
    pid = None
    try:
        with open(pidfile_for(mp)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pass
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
    if pid is not None:
        _reap(pid, wait)
        try:
            os.unlink(pidfile_for(mp))
        except OSError:
            pass


def _reap(pid: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _pid_alive(pid):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        t = time.monotonic() + 3
        while _pid_alive(pid) and time.monotonic() < t:
            time.sleep(0.02)
    ch = _children.pop(pid, None)
    if ch is not None:
        try:
            ch.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
