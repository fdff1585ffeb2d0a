"""The overlay's objects and state: nodes and handles (``Node``, ``Handle``, ``DirHandle``),
helpers shared by every module, and ``OverlayBase``, the bottom of the mixin stack of
``fs.OverlayFS``: the mount's state (layer roots, node table, handle tables, the namespace lock)
and how requests run (worker threads, or inline on the event loop), plus statfs (as the kernel's
super.c)."""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import os
import stat
import threading
from typing import Callable, Optional

import pyfuse3
import trio

from .config import OverlayConfig
from .dirfds import UPPER, WORK, _DirFds

log = logging.getLogger("overlay_ref")

S_IFMT = stat.S_IFMT
DIR = stat.S_IFDIR
REG = stat.S_IFREG
LNK = stat.S_IFLNK


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _join(path: bytes, name: bytes) -> bytes:
    return path + b"/" + name if path else name


class _NeedThread(Exception):
    """An operation tried inline on the event loop needs a worker thread after all."""


class Node:
    __slots__ = ("ino", "path", "parent", "kind", "upper", "lowers", "nlookup", "aliases",
                 "unlinked", "fd", "fd_upper", "fd_mem", "old_fds", "opens", "lock", "copying",
                 "atime_ns", "lower_key", "was_open")

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
        self.fd_mem = False                  # fd is on a memory filesystem (tmpfs): never blocks
        self.old_fds: list[int] = []         # fds on stale backing files, closed on last release
        self.opens = 0
        # opened through the mount at least once: only then can the kernel hold pages of it
        # (FUSE page cache, mappings) that a copy-up must invalidate
        self.was_open = False
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
    __slots__ = ("node", "entries", "where", "gen", "pending", "pending_gen")

    def __init__(self, node: Node, entries: list[bytes],
                 where: Optional[list] = None, gen: int = -1):
        self.node = node
        self.entries = entries       # snapshot at opendir: offsets are indexes into it
        # per entry, where opendir found it: (layer, relative path, is a directory) or None
        self.where = where if where is not None else [None] * len(entries)
        self.gen = gen               # OverlayBase.ns_gen at opendir
        self.pending: list = []      # entries computed for a reply they did not fit in
        self.pending_gen = -1        # OverlayBase.ns_gen when they were computed


class OverlayBase(pyfuse3.Operations):
    """The mount's state and the request dispatch; the concern mixins build on it."""

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
        from .file import _on_mem_fs      # (file imports base) also notes each st_dev
        # which layers are memory filesystems (tmpfs, ramfs): what may be done on the loop
        self.layer_mem = {layer: _on_mem_fs(fd) for layer, fd in roots.items()}
        self.upper_mem = self.layer_mem[UPPER]
        self.all_mem = all(self.layer_mem.values())
        # names of lower directories (lower layers never change while mounted): namei
        self.lower_dir_names: collections.OrderedDict[tuple[int, bytes], frozenset] = \
            collections.OrderedDict()
        self.lower_dir_total = 0          # names in lower_dir_names
        self.lower_dir_hits: dict[tuple[int, bytes], int] = {}
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
        # bumped by every change of the names the node table knows (create, link, unlink,
        # rmdir, rename): a directory listing taken at opendir is still exact while it stands
        self.ns_gen = 0
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
        self.after_init: Optional[Callable[[], None]] = None    # set by the daemon
        self._trio_token: Optional[trio.lowlevel.TrioToken] = None
        root = Node(pyfuse3.ROOT_INODE, b"", pyfuse3.ROOT_INODE, DIR, True,
                    [(i, b"") for i in range(len(self.lower_roots))])
        root.nlookup = 1
        self.nodes[root.ino] = root
        self.by_path[b""] = root.ino

    def init(self) -> None:
        """FUSE INIT.  pyfuse3 calls this before libfuse sends the INIT reply, whose
        processing by the kernel (max_readahead) would override settings made now: run
        ``after_init`` from an event-loop task, which runs once this request is answered."""
        cb = self.after_init
        if cb is not None and self.nursery is not None:
            async def _after_init() -> None:
                cb()
            self.nursery.start_soon(_after_init)

    # ------------------------------------------------------------------ running requests

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

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    async def statfs(self, ctx):
        return await self._run_fast(self._statfs_op)

    def _statfs_op(self):
        sv = os.statvfs(self.upper_fd)
        d = pyfuse3.StatvfsData()
        for a in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(d, a, getattr(sv, a))
        return d
