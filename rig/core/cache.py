"""The content-addressed cache's two moves, shared by every cache of kproto (kernels, guest and benchmark
programs, the fuzz interpreter, result caches, cluster artifacts): write a file so readers see the old
content or the new one, never half of it; and publish a directory built under a temporary name as the
entry for its key, where a concurrent builder that got there first wins (its entry is as good as ours)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace PATH with DATA atomically (same directory temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: Path, dest: Path) -> None:
    """Copy SRC to DEST atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside FINAL; on success it becomes FINAL (unless a concurrent
    builder published FINAL first: then ours is dropped); on any error it is removed and FINAL untouched."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
