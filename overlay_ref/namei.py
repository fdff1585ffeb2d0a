"""Lookup (the kernel's namei.c): ``NodeTable``, resolving a name through the layers
(whiteouts, opaque directories, redirects), the node table (one node per overlay object, by
path, by upper inode for upper hard links, by lower inode for lower hard links) and its
bookkeeping on unlink/rename, and the lookup/forget operations."""

from __future__ import annotations

import errno
import os
import threading
from typing import Optional

import pyfuse3

from .base import DIR, S_IFMT, Node, _err, _join
from .dirfds import _MISSING, UPPER
from .inode import InodeOps


_LOWER_LIST_AFTER = 8        # lookups in one lower directory before its names are listed
_LOWER_LIST_DIRS = 1024      # lower directories whose names are kept (LRU) ...
_LOWER_LIST_NAMES = 1 << 20  # ... and how many names at most in all


class NodeTable(InodeOps):
    # ------------------------------------------------------------------ lower directories' names
    #
    # A lookup in a merged directory asks every lower layer in turn (an lstat each), so with
    # N lower layers a name found in the last one, and every name not found at all, costs N
    # syscalls more.  Lower layers never change while mounted (as for overlayfs): once a
    # lower directory has been asked a few times, or listed by opendir, its names are kept
    # (a bounded LRU) and a layer that does not hold the name is skipped without a syscall.

    def _lower_absent(self, layer: int, rel: bytes) -> bool:
        """Is ``rel`` known not to exist in lower layer ``layer``?  (False: ask the layer.)"""
        i = rel.rfind(b"/")
        d, base = (rel[:i], rel[i + 1:]) if i >= 0 else (b"", rel)
        key = (layer, d)
        cache = self.lower_dir_names
        names = cache.get(key)
        if names is None:
            hits = self.lower_dir_hits
            n = hits.get(key, 0) + 1
            if n < _LOWER_LIST_AFTER or (
                    not self.layer_mem.get(layer, False)
                    and self._inline_ident == threading.get_ident()):
                if len(hits) > 65536:
                    hits.clear()
                hits[key] = n
                return False        # (on the loop, only memory filesystems are listed)
            hits.pop(key, None)
            try:
                dfd = self._open_dir(layer, d)
            except OSError as e:
                if e.errno not in _MISSING:
                    return False
                # no such directory in this layer (a redirect's target): nothing is there
                self._keep_lower_names(key, frozenset())
                return True
            try:
                with os.scandir(dfd) as it:
                    names = frozenset(os.fsencode(e.name) for e in it)
            except OSError:
                return False
            finally:
                os.close(dfd)
            if not self._keep_lower_names(key, names):
                hits[key] = -(1 << 62)        # too big to keep: do not list it again
        else:
            cache.move_to_end(key)
        return base not in names

    def _keep_lower_names(self, key: tuple[int, bytes], names: frozenset) -> bool:
        """Keep the names of lower directory ``key``; False if there are too many."""
        cache = self.lower_dir_names
        old = cache.pop(key, None)
        if old is not None:
            self.lower_dir_total -= len(old)
        if len(names) > _LOWER_LIST_NAMES // 4:
            return False            # a huge directory: ask its layer, name by name
        cache[key] = names
        self.lower_dir_total += len(names)
        while len(cache) > _LOWER_LIST_DIRS or self.lower_dir_total > _LOWER_LIST_NAMES:
            _, gone = cache.popitem(last=False)
            self.lower_dir_total -= len(gone)
        return True

    # ------------------------------------------------------------------ lookup

    def _walk_lowers(self, parent: Node, name: bytes, kind: Optional[int],
                     redirect: Optional[bytes], sts: Optional[list] = None
                     ) -> tuple[Optional[int], list]:
        """Find ``name`` below ``parent`` in the lower layers.

        ``kind`` is the type of the upper entry (None if there is none); ``redirect`` the upper
        directory's redirect.  Returns (kind, lowers); the lstat of each entry of ``lowers`` is
        appended to ``sts`` when given."""
        lowers: list[tuple[int, bytes]] = []
        cur_name = name
        abs_redirect: Optional[bytes] = None
        if redirect is not None:
            if redirect.startswith(b"/"):
                abs_redirect = redirect.strip(b"/")
            else:
                cur_name = redirect
        pl = dict(parent.lowers)
        for i in range(len(self.lower_roots)):
            if abs_redirect is not None:
                cand = abs_redirect
            else:
                if i not in pl:
                    continue
                cand = _join(pl[i], cur_name)
            if self._lower_absent(i, cand):
                continue
            loc = self._at_or_none(i, cand)
            if loc is None:
                continue
            with loc:
                st = self._lstat(loc)
                if st is None:
                    continue
                if self.is_whiteout(loc, st):
                    break
                k = S_IFMT(st.st_mode)
                if kind is None:
                    kind = k
                    lowers.append((i, cand))
                    if sts is not None:
                        sts.append(st)
                    if k != DIR:
                        break
                else:
                    if kind != DIR or k != DIR:
                        break
                    lowers.append((i, cand))
                    if sts is not None:
                        sts.append(st)
                # k is a directory here
                if self.is_opaque(loc):
                    break
                r = self._getx(loc, self.x_redirect) if self.cfg.follow_redirects else None
            if r:
                if r.startswith(b"/"):
                    abs_redirect = r.strip(b"/")
                else:
                    cur_name = r
        return kind, lowers

    def _resolve(self, parent: Node, name: bytes, sts: Optional[list] = None):
        """Resolve ``name`` in ``parent`` from the layers. Returns (kind, upper_st, lowers) or
        None; the lstats of ``lowers`` go to ``sts`` when given."""
        path = _join(parent.path, name)
        upper_st = None
        kind = None
        redirect = None
        if parent.upper:
            up = self._at_or_none(UPPER, path)
            if up is not None:
                with up:
                    upper_st = self._lstat(up)
                    if upper_st is not None:
                        if self.is_whiteout(up, upper_st):
                            return None
                        kind = S_IFMT(upper_st.st_mode)
                        if kind != DIR or self.is_opaque(up):
                            return kind, upper_st, []
                        if self.cfg.follow_redirects:
                            redirect = self._getx(up, self.x_redirect) or None
        kind, lowers = self._walk_lowers(parent, name, kind, redirect, sts)
        if kind is None:
            return None
        return kind, upper_st, lowers

    def _lower_positive(self, parent: Node, name: bytes) -> bool:
        """Would ``name`` show from a lower layer if it had no upper entry?"""
        if not parent.lowers:
            return False
        kind, _ = self._walk_lowers(parent, name, None, None)
        return kind is not None

    def _lookup_locked(self, parent: Node, name: bytes) -> Optional[Node]:
        return self._lookup_st(parent, name)[0]

    def _lookup_st(self, parent: Node, name: bytes
                   ) -> tuple[Optional[Node], Optional[os.stat_result]]:
        """The node of ``name`` in ``parent`` (None: no such name), and, when this lookup made
        the node, the lstat of its current backing file taken on the way (else None), so that
        its attributes need no second stat (``_attr_of``).  Caller holds self.lock."""
        if name == b".":
            return parent, None
        if name == b"..":
            return self.nodes.get(parent.parent, parent), None
        if parent.kind != DIR:
            raise _err(errno.ENOTDIR)
        path = _join(parent.path, name)
        ino = self.by_path.get(path)
        if ino is not None:
            return self.nodes[ino], None
        sts: list[os.stat_result] = []
        res = self._resolve(parent, name, sts)
        if res is None:
            return None, None
        kind, upper_st, lowers = res
        lower_key = None
        if upper_st is None and kind != DIR and sts and sts[0].st_nlink > 1:
            # one name of a file hard-linked on a lower layer: the same object as its other names
            lower_key = (sts[0].st_dev, sts[0].st_ino)
            node = self._join_lower_link(parent, path, lower_key)
            if node is not None:
                return node, None
        if upper_st is not None and kind != DIR and upper_st.st_nlink > 1:
            key = (upper_st.st_dev, upper_st.st_ino)
            other = self.by_upper_ino.get(key)
            if other is not None and other in self.nodes and not self.nodes[other].unlinked:
                node = self.nodes[other]
                node.aliases.add(path)
                self.by_path[path] = node.ino
                return node, None
        node = Node(next(self.ino_counter), path, parent.ino, kind, upper_st is not None, lowers)
        self.nodes[node.ino] = node
        self.by_path[path] = node.ino
        if upper_st is not None and kind != DIR and upper_st.st_nlink > 1:
            self.by_upper_ino[(upper_st.st_dev, upper_st.st_ino)] = node.ino
        if lower_key is not None:
            node.lower_key = lower_key
            self.by_lower_ino[lower_key] = node.ino
        # the current backing file is the upper entry when there is one, else the first lower
        return node, (upper_st if upper_st is not None else (sts[0] if sts else None))

    def _attr_of(self, node: Node, st: Optional[os.stat_result]) -> pyfuse3.EntryAttributes:
        """Attributes of ``node``; ``st`` is the lstat of its backing file that the lookup
        which made the node took (``_lookup_st``), or None."""
        if st is None:
            return self._attr(node)
        return self._attr_from_stat(node, st)

    def _join_lower_link(self, parent: Node, path: bytes, key: tuple[int, int]) -> Optional[Node]:
        """``path`` is a name of the lower hard-linked file ``key``: the node of that object if
        it already has one (its other names were looked up), now also named ``path``.  (Lower
        hard links: see copy_up.)"""
        ino = self.by_lower_ino.get(key)
        node = self.nodes.get(ino) if ino is not None else None
        if node is None or node.lower_key != key:
            return None
        if node.upper:
            if node.unlinked:
                return None        # its upper file has no name left to link to
            # copied up before this name was known: link it to the upper inode now
            self.copy_up(parent)
            self._link_upper(node.path, path)
        if node.unlinked:
            node.unlinked = False
            node.aliases = set()
            node.path = path
            node.parent = parent.ino
        node.aliases.add(path)
        self.by_path[path] = node.ino
        return node

    def _lookup_path(self, path: bytes) -> Optional[Node]:
        node = self.nodes[pyfuse3.ROOT_INODE]
        if not path:
            return node
        for comp in path.split(b"/"):
            if node.kind != DIR:
                return None
            child = self._lookup_locked(node, comp)
            if child is None:
                return None
            node = child
        return node

    def _new_upper_node(self, parent: Node, name: bytes, kind: int, lowers=None) -> Node:
        self.ns_gen += 1
        path = _join(parent.path, name)
        node = Node(next(self.ino_counter), path, parent.ino, kind, True, lowers or [])
        self.nodes[node.ino] = node
        self.by_path[path] = node.ino
        return node

    # ------------------------------------------------------------------ namespace bookkeeping

    def _drop_path(self, path: bytes) -> None:
        """Forget ``path`` (and, for a directory, everything below it) in the path table."""
        self.ns_gen += 1
        ino = self.by_path.pop(path, None)
        gone: list[Node] = []
        if ino is not None:
            node = self.nodes.get(ino)
            if node is not None:
                self._unalias(node, path)
                gone.append(node)
                if node.kind == DIR:
                    prefix = path + b"/"
                    for p in [p for p in self.by_path if p.startswith(prefix)]:
                        child = self.nodes.get(self.by_path.pop(p))
                        if child is not None:
                            self._unalias(child, p)
                            gone.append(child)
        for node in gone:
            if node.unlinked and node.nlookup <= 0 and node.opens <= 0:
                self._delete_node(node.ino)

    @staticmethod
    def _unalias(node: Node, path: bytes) -> None:
        node.aliases.discard(path)
        if not node.aliases:
            node.unlinked = True
        elif node.path == path:
            node.path = next(iter(node.aliases))

    def _delete_node(self, ino: int) -> None:
        node = self.nodes.pop(ino, None)
        if node is None:
            return
        if self.by_upper_ino:
            for k in [k for k, v in self.by_upper_ino.items() if v == ino]:
                del self.by_upper_ino[k]
        if node.lower_key is not None and self.by_lower_ino.get(node.lower_key) == ino:
            del self.by_lower_ino[node.lower_key]
        self._close_fds(node)

    def _move_path(self, old: bytes, new: bytes, node: Node, new_parent: Node) -> None:
        self.ns_gen += 1
        self.by_path.pop(old, None)
        node.aliases.discard(old)
        node.aliases.add(new)
        node.path = new
        node.parent = new_parent.ino
        self.by_path[new] = node.ino
        if node.kind == DIR:
            prefix = old + b"/"
            for p in [p for p in self.by_path if p.startswith(prefix)]:
                ino = self.by_path.pop(p)
                np_ = new + p[len(old):]
                self.by_path[np_] = ino
                n = self.nodes[ino]
                n.aliases.discard(p)
                n.aliases.add(np_)
                if n.path == p:
                    n.path = np_

    # ------------------------------------------------------------------ operations

    async def lookup(self, parent_inode, name, ctx=None):
        return await self._run_fast(self._lookup_op, parent_inode, name)

    def _lookup_op(self, parent_inode, name):
        with self.lock:
            parent = self._node(parent_inode)
            node, st = self._lookup_st(parent, name)
            if node is None:
                # a negative entry the kernel may cache for the entry timeout (as overlayfs
                # keeps negative dentries): every change of the name comes through this mount
                neg = pyfuse3.EntryAttributes()
                neg.st_ino = 0
                neg.entry_timeout = self.timeout
                return neg
            attr = self._attr_of(node, st)
            if name not in (b".", b".."):
                node.nlookup += 1
            return attr

    async def forget(self, inode_list):
        await self._run_fast(self._forget_op, inode_list)

    def _forget_op(self, inode_list):
        with self.lock:
            for ino, n in inode_list:
                node = self.nodes.get(ino)
                if node is None or ino == pyfuse3.ROOT_INODE:
                    continue
                node.nlookup -= n
                if node.nlookup <= 0 and node.unlinked and node.opens <= 0:
                    self._delete_node(ino)

