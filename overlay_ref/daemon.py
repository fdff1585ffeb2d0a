"""Mounting, serving and unmounting the reference overlay."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import select
import signal
import stat
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


# ---------------------------------------------------------------- runtime state
#
# The daemon's state (one pidfile per mountpoint) lives in a private runtime directory:
#   $XDG_RUNTIME_DIR/kproto-ovl      when XDG_RUNTIME_DIR is set and usable,
#   /run/user/<euid>/kproto-ovl      else, when that directory exists and is ours,
#   $TMPDIR/kproto-ovl-<euid>        else (TMPDIR defaults to /tmp).
# "Usable"/"ours": an absolute path to a real directory (not a symlink) owned by the euid with
# no group/other access.  The runtime directory itself is created with mode 0700 and then
# checked through an O_NOFOLLOW|O_DIRECTORY fd: a symlink, a non-directory, another owner or any
# group/other permission bit is refused (someone else could have planted it).  Files in it are
# only ever opened relative to that fd, with O_NOFOLLOW; the pidfile is written to a fresh
# O_EXCL temporary name and renamed into place (which replaces a planted symlink, never writes
# through it).  Before umount signals the pid a pidfile names, it checks that the process is an
# overlay_ref daemon of that mountpoint running as our euid.

RUNTIME_SUBDIR = "kproto-ovl"
_RUN_USER = "/run/user"          # tests may point this elsewhere


class RuntimeDirError(OverlayRefError):
    """The runtime directory (or a file in it) is not private to us: refused."""


def _private_dir(path: str) -> bool:
    """``path`` is a real directory (not a symlink) owned by the euid, no group/other access,
    and we can write to it."""
    if not path or not os.path.isabs(path):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & 0o077 and os.access(path, os.W_OK | os.X_OK))


def runtime_dir() -> str:
    """The path of the runtime directory for this euid (see the rule above; not created)."""
    euid = os.geteuid()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if _private_dir(xdg):
        return os.path.join(xdg, RUNTIME_SUBDIR)
    run_user = os.path.join(_RUN_USER, str(euid))
    if _private_dir(run_user):
        return os.path.join(run_user, RUNTIME_SUBDIR)
    return os.path.join(tempfile.gettempdir(), f"{RUNTIME_SUBDIR}-{euid}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a fifo"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "of unknown type"


def _unsafe_dir(path: str, found: str) -> RuntimeDirError:
    euid = os.geteuid()
    return RuntimeDirError(
        f"unsafe runtime directory {path}: {found}; it must be a directory owned by uid {euid} "
        f"with mode 0700 (not a symlink). Fix: remove it (rm -rf -- {path}) and retry, or set "
        f"XDG_RUNTIME_DIR to a private directory")


def _check_private(path: str, st: os.stat_result) -> None:
    euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise _unsafe_dir(path, f"it is a symlink (to {target}), owner uid {st.st_uid}")
    if not stat.S_ISDIR(st.st_mode):
        raise _unsafe_dir(path, f"it is {_kind(st.st_mode)} (owner uid {st.st_uid}, "
                                f"mode {mode:04o})")
    if st.st_uid != euid:
        raise _unsafe_dir(path, f"it is owned by uid {st.st_uid} (mode {mode:04o})")
    if mode & 0o077:
        raise _unsafe_dir(path, f"it has mode {mode:04o} (group/other access; owner uid "
                                f"{st.st_uid})")


class RunDir:
    """An open, verified runtime directory: ``fd`` (O_DIRECTORY|O_NOFOLLOW) and ``path``."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_runtime_dir(path: str | None = None, create: bool = True) -> RunDir | None:
    """Create (mode 0700) and/or open and verify the runtime directory.  Raises RuntimeDirError
    when it is not private to us; returns None when it does not exist and ``create`` is off."""
    path = os.path.abspath(path or runtime_dir())
    created = False
    if create:
        try:
            os.mkdir(path, 0o700)
            created = True
        except FileExistsError:
            pass
        except OSError as e:
            raise RuntimeDirError(f"cannot create runtime directory {path}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if create:
            raise RuntimeDirError(f"runtime directory {path} vanished while being created") \
                from None
        return None
    except OSError as e:
        raise RuntimeDirError(f"cannot examine runtime directory {path}: {e.strerror}") from None
    _check_private(path, st)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        # swapped between lstat and open: describe what is there now
        try:
            _check_private(path, os.lstat(path))
        except OSError:
            pass
        raise RuntimeDirError(f"cannot open runtime directory {path}: {e.strerror}") from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise RuntimeDirError(f"runtime directory {path} was replaced while being opened")
        if created and stat.S_IMODE(fst.st_mode) != 0o700:
            os.fchmod(fd, 0o700)        # a restrictive umask (only ever narrows it)
            fst = os.fstat(fd)
        _check_private(path, fst)
    except BaseException:
        os.close(fd)
        raise
    return RunDir(fd, path)


def _pidname(mountpoint: str) -> str:
    return hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16] + ".pid"


