"""Backing objects of the layers (the kernel's util.c): ``LayerAccess``, the mixin that names a
backing object by (layer, relative path) and reaches it through ``dirfds`` (lstat, private
xattrs, whiteout and opaque tests, rename/link/whiteout creation in the upper layer)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

from .base import Node, OverlayBase
from .dirfds import _MISSING, _O_RDDIR, UPPER, _Loc

_O_NOATIME = getattr(os, "O_NOATIME", 0)

_libc = None


def libc():
    """The C library this process already has loaded (ctypes, errno kept), for the calls ``os`` lacks.
    Not ctypes.util.find_library("c"): that forks and execs ``ldconfig -p``, in every new daemon
    (the outside suites remount, so start a daemon, after every step)."""
    global _libc
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


class LayerAccess(OverlayBase):
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

    def _at_or_none(self, layer: int, rel: bytes) -> Optional[_Loc]:
        """``_at``, or None when the parent directory of ``rel`` does not exist in ``layer``
        (ENOENT/ENOTDIR: the name cannot be there); other errors raise."""
        try:
            return self._at(layer, rel)
        except OSError as e:
            if e.errno not in _MISSING:
                raise
            return None

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
        loc = self._at_or_none(layer, rel)
        if loc is None:
            return None
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

