"""Reaching backing files by (layer, relative path) without full paths: the layer ids, the
bounded cache of O_PATH directory fds (``_DirFds``) and backing-object locations (``_Loc``)."""

from __future__ import annotations

import collections
import errno
import os
import threading
from typing import Optional

# ---------------------------------------------------------------- reaching backing files
#
# The daemon never hands a syscall a path longer than one component below a directory fd
# (the kernel's overlayfs walks dentries and never builds paths either): the layers' backing
# paths can be longer than PATH_MAX (layer root + a path of up to PATH_MAX-1 bytes below the
# mount point, or deeper when the caller walked there with *at() calls / chdir).  Every
# backing object is named by (layer, relative path); a syscall on it gets the O_PATH fd of
# its parent directory and the last component (``_Loc``).  The parent's fd comes from a
# bounded cache of O_PATH directory fds keyed (layer, relative path) (``_DirFds``), filled by
# walking one component at a time (openat O_PATH|O_DIRECTORY|O_NOFOLLOW) from the nearest
# cached ancestor or the layer root.

UPPER = -1          # layer ids: lower layers are 0..n-1
WORK = -2           # WORK/work, where copy-ups and whiteouts are built

_O_DIRPATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_RDDIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class _DirEnt:
    __slots__ = ("fd", "pins", "live")

    def __init__(self, fd: int):
        self.fd = fd
        self.pins = 0        # users right now; a dead entry's fd is closed when they are done
        self.live = True     # in the cache (or a layer root)


