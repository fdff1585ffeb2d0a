"""Directory listings (the kernel's readdir.c): ``ReaddirOps``, the merged listing of a
directory (upper first, then lowers, whiteouts hidden), clearing the whiteouts of a directory
that is empty in the merged view, and opendir/readdir/releasedir/fsyncdir."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from .base import DIR, DirHandle, Node, _err
from .dirfds import UPPER, _Loc
from .namei import NodeTable


class ReaddirOps(NodeTable):
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

    # ------------------------------------------------------------------ operations

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

