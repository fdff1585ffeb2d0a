"""Advisory file locks around shared state (source trees, build dirs, the kernel cache)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


class LockBusy(Exception):
    """locked(wait=False) found the lock held; `holder` is the pid written by its holder."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by pid {holder}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def locked(path: Path, what: str = "", wait: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on PATH (created if needed), with the holder's pid written into it.
    Blocks until another kproto run releases it, or raises LockBusy at once when wait=False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(path, os.pread(fd, 64, 0).decode(errors="replace").strip() or "?") from None
            import sys
            print(f"kproto: waiting for another kproto run holding {what or path}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
