"""Inode attributes (the kernel's inode.c): ``InodeOps``, attributes from the backing file
(``_attr``), getattr, setattr (copying up first), readlink, access."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from .base import DIR, LNK, REG, Node, _err
from .dirfds import _Loc
from .file import FileOps


class InodeOps(FileOps):
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

    # ------------------------------------------------------------------ operations

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
            real: int | _Loc          # the real fd of the file, or its backing object
            if node.kind == REG and (node.unlinked or fh is not None):
                real = self._get_fd(node)
            elif node.unlinked:
                raise _err(errno.ENOENT)
            else:
                real = self._at(*self._real(node))
            try:
                return self._setattr_apply(node, attr, fields, real)
            finally:
                if isinstance(real, _Loc):
                    real.release()

    def _setattr_apply(self, node: Node, attr, fields, real: int | _Loc):
        follow = node.kind != LNK
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            if isinstance(real, int):
                os.fchown(real, uid, gid)
            else:
                os.chown(real.name, uid, gid, dir_fd=real.dfd, follow_symlinks=follow)
        if fields.update_mode:
            if node.kind == LNK:
                raise _err(errno.EOPNOTSUPP)
            if isinstance(real, int):
                os.fchmod(real, stat.S_IMODE(attr.st_mode))
            else:
                os.chmod(real.name, stat.S_IMODE(attr.st_mode), dir_fd=real.dfd)
        if fields.update_size:
            if node.kind == DIR:
                raise _err(errno.EISDIR)
            if isinstance(real, int):
                os.ftruncate(real, attr.st_size)
            elif node.kind != REG:
                raise _err(errno.EINVAL)         # as truncate(2) of a non-regular file
            else:
                fd = os.open(real.name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=real.dfd)
                try:
                    os.ftruncate(fd, attr.st_size)
                finally:
                    os.close(fd)
        if fields.update_atime or fields.update_mtime:
            st = self._stat_node(node)
            at = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mt = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            if isinstance(real, int):
                os.utime(real, ns=(at, mt))
            else:
                os.utime(real.name, ns=(at, mt), dir_fd=real.dfd, follow_symlinks=follow)
        return self._attr(node)

    async def readlink(self, inode, ctx):
        return await self._run_fast(self._readlink_op, inode)

    def _readlink_op(self, inode):
        node = self._node(inode)
        if node.kind != LNK:
            raise _err(errno.EINVAL)
        with self._at(*self._real(node)) as loc:
            return os.readlink(loc.name, dir_fd=loc.dfd)

    async def access(self, inode, mode, ctx):
        return True