def pidfile_for(mountpoint: str) -> str:
    """Path of the pidfile of ``mountpoint`` (the runtime directory is created and verified)."""
    with open_runtime_dir() as rd:
        return os.path.join(rd.path, _pidname(mountpoint))


def _write_pidfile(rd: RunDir, name: str, pid: int) -> None:
    """Write ``pid`` to ``name`` in ``rd``: a new O_EXCL|O_NOFOLLOW 0600 file renamed into place
    (a symlink or file already at ``name`` is replaced, never written through)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=rd.fd)
            break
        except FileExistsError:
            continue
    else:
        raise RuntimeDirError(f"cannot create a temporary pidfile in {rd.path}")
    try:
        try:
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=rd.fd, dst_dir_fd=rd.fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=rd.fd)
        except OSError:
            pass
        raise


def _read_pidfile(rd: RunDir, name: str) -> int | None:
    """The pid in ``name`` (None when there is none).  Raises RuntimeDirError when the file is
    a symlink, not a regular file, or not owned by us."""
    path = os.path.join(rd.path, name)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=rd.fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RuntimeDirError(f"pidfile {path} is a symlink; not following it") from None
        raise RuntimeDirError(f"cannot read pidfile {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RuntimeDirError(f"pidfile {path} is {_kind(st.st_mode)}; ignored")
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise RuntimeDirError(f"pidfile {path} is owned by uid {st.st_uid} with mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}; ignored")
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    try:
        pid = int(data.decode("ascii", "replace").strip())
    except ValueError:
        return None
    return pid if pid > 0 else None


def _remove_pidfile(rd: RunDir, name: str, only_pid: int | None = None) -> None:
    try:
        if only_pid is not None and _read_pidfile(rd, name) != only_pid:
            return
        os.unlink(name, dir_fd=rd.fd)
    except (OSError, RuntimeDirError):
        pass


def _warn(msg: str) -> None:
    print(f"overlay_ref: warning: {' '.join(msg.split())}", file=sys.stderr)


# ---------------------------------------------------------------- processes

_NO_CMDLINE = "has no command line (exiting, or a kernel thread)"


def daemon_mismatch(pid: int, mountpoint: str) -> str | None:
    """None when ``pid`` is an overlay_ref daemon of ``mountpoint`` running as our euid (its
    /proc/PID/status real and effective uid are ours, and its command line names overlay_ref
    and the mountpoint); else why not."""
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


# ---------------------------------------------------------------- serving

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
            os.write(ready_fd, f"ERR {e.exit_code} {e}\n".encode())
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
        _remove_pidfile(rd, pidname, only_pid=os.getpid())
        rd.close()


def _stale(mountpoint: str) -> bool:
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno in (107, 5)       # ENOTCONN, EIO
    return False


def spawn(cfg: OverlayConfig) -> int:
    """Start a daemon serving ``cfg``; return its pid once the mount is ready."""
    cfg.validate()
    with open_runtime_dir() as rd:                # refused here, before anything is started
        run_dir = rd.path
    r, w = os.pipe()
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
    pidname = _pidname(mp)
    rd: RunDir | None = None
    try:
        rd = open_runtime_dir(create=False)
        if rd is not None:
            pid = _read_pidfile(rd, pidname)
    except RuntimeDirError as e:
        _warn(f"not using the daemon's pidfile: {e}")
    try:
        _unmount(mp, ent)
        if pid is not None:
            _reap(pid, wait, mp)
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


def _verify_daemon(pid: int, mountpoint: str) -> str | None:
    """daemon_mismatch(), except that a process that exits meanwhile is no mismatch (a daemon
    that is exiting after the unmount has no command line for a moment)."""
    why = daemon_mismatch(pid, mountpoint)
    deadline = time.monotonic() + 1.0
    while (why is not None and why.endswith(_NO_CMDLINE) and _pid_alive(pid)
           and time.monotonic() < deadline):
        time.sleep(0.02)
        why = daemon_mismatch(pid, mountpoint)
    if why is not None and not _pid_alive(pid):
        return None
    return why


def _reap(pid: int, wait: float, mountpoint: str) -> None:
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
        why = _verify_daemon(pid, mountpoint)
        if why is not None:
            _warn(f"not signalling pid {pid} from the pidfile of {mountpoint}: {why}")
            return
        deadline = time.monotonic() + wait
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not _pid_alive(pid):
                break
            why = _verify_daemon(pid, mountpoint)
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
            t = time.monotonic() + 3
            while _pid_alive(pid) and time.monotonic() < t:
                time.sleep(0.02)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    ch = _children.pop(pid, None)
    if ch is not None:
        try:
            ch.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
