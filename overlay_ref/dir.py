"""Creating and removing names (the kernel's dir.c): ``DirOps``, mknod/mkdir/symlink/create/
link (over a whiteout: built in the work directory and renamed into place; a new directory over a
whiteout is opaque) and unlink/rmdir (leaving a whiteout where a lower entry would show)."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from .base import DIR, LNK, REG, S_IFMT, Handle, Node, _err, _join
from .copy_up import CopyUp
from .dirfds import UPPER
from .file import _on_mem_fs
from .readdir import ReaddirOps


class DirOps(CopyUp, ReaddirOps):
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
            node.fd_mem = _on_mem_fs(fd)
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

