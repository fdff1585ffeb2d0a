"""The reference overlay filesystem (pyfuse3 operations).

Model
-----
Every overlay object is one :class:`Node` with one FUSE inode number for its whole life in the
mount (copy-up, rename and hard links keep it).  A node knows its overlay path, whether it has an
upper entry, and its lower entries ``[(layer index, path relative to that layer's root)]`` (for a
directory: every lower directory merged into it; for a non-directory: the one it was found in,
i.e. its copy-up origin).
The object's *current backing file* is the upper entry when there is one, else the first lower
entry.  A file with several names on a lower layer is one node too (keyed by its lower
st_dev/st_ino); its copy-up links its other names to the new upper inode.  Data I/O of every
open handle goes through one real fd per node that is swapped to the upper file on copy-up, so
handles opened before the copy-up read the new data (the userspace counterpart of the kernel's
``ovl_real_fdget``); the FUSE page cache of the inode is shared by all mappings and every write
goes through it, so MAP_SHARED mappings see the new data as well.

All filesystem work runs in worker threads (``trio.to_thread``); the namespace and copy-up run
under one lock, data I/O does not.

On-disk format is overlayfs's: whiteouts are 0/0 character devices (zero-size files carrying the
``overlay.whiteout`` xattr are read as whiteouts too), opaque directories carry
``overlay.opaque=y``, renamed merged directories carry an absolute ``overlay.redirect``; copy-up
builds the object in ``WORK/work`` and renames it into place.

Backing files are reached with *at() syscalls relative to O_PATH fds of their parent
directories, never through full paths (which can be longer than PATH_MAX): see ``_DirFds``.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import stat
import threading
import time
from typing import Optional

import pyfuse3
import trio

from .config import OverlayConfig

log = logging.getLogger("overlay_ref")

S_IFMT = stat.S_IFMT
DIR = stat.S_IFDIR
REG = stat.S_IFREG
LNK = stat.S_IFLNK

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

_O_NOATIME = getattr(os, "O_NOATIME", 0)
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_PREFETCH = 4 << 20
_UNLOCKED_COPY_MIN = 1 << 20
_COPY_CHUNK = 1 << 20
_DAY_NS = 24 * 3600 * 10**9


_libc = None


def _renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    import ctypes
    if _libc.renameat2(olddirfd, old, newdirfd, new, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


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


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


class _NeedThread(Exception):
    """An operation tried inline on the event loop needs a worker thread after all."""


class Node:
    __slots__ = ("ino", "path", "parent", "kind", "upper", "lowers", "nlookup", "aliases",
                 "unlinked", "fd", "fd_upper", "old_fds", "opens", "lock", "copying",
                 "atime_ns", "lower_key")

    def __init__(self, ino: int, path: bytes, parent: int, kind: int, upper: bool,
                 lowers: list[tuple[int, bytes]]):
        self.ino = ino
        self.path = path
        self.parent = parent
        self.kind = kind
        self.upper = upper
        self.lowers = lowers
        self.nlookup = 0
        self.aliases: set[bytes] = {path}   # all overlay paths naming this object (hard links)
        self.unlinked = False
        self.fd: Optional[int] = None        # real fd on the current backing file
        self.fd_upper = False
        self.old_fds: list[int] = []         # fds on stale backing files, closed on last release
        self.opens = 0
        self.lock = threading.Lock()
        self.copying = False                 # a data copy-up runs without the namespace lock
        self.atime_ns: Optional[int] = None  # in-memory atime of a lower-only object (relatime)
        # (st_dev, st_ino) of the lower file of a non-directory whose lower file has several
        # names (a hard link on a lower layer): every name of it is this one node
        self.lower_key: Optional[tuple[int, int]] = None


class Handle:
    __slots__ = ("node", "flags")

    def __init__(self, node: Node, flags: int):
        self.node = node
        self.flags = flags


class DirHandle:
    __slots__ = ("node", "entries", "pending")

    def __init__(self, node: Node, entries: list[bytes]):
        self.node = node
        self.entries = entries       # snapshot at opendir: offsets are indexes into it
        self.pending: list = []      # entries computed for a reply they did not fit in


class OverlayFS(pyfuse3.Operations):
    # fallocate(2) cannot be served: pyfuse3 (3.5.0 here, and upstream's current internal.pxi)
    # fills a module-private ``fuse_lowlevel_ops`` in init_fuse_ops() without a ``fallocate``
    # member and hands it to fuse_session_new(), which copies it into the opaque session; its
    # session loop passes every request to fuse_session_process_buf().  So there is no
    # Operations method to define and no hook from Python: libfuse answers FUSE_FALLOCATE with
    # ENOSYS and the kernel turns that into EOPNOTSUPP for this mount (glibc's posix_fallocate
    # then falls back to writing zeros, which works).  Serving it needs a pyfuse3 that wires
    # fuse_ops.fallocate (a patched build or a newer release); then define
    # ``async def fallocate(self, fh, mode, off, length)`` copying up like write() and calling
    # fallocate on the upper fd.  tests/overlay_ref/test_ovlref_semantics.py::
    # test_fallocate_syscall is a strict xfail that turns red when that becomes possible.
    enable_writeback_cache = False

    def __init__(self, cfg: OverlayConfig):
        super().__init__()
        self.cfg = cfg
        self.lower_roots = [os.fsencode(x) for x in cfg.lowers]
        self.upper_root = os.fsencode(cfg.upper)
        self.work_dir = os.path.join(os.fsencode(cfg.work), b"work")
        os.makedirs(self.work_dir, exist_ok=True)
        # the layer roots are the only paths ever opened as such (given by the user, so they
        # fit); everything below them is reached from these fds
        roots: dict[int, int] = {}
        try:
            for layer, path in ([(UPPER, self.upper_root), (WORK, self.work_dir)]
                                + list(enumerate(self.lower_roots))):
                roots[layer] = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except BaseException:
            for fd in roots.values():
                os.close(fd)
            raise
        self.dirfds = _DirFds(roots, cfg.dirfd_cache)
        self.upper_fd = roots[UPPER]
        self.work_fd = roots[WORK]
        pfx = cfg.xattr_prefix.encode()
        self.xprefix = pfx
        self.xescaped = pfx + b"overlay."
        self.x_opaque = pfx + b"opaque"
        self.x_redirect = pfx + b"redirect"
        self.x_whiteout = pfx + b"whiteout"
        self.x_whiteouts = pfx + b"whiteouts"
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.nodes: dict[int, Node] = {}
        self.by_path: dict[bytes, int] = {}
        self.by_upper_ino: dict[tuple[int, int], int] = {}
        # lower hard links: (lower st_dev, st_ino) -> node, and (built on the first copy-up of
        # such a file) every name of every multiply-linked lower file
        self.by_lower_ino: dict[tuple[int, int], int] = {}
        self._lower_link_names: Optional[dict[tuple[int, int], list[bytes]]] = None
        self.ino_counter = itertools.count(pyfuse3.ROOT_INODE + 1)
        self.fh_counter = itertools.count(1)
        self.handles: dict[int, Handle] = {}
        self.dirhandles: dict[int, DirHandle] = {}
        self.tmp_counter = itertools.count()
        self.timeout = cfg.attr_timeout
        self.inline = cfg.inline
        self._inline_ident: Optional[int] = None
        self.nursery: Optional[trio.Nursery] = None
        root = Node(pyfuse3.ROOT_INODE, b"", pyfuse3.ROOT_INODE, DIR, True,
                    [(i, b"") for i in range(len(self.lower_roots))])
        root.nlookup = 1
        self.nodes[root.ino] = root
        self.by_path[b""] = root.ino

    # ------------------------------------------------------------------ helpers

    async def _run(self, fn, *args):
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            if e.errno is None:
                log.exception("unexpected OSError")
                raise _err(errno.EIO) from None
            raise _err(e.errno) from None
        except Exception:
            log.exception("internal error in %s", getattr(fn, "__name__", fn))
            raise _err(errno.EIO) from None

    async def _run_fast(self, fn, *args):
        """Run a metadata operation on the event loop when that is cheap: the namespace lock is
        free (never wait for it here) and the operation needs no data copy-up (copy_up raises
        _NeedThread before any side effect that is not idempotent).  Otherwise, or with
        ``-o inline=off``, run it in a worker thread."""
        if self.inline and self.lock.acquire(blocking=False):
            try:
                self._inline_ident = threading.get_ident()
                try:
                    return fn(*args)
                except _NeedThread:
                    pass
                except pyfuse3.FUSEError:
                    raise
                except OSError as e:
                    raise _err(e.errno or errno.EIO) from None
                except Exception:
                    log.exception("internal error in %s", getattr(fn, "__name__", fn))
                    raise _err(errno.EIO) from None
            finally:
                self._inline_ident = None
                self.lock.release()
        return await self._run(fn, *args)

    def _check_may_block(self) -> None:
        if self._inline_ident is not None and self._inline_ident == threading.get_ident():
            raise _NeedThread()

    def close(self) -> None:
        """Close the layer and directory fds (the daemon exits after serving anyway)."""
        self.dirfds.close()

    def _at(self, layer: int, rel: bytes) -> _Loc:
        """The backing object ``rel`` (relative to the root of ``layer``; b"" is the root) as
        (fd of its parent directory, last component), pinned until released.  Raises OSError
        when the parent cannot be reached (ENOENT, ENOTDIR)."""
        i = rel.rfind(b"/")
        if i < 0:
            parent, name = b"", (rel or b".")
        else:
            parent, name = rel[:i], rel[i + 1:]
        if name in (b"", b"..") or (name == b"." and rel):
            raise FileNotFoundError(errno.ENOENT, "invalid path component", name)
        ent = self.dirfds.acquire(layer, parent)
        return _Loc(self.dirfds, ent, ent.fd, name)

    def _wloc(self, name: bytes) -> _Loc:
        """A name in the work directory (a fd that is never closed: nothing to pin)."""
        return _Loc(None, None, self.work_fd, name)

    def _real(self, node: Node) -> tuple[int, bytes]:
        """(layer, relative path) of the node's current backing file."""
        if node.upper:
            return UPPER, node.path
        return node.lowers[0]

    def _open_dir(self, layer: int, rel: bytes) -> int:
        """A new O_RDONLY fd of directory ``rel`` of ``layer`` (for listing it, fsync)."""
        with self._at(layer, rel) as loc:
            return os.open(loc.name, _O_RDDIR, dir_fd=loc.dfd)

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _tmpname(self) -> bytes:
        """A fresh name in the work directory (use it with ``_wloc``)."""
        return b"#%x.%x" % (os.getpid(), next(self.tmp_counter))

    def _getx(self, loc: _Loc, name: bytes) -> Optional[bytes]:
        try:
            return os.getxattr(loc.xpath, name, follow_symlinks=False)
        except OSError:
            return None

    def _getx_at(self, layer: int, rel: bytes, name: bytes) -> Optional[bytes]:
        try:
            with self._at(layer, rel) as loc:
                return self._getx(loc, name)
        except OSError:
            return None

    def is_whiteout(self, loc: _Loc, st: os.stat_result) -> bool:
        if stat.S_ISCHR(st.st_mode):
            return st.st_rdev == 0
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return self._getx(loc, self.x_whiteout) is not None
        return False

    def is_opaque(self, loc: _Loc) -> bool:
        return self._getx(loc, self.x_opaque) == b"y"

    def _lstat(self, loc: _Loc) -> Optional[os.stat_result]:
        try:
            return os.stat(loc.name, dir_fd=loc.dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def _lstat_at(self, layer: int, rel: bytes) -> Optional[os.stat_result]:
        """lstat of ``rel`` in ``layer``; None when it (or its parent) is not there."""
        try:
            loc = self._at(layer, rel)
        except OSError as e:
            if e.errno in _MISSING:
                return None
            raise
        with loc:
            return self._lstat(loc)

    def _lstat_real(self, node: Node) -> os.stat_result:
        with self._at(*self._real(node)) as loc:
            return os.stat(loc.name, dir_fd=loc.dfd, follow_symlinks=False)

    def _make_whiteout(self, loc: _Loc) -> None:
        os.mknod(loc.name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=loc.dfd)

    @staticmethod
    def _rename(src: _Loc, dst: _Loc) -> None:
        os.rename(src.name, dst.name, src_dir_fd=src.dfd, dst_dir_fd=dst.dfd)

    def _link_upper(self, src_rel: bytes, dst_rel: bytes) -> None:
        with self._at(UPPER, src_rel) as s, self._at(UPPER, dst_rel) as d:
            os.link(s.name, d.name, src_dir_fd=s.dfd, dst_dir_fd=d.dfd, follow_symlinks=False)

    def _is_private(self, name: bytes) -> bool:
        """An overlay-private xattr on a real file (escaped user xattrs are not private)."""
        return name.startswith(self.xprefix) and not name.startswith(self.xescaped)

    def _real_xname(self, name: bytes) -> bytes:
        """Overlay-visible xattr name -> name on the real file.  Like overlayfs (>= 6.7), a
        user's ``trusted.overlay.X`` is stored escaped as ``trusted.overlay.overlay.X``."""
        if name.startswith(self.xprefix):
            return self.xescaped + name[len(self.xprefix):]
        return name

    # ------------------------------------------------------------------ lookup

    def _walk_lowers(self, parent: Node, name: bytes, kind: Optional[int],
                     redirect: Optional[bytes], sts: Optional[list] = None
                     ) -> tuple[Optional[int], list]:
        """Find ``name`` below ``parent`` in the lower layers.

        ``kind`` is the type of the upper entry (None if there is none); ``redirect`` the upper
        directory's redirect.  Returns (kind, lowers); the lstat of each entry of ``lowers`` is
        appended to ``sts`` when given."""
        lowers: list[tuple[int, bytes]] = []
        cur_name = name
        abs_redirect: Optional[bytes] = None
        if redirect is not None:
            if redirect.startswith(b"/"):
                abs_redirect = redirect.strip(b"/")
            else:
                cur_name = redirect
        pl = dict(parent.lowers)
        for i in range(len(self.lower_roots)):
            if abs_redirect is not None:
                cand = abs_redirect
            else:
                if i not in pl:
                    continue
                cand = _join(pl[i], cur_name)
            try:
                loc = self._at(i, cand)
            except OSError as e:
                if e.errno in _MISSING:
                    continue
                raise
            with loc:
                st = self._lstat(loc)
                if st is None:
                    continue
                if self.is_whiteout(loc, st):
                    break
                k = S_IFMT(st.st_mode)
                if kind is None:
                    kind = k
                    lowers.append((i, cand))
                    if sts is not None:
                        sts.append(st)
                    if k != DIR:
                        break
                else:
                    if kind != DIR or k != DIR:
                        break
                    lowers.append((i, cand))
                    if sts is not None:
                        sts.append(st)
                # k is a directory here
                if self.is_opaque(loc):
                    break
                r = self._getx(loc, self.x_redirect) if self.cfg.follow_redirects else None
            if r:
                if r.startswith(b"/"):
                    abs_redirect = r.strip(b"/")
                else:
                    cur_name = r
        return kind, lowers

    def _resolve(self, parent: Node, name: bytes, sts: Optional[list] = None):
        """Resolve ``name`` in ``parent`` from the layers. Returns (kind, upper_st, lowers) or
        None; the lstats of ``lowers`` go to ``sts`` when given."""
        path = _join(parent.path, name)
        upper_st = None
        kind = None
        redirect = None
        if parent.upper:
            try:
                up = self._at(UPPER, path)
            except OSError as e:
                if e.errno not in _MISSING:
                    raise
                up = None
            if up is not None:
                with up:
                    upper_st = self._lstat(up)
                    if upper_st is not None:
                        if self.is_whiteout(up, upper_st):
                            return None
                        kind = S_IFMT(upper_st.st_mode)
                        if kind != DIR or self.is_opaque(up):
                            return kind, upper_st, []
                        if self.cfg.follow_redirects:
                            redirect = self._getx(up, self.x_redirect) or None
        kind, lowers = self._walk_lowers(parent, name, kind, redirect, sts)
        if kind is None:
            return None
        return kind, upper_st, lowers

    def _lower_positive(self, parent: Node, name: bytes) -> bool:
        """Would ``name`` show from a lower layer if it had no upper entry?"""
        if not parent.lowers:
            return False
        kind, _ = self._walk_lowers(parent, name, None, None)
        return kind is not None

    def _lookup_locked(self, parent: Node, name: bytes) -> Optional[Node]:
        if name == b".":
            return parent
        if name == b"..":
            return self.nodes.get(parent.parent, parent)
        if parent.kind != DIR:
            raise _err(errno.ENOTDIR)
        path = _join(parent.path, name)
        ino = self.by_path.get(path)
        if ino is not None:
            return self.nodes[ino]
        sts: list[os.stat_result] = []
        res = self._resolve(parent, name, sts)
        if res is None:
            return None
        kind, upper_st, lowers = res
        lower_key = None
        if upper_st is None and kind != DIR and sts and sts[0].st_nlink > 1:
            # one name of a file hard-linked on a lower layer: the same object as its other names
            lower_key = (sts[0].st_dev, sts[0].st_ino)
            node = self._join_lower_link(parent, path, lower_key)
            if node is not None:
                return node
        if upper_st is not None and kind != DIR and upper_st.st_nlink > 1:
            key = (upper_st.st_dev, upper_st.st_ino)
            other = self.by_upper_ino.get(key)
            if other is not None and other in self.nodes and not self.nodes[other].unlinked:
                node = self.nodes[other]
                node.aliases.add(path)
                self.by_path[path] = node.ino
                return node
        node = Node(next(self.ino_counter), path, parent.ino, kind, upper_st is not None, lowers)
        self.nodes[node.ino] = node
        self.by_path[path] = node.ino
        if upper_st is not None and kind != DIR and upper_st.st_nlink > 1:
            self.by_upper_ino[(upper_st.st_dev, upper_st.st_ino)] = node.ino
        if lower_key is not None:
            node.lower_key = lower_key
            self.by_lower_ino[lower_key] = node.ino
        return node

    # ------------------------------------------------------------------ lower hard links
    #
    # A file with several names on a lower layer (same lower st_dev/st_ino) is one overlay
    # object: one node whose aliases are all its visible names, st_ino shared, st_nlink the
    # lower one.  Its copy-up copies the data once (through the work dir, as any copy-up) and
    # then link()s every other visible name of it to the new upper inode, so the upper layer
    # holds them as hard links of each other in the kernel's plain format (what overlayfs with
    # index=on ends up with once every name is copied up; the reference writes no index
    # entries).  "Every name" comes from a one-time scan of the lower layers (made on the first
    # copy-up of such a file, kept for the mount: lower layers never change); a name found
    # otherwise (e.g. through a redirect) is linked when it is looked up.

    def _join_lower_link(self, parent: Node, path: bytes, key: tuple[int, int]) -> Optional[Node]:
        """``path`` is a name of the lower hard-linked file ``key``: the node of that object if
        it already has one (its other names were looked up), now also named ``path``."""
        ino = self.by_lower_ino.get(key)
        node = self.nodes.get(ino) if ino is not None else None
        if node is None or node.lower_key != key:
            return None
        if node.upper:
            if node.unlinked:
                return None        # its upper file has no name left to link to
            # copied up before this name was known: link it to the upper inode now
            self.copy_up(parent)
            self._link_upper(node.path, path)
        if node.unlinked:
            node.unlinked = False
            node.aliases = set()
            node.path = path
            node.parent = parent.ino
        node.aliases.add(path)
        self.by_path[path] = node.ino
        return node

    def _lower_names(self, key: tuple[int, int]) -> list[bytes]:
        """Overlay paths of every lower-layer name of the lower file ``key`` (hidden or not)."""
        if self._lower_link_names is None:
            found: dict[tuple[int, int], list[bytes]] = {}
            for li in range(len(self.lower_roots)):
                stack = [b""]
                while stack:
                    rel = stack.pop()
                    try:
                        dfd = self._open_dir(li, rel)
                    except OSError:
                        continue
                    try:
                        with os.scandir(dfd) as it:
                            for e in it:
                                r = _join(rel, os.fsencode(e.name))
                                try:
                                    if e.is_dir(follow_symlinks=False):
                                        stack.append(r)
                                        continue
                                    st = e.stat(follow_symlinks=False)
                                except OSError:
                                    continue
                                if st.st_nlink > 1:
                                    found.setdefault((st.st_dev, st.st_ino), []).append(r)
                    finally:
                        os.close(dfd)
            self._lower_link_names = found
        return self._lower_link_names.get(key, [])

    def _lookup_path(self, path: bytes) -> Optional[Node]:
        node = self.nodes[pyfuse3.ROOT_INODE]
        if not path:
            return node
        for comp in path.split(b"/"):
            if node.kind != DIR:
                return None
            node = self._lookup_locked(node, comp)
            if node is None:
                return None
        return node

    def _link_lower_names(self, node: Node, key: tuple[int, int]) -> None:
        """After the copy-up of ``node`` (a lower hard-linked file): give every other visible
        name of it an upper hard link of the new upper inode.  Caller holds self.lock."""
        with self._at(UPPER, node.path) as loc:
            ust = os.stat(loc.name, dir_fd=loc.dfd, follow_symlinks=False)
        self.by_upper_ino[(ust.st_dev, ust.st_ino)] = node.ino
        for p in sorted(node.aliases - {node.path}):
            parent = self._lookup_path(os.path.dirname(p))
            if parent is None:
                continue
            try:
                self.copy_up(parent)
                self._link_upper(node.path, p)
            except (OSError, pyfuse3.FUSEError) as e:
                # the copy-up itself succeeded: do not fail the operation that asked for it
                log.warning("copy-up of %r: cannot link its lower name %r: %s", node.path, p, e)
        for p in self._lower_names(key):
            if p in node.aliases or p in self.by_path:
                continue
            try:
                self._lookup_path(p)          # joins (and links) it if it shows this object
            except (OSError, pyfuse3.FUSEError):
                continue

    def _new_upper_node(self, parent: Node, name: bytes, kind: int, lowers=None) -> Node:
        path = _join(parent.path, name)
        node = Node(next(self.ino_counter), path, parent.ino, kind, True, lowers or [])
        self.nodes[node.ino] = node
        self.by_path[path] = node.ino
        return node

    # ------------------------------------------------------------------ attributes

    def _attr_from_stat(self, node: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.timeout
        a.attr_timeout = self.timeout
        a.st_mode = st.st_mode
        nlink = st.st_nlink
        if node.kind == DIR and node.lowers:
            nlink = 1       # merged directory: like overlayfs, do not count subdirs
        a.st_nlink = nlink
        a.st_uid = st.st_uid
        a.st_gid = st.st_gid
        a.st_rdev = st.st_rdev
        a.st_size = st.st_size
        a.st_blksize = st.st_blksize
        a.st_blocks = st.st_blocks
        at = node.atime_ns
        a.st_atime_ns = at if at is not None and not node.upper else st.st_atime_ns
        a.st_mtime_ns = st.st_mtime_ns
        a.st_ctime_ns = st.st_ctime_ns
        return a

    def _stat_node(self, node: Node) -> os.stat_result:
        fd = node.fd
        if fd is not None and (node.fd_upper or not node.upper):
            try:
                return os.fstat(fd)
            except OSError:
                pass
        if node.unlinked:
            raise _err(errno.ENOENT)
        return self._lstat_real(node)

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._attr_from_stat(node, self._stat_node(node))

    # ------------------------------------------------------------------ copy-up

    def _copy_xattrs(self, src: _Loc, dst: Optional[_Loc], dst_fd: Optional[int] = None) -> None:
        try:
            names = os.listxattr(src.xpath, follow_symlinks=False)
        except OSError:
            return
        for n in names:
            nb = os.fsencode(n)
            if self._is_private(nb):
                continue
            try:
                v = os.getxattr(src.xpath, n, follow_symlinks=False)
                if dst_fd is not None:
                    os.setxattr(dst_fd, n, v)
                else:
                    os.setxattr(dst.xpath, n, v, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EPERM):
                    raise

    def copy_up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` (and its parents first) up. Caller holds self.lock.

        The data of big files is copied with the namespace lock released (other operations go
        on; an operation that needs this node copied up waits for it)."""
        if node.upper:
            return
        if node.kind != DIR:
            self._check_may_block()      # never copy data (or wait for a copy) on the loop
        # parents first, top-down: a loop, not a recursion (a path can be 2000 directories
        # deep); _copy_up_one copies a parent itself if it changed meanwhile
        chain = []
        p = node
        while not p.unlinked:
            parent = self.nodes.get(p.parent)
            if parent is None or parent.upper or parent is p:
                break
            chain.append(parent)
            p = parent
        for p in reversed(chain):
            self._copy_up_one(p, True)
        self._copy_up_one(node, data)

    def _copy_up_one(self, node: Node, data: bool) -> None:
        if node.upper:
            return
        while node.copying:
            self.cond.wait()
        if node.upper:
            return
        if node.unlinked:
            raise _err(errno.ENOENT)
        parent = self.nodes[node.parent]
        if not parent.upper:
            self.copy_up(parent)         # it moved while we waited
        wloc = self._wloc(self._tmpname())
        tmp, W = wloc.name, wloc.dfd
        with self._at(*node.lowers[0]) as src:
            st = os.stat(src.name, dir_fd=src.dfd, follow_symlinks=False)
            atime = node.atime_ns if node.atime_ns is not None else st.st_atime_ns
            kind = S_IFMT(st.st_mode)
            try:
                if kind == DIR:
                    os.mkdir(tmp, 0o700, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=W)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                elif kind == REG:
                    fin = os.open(src.name, os.O_RDONLY | _O_NOATIME | os.O_NOFOLLOW,
                                  dir_fd=src.dfd)
                    try:
                        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=W)
                        try:
                            if data and st.st_size > _UNLOCKED_COPY_MIN:
                                node.copying = True
                                saved = self.lock._release_save()
                                try:
                                    self._copy_data(fin, fout, st.st_size)
                                finally:
                                    self.lock._acquire_restore(saved)
                                    node.copying = False
                                    self.cond.notify_all()
                                if node.unlinked:          # removed while we copied
                                    raise _err(errno.ENOENT)
                            elif data:
                                self._copy_data(fin, fout, st.st_size)
                            self._copy_xattrs(src, None, fout)
                            os.fchown(fout, st.st_uid, st.st_gid)
                            os.fchmod(fout, stat.S_IMODE(st.st_mode))
                            os.utime(fout, ns=(atime, st.st_mtime_ns))
                        finally:
                            os.close(fout)
                    finally:
                        os.close(fin)
                elif kind == LNK:
                    os.symlink(os.readlink(src.name, dir_fd=src.dfd), tmp, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                else:
                    os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=W)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                # node.path now: its parent may have moved while the data was copied
                with self._at(UPPER, node.path) as dst:
                    self._rename(wloc, dst)
            except BaseException:
                try:
                    tst = os.stat(tmp, dir_fd=W, follow_symlinks=False)
                    if stat.S_ISDIR(tst.st_mode):
                        os.rmdir(tmp, dir_fd=W)
                    else:
                        os.unlink(tmp, dir_fd=W)
                except OSError:
                    pass
                raise
        with node.lock:
            node.upper = True
            node.atime_ns = None             # the upper file carries it from now on
            if node.fd is not None and not node.fd_upper:
                node.old_fds.append(node.fd)
                node.fd = None
        if kind != DIR and node.lower_key is not None:
            self._link_lower_names(node, node.lower_key)
        if kind == REG and node.opens > 0:
            # an open object keeps a real fd on its current backing file at all times: its
            # name (the only way _get_fd can reopen it) may be gone before the next I/O
            self._get_fd(node)
        if kind != DIR:
            self._invalidate(node.ino)

    @staticmethod
    def _copy_data(fin: int, fout: int, size: int) -> None:
        off = 0
        while off < size:
            try:
                n = os.copy_file_range(fin, fout, min(_COPY_CHUNK * 16, size - off), off, off)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                n = None
            if n is None:
                buf = os.pread(fin, _COPY_CHUNK, off)
                n = len(buf)
                if n:
                    os.pwrite(fout, buf, off)
            if not n:
                break
            off += n

    def _invalidate(self, ino: int) -> None:
        """Drop the kernel's cached attributes and pages of ``ino`` (asynchronously: the
        notification must not be sent from the request it is about)."""
        nursery, token = self.nursery, self._trio_token
        if nursery is None or token is None:
            return

        def start():
            nursery.start_soon(self._invalidate_task, ino)
        try:
            trio.from_thread.run_sync(start, trio_token=token)
        except Exception:
            pass

    _trio_token = None

    async def _invalidate_task(self, ino: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except OSError:
            pass

    # ------------------------------------------------------------------ real fds

    def _get_fd(self, node: Node) -> int:
        with node.lock:
            if node.fd is not None and (node.fd_upper or not node.upper):
                return node.fd
            if node.fd is not None:
                node.old_fds.append(node.fd)
                node.fd = None
            with self._at(*self._real(node)) as loc:
                n, d = loc.name, loc.dfd
                if node.upper:
                    try:
                        fd = os.open(n, os.O_RDWR | os.O_NOFOLLOW, dir_fd=d)
                    except OSError as e:
                        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS,
                                           errno.ETXTBSY):
                            raise
                        fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=d)
                else:
                    try:
                        fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW | _O_NOATIME, dir_fd=d)
                    except PermissionError:
                        fd = os.open(n, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=d)
            node.fd = fd
            node.fd_upper = node.upper
            return fd

    def _pin_fd(self, node: Node) -> None:
        """Before ``node`` loses a name: if it is open, make sure it has a real fd on its
        current backing file, so open handles keep working (read, fstat, mmap, ftruncate) once
        the name -- the only way to reopen the backing file -- is gone.  Caller holds self.lock."""
        if node.kind == REG and node.opens > 0:
            self._get_fd(node)

    def _close_fds(self, node: Node) -> None:
        with node.lock:
            fds = node.old_fds + ([node.fd] if node.fd is not None else [])
            node.old_fds = []
            node.fd = None
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ namespace bookkeeping

    def _drop_path(self, path: bytes) -> None:
        """Forget ``path`` (and, for a directory, everything below it) in the path table."""
        ino = self.by_path.pop(path, None)
        gone: list[Node] = []
        if ino is not None:
            node = self.nodes.get(ino)
            if node is not None:
                self._unalias(node, path)
                gone.append(node)
                if node.kind == DIR:
                    prefix = path + b"/"
                    for p in [p for p in self.by_path if p.startswith(prefix)]:
                        child = self.nodes.get(self.by_path.pop(p))
                        if child is not None:
                            self._unalias(child, p)
                            gone.append(child)
        for node in gone:
            if node.unlinked and node.nlookup <= 0 and node.opens <= 0:
                self._delete_node(node.ino)

    @staticmethod
    def _unalias(node: Node, path: bytes) -> None:
        node.aliases.discard(path)
        if not node.aliases:
            node.unlinked = True
        elif node.path == path:
            node.path = next(iter(node.aliases))

    def _delete_node(self, ino: int) -> None:
        node = self.nodes.pop(ino, None)
        if node is None:
            return
        if self.by_upper_ino:
            for k in [k for k, v in self.by_upper_ino.items() if v == ino]:
                del self.by_upper_ino[k]
        if node.lower_key is not None and self.by_lower_ino.get(node.lower_key) == ino:
            del self.by_lower_ino[node.lower_key]
        self._close_fds(node)

    def _move_path(self, old: bytes, new: bytes, node: Node, new_parent: Node) -> None:
        self.by_path.pop(old, None)
        node.aliases.discard(old)
        node.aliases.add(new)
        node.path = new
        node.parent = new_parent.ino
        self.by_path[new] = node.ino
        if node.kind == DIR:
            prefix = old + b"/"
            for p in [p for p in self.by_path if p.startswith(prefix)]:
                ino = self.by_path.pop(p)
                np_ = new + p[len(old):]
                self.by_path[np_] = ino
                n = self.nodes[ino]
                n.aliases.discard(p)
                n.aliases.add(np_)
                if n.path == p:
                    n.path = np_

    # ------------------------------------------------------------------ directories

    def merged_names(self, node: Node) -> list[bytes]:
        """Names visible in directory ``node``: upper first, then lowers, no whiteouts."""
        seen: set[bytes] = set()
        out: list[bytes] = []
        srcs = []
        if node.upper:
            srcs.append((UPPER, node.path))
        srcs.extend(node.lowers)
        for layer, rel in srcs:
            try:
                dfd = self._open_dir(layer, rel)
            except FileNotFoundError:
                continue
            try:
                # zero-size files with the whiteout xattr count as whiteouts in directories
                # marked as holding them (overlay.opaque=x or overlay.whiteouts), as overlayfs
                here = _Loc(None, None, dfd, b".")
                xw = (self._getx(here, self.x_opaque) == b"x"
                      or self._getx(here, self.x_whiteouts) is not None)
                with os.scandir(dfd) as it:
                    for e in it:
                        n = os.fsencode(e.name)
                        if n in seen:
                            continue
                        seen.add(n)
                        if e.is_dir(follow_symlinks=False) or e.is_symlink():
                            out.append(n)
                            continue
                        if e.is_file(follow_symlinks=False):
                            if xw and self.is_whiteout(_Loc(None, None, dfd, n),
                                                       e.stat(follow_symlinks=False)):
                                continue
                            out.append(n)
                            continue
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                            continue
                        out.append(n)
            finally:
                os.close(dfd)
        return out

    def _clear_whiteouts(self, rel: bytes) -> None:
        """Remove the whiteouts of upper dir ``rel``, which is empty in the merged view."""
        dfd = self._open_dir(UPPER, rel)
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    n = os.fsencode(e.name)
                    if self.is_whiteout(_Loc(None, None, dfd, n), st):
                        os.unlink(n, dir_fd=dfd)
                    else:
                        raise _err(errno.ENOTEMPTY)
        finally:
            os.close(dfd)

    # ------------------------------------------------------------------ ownership of new objects

    def _owner(self, parent: Node, ctx, mode: int, is_dir: bool) -> tuple[int, int, int]:
        pst = self._lstat_real(parent)
        uid = ctx.uid
        gid = ctx.gid
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if is_dir:
                mode |= stat.S_ISGID
        return uid, gid, mode

    def _prepare_create(self, parent: Node, name: bytes) -> tuple[bytes, bool]:
        """Copy the parent up; return (upper relative path, a whiteout is in the way)."""
        if parent.kind != DIR:
            raise _err(errno.ENOTDIR)
        if parent.unlinked:
            raise _err(errno.ENOENT)
        if self._lookup_locked(parent, name) is not None:
            raise _err(errno.EEXIST)
        self.copy_up(parent)
        up = _join(parent.path, name)
        with self._at(UPPER, up) as loc:
            st = self._lstat(loc)
            wh = False
            if st is not None:
                if not self.is_whiteout(loc, st):
                    raise _err(errno.EEXIST)
                wh = True
        return up, wh

    # ================================================================== pyfuse3 operations

    async def lookup(self, parent_inode, name, ctx=None):
        return await self._run_fast(self._lookup_op, parent_inode, name)

    def _lookup_op(self, parent_inode, name):
        with self.lock:
            parent = self._node(parent_inode)
            node = self._lookup_locked(parent, name)
            if node is None:
                raise _err(errno.ENOENT)
            attr = self._attr(node)
            if name not in (b".", b".."):
                node.nlookup += 1
            return attr

    async def forget(self, inode_list):
        await self._run_fast(self._forget_op, inode_list)

    def _forget_op(self, inode_list):
        with self.lock:
            for ino, n in inode_list:
                node = self.nodes.get(ino)
                if node is None or ino == pyfuse3.ROOT_INODE:
                    continue
                node.nlookup -= n
                if node.nlookup <= 0 and node.unlinked and node.opens <= 0:
                    self._delete_node(ino)

    async def getattr(self, inode, ctx=None):
        return await self._run_fast(self._getattr_op, inode)

    def _getattr_op(self, inode):
        return self._attr(self._node(inode))

    async def setattr(self, inode, attr, fields, fh, ctx):
        return await self._run_fast(self._setattr_op, inode, attr, fields, fh)

    def _setattr_op(self, inode, attr, fields, fh):
        with self.lock:
            node = self._node(inode)
            changing = (fields.update_mode or fields.update_uid or fields.update_gid
                        or fields.update_size or fields.update_atime or fields.update_mtime)
            if changing and not node.upper:
                self.copy_up(node, data=not (fields.update_size and attr.st_size == 0))
            use_fd = None
            if node.kind == REG and (node.unlinked or fh is not None):
                use_fd = self._get_fd(node)
            loc = None
            if use_fd is None:
                if node.unlinked:
                    raise _err(errno.ENOENT)
                loc = self._at(*self._real(node))
            try:
                return self._setattr_apply(node, attr, fields, use_fd, loc)
            finally:
                if loc is not None:
                    loc.release()

    def _setattr_apply(self, node: Node, attr, fields, use_fd: Optional[int],
                       loc: Optional[_Loc]):
        follow = node.kind != LNK
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if use_fd is not None:
                os.fchown(use_fd, uid, gid)
            else:
                os.chown(loc.name, uid, gid, dir_fd=loc.dfd, follow_symlinks=follow)
        if fields.update_mode:
            if node.kind == LNK:
                raise _err(errno.EOPNOTSUPP)
            if use_fd is not None:
                os.fchmod(use_fd, stat.S_IMODE(attr.st_mode))
            else:
                os.chmod(loc.name, stat.S_IMODE(attr.st_mode), dir_fd=loc.dfd)
        if fields.update_size:
            if node.kind == DIR:
                raise _err(errno.EISDIR)
            if use_fd is not None:
                os.ftruncate(use_fd, attr.st_size)
            elif node.kind != REG:
                raise _err(errno.EINVAL)         # as truncate(2) of a non-regular file
            else:
                fd = os.open(loc.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=loc.dfd)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
        if fields.update_atime or fields.update_mtime:
            st = self._stat_node(node)
            at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            if use_fd is not None:
                os.utime(use_fd, ns=(at, mt))
            else:
                os.utime(loc.name, ns=(at, mt), dir_fd=loc.dfd, follow_symlinks=follow)
        return self._attr(node)

    async def readlink(self, inode, ctx):
        return await self._run_fast(self._readlink_op, inode)

    def _readlink_op(self, inode):
        node = self._node(inode)
        if node.kind != LNK:
            raise _err(errno.EINVAL)
        with self._at(*self._real(node)) as loc:
            return os.readlink(loc.name, dir_fd=loc.dfd)

    # ---- creation

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._run_fast(self._mknod_op, parent_inode, name, mode, rdev, ctx)

    def _mknod_op(self, parent_inode, name, mode, rdev, ctx):
        with self.lock:
            parent = self._node(parent_inode)
            up, wh = self._prepare_create(parent, name)
            uid, gid, mode = self._owner(parent, ctx, mode, False)
            with self._at(UPPER, up) as loc:
                tgt = self._wloc(self._tmpname()) if wh else loc
                os.mknod(tgt.name, mode, rdev, dir_fd=tgt.dfd)
                try:
                    os.chown(tgt.name, uid, gid, dir_fd=tgt.dfd, follow_symlinks=False)
                    os.chmod(tgt.name, stat.S_IMODE(mode), dir_fd=tgt.dfd)
                    if wh:
                        self._rename(tgt, loc)
                except BaseException:
                    os.unlink(tgt.name, dir_fd=tgt.dfd)
                    raise
            node = self._new_upper_node(parent, name, S_IFMT(mode))
            node.nlookup += 1
            return self._attr(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._run_fast(self._mkdir_op, parent_inode, name, mode, ctx)

    def _mkdir_op(self, parent_inode, name, mode, ctx):
        with self.lock:
            parent = self._node(parent_inode)
            up, wh = self._prepare_create(parent, name)
            uid, gid, mode = self._owner(parent, ctx, mode, True)
            with self._at(UPPER, up) as loc:
                tgt = self._wloc(self._tmpname()) if wh else loc
                os.mkdir(tgt.name, 0o700, dir_fd=tgt.dfd)
                try:
                    os.chown(tgt.name, uid, gid, dir_fd=tgt.dfd, follow_symlinks=False)
                    os.chmod(tgt.name, stat.S_IMODE(mode), dir_fd=tgt.dfd)
                    if wh:
                        # over a whiteout: the new dir must not merge the lower dir it hides
                        os.setxattr(tgt.xpath, self.x_opaque, b"y", follow_symlinks=False)
                        os.unlink(loc.name, dir_fd=loc.dfd)
                        self._rename(tgt, loc)
                except BaseException:
                    os.rmdir(tgt.name, dir_fd=tgt.dfd)
                    raise
            node = self._new_upper_node(parent, name, DIR)
            node.nlookup += 1
            return self._attr(node)

    async def symlink(self, parent_inode, name, target, ctx):
        return await self._run_fast(self._symlink_op, parent_inode, name, target, ctx)

    def _symlink_op(self, parent_inode, name, target, ctx):
        with self.lock:
            parent = self._node(parent_inode)
            up, wh = self._prepare_create(parent, name)
            uid, gid, _ = self._owner(parent, ctx, 0o777, False)
            with self._at(UPPER, up) as loc:
                tgt = self._wloc(self._tmpname()) if wh else loc
                os.symlink(target, tgt.name, dir_fd=tgt.dfd)
                try:
                    os.chown(tgt.name, uid, gid, dir_fd=tgt.dfd, follow_symlinks=False)
                    if wh:
                        self._rename(tgt, loc)
                except BaseException:
                    os.unlink(tgt.name, dir_fd=tgt.dfd)
                    raise
            node = self._new_upper_node(parent, name, LNK)
            node.nlookup += 1
            return self._attr(node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        return await self._run_fast(self._create_op, parent_inode, name, mode, flags, ctx)

    def _create_op(self, parent_inode, name, mode, flags, ctx):
        if flags & os.O_DIRECT:
            raise _err(errno.EINVAL)
        with self.lock:
            parent = self._node(parent_inode)
            up, wh = self._prepare_create(parent, name)
            uid, gid, mode = self._owner(parent, ctx, mode, False)
            with self._at(UPPER, up) as loc:
                tgt = self._wloc(self._tmpname()) if wh else loc
                fd = os.open(tgt.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600, dir_fd=tgt.dfd)
                try:
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, stat.S_IMODE(mode))
                    if wh:
                        self._rename(tgt, loc)
                except BaseException:
                    os.close(fd)
                    os.unlink(tgt.name, dir_fd=tgt.dfd)
                    raise
            node = self._new_upper_node(parent, name, REG)
            node.fd = fd
            node.fd_upper = True
            node.nlookup += 1
            node.opens += 1
            fh = next(self.fh_counter)
            self.handles[fh] = Handle(node, flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attr(node)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        return await self._run_fast(self._link_op, inode, new_parent_inode, new_name)

    def _link_op(self, inode, new_parent_inode, new_name):
        with self.lock:
            node = self._node(inode)
            if node.kind == DIR:
                raise _err(errno.EPERM)
            parent = self._node(new_parent_inode)
            up, wh = self._prepare_create(parent, new_name)
            self.copy_up(node)
            with self._at(UPPER, node.path) as src, self._at(UPPER, up) as loc:
                tgt = self._wloc(self._tmpname()) if wh else loc
                os.link(src.name, tgt.name, src_dir_fd=src.dfd, dst_dir_fd=tgt.dfd,
                        follow_symlinks=False)
                if wh:
                    self._rename(tgt, loc)
                st = os.stat(loc.name, dir_fd=loc.dfd, follow_symlinks=False)
            path = up
            node.aliases.add(path)
            self.by_path[path] = node.ino
            self.by_upper_ino[(st.st_dev, st.st_ino)] = node.ino
            node.nlookup += 1
            return self._attr(node)

    # ---- removal

    async def unlink(self, parent_inode, name, ctx):
        await self._run_fast(self._unlink_op, parent_inode, name)

    def _unlink_op(self, parent_inode, name):
        with self.lock:
            parent = self._node(parent_inode)
            node = self._lookup_locked(parent, name)
            if node is None:
                raise _err(errno.ENOENT)
            if node.kind == DIR:
                raise _err(errno.EISDIR)
            self.copy_up(parent)
            self._pin_fd(node)
            path = _join(parent.path, name)
            need_wh = self._lower_positive(parent, name)
            with self._at(UPPER, path) as up:
                upper_here = self._lstat(up) is not None
                if upper_here:
                    if need_wh:
                        tmp = self._wloc(self._tmpname())
                        self._make_whiteout(tmp)
                        self._rename(tmp, up)
                    else:
                        os.unlink(up.name, dir_fd=up.dfd)
                else:
                    self._make_whiteout(up)
            self._drop_path(path)

    async def rmdir(self, parent_inode, name, ctx):
        await self._run_fast(self._rmdir_op, parent_inode, name)

    def _rmdir_op(self, parent_inode, name):
        with self.lock:
            parent = self._node(parent_inode)
            node = self._lookup_locked(parent, name)
            if node is None:
                raise _err(errno.ENOENT)
            if node.kind != DIR:
                raise _err(errno.ENOTDIR)
            if self.merged_names(node):
                raise _err(errno.ENOTEMPTY)
            self.copy_up(parent)
            path = _join(parent.path, name)
            need_wh = self._lower_positive(parent, name)
            with self._at(UPPER, path) as up:
                if node.upper:
                    self._clear_whiteouts(path)
                    os.rmdir(up.name, dir_fd=up.dfd)
                    self.dirfds.invalidate(UPPER, path)
                if need_wh:
                    self._make_whiteout(up)
            self._drop_path(path)

    # ---- rename

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run_fast(self._rename_op, parent_inode_old, name_old, parent_inode_new,
                        name_new, flags)

    def _rename_op(self, pold, nold, pnew, nnew, flags):
        if flags == RENAME_EXCHANGE:
            return self._exchange_op(pold, nold, pnew, nnew)
        if flags & ~RENAME_NOREPLACE:
            raise _err(errno.EINVAL)     # RENAME_WHITEOUT, or EXCHANGE combined with NOREPLACE
        with self.lock:
            op = self._node(pold)
            np_ = self._node(pnew)
            src = self._lookup_locked(op, nold)
            if src is None:
                raise _err(errno.ENOENT)
            dst = self._lookup_locked(np_, nnew)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise _err(errno.EEXIST)
            old_path = _join(op.path, nold)
            new_path = _join(np_.path, nnew)
            if dst is src:
                return
            if src.kind == DIR:
                if new_path.startswith(old_path + b"/"):
                    raise _err(errno.EINVAL)
                if dst is not None and dst.kind != DIR:
                    raise _err(errno.ENOTDIR)
            elif dst is not None and dst.kind == DIR:
                raise _err(errno.EISDIR)
            if dst is not None and dst.kind == DIR and self.merged_names(dst):
                raise _err(errno.ENOTEMPTY)
            if src.kind == DIR and src.lowers and not self.cfg.redirect_dir:
                raise _err(errno.EXDEV)
            self.copy_up(op)
            self.copy_up(np_)
            src_redirect = None
            if src.kind == DIR and src.lowers:
                src_redirect = (self._getx_at(UPPER, old_path, self.x_redirect)
                                if src.upper else None)
                if not src_redirect or not src_redirect.startswith(b"/"):
                    src_redirect = b"/" + src.lowers[0][1]
            self.copy_up(src)
            if dst is not None:
                self._pin_fd(dst)        # an open file replaced by the rename stays readable
            src_wh = self._lower_positive(op, nold)
            dst_lower = self._lower_positive(np_, nnew)
            moves_dir = src.kind == DIR
            with self._at(UPPER, old_path) as up_src, self._at(UPPER, new_path) as up_dst:
                if src.kind == DIR and src_redirect is not None:
                    self._set_redirect(up_src, src_redirect)      # first: it can fail (EXDEV)
                dst_st = self._lstat(up_dst)
                if dst_st is not None:
                    if S_IFMT(dst_st.st_mode) == DIR:
                        moves_dir = True
                        self._clear_whiteouts(new_path)
                    elif self.is_whiteout(up_dst, dst_st) and src.kind == DIR:
                        os.unlink(up_dst.name, dir_fd=up_dst.dfd)
                if src.kind == DIR and src_redirect is None:
                    if dst_lower or (dst_st is not None and self.is_whiteout(up_dst, dst_st)):
                        os.setxattr(up_src.xpath, self.x_opaque, b"y", follow_symlinks=False)
                try:
                    if src_wh:
                        # leave a whiteout behind atomically where the kernel would
                        tmp = self._wloc(self._tmpname())
                        self._make_whiteout(tmp)
                        try:
                            self._rename(up_src, up_dst)
                        except BaseException:
                            os.unlink(tmp.name, dir_fd=tmp.dfd)
                            raise
                        self._rename(tmp, up_src)
                    else:
                        self._rename(up_src, up_dst)
                finally:
                    if moves_dir:        # the cached fds of both names are stale
                        self.dirfds.invalidate(UPPER, old_path)
                        self.dirfds.invalidate(UPPER, new_path)
            if dst is not None:
                self._drop_path(new_path)
            self._move_path(old_path, new_path, src, np_)

    def _set_redirect(self, loc: _Loc, value: bytes) -> None:
        """Give a directory about to move its absolute redirect.  One the upper filesystem
        cannot store (longer than its xattr values can be: a directory deep below the mount
        point) makes the rename fail with EXDEV, as overlayfs does for a redirect longer
        than its redirect_max (mv then copies)."""
        try:
            os.setxattr(loc.xpath, self.x_redirect, value, follow_symlinks=False)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.E2BIG, errno.ERANGE):
                raise _err(errno.EXDEV) from None
            raise

    def _dir_redirect(self, node: Node, path: bytes) -> Optional[bytes]:
        """The absolute redirect a directory with lower layers needs when it moves."""
        if node.kind != DIR or not node.lowers:
            return None
        cur = self._getx_at(UPPER, path, self.x_redirect) if node.upper else None
        if cur and cur.startswith(b"/"):
            return cur
        return b"/" + node.lowers[0][1]

    def _exchange_op(self, pold, nold, pnew, nnew):
        with self.lock:
            op, np_ = self._node(pold), self._node(pnew)
            a = self._lookup_locked(op, nold)
            b = self._lookup_locked(np_, nnew)
            if a is None or b is None:
                raise _err(errno.ENOENT)
            if a is b:
                return
            pa, pb = _join(op.path, nold), _join(np_.path, nnew)
            if pb.startswith(pa + b"/") or pa.startswith(pb + b"/"):
                raise _err(errno.EINVAL)
            for n in (a, b):
                if n.kind == DIR and n.lowers and not self.cfg.redirect_dir:
                    raise _err(errno.EXDEV)
            self.copy_up(op)
            self.copy_up(np_)
            ra, rb = self._dir_redirect(a, pa), self._dir_redirect(b, pb)
            self.copy_up(a)
            self.copy_up(b)
            with self._at(UPPER, pa) as ua, self._at(UPPER, pb) as ub:
                # each object lands on the other's name: a moved directory keeps its own
                # lower layers (redirect) and must not merge those of its new name (opaque);
                # the redirects first (they can fail with EXDEV; then nothing has changed)
                sides = ((a, ua, ra, np_, nnew), (b, ub, rb, op, nold))
                for n, up, red, _, _ in sides:
                    if n.kind == DIR and red is not None:
                        self._set_redirect(up, red)
                for n, up, red, other_parent, other_name in sides:
                    if n.kind == DIR and red is None and \
                            self._lower_positive(other_parent, other_name):
                        os.setxattr(up.xpath, self.x_opaque, b"y", follow_symlinks=False)
                try:
                    _renameat2(ua.dfd, ua.name, ub.dfd, ub.name, RENAME_EXCHANGE)
                finally:
                    if a.kind == DIR or b.kind == DIR:
                        self.dirfds.invalidate(UPPER, pa)
                        self.dirfds.invalidate(UPPER, pb)
            tmp = b"\0exchange"
            self._move_path(pa, tmp, a, np_)
            self._move_path(pb, pa, b, op)
            self._move_path(tmp, pb, a, np_)

    # ---- files

    async def open(self, inode, flags, ctx):
        return await self._run_fast(self._open_op, inode, flags)

    def _open_op(self, inode, flags):
        if flags & os.O_DIRECT:
            raise _err(errno.EINVAL)
        acc = flags & os.O_ACCMODE
        node = self._node(inode)
        if node.kind == DIR:
            raise _err(errno.EISDIR)
        if acc != os.O_RDONLY or flags & os.O_TRUNC:
            with self.lock:
                node = self._node(inode)
                if not node.upper:
                    self.copy_up(node, data=not (flags & os.O_TRUNC))
                if flags & os.O_TRUNC:
                    os.ftruncate(self._get_fd(node), 0)
        self._get_fd(node)
        with self.lock:
            node.opens += 1
            fh = next(self.fh_counter)
            self.handles[fh] = Handle(node, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        # Fast path without a thread hop: data already in the backing file's page cache
        # (RWF_NOWAIT never blocks: it fails with EAGAIN instead).
        h = self.handles.get(fh)
        if h is not None and _RWF_NOWAIT:
            node = h.node
            fd = node.fd
            if fd is not None and (node.fd_upper or not node.upper):
                buf = bytearray(size)
                try:
                    n = os.preadv(fd, [buf], off, _RWF_NOWAIT)
                except OSError:
                    n = -1
                if n == size:
                    if not node.upper:
                        self._touch_atime(node, fd)
                    return bytes(buf)
        return await self._run(self._read_op, fh, off, size)

    def _touch_atime(self, node: Node, fd: int) -> None:
        """Access time of a read served from a lower file, with relatime semantics (the default
        of the host's mounts): the atime becomes "now" when it is not newer than the mtime or
        the ctime, or is 24 h old.  Lower files are opened O_NOATIME and never written, so the
        new atime lives only in the in-memory node (``getattr`` reports it) until a copy-up
        writes it to the upper file: a read never copies anything up.  It is lost on unmount
        and, like any FUSE daemon's, only reads that reach the daemon (page-cache misses)
        count; objects with an upper file get their atime from the upper filesystem's read.
        (overlayfs leaves the atime of lower files alone: overlayfs.rst, "Non-standard
        behavior" (a).)"""
        now = time.time_ns()
        at = node.atime_ns
        if at is not None and now - at < _DAY_NS:
            return          # newer than mtime/ctime (checked when set; lowers do not change)
        try:
            st = os.fstat(fd)
        except OSError:
            return
        if at is None:
            at = st.st_atime_ns
        if at <= st.st_mtime_ns or at <= st.st_ctime_ns or now - at >= _DAY_NS:
            at = now
        node.atime_ns = at

    def _read_op(self, fh, off, size):
        h = self.handles[fh]
        node = h.node
        fd = self._get_fd(node)
        data = os.pread(fd, size, off)
        if not node.upper:
            self._touch_atime(node, fd)
        if len(data) == size and size >= 65536:
            # looks like a sequential stream (kernel readahead): start reading ahead in the
            # backing file so the next requests take the no-thread fast path
            try:
                os.posix_fadvise(fd, off + size, _PREFETCH, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
        return data

    async def write(self, fh, off, buf):
        return await self._run(self._write_op, fh, off, buf)

    def _write_op(self, fh, off, buf):
        h = self.handles[fh]
        node = h.node
        if not node.upper:        # e.g. a writeback from a mapping: copy up first
            with self.lock:
                self.copy_up(node)
        return os.pwrite(self._get_fd(node), buf, off)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        await self._run_fast(self._release_op, fh)

    def _release_op(self, fh):
        with self.lock:
            h = self.handles.pop(fh, None)
            if h is None:
                return
            node = h.node
            node.opens -= 1
            if node.opens <= 0:
                self._close_fds(node)
                if node.unlinked and node.nlookup <= 0:
                    self._delete_node(node.ino)

    async def fsync(self, fh, datasync):
        await self._run(self._fsync_op, fh, datasync)

    def _fsync_op(self, fh, datasync):
        fd = self._get_fd(self.handles[fh].node)
        (os.fdatasync if datasync else os.fsync)(fd)

    # ---- directories

    async def opendir(self, inode, ctx):
        return await self._run(self._opendir_op, inode)

    def _opendir_op(self, inode):
        with self.lock:
            node = self._node(inode)
            if node.kind != DIR:
                raise _err(errno.ENOTDIR)
            names = [b".", b".."] + self.merged_names(node)
            fh = next(self.fh_counter)
            self.dirhandles[fh] = DirHandle(node, names)
            return fh

    async def readdir(self, fh, start_id, token):
        dh = self.dirhandles[fh]
        pos = start_id
        sent: list[int] = []
        try:
            while pos < len(dh.entries):
                if dh.pending and dh.pending[0][0] == pos:
                    batch, dh.pending = dh.pending, []      # computed, did not fit last time
                else:
                    batch = await self._run(self._readdir_batch, dh, pos, 64)
                if not batch:
                    return
                for j, (idx, name, attr) in enumerate(batch):
                    if not pyfuse3.readdir_reply(token, name, attr, idx + 1):
                        dh.pending = batch[j:]
                        return
                    if name not in (b".", b".."):
                        sent.append(attr.st_ino)      # readdirplus takes a lookup reference
                pos = batch[-1][0] + 1
        finally:
            if sent:
                await self._run_fast(self._ref_many, sent)

    def _readdir_batch(self, dh: DirHandle, pos: int, count: int):
        with self.lock:
            node = dh.node
            while pos < len(dh.entries):
                out = []
                end = min(len(dh.entries), pos + count)
                for idx in range(pos, end):
                    name = dh.entries[idx]
                    try:
                        child = self._lookup_locked(node, name)
                        if child is None:
                            continue           # removed since opendir
                        out.append((idx, name, self._attr(child)))
                    except (OSError, pyfuse3.FUSEError):
                        continue
                if out:
                    return out
                pos = end
            return []

    def _ref_many(self, inos):
        with self.lock:
            for ino in inos:
                n = self.nodes.get(ino)
                if n is not None:
                    n.nlookup += 1

    async def releasedir(self, fh):
        self.dirhandles.pop(fh, None)

    async def fsyncdir(self, fh, datasync):
        await self._run(self._fsyncdir_op, fh)

    def _fsyncdir_op(self, fh):
        node = self.dirhandles[fh].node
        if node.upper:
            fd = self._open_dir(UPPER, node.path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def statfs(self, ctx):
        return await self._run_fast(self._statfs_op)

    def _statfs_op(self):
        sv = os.statvfs(self.upper_fd)
        d = pyfuse3.StatvfsData()
        for a in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(d, a, getattr(sv, a))
        return d

    async def access(self, inode, mode, ctx):
        return True

    # ---- xattrs

    async def getxattr(self, inode, name, ctx):
        return await self._run_fast(self._getxattr_op, inode, name)

    def _getxattr_op(self, inode, name):
        name = self._real_xname(name)
        node = self._node(inode)
        try:
            if node.unlinked and node.fd is not None:
                return os.getxattr(node.fd, name)
            with self._at(*self._real(node)) as loc:
                return os.getxattr(loc.xpath, name, follow_symlinks=False)
        except OSError as e:
            raise _err(e.errno or errno.ENODATA) from None

    async def listxattr(self, inode, ctx):
        return await self._run_fast(self._listxattr_op, inode)

    def _listxattr_op(self, inode):
        node = self._node(inode)
        out = []
        with self._at(*self._real(node)) as loc:
            names = os.listxattr(loc.xpath, follow_symlinks=False)
        for n in names:
            nb = os.fsencode(n)
            if nb.startswith(self.xescaped):
                out.append(self.xprefix + nb[len(self.xescaped):])
            elif not nb.startswith(self.xprefix):
                out.append(nb)
        return out

    async def setxattr(self, inode, name, value, ctx):
        await self._run_fast(self._setxattr_op, inode, name, value)

    def _setxattr_op(self, inode, name, value):
        name = self._real_xname(name)
        with self.lock:
            node = self._node(inode)
            self.copy_up(node)
            with self._at(UPPER, node.path) as loc:
                os.setxattr(loc.xpath, name, value, follow_symlinks=False)

    async def removexattr(self, inode, name, ctx):
        await self._run_fast(self._removexattr_op, inode, name)

    def _removexattr_op(self, inode, name):
        name = self._real_xname(name)
        with self.lock:
            node = self._node(inode)
            if not node.upper:
                # like overlayfs: removing an absent xattr fails without a copy-up
                with self._at(*self._real(node)) as loc:
                    os.getxattr(loc.xpath, name, follow_symlinks=False)
                self.copy_up(node)
            with self._at(UPPER, node.path) as loc:
                os.removexattr(loc.xpath, name, follow_symlinks=False)
