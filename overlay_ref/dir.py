"""Creating and removing names (the kernel's dir.c): ``DirOps``, mknod/mkdir/symlink/create/
link (over a whiteout: built in the work directory and renamed into place; a new directory over a
whiteout is opaque) and unlink/rmdir (leaving a whiteout where a lower entry would show)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Optional

import pyfuse3

from .base import DIR, LNK, REG, S_IFMT, Handle, Node, _err, _join
from .copy_up import CopyUp
from .dirfds import UPPER, _Loc
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
        """Copy the parent up; return (upper relative path, a whiteout is in the way).  EEXIST
        when the name shows in the overlay (as a lookup would find it: an upper entry that is
        no whiteout, else a lower one)."""
        if parent.kind != DIR:
            raise _err(errno.ENOTDIR)
        if parent.unlinked:
            raise _err(errno.ENOENT)
        up = _join(parent.path, name)
        if up in self.by_path:
            raise _err(errno.EEXIST)
        wh = False
        if parent.upper:
            loc = self._at_or_none(UPPER, up)
            if loc is not None:
                with loc:
                    st = self._lstat(loc)
                    if st is not None:
                        if not self.is_whiteout(loc, st):
                            raise _err(errno.EEXIST)
                        wh = True
        if not wh and self._walk_lowers(parent, name, None, None)[0] is not None:
            raise _err(errno.EEXIST)
        self.copy_up(parent)
        return up, wh

    def _create_upper(self, parent: Node, name: bytes, ctx, mode: int, kind: int,
                      make: Callable[[_Loc, int], Optional[int]]) -> tuple[Node, Optional[int]]:
        """The one shape of mknod/mkdir/symlink/create: make ``name`` (of type ``kind``) in
        ``parent`` in the upper layer (copying the parent up), owned by the caller (the
        parent's group when it is setgid, see _owner), with ``mode``'s permission bits
        (symlinks keep theirs).  ``make(loc, mode)`` creates the bare object at ``loc`` and
        returns an fd on it (create) or None; owner and mode are then set through that fd or
        the name.  Over a whiteout the object is built in the work directory and renamed over
        the whiteout (a directory becomes opaque first, so it does not merge the lower
        directory the whiteout hid); on failure the half-made object is removed.  Returns the
        new node (one lookup counted) and the fd ``make`` returned.  Caller holds self.lock."""
        up, wh = self._prepare_create(parent, name)
        uid, gid, mode = self._owner(parent, ctx, mode, kind == DIR)
        with self._at(UPPER, up) as loc:
            tgt = self._wloc(self._tmpname()) if wh else loc
            fd = make(tgt, mode)
            try:
                if fd is not None:
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, stat.S_IMODE(mode))
                else:
                    os.chown(tgt.name, uid, gid, dir_fd=tgt.dfd, follow_symlinks=False)
                    if kind != LNK:
                        os.chmod(tgt.name, stat.S_IMODE(mode), dir_fd=tgt.dfd)
                if wh:
                    if kind == DIR:
                        os.setxattr(tgt.xpath, self.x_opaque, b"y", follow_symlinks=False)
                        os.unlink(loc.name, dir_fd=loc.dfd)     # a dir cannot replace it
                    self._rename(tgt, loc)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                if kind == DIR:
                    os.rmdir(tgt.name, dir_fd=tgt.dfd)
                else:
                    os.unlink(tgt.name, dir_fd=tgt.dfd)
                raise
        node = self._new_upper_node(parent, name, kind)
        node.nlookup += 1
        return node, fd

    # ---- creation

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return await self._run_fast(self._mknod_op, parent_inode, name, mode, rdev, ctx)

    def _mknod_op(self, parent_inode, name, mode, rdev, ctx):
        def make(loc: _Loc, mode: int) -> None:
            os.mknod(loc.name, mode, rdev, dir_fd=loc.dfd)
        with self.lock:
            node, _ = self._create_upper(self._node(parent_inode), name, ctx, mode,
                                         S_IFMT(mode), make)
            return self._attr(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return await self._run_fast(self._mkdir_op, parent_inode, name, mode, ctx)

    def _mkdir_op(self, parent_inode, name, mode, ctx):
        def make(loc: _Loc, mode: int) -> None:
            os.mkdir(loc.name, 0o700, dir_fd=loc.dfd)
        with self.lock:
            node, _ = self._create_upper(self._node(parent_inode), name, ctx, mode, DIR, make)
            return self._attr(node)

    async def symlink(self, parent_inode, name, target, ctx):
        return await self._run_fast(self._symlink_op, parent_inode, name, target, ctx)

    def _symlink_op(self, parent_inode, name, target, ctx):
        def make(loc: _Loc, mode: int) -> None:
            os.symlink(target, loc.name, dir_fd=loc.dfd)
        with self.lock:
            node, _ = self._create_upper(self._node(parent_inode), name, ctx, 0o777, LNK, make)
            return self._attr(node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        return await self._run_fast(self._create_op, parent_inode, name, mode, flags, ctx)

    def _create_op(self, parent_inode, name, mode, flags, ctx):
        if flags & os.O_DIRECT:
            raise _err(errno.EINVAL)

        def make(loc: _Loc, mode: int) -> int:
            return os.open(loc.name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                           0o600, dir_fd=loc.dfd)
        with self.lock:
            node, fd = self._create_upper(self._node(parent_inode), name, ctx, mode, REG, make)
            assert fd is not None
            st = os.fstat(fd)                 # for both: no second fstat for the attributes
            node.fd_mem = _on_mem_fs(fd, st.st_dev)
            node.fd = fd
            node.fd_upper = True
            node.was_open = True
            node.opens += 1
            fh = next(self.fh_counter)
            self.handles[fh] = Handle(node, flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._attr_of(node, st)

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
            self.ns_gen += 1
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

