"""Copy-up (the kernel's copy_up.c): ``CopyUp``, copying an object (parents first) into the
upper layer through ``WORK/work``, big files' data without the namespace lock, then swapping
the object's real fd and invalidating the kernel's cache; and linking the other names of a file
hard-linked on a lower layer to its new upper inode."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from typing import Iterator

import pyfuse3
import trio

from .base import DIR, LNK, REG, S_IFMT, Node, _err, _join, log
from .dirfds import UPPER, _Loc
from .file import _mem_dev
from .namei import NodeTable
from .util import _O_NOATIME

_UNLOCKED_COPY_MIN = 1 << 20
_INLINE_COPY_MAX = 256 << 10      # copy-ups on the event loop: memory filesystems only
_COPY_CHUNK = 1 << 20


@contextlib.contextmanager
def _unlocked(lock: threading.RLock) -> Iterator[None]:
    """Release ``lock``, held (maybe recursively) by this thread, for the body, and take it
    again as often afterwards (as threading.Condition.wait does)."""
    depth = 0
    while True:
        try:
            lock.release()
        except RuntimeError:        # not held (any more)
            break
        depth += 1
    try:
        yield
    finally:
        for _ in range(depth):
            lock.acquire()


class CopyUp(NodeTable):
    # ------------------------------------------------------------------ copy-up

    def _copy_xattrs(self, src: _Loc, dst: _Loc | int) -> None:
        """Copy the xattrs of ``src`` but the overlay's private ones to ``dst`` (a location or
        an fd)."""
        try:
            names = os.listxattr(src.xpath, follow_symlinks=False)
        except OSError:
            return
        for n in names:
            nb = os.fsencode(n)
            if self._is_private(nb):
                continue
            try:
                v = os.getxattr(src.xpath, n, follow_symlinks=False)
                if isinstance(dst, int):
                    os.setxattr(dst, n, v)
                else:
                    os.setxattr(dst.xpath, n, v, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EPERM):
                    raise

    def copy_up(self, node: Node, data: bool = True) -> None:
        """Copy ``node`` (and its parents first) up. Caller holds self.lock.

        The data of big files is copied with the namespace lock released (other operations go
        on; an operation that needs this node copied up waits for it)."""
        if node.upper:
            return
        if node.kind != DIR and not self._cheap_copy_up(node, data):
            self._check_may_block()      # never copy data (or wait for a copy) on the loop
        # parents first, top-down: a loop, not a recursion (a path can be 2000 directories
        # deep); _copy_up_one copies a parent itself if it changed meanwhile
        chain = []
        p = node
        while not p.unlinked:
            parent = self.nodes.get(p.parent)
            if parent is None or parent.upper or parent is p:
                break
            chain.append(parent)
            p = parent
        for p in reversed(chain):
            self._copy_up_one(p, True)
        self._copy_up_one(node, data)

    def _cheap_copy_up(self, node: Node, data: bool) -> bool:
        """May the copy-up of non-directory ``node`` run on the event loop?  Yes when it
        copies no data (symlinks, devices, a copy-up for O_TRUNC) or only a small file
        (_INLINE_COPY_MAX) from a memory filesystem to a memory filesystem (tmpfs, ramfs: a
        copy from memory, as the reads served on the loop), nothing else copies it now and
        no scan of the lower layers (lower hard links) is due.  Only asked on the loop."""
        if (self._inline_ident != threading.get_ident() or node.copying or not node.lowers
                or (node.lower_key is not None and self._lower_link_names is None)):
            return False
        if node.kind != REG or not data:
            return True
        if not self.upper_mem:
            return False
        st = self._lstat_at(*node.lowers[0])
        return (st is not None and st.st_size <= _INLINE_COPY_MAX
                and _mem_dev.get(st.st_dev, False))

    def _copy_up_one(self, node: Node, data: bool) -> None:
        if node.upper:
            return
        while node.copying:
            self.cond.wait()
        if node.upper:
            return
        if node.unlinked:
            raise _err(errno.ENOENT)
        parent = self.nodes[node.parent]
        if not parent.upper:
            self.copy_up(parent)         # it moved while we waited
        wloc = self._wloc(self._tmpname())
        tmp, W = wloc.name, wloc.dfd
        with self._at(*node.lowers[0]) as src:
            st = os.stat(src.name, dir_fd=src.dfd, follow_symlinks=False)
            atime = node.atime_ns if node.atime_ns is not None else st.st_atime_ns
            kind = S_IFMT(st.st_mode)
            try:
                if kind == DIR:
                    os.mkdir(tmp, 0o700, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=W)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                elif kind == REG:
                    fin = os.open(src.name, os.O_RDONLY | _O_NOATIME | os.O_NOFOLLOW,
                                  dir_fd=src.dfd)
                    try:
                        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=W)
                        try:
                            if data and st.st_size > _UNLOCKED_COPY_MIN:
                                node.copying = True
                                try:
                                    with _unlocked(self.lock):
                                        self._copy_data(fin, fout, st.st_size)
                                finally:
                                    node.copying = False
                                    self.cond.notify_all()
                                if node.unlinked:          # removed while we copied
                                    raise _err(errno.ENOENT)
                            elif data:
                                self._copy_data(fin, fout, st.st_size)
                            self._copy_xattrs(src, fout)
                            os.fchown(fout, st.st_uid, st.st_gid)
                            os.fchmod(fout, stat.S_IMODE(st.st_mode))
                            os.utime(fout, ns=(atime, st.st_mtime_ns))
                        finally:
                            os.close(fout)
                    finally:
                        os.close(fin)
                elif kind == LNK:
                    os.symlink(os.readlink(src.name, dir_fd=src.dfd), tmp, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                else:
                    os.mknod(tmp, st.st_mode, st.st_rdev, dir_fd=W)
                    self._copy_xattrs(src, wloc)
                    os.chown(tmp, st.st_uid, st.st_gid, dir_fd=W, follow_symlinks=False)
                    os.chmod(tmp, stat.S_IMODE(st.st_mode), dir_fd=W)
                    os.utime(tmp, ns=(atime, st.st_mtime_ns), dir_fd=W, follow_symlinks=False)
                # node.path now: its parent may have moved while the data was copied
                with self._at(UPPER, node.path) as dst:
                    self._rename(wloc, dst)
            except BaseException:
                try:
                    tst = os.stat(tmp, dir_fd=W, follow_symlinks=False)
                    if stat.S_ISDIR(tst.st_mode):
                        os.rmdir(tmp, dir_fd=W)
                    else:
                        os.unlink(tmp, dir_fd=W)
                except OSError:
                    pass
                raise
        with node.lock:
            node.upper = True
            node.atime_ns = None             # the upper file carries it from now on
            if node.fd is not None and not node.fd_upper:
                node.old_fds.append(node.fd)
                node.fd = None
        if kind != DIR and node.lower_key is not None:
            self._link_lower_names(node, node.lower_key)
        if kind == REG and node.opens > 0:
            # an open object keeps a real fd on its current backing file at all times: its
            # name (the only way _get_fd can reopen it) may be gone before the next I/O
            self._get_fd(node)
        if kind != DIR:
            if node.was_open:
                self._invalidate(node.ino)
            else:
                # never opened here: the kernel holds no pages of it, only attributes (the
                # copy's ctime differs): dropping those does not wait for anything
                try:
                    pyfuse3.invalidate_inode(node.ino, True)
                except OSError:
                    pass

    @staticmethod
    def _copy_data(fin: int, fout: int, size: int) -> None:
        off = 0
        while off < size:
            try:
                n = os.copy_file_range(fin, fout, min(_COPY_CHUNK * 16, size - off), off, off)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                n = None
            if n is None:
                buf = os.pread(fin, _COPY_CHUNK, off)
                n = len(buf)
                if n:
                    os.pwrite(fout, buf, off)
            if not n:
                break
            off += n

    def _invalidate(self, ino: int) -> None:
        """Drop the kernel's cached attributes and pages of ``ino`` (asynchronously: the
        notification must not be sent from the request it is about)."""
        nursery, token = self.nursery, self._trio_token
        if nursery is None or token is None:
            return

        def start():
            nursery.start_soon(self._invalidate_task, ino)
        try:
            token.run_sync_soon(start)       # from a worker or the loop; does not wait
        except Exception:
            pass

    async def _invalidate_task(self, ino: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except OSError:
            pass

    # ------------------------------------------------------------------ lower hard links
    #
    # A file with several names on a lower layer (same lower st_dev/st_ino) is one overlay
    # object: one node whose aliases are all its visible names, st_ino shared, st_nlink the
    # lower one.  Its copy-up copies the data once (through the work dir, as any copy-up) and
    # then link()s every other visible name of it to the new upper inode, so the upper layer
    # holds them as hard links of each other in the kernel's plain format (what overlayfs with
    # index=on ends up with once every name is copied up; the reference writes no index
    # entries).  "Every name" comes from a one-time scan of the lower layers (made on the first
    # copy-up of such a file, kept for the mount: lower layers never change); a name found
    # otherwise (e.g. through a redirect) is linked when it is looked up.

    def _lower_names(self, key: tuple[int, int]) -> list[bytes]:
        """Overlay paths of every lower-layer name of the lower file ``key`` (hidden or not)."""
        if self._lower_link_names is None:
            found: dict[tuple[int, int], list[bytes]] = {}
            for li in range(len(self.lower_roots)):
                stack = [b""]
                while stack:
                    rel = stack.pop()
                    try:
                        dfd = self._open_dir(li, rel)
                    except OSError:
                        continue
                    try:
                        with os.scandir(dfd) as it:
                            for e in it:
                                r = _join(rel, os.fsencode(e.name))
                                try:
                                    if e.is_dir(follow_symlinks=False):
                                        stack.append(r)
                                        continue
                                    st = e.stat(follow_symlinks=False)
                                except OSError:
                                    continue
                                if st.st_nlink > 1:
                                    found.setdefault((st.st_dev, st.st_ino), []).append(r)
                    finally:
                        os.close(dfd)
            self._lower_link_names = found
        return self._lower_link_names.get(key, [])

    def _link_lower_names(self, node: Node, key: tuple[int, int]) -> None:
        """After the copy-up of ``node`` (a lower hard-linked file): give every other visible
        name of it an upper hard link of the new upper inode.  Caller holds self.lock."""
        with self._at(UPPER, node.path) as loc:
            ust = os.stat(loc.name, dir_fd=loc.dfd, follow_symlinks=False)
        self.by_upper_ino[(ust.st_dev, ust.st_ino)] = node.ino
        for p in sorted(node.aliases - {node.path}):
            parent = self._lookup_path(os.path.dirname(p))
            if parent is None:
                continue
            try:
                self.copy_up(parent)
                self._link_upper(node.path, p)
            except (OSError, pyfuse3.FUSEError) as e:
                # the copy-up itself succeeded: do not fail the operation that asked for it
                log.warning("copy-up of %r: cannot link its lower name %r: %s", node.path, p, e)
        for p in self._lower_names(key):
            if p in node.aliases or p in self.by_path:
                continue
            try:
                self._lookup_path(p)          # joins (and links) it if it shows this object
            except (OSError, pyfuse3.FUSEError):
                continue

