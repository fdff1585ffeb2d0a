"""Files (the kernel's file.c): ``FileOps``, open/read/write/flush/release/fsync and the
consistency logic -- every object has one real fd on its *current* backing file, taken at open,
pinned before the object loses a name, swapped to the upper file by copy-up (the userspace
counterpart of ``ovl_real_fdget``), so every handle and mapping sees the data of the copy-up.

``FileOps`` is the lowest concern mixin: ``InodeOps`` builds on it, and ``NodeTable``/``CopyUp``
(which it calls back) build on those."""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

import pyfuse3

from .base import DIR, REG, Handle, Node, _err
from .util import _O_NOATIME, LayerAccess, libc

_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
_PREFETCH = 4 << 20
_DAY_NS = 24 * 3600 * 10**9
# statfs f_type of filesystems whose reads are copies from memory (no I/O to wait for);
# tmpfs answers RWF_NOWAIT reads with EOPNOTSUPP, so they are recognised by type instead
_MEM_FS = {0x01021994, 0x858458f6}      # TMPFS_MAGIC, RAMFS_MAGIC

_mem_dev: dict[int, bool] = {}           # st_dev -> on a memory filesystem


def _fstatfs_type(fd: int) -> int:
    """The f_type of fstatfs(fd) (-1 if it cannot be had)."""
    import ctypes
    buf = ctypes.create_string_buffer(256)       # struct statfs: f_type first (a long)
    if libc().fstatfs(fd, buf) != 0:
        return -1
    return ctypes.c_long.from_buffer(buf).value


def _on_mem_fs(fd: int, dev: int | None = None) -> bool:
    """Is ``fd`` on a memory filesystem?  ``dev``: its st_dev when the caller has it."""
    if dev is None:
        try:
            dev = os.fstat(fd).st_dev
        except OSError:
            return False
    mem = _mem_dev.get(dev)
    if mem is None:
        mem = _mem_dev[dev] = (_fstatfs_type(fd) & 0xFFFFFFFF) in _MEM_FS
    return mem


class FileOps(LayerAccess):
    if TYPE_CHECKING:
        # defined by the mixins built on this one (copy_up.CopyUp, namei.NodeTable), which
        # use the real fds of this one: copy-up swaps them, dropping a node closes them
        def copy_up(self, node: Node, data: bool = True) -> None: ...

        def _delete_node(self, ino: int) -> None: ...

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
            node.fd_mem = _on_mem_fs(fd)
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

    # ------------------------------------------------------------------ operations

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
            node.was_open = True
            node.opens += 1
            fh = next(self.fh_counter)
            self.handles[fh] = Handle(node, flags)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        # Fast path without a thread hop, on the current real fd (the same check as
        # _get_fd's): data already in the backing file's page cache (RWF_NOWAIT never blocks:
        # it fails with EAGAIN instead), or any read of a file on a memory filesystem (tmpfs
        # refuses RWF_NOWAIT, and a read there is a copy from memory).  pyfuse3 takes any
        # buffer: the bytearray is handed over as it is.
        h = self.handles.get(fh)
        if h is not None:
            node = h.node
            fd = node.fd
            if fd is not None and (node.fd_upper or not node.upper):
                data: bytes | bytearray | None = None
                if node.fd_mem:
                    try:
                        data = os.pread(fd, size, off)
                    except OSError:
                        pass                  # the thread path reports the error
                elif _RWF_NOWAIT:
                    buf = bytearray(size)
                    try:
                        if os.preadv(fd, [buf], off, _RWF_NOWAIT) == size:
                            data = buf
                    except OSError:
                        pass                  # EAGAIN: not all in the page cache
                if data is not None:
                    if not node.upper:
                        self._touch_atime(node, fd)
                    return data
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
        # as read(): a write to an upper file on a memory filesystem is a copy to memory,
        # answered on the loop; anything else (a copy-up first, other filesystems) in a thread
        h = self.handles.get(fh)
        if h is not None:
            node = h.node
            fd = node.fd
            if fd is not None and node.upper and node.fd_upper and node.fd_mem:
                try:
                    return os.pwrite(fd, buf, off)
                except OSError:
                    pass                      # the thread path reports the error
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

