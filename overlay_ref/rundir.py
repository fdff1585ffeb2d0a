"""The daemon's runtime state: the private runtime directory and the pidfiles in it."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import tempfile
from typing import Literal, overload

from .errors import OverlayRefError

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
# through it).  A pidfile holds "PID STARTTIME" (STARTTIME: field 22 of /proc/PID/stat, which
# a reused pid does not repeat).  Before umount signals the pid a pidfile names, it checks that the
# process is an overlay_ref daemon running as our euid that is the one the pidfile recorded (same
# start time) or names that mountpoint on its command line.

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


@overload
def open_runtime_dir(path: str | None = None, create: Literal[True] = True) -> RunDir: ...


@overload
def open_runtime_dir(path: str | None = None, *, create: bool) -> RunDir | None: ...


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


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, /proc/PID/stat field 22); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _write_pidfile(rd: RunDir, name: str, pid: int) -> None:
    """Write ``pid`` and its start time to ``name`` in ``rd``: a new O_EXCL|O_NOFOLLOW 0600 file
    renamed into place (a symlink or file already at ``name`` is replaced, never written through)."""
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
            os.write(fd, f"{pid} {start_time(pid) or 0}\n".encode())
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
    return _read_pidfile_entry(rd, name)[0]


def _read_pidfile_entry(rd: RunDir, name: str) -> tuple[int | None, int | None]:
    """The pid in ``name`` and the start time recorded with it (None for what is not there: no
    file, or a pidfile of a version that wrote the pid alone).  Raises as _read_pidfile."""
    path = os.path.join(rd.path, name)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=rd.fd)
    except FileNotFoundError:
        return None, None
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
    words = data.decode("ascii", "replace").split()
    try:
        pid = int(words[0])
        started = int(words[1]) if len(words) > 1 else None
    except (IndexError, ValueError):
        return None, None
    if pid <= 0:
        return None, None
    return pid, (started or None)


def _remove_pidfile(rd: RunDir, name: str, only_pid: int | None = None) -> None:
    try:
        if only_pid is not None and _read_pidfile(rd, name) != only_pid:
            return
        os.unlink(name, dir_fd=rd.fd)
    except (OSError, RuntimeDirError):
        pass
