"""The reference overlay filesystem (pyfuse3 operations).

Model
-----
Every overlay object is one :class:`Node` with one FUSE inode number for its whole life in the
mount (copy-up, rename and hard links keep it).  A node knows its overlay path, whether it has an
upper entry, and its lower entries ``[(layer index, path relative to that layer's root)]`` (for a
directory: every lower directory merged into it; for a non-directory: the one it was found in,
i.e. its copy-up origin).
The object's *current backing file* is the upper entry when there is one, else the first lower
entry.  A file with several names on a lower layer is one node too (keyed by its lower
st_dev/st_ino); its copy-up links its other names to the new upper inode.  Data I/O of every
open handle goes through one real fd per node that is swapped to the upper file on copy-up, so
handles opened before the copy-up read the new data (the userspace counterpart of the kernel's
``ovl_real_fdget``); the FUSE page cache of the inode is shared by all mappings and every write
goes through it, so MAP_SHARED mappings see the new data as well.

All filesystem work runs in worker threads (``trio.to_thread``); the namespace and copy-up run
under one lock, data I/O does not.

On-disk format is overlayfs's: whiteouts are 0/0 character devices (zero-size files carrying the
``overlay.whiteout`` xattr are read as whiteouts too), opaque directories carry
``overlay.opaque=y``, renamed merged directories carry an absolute ``overlay.redirect``; copy-up
builds the object in ``WORK/work`` and renames it into place.

Backing files are reached with *at() syscalls relative to O_PATH fds of their parent
directories, never through full paths (which can be longer than PATH_MAX): see ``dirfds``.

Layout
------
``OverlayFS`` is assembled from one mixin per concern, as the kernel's fs/overlayfs is split
into files; each mixin builds on the ones whose methods it calls:

- ``base``: ``Node``/``Handle``/``DirHandle`` and ``OverlayBase``, the mount's state and how
  requests run (worker threads, inline on the event loop), statfs;
- ``dirfds``: reaching backing files -- the O_PATH directory fd cache and ``_Loc``;
- ``util``: ``LayerAccess``, lstat/xattr/whiteout/opaque on (layer, path) backing objects;
- ``file``: ``FileOps``, the per-object real fd (the consistency logic) and open/read/write/
  flush/release/fsync;
- ``inode``: ``InodeOps``, attributes, getattr/setattr/readlink/access;
- ``namei``: ``NodeTable``, resolution through the layers, the node table, lookup/forget;
- ``copy_up``: ``CopyUp``, copy-up and the linking of lower hard links;
- ``readdir``: ``ReaddirOps``, merged listings, opendir/readdir/releasedir/fsyncdir;
- ``dir``: ``DirOps``, mknod/mkdir/symlink/create/link/unlink/rmdir and whiteouts;
- ``rename``: ``RenameOps``, rename and RENAME_EXCHANGE, redirects;
- ``xattr``: ``XattrOps``, get/list/set/removexattr.
"""

from __future__ import annotations

from .copy_up import CopyUp
from .dir import DirOps
from .file import FileOps
from .inode import InodeOps
from .namei import NodeTable
from .readdir import ReaddirOps
from .rename import RenameOps
from .xattr import XattrOps


class OverlayFS(DirOps, RenameOps, XattrOps, CopyUp, ReaddirOps, NodeTable, InodeOps, FileOps):
    """The pyfuse3 operations of the reference overlay, one mixin per concern."""

    # fallocate(2) cannot be served: pyfuse3 (3.5.0 here, and upstream's current internal.pxi)
    # fills a module-private ``fuse_lowlevel_ops`` in init_fuse_ops() without a ``fallocate``
    # member and hands it to fuse_session_new(), which copies it into the opaque session; its
    # session loop passes every request to fuse_session_process_buf().  So there is no
    # Operations method to define and no hook from Python: libfuse answers FUSE_FALLOCATE with
    # ENOSYS and the kernel turns that into EOPNOTSUPP for this mount (glibc's posix_fallocate
    # then falls back to writing zeros, which works).  Serving it needs a pyfuse3 that wires
    # fuse_ops.fallocate (a patched build or a newer release); then define
    # ``async def fallocate(self, fh, mode, off, length)`` copying up like write() and calling
    # fallocate on the upper fd.  tests/overlay_ref/test_ovlref_semantics.py::
    # test_fallocate_syscall is a strict xfail that turns red when that becomes possible
    # (overlay_ref/README.md, "fallocate", says what users see).
    enable_writeback_cache = False
