#!/usr/bin/env python3
"""A minimal pyfuse3 passthrough filesystem: the baseline column of bench/bench_ref.py.

    .venv/bin/python bench/passthrough_fs.py SOURCE MOUNTPOINT     # foreground; fusermount3 -u

It mirrors one directory and does no more than the FUSE protocol needs, the way a plain pyfuse3
filesystem is written: every request is served on the trio event loop with a synchronous
syscall (reads are one ``os.pread`` on the fd opened at ``open``), FUSE inode numbers are the
backing st_ino, files are opened with ``keep_cache`` (so a second read of an unchanged file comes
from the FUSE page cache, as on the reference), and entries/attributes are cached by the kernel
for the reference's default (1 s).  Only what the benchmark uses is implemented (lookup,
getattr/setattr, open/read/write/release, create, unlink, rename, mkdir/rmdir, readdir, statfs);
everything
else answers ENOSYS.  Written for kproto; it shares no code with pyfuse3's examples.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

TIMEOUT = 1.0


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: str):
        super().__init__()
        self.paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: os.fsencode(source)}
        self.lookups: dict[int, int] = {}
        self.dirs: dict[int, list[tuple[bytes, int]]] = {}
        self.next_dh = 1

    # ---- names and attributes

    def _path(self, inode: int) -> bytes:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, st: os.stat_result, inode: int | None = None) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode if inode is not None else st.st_ino
        for a in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                  "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
            setattr(e, a, getattr(st, a))
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        return e

    def _remember(self, path: bytes, st: os.stat_result) -> pyfuse3.EntryAttributes:
        ino = st.st_ino
        if ino == pyfuse3.ROOT_INODE:       # cannot collide with the FUSE root: not served
            raise pyfuse3.FUSEError(errno.EOVERFLOW)
        self.paths[ino] = path
        self.lookups[ino] = self.lookups.get(ino, 0) + 1
        return self._entry(st)

    def _stat(self, path: bytes) -> os.stat_result:
        try:
            return os.lstat(path)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def lookup(self, parent_inode, name, ctx=None):
        path = os.path.join(self._path(parent_inode), name)
        return self._remember(path, self._stat(path))

    async def forget(self, inode_list):
        for ino, n in inode_list:
            left = self.lookups.get(ino, 0) - n
            if left > 0:
                self.lookups[ino] = left
            else:
                self.lookups.pop(ino, None)
                if ino != pyfuse3.ROOT_INODE:
                    self.paths.pop(ino, None)

    async def getattr(self, inode, ctx=None):
        ino = inode if inode == pyfuse3.ROOT_INODE else None
        return self._entry(self._stat(self._path(inode)), ino)

    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        try:
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode), follow_symlinks=False)
            if fields.update_uid or fields.update_gid:
                os.chown(path, attr.st_uid if fields.update_uid else -1,
                         attr.st_gid if fields.update_gid else -1, follow_symlinks=False)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        ino = inode if inode == pyfuse3.ROOT_INODE else None
        return self._entry(self._stat(path), ino)

    async def statfs(self, ctx):
        sv = os.statvfs(self._path(pyfuse3.ROOT_INODE))
        d = pyfuse3.StatvfsData()
        for a in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax"):
            setattr(d, a, getattr(sv, a))
        return d

    # ---- files

    async def open(self, inode, flags, ctx):
        try:
            fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        path = os.path.join(self._path(parent_inode), name)
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return pyfuse3.FileInfo(fh=fd, keep_cache=True), self._remember(path, os.fstat(fd))

    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    async def release(self, fh):
        os.close(fh)

    async def unlink(self, parent_inode, name, ctx):
        try:
            os.unlink(os.path.join(self._path(parent_inode), name))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = os.path.join(self._path(parent_inode_old), name_old)
        new = os.path.join(self._path(parent_inode_new), name_new)
        try:
            os.rename(old, new)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        st = self._stat(new)
        if st.st_ino in self.paths:
            self.paths[st.st_ino] = new

    # ---- directories

    async def mkdir(self, parent_inode, name, mode, ctx):
        path = os.path.join(self._path(parent_inode), name)
        try:
            os.mkdir(path, stat.S_IMODE(mode))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        return self._remember(path, self._stat(path))

    async def rmdir(self, parent_inode, name, ctx):
        try:
            os.rmdir(os.path.join(self._path(parent_inode), name))
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None

    async def opendir(self, inode, ctx):
        path = self._path(inode)
        try:
            with os.scandir(path) as it:
                names = sorted(os.fsencode(e.name) for e in it)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        dh = self.next_dh
        self.next_dh += 1
        self.dirs[dh] = [(n, i + 1) for i, n in enumerate(names)]
        self.paths.setdefault(-dh, path)        # the listing's directory, by handle
        return dh

    async def readdir(self, fh, start_id, token):
        base = self.paths[-fh]
        for name, nxt in self.dirs[fh][start_id:]:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            # readdirplus: the kernel counts a lookup for each entry it keeps
            if not pyfuse3.readdir_reply(token, name, self._entry(st), nxt):
                return
            self.paths[st.st_ino] = path
            self.lookups[st.st_ino] = self.lookups.get(st.st_ino, 0) + 1

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)
        self.paths.pop(-fh, None)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: passthrough_fs.py SOURCE MOUNTPOINT", file=sys.stderr)
        return 2
    ops = Passthrough(argv[1])
    opts = set(pyfuse3.default_options)
    opts.update(("fsname=kproto-passthrough", "allow_other"))
    pyfuse3.init(ops, argv[2], opts)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