class _DirFds:
    """O_PATH fds of backing directories, keyed (layer, relative path), bounded.

    An entry is pinned while a syscall uses it (``acquire``/``release``), so eviction or
    invalidation never closes an fd under a user.  Keys are paths, so every change of what a
    cached path names -- an upper directory removed (rmdir) or moved (rename, exchange) --
    must ``invalidate`` it and everything below it (the daemon does, after the syscall);
    lower layers never change.  A walk that raced with an invalidation does not keep what it
    opened (generation count): it may have opened the directory the path named before.

    Replacement is a segmented LRU, so that one walk down a chain deeper than the cache (each
    directory used once, as the base of the next step) does not flush the directories that
    are used again and again: an entry starts in ``probation``, moves to ``protected`` (3/4 of
    the size) when it is asked for again, and goes back to probation when it ages out of it;
    entries leave the cache from the LRU end of probation."""

    def __init__(self, roots: dict[int, int], cap: int):
        self.lock = threading.Lock()
        self.roots = {layer: _DirEnt(fd) for layer, fd in roots.items()}
        self.probation: collections.OrderedDict[tuple[int, bytes], _DirEnt] = \
            collections.OrderedDict()
        self.protected: collections.OrderedDict[tuple[int, bytes], _DirEnt] = \
            collections.OrderedDict()
        self.gen = 0
        self.cap = max(1, cap)
        self.protected_cap = self.cap * 3 // 4

    def __len__(self) -> int:
        return len(self.probation) + len(self.protected)

    def _hit(self, key) -> Optional[_DirEnt]:
        """The entry of ``key`` if cached, as most recently used. Caller holds self.lock."""
        ent = self.protected.get(key)
        if ent is not None:
            self.protected.move_to_end(key)
            return ent
        ent = self.probation.pop(key, None)
        if ent is not None:
            self.protected[key] = ent
            if len(self.protected) > self.protected_cap:
                k, e = self.protected.popitem(last=False)
                self.probation[k] = e
        return ent

    def _peek(self, key) -> Optional[_DirEnt]:
        return self.protected.get(key) or self.probation.get(key)

    def acquire(self, layer: int, rel: bytes) -> _DirEnt:
        """The pinned entry of directory ``rel`` of ``layer`` (b"" is the layer root); raises
        OSError (ENOENT, ENOTDIR for a non-directory or symlink on the way, ...)."""
        if not rel:
            return self.roots[layer]          # never closed, pins are not counted
        with self.lock:
            ent = self._hit((layer, rel))
            if ent is not None:
                ent.pins += 1
                return ent
            gen = self.gen
            cur = self.roots[layer]
            start = 0
            i = len(rel)
            while True:                       # the nearest cached ancestor
                i = rel.rfind(b"/", 0, i)
                if i <= 0:
                    break
                e = self._peek((layer, rel[:i]))
                if e is not None:
                    cur, start = e, i + 1
                    break
            cur.pins += 1
        try:
            while True:
                j = rel.find(b"/", start)
                comp = rel[start:] if j < 0 else rel[start:j]
                if comp in (b"", b".", b".."):
                    raise FileNotFoundError(errno.ENOENT, "invalid path component", comp)
                fd = os.open(comp, _O_DIRPATH, dir_fd=cur.fd)
                nxt = self._insert(layer, rel if j < 0 else rel[:j], fd, gen)
                self.release(cur)
                cur = nxt
                if j < 0:
                    return cur
                start = j + 1
        except BaseException:
            self.release(cur)
            raise

    def _insert(self, layer: int, rel: bytes, fd: int, gen: int) -> _DirEnt:
        key = (layer, rel)
        close = []
        with self.lock:
            ent = self._peek(key)
            if ent is not None:               # another thread walked here meanwhile
                ent.pins += 1
                close.append(fd)
            else:
                ent = _DirEnt(fd)
                ent.pins = 1
                if gen == self.gen:
                    self.probation[key] = ent
                    while len(self) > self.cap:
                        seg = self.probation if self.probation else self.protected
                        _, old = seg.popitem(last=False)
                        old.live = False
                        if old.pins == 0:
                            close.append(old.fd)
                            old.fd = -1
                else:
                    ent.live = False          # used once by this walk, not kept
        for f in close:
            os.close(f)
        return ent

    def release(self, ent: _DirEnt) -> None:
        with self.lock:
            ent.pins -= 1
            if ent.pins > 0 or ent.live:
                return
            fd, ent.fd = ent.fd, -1
        os.close(fd)

    def invalidate(self, layer: int, rel: bytes) -> None:
        """Directory ``rel`` of ``layer`` was removed or moved: forget it and all below it."""
        pfx = rel + b"/"
        close = []
        with self.lock:
            self.gen += 1
            for seg in (self.probation, self.protected):
                for key in [k for k in seg
                            if k[0] == layer and (k[1] == rel or k[1].startswith(pfx))]:
                    ent = seg.pop(key)
                    ent.live = False
                    if ent.pins == 0:
                        close.append(ent.fd)
                        ent.fd = -1
        for fd in close:
            os.close(fd)

    def close(self) -> None:
        with self.lock:
            ents = (list(self.probation.values()) + list(self.protected.values())
                    + list(self.roots.values()))
            self.probation.clear()
            self.protected.clear()
            self.roots = {}
        for ent in ents:
            ent.live = False
            if ent.pins <= 0 and ent.fd >= 0:
                os.close(ent.fd)
                ent.fd = -1


class _Loc:
    """A backing object: the component ``name`` of the directory ``dfd``.  Pins the cache
    entry of ``dfd`` until released (a context manager).  The xattr syscalls have no *at()
    form: they get ``xpath``, /proc/self/fd/N/name (short whatever the depth; the last
    component is not followed with follow_symlinks=False, as for a full path)."""
    __slots__ = ("dfd", "name", "_ent", "_cache")

    def __init__(self, cache: Optional[_DirFds], ent: Optional[_DirEnt], dfd: int, name: bytes):
        self._cache = cache
        self._ent = ent
        self.dfd = dfd
        self.name = name

    def __enter__(self) -> "_Loc":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        ent, self._ent = self._ent, None
        if ent is not None and self._cache is not None:
            self._cache.release(ent)

    @property
    def xpath(self) -> bytes:
        return b"/proc/self/fd/%d/%s" % (self.dfd, self.name)

