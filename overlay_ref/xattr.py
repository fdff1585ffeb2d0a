"""Extended attributes (the kernel's xattrs.c): ``XattrOps``, get/list/set/removexattr with the
overlay's private xattrs hidden and a user's ``overlay.*`` xattrs stored escaped; setting or
removing one copies the object up."""

from __future__ import annotations

import errno
import os

from .base import _err
from .copy_up import CopyUp
from .dirfds import UPPER


class XattrOps(CopyUp):
    def _real_xname(self, name: bytes) -> bytes:
        """Overlay-visible xattr name -> name on the real file.  Like overlayfs (>= 6.7), a
        user's ``trusted.overlay.X`` is stored escaped as ``trusted.overlay.overlay.X``."""
        if name.startswith(self.xprefix):
            return self.xescaped + name[len(self.xprefix):]
        return name

    # ------------------------------------------------------------------ operations

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
