"""The reference overlay filesystem (pyfuse3 operations).

Model
-----
Every overlay object is one :class:`Node` with one FUSE inode number for its whole life in the
mount (copy-up, rename and hard links keep it).  A node knows its overlay path, whether it has an
upper entry, and its lower entries ``[(layer index, absolute path)]`` (for a directory: every lower
directory merged into it; for a non-directory: the one it was found in, i.e. its copy-up origin).
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
"""

from __future__ import annotations

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


def _renameat2(old: bytes, new: bytes, flags: int) -> None:
    global _libc
    if _libc is None:
        import ctypes
        import ctypes.util
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    import ctypes
    AT_FDCWD = -100
    if _libc.renameat2(AT_FDCWD, old, AT_FDCWD, new, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


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
                    [(i, r) for i, r in enumerate(self.lower_roots)])
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

    def upper_path(self, path: bytes) -> bytes:
        return self.upper_root + b"/" + path if path else self.upper_root

    def real_path(self, node: Node) -> bytes:
        if node.upper:
            return self.upper_path(node.path)
        return node.lowers[0][1]

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def _tmpname(self) -> bytes:
        return os.path.join(self.work_dir, b"#%x.%x" % (os.getpid(), next(self.tmp_counter)))

    def _getx(self, path: bytes, name: bytes) -> Optional[bytes]:
        try:
            return os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            return None

    def is_whiteout(self, path: bytes, st: os.stat_result) -> bool:
        if stat.S_ISCHR(st.st_mode):
            return st.st_rdev == 0
        if stat.S_ISREG(st.st_mode) and st.st_size == 0:
            return self._getx(path, self.x_whiteout) is not None
        return False

    def is_opaque(self, path: bytes) -> bool:
        return self._getx(path, self.x_opaque) == b"y"

    def _lstat(self, path: bytes) -> Optional[os.stat_result]:
        try:
            return os.lstat(path)
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

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
                cand = self.lower_roots[i] + (b"/" + abs_redirect if abs_redirect else b"")
            else:
                if i not in pl:
                    continue
                cand = pl[i] + b"/" + cur_name
            st = self._lstat(cand)
            if st is None:
                continue
            if self.is_whiteout(cand, st):
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
            if self.is_opaque(cand):
                break
            if self.cfg.follow_redirects:
                r = self._getx(cand, self.x_redirect)
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
            up = self.upper_path(path)
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
            os.link(self.upper_path(node.path), self.upper_path(path), follow_symlinks=False)
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
            for root in self.lower_roots:
                stack = [b""]
                while stack:
                    rel = stack.pop()
                    try:
                        it = os.scandir(root + b"/" + rel if rel else root)
                    except OSError:
                        continue
                    with it:
                        for e in it:
                            r = _join(rel, e.name)
                            try:
                                if e.is_dir(follow_symlinks=False):
                                    stack.append(r)
                                    continue
                                st = e.stat(follow_symlinks=False)
                            except OSError:
                                continue
                            if st.st_nlink > 1:
                                found.setdefault((st.st_dev, st.st_ino), []).append(r)
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
        ust = os.lstat(self.upper_path(node.path))
        self.by_upper_ino[(ust.st_dev, ust.st_ino)] = node.ino
        for p in sorted(node.aliases - {node.path}):
            parent = self._lookup_path(os.path.dirname(p))
            if parent is None:
                continue
            try:
                self.copy_up(parent)
                os.link(self.upper_path(node.path), self.upper_path(p), follow_symlinks=False)
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
        return os.lstat(self.real_path(node))

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        return self._attr_from_stat(node, self._stat_node(node))

    # ------------------------------------------------------------------ copy-up

    def _copy_xattrs(self, src: bytes, dst: bytes, dst_fd: Optional[int] = None) -> None:
        try:
            names = os.listxattr(src, follow_symlinks=False)
        except OSError:
            return
        for n in names:
            nb = os.fsencode(n)
            if self._is_private(nb):
                continue
            try:
                v = os.getxattr(src, n, follow_symlinks=False)
                if dst_fd is not None:
                    os.setxattr(dst_fd, n, v)
                else:
                    os.setxattr(dst, n, v, follow_symlinks=False)
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
        while node.copying:
            self.cond.wait()
        if node.upper:
            return
        if node.unlinked:
            raise _err(errno.ENOENT)
        parent = self.nodes[node.parent]
        self.copy_up(parent)
        src = node.lowers[0][1]
        st = os.lstat(src)
        atime = node.atime_ns if node.atime_ns is not None else st.st_atime_ns
        dst = self.upper_path(node.path)
        tmp = self._tmpname()
        kind = S_IFMT(st.st_mode)
        try:
            if kind == DIR:
                os.mkdir(tmp, 0o700)
                self._copy_xattrs(src, tmp)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.utime(tmp, ns=(atime, st.st_mtime_ns))
            elif kind == REG:
                fin = os.open(src, os.O_RDONLY | _O_NOATIME | os.O_NOFOLLOW)
                try:
                    fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
                            dst = self.upper_path(node.path)   # its parent may have moved
                        elif data:
                            self._copy_data(fin, fout, st.st_size)
                        self._copy_xattrs(src, tmp, fout)
                        os.fchown(fout, st.st_uid, st.st_gid)
                        os.fchmod(fout, stat.S_IMODE(st.st_mode))
                        os.utime(fout, ns=(atime, st.st_mtime_ns))
                    finally:
                        os.close(fout)
                finally:
                    os.close(fin)
            elif kind == LNK:
                os.symlink(os.readlink(src), tmp)
                self._copy_xattrs(src, tmp)
                os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
                os.utime(tmp, ns=(atime, st.st_mtime_ns), follow_symlinks=False)
            else:
                os.mknod(tmp, st.st_mode, st.st_rdev)
                self._copy_xattrs(src, tmp)
                os.chown(tmp, st.st_uid, st.st_gid)
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                os.utime(tmp, ns=(atime, st.st_mtime_ns))
            os.rename(tmp, dst)
        except BaseException:
            try:
                if os.path.isdir(tmp) and not os.path.islink(tmp):
                    os.rmdir(tmp)
                else:
                    os.unlink(tmp)
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
            path = self.real_path(node)
            if node.upper:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
                except OSError as e:
                    if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):
                        raise
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            else:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _O_NOATIME)
                except PermissionError:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
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
            srcs.append(self.upper_path(node.path))
        srcs.extend(p for _, p in node.lowers)
        for src in srcs:
            try:
                it = os.scandir(src)
            except FileNotFoundError:
                continue
            # zero-size files with the whiteout xattr count as whiteouts in directories marked
            # as holding them (overlay.opaque=x or overlay.whiteouts), as in overlayfs
            xw = (self._getx(src, self.x_opaque) == b"x"
                  or self._getx(src, self.x_whiteouts) is not None)
            with it:
                for e in it:
                    n = e.name
                    if n in seen:
                        continue
                    seen.add(n)
                    if e.is_dir(follow_symlinks=False) or e.is_symlink():
                        out.append(n)
                        continue
                    if e.is_file(follow_symlinks=False):
                        if xw and self.is_whiteout(e.path, e.stat(follow_symlinks=False)):
                            continue
                        out.append(n)
                        continue
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                        continue
                    out.append(n)
        return out

    def _clear_whiteouts(self, updir: bytes) -> None:
        """Remove the whiteouts of an upper dir that is empty in the merged view."""
        for e in os.scandir(updir):
            st = e.stat(follow_symlinks=False)
            if self.is_whiteout(e.path, st):
                os.unlink(e.path)
            else:
                raise _err(errno.ENOTEMPTY)

    def _make_whiteout(self, path: bytes) -> None:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))

    # ------------------------------------------------------------------ ownership of new objects

    def _owner(self, parent: Node, ctx, mode: int, is_dir: bool) -> tuple[int, int, int]:
        pst = os.lstat(self.real_path(parent))
        uid = ctx.uid
        gid = ctx.gid
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if is_dir:
                mode |= stat.S_ISGID
        return uid, gid, mode

    def _prepare_create(self, parent: Node, name: bytes) -> tuple[bytes, bool]:
        """Copy the parent up; return (upper path, a whiteout is in the way)."""
        if parent.kind != DIR:
            raise _err(errno.ENOTDIR)
        if parent.unlinked:
            raise _err(errno.ENOENT)
        if self._lookup_locked(parent, name) is not None:
            raise _err(errno.EEXIST)
        self.copy_up(parent)
        up = self.upper_path(_join(parent.path, name))
        st = self._lstat(up)
        wh = False
        if st is not None:
            if not self.is_whiteout(up, st):
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
            path = self.real_path(node) if not node.unlinked else None
            tgt = use_fd if use_fd is not None else path
            nofollow = node.kind == LNK
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                if use_fd is not None:
                    os.fchown(use_fd, uid, gid)
                else:
                    os.chown(path, uid, gid, follow_symlinks=not nofollow)
            if fields.update_mode:
                if node.kind == LNK:
                    raise _err(errno.EOPNOTSUPP)
                if use_fd is not None:
                    os.fchmod(use_fd, stat.S_IMODE(attr.st_mode))
                else:
                    os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_size:
                if node.kind == DIR:
                    raise _err(errno.EISDIR)
                if use_fd is not None:
                    os.ftruncate(use_fd, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_atime or fields.update_mtime:
                st = self._stat_node(node)
                at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
                mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
                if use_fd is not None:
                    os.utime(use_fd, ns=(at, mt))
                else:
                    os.utime(tgt, ns=(at, mt), follow_symlinks=not nofollow)
            return self._attr(node)

    async def readlink(self, inode, ctx):
        return await self._run_fast(self._readlink_op, inode)

    def _readlink_op(self, inode):
        node = self._node(inode)
        if node.kind != LNK:
            raise _err(errno.EINVAL)
        return os.readlink(self.real_path(node))

    # ---- creation

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._run_fast(self._mknod_op, parent_inode, name, mode, rdev, ctx)

    def _mknod_op(self, parent_inode, name, mode, rdev, ctx):
        with self.lock:
            parent = self._node(parent_inode)
            up, wh = self._prepare_create(parent, name)
            uid, gid, mode = self._owner(parent, ctx, mode, False)
            tgt = self._tmpname() if wh else up
            os.mknod(tgt, mode, rdev)
            try:
                os.chown(tgt, uid, gid)
                os.chmod(tgt, stat.S_IMODE(mode))
                if wh:
                    os.rename(tgt, up)
            except BaseException:
                os.unlink(tgt)
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
            tgt = self._tmpname() if wh else up
            os.mkdir(tgt, 0o700)
            try:
                os.chown(tgt, uid, gid)
                os.chmod(tgt, stat.S_IMODE(mode))
                if wh:
                    # over a whiteout: the new dir must not merge the lower dir it hides
                    os.setxattr(tgt, self.x_opaque, b"y")
                    os.unlink(up)
                    os.rename(tgt, up)
            except BaseException:
                os.rmdir(tgt)
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
            tgt = self._tmpname() if wh else up
            os.symlink(target, tgt)
            try:
                os.chown(tgt, uid, gid, follow_symlinks=False)
                if wh:
                    os.rename(tgt, up)
            except BaseException:
                os.unlink(tgt)
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
            tgt = self._tmpname() if wh else up
            fd = os.open(tgt, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, stat.S_IMODE(mode))
                if wh:
                    os.rename(tgt, up)
            except BaseException:
                os.close(fd)
                os.unlink(tgt)
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
            src = self.upper_path(node.path)
            tgt = self._tmpname() if wh else up
            os.link(src, tgt, follow_symlinks=False)
            if wh:
                os.rename(tgt, up)
            path = _join(parent.path, new_name)
            node.aliases.add(path)
            self.by_path[path] = node.ino
            st = os.lstat(up)
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
            up = self.upper_path(path)
            need_wh = self._lower_positive(parent, name)
            upper_here = self._lstat(up) is not None
            if upper_here:
                if need_wh:
                    tmp = self._tmpname()
                    self._make_whiteout(tmp)
                    os.rename(tmp, up)
                else:
                    os.unlink(up)
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
            up = self.upper_path(path)
            need_wh = self._lower_positive(parent, name)
            if node.upper:
                self._clear_whiteouts(up)
                os.rmdir(up)
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
                up_src_before = self.upper_path(old_path)
                src_redirect = (self._getx(up_src_before, self.x_redirect)
                                if src.upper else None)
                if not src_redirect or not src_redirect.startswith(b"/"):
                    li, lp = src.lowers[0]
                    rel = os.path.relpath(lp, self.lower_roots[li])
                    src_redirect = b"/" + (b"" if rel == b"." else rel)
            self.copy_up(src)
            if dst is not None:
                self._pin_fd(dst)        # an open file replaced by the rename stays readable
            up_src = self.upper_path(old_path)
            up_dst = self.upper_path(new_path)
            src_wh = self._lower_positive(op, nold)
            dst_lower = self._lower_positive(np_, nnew)
            dst_st = self._lstat(up_dst)
            if dst_st is not None:
                if S_IFMT(dst_st.st_mode) == DIR:
                    self._clear_whiteouts(up_dst)
                elif self.is_whiteout(up_dst, dst_st) and src.kind == DIR:
                    os.unlink(up_dst)
            if src.kind == DIR:
                if src_redirect is not None:
                    os.setxattr(up_src, self.x_redirect, src_redirect)
                elif dst_lower or (dst_st is not None and self.is_whiteout(up_dst, dst_st)):
                    os.setxattr(up_src, self.x_opaque, b"y")
            if src_wh:
                # leave a whiteout behind atomically where the kernel would
                tmp = self._tmpname()
                self._make_whiteout(tmp)
                try:
                    os.rename(up_src, up_dst)
                except BaseException:
                    os.unlink(tmp)
                    raise
                os.rename(tmp, up_src)
            else:
                os.rename(up_src, up_dst)
            if dst is not None:
                self._drop_path(new_path)
            self._move_path(old_path, new_path, src, np_)

    def _dir_redirect(self, node: Node, path: bytes) -> Optional[bytes]:
        """The absolute redirect a directory with lower layers needs when it moves."""
        if node.kind != DIR or not node.lowers:
            return None
        cur = self._getx(self.upper_path(path), self.x_redirect) if node.upper else None
        if cur and cur.startswith(b"/"):
            return cur
        li, lp = node.lowers[0]
        rel = os.path.relpath(lp, self.lower_roots[li])
        return b"/" + (b"" if rel == b"." else rel)

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
            ua, ub = self.upper_path(pa), self.upper_path(pb)
            # each object lands on the other's name: a moved directory keeps its own lower
            # layers (redirect) and must not merge those of its new name (opaque)
            for n, up, red, other_parent, other_name in ((a, ua, ra, np_, nnew), (b, ub, rb, op, nold)):
                if n.kind != DIR:
                    continue
                if red is not None:
                    os.setxattr(up, self.x_redirect, red)
                elif self._lower_positive(other_parent, other_name):
                    os.setxattr(up, self.x_opaque, b"y")
            _renameat2(ua, ub, RENAME_EXCHANGE)
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
            fd = os.open(self.upper_path(node.path), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    async def statfs(self, ctx):
        return await self._run_fast(self._statfs_op)

    def _statfs_op(self):
        sv = os.statvfs(self.upper_root)
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
            return os.getxattr(self.real_path(node), name, follow_symlinks=False)
        except OSError as e:
            raise _err(e.errno or errno.ENODATA) from None

    async def listxattr(self, inode, ctx):
        return await self._run_fast(self._listxattr_op, inode)

    def _listxattr_op(self, inode):
        node = self._node(inode)
        out = []
        for n in os.listxattr(self.real_path(node), follow_symlinks=False):
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
            os.setxattr(self.upper_path(node.path), name, value, follow_symlinks=False)

    async def removexattr(self, inode, name, ctx):
        await self._run_fast(self._removexattr_op, inode, name)

    def _removexattr_op(self, inode, name):
        name = self._real_xname(name)
        with self.lock:
            node = self._node(inode)
            if not node.upper:
                # like overlayfs: removing an absent xattr fails without a copy-up
                os.getxattr(self.real_path(node), name, follow_symlinks=False)
                self.copy_up(node)
            os.removexattr(self.upper_path(node.path), name, follow_symlinks=False)
