"""Directory listings (the kernel's readdir.c): ``ReaddirOps``, the merged listing of a
directory (upper first, then lowers, whiteouts hidden), clearing the whiteouts of a directory
that is empty in the merged view, and opendir/readdir/releasedir/fsyncdir."""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

import pyfuse3

from .base import DIR, DirHandle, Node, _err, _join
from .dirfds import UPPER, _Loc
from .namei import NodeTable


_INLINE_LIST = 4096


class ReaddirOps(NodeTable):
    def merged_names(self, node: Node) -> list[bytes]:
        """Names visible in directory ``node``: upper first, then lowers, no whiteouts."""
        return self.merged_entries(node)[0]

    def merged_entries(self, node: Node) -> tuple[list[bytes], list[tuple[int, bytes, bool]]]:
        """``merged_names(node)``, and for each name where it was found: (layer, relative path
        of the backing entry, it is a directory)."""
        seen: set[bytes] = set()
        out: list[bytes] = []
        where: list[tuple[int, bytes, bool]] = []
        srcs = []
        if node.upper:
            srcs.append((UPPER, node.path))
        srcs.extend(node.lowers)
        for layer, rel in srcs:
            try:
                dfd = self._open_dir(layer, rel)
            except FileNotFoundError:
                continue
            pfx = rel + b"/" if rel else b""
            try:
                # zero-size files with the whiteout xattr count as whiteouts in directories
                # marked as holding them (overlay.opaque=x or overlay.whiteouts), as overlayfs
                here = _Loc(None, None, dfd, b".")
                xw = (self._getx(here, self.x_opaque) == b"x"
                      or self._getx(here, self.x_whiteouts) is not None)
                lower_names: Optional[set[bytes]] = set() if layer != UPPER else None
                with os.scandir(dfd) as it:
                    for e in it:
                        n = os.fsencode(e.name)
                        if lower_names is not None:
                            lower_names.add(n)
                        if n in seen:
                            continue
                        seen.add(n)
                        if e.is_dir(follow_symlinks=False):
                            out.append(n)
                            where.append((layer, pfx + n, True))
                            continue
                        if e.is_symlink():
                            out.append(n)
                            where.append((layer, pfx + n, False))
                            continue
                        if e.is_file(follow_symlinks=False):
                            if xw and self.is_whiteout(_Loc(None, None, dfd, n),
                                                       e.stat(follow_symlinks=False)):
                                continue
                            out.append(n)
                            where.append((layer, pfx + n, False))
                            continue
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                            continue
                        out.append(n)
                        where.append((layer, pfx + n, False))
                if lower_names is not None:
                    self._keep_lower_names((layer, rel), frozenset(lower_names))
            finally:
                os.close(dfd)
        return out, where

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
        # the listing is taken here: on the event loop for a small directory whose layers are
        # all memory filesystems (a copy from memory, as reads there), else in a thread
        node = self.nodes.get(inode)
        if node is not None and self.all_mem and self._small_dir(node):
            return await self._run_fast(self._opendir_op, inode)
        return await self._run(self._opendir_op, inode)

    def _small_dir(self, node: Node) -> bool:
        """Do the backing directories of ``node`` hold at most _INLINE_LIST entries, by their
        st_size?  (Only asked when every layer is tmpfs/ramfs, whose directories' st_size is
        20 bytes per entry.)"""
        srcs = ([(UPPER, node.path)] if node.upper else []) + list(node.lowers)
        size = 0
        for layer, rel in srcs:
            try:
                st = self._lstat_at(layer, rel)
            except OSError:
                return False
            if st is not None:
                size += st.st_size
        return size <= 20 * _INLINE_LIST

    def _opendir_op(self, inode):
        with self.lock:
            node = self._node(inode)
            if node.kind != DIR:
                raise _err(errno.ENOTDIR)
            names, where = self.merged_entries(node)
            fh = next(self.fh_counter)
            self.dirhandles[fh] = DirHandle(node, [b".", b".."] + names,
                                            [None, None] + where, self.ns_gen)
            return fh

    async def readdir(self, fh, start_id, token):
        dh = self.dirhandles[fh]
        pos = start_id
        sent: list[int] = []
        try:
            while pos < len(dh.entries):
                if dh.pending and dh.pending[0][0] == pos and dh.pending_gen == self.ns_gen:
                    # computed, did not fit last time, and no name changed since (else an
                    # entry removed meanwhile would come back as a dentry)
                    batch, dh.pending, gen = dh.pending, [], dh.pending_gen
                else:
                    # lookups, as lookup(): on the event loop when the namespace lock is free
                    gen = self.ns_gen
                    batch = await self._run_fast(self._readdir_batch, dh, pos, 64)
                if not batch:
                    return
                for j, (idx, name, attr) in enumerate(batch):
                    if not pyfuse3.readdir_reply(token, name, attr, idx + 1):
                        dh.pending = batch[j:]
                        dh.pending_gen = gen
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
                        child, st = self._listed_child(dh, idx)
                        if child is None:
                            child, st = self._lookup_st(node, name)
                        if child is None:
                            continue           # removed since opendir
                        out.append((idx, name, self._attr_of(child, st)))
                    except (OSError, pyfuse3.FUSEError):
                        continue
                if out:
                    return out
                pos = end
            return []

    def _listed_child(self, dh: DirHandle, idx: int):
        """The node of listed entry ``idx`` made from what opendir saw, without a lookup
        through the layers: for a non-directory while no name changed since opendir (the
        listing then says which layer the name resolves to -- the first one holding it, as
        _resolve finds).  Returns (node, lstat of its backing file), or (None, None) when a
        full lookup is needed (a directory: opaque/redirect; a whiteout, a hard link, a
        change).  An existing node is returned as it is.  Caller holds self.lock."""
        node = dh.node
        path = _join(node.path, dh.entries[idx])
        ino = self.by_path.get(path)
        if ino is not None:
            return self.nodes[ino], None
        where = dh.where[idx]
        if where is None or where[2] or dh.gen != self.ns_gen or node.unlinked:
            return None, None
        layer, rel, _ = where
        if layer == UPPER:
            rel = path
        try:
            loc = self._at(layer, rel)
        except OSError:
            return None, None
        with loc:
            st = self._lstat(loc)
            if (st is None or stat.S_ISDIR(st.st_mode) or st.st_nlink > 1
                    or self.is_whiteout(loc, st)):
                return None, None
        upper = layer == UPPER
        child = Node(next(self.ino_counter), path, node.ino, stat.S_IFMT(st.st_mode), upper,
                     [] if upper else [(layer, rel)])
        self.nodes[child.ino] = child
        self.by_path[path] = child.ino
        return child, st

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

