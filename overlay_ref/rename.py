"""Rename (the kernel's dir.c, ovl_rename): ``RenameOps``, rename with RENAME_NOREPLACE (a
whiteout left behind where a lower entry would show; merged/lower directories only with
``redirect_dir``, then with an absolute ``overlay.redirect``), RENAME_WHITEOUT (the same rename,
and a whiteout left behind in the upper layer whatever the lower layers hold) and
RENAME_EXCHANGE."""

from __future__ import annotations

import errno
import os
from typing import Optional

from .base import DIR, S_IFMT, Node, _err, _join
from .copy_up import CopyUp
from .dirfds import UPPER, _Loc
from .readdir import ReaddirOps
from .util import libc

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4


def _renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    import ctypes
    if libc().renameat2(olddirfd, old, newdirfd, new, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class RenameOps(CopyUp, ReaddirOps):
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run_fast(self._rename_op, parent_inode_old, name_old, parent_inode_new,
                        name_new, flags)

    def _rename_op(self, pold, nold, pnew, nnew, flags):
        if flags == RENAME_EXCHANGE:
            return self._exchange_op(pold, nold, pnew, nnew)
        if flags & ~(RENAME_NOREPLACE | RENAME_WHITEOUT):
            raise _err(errno.EINVAL)     # EXCHANGE combined with NOREPLACE or WHITEOUT
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
            # RENAME_WHITEOUT: as on tmpfs/ext4 the source name is replaced by a whiteout
            # (0/0 char device) -- here in the upper layer, where the overlay keeps its
            # whiteouts, so the name reads as absent in the merged view as after any rename
            src_wh = bool(flags & RENAME_WHITEOUT) or self._lower_positive(op, nold)
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

