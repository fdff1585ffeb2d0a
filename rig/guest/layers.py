"""Layers: build a spec's layers on disk, and record what a test left in them. STDLIB ONLY (runs in the guest).

build_layer() creates a layer's entries (files, dirs, links, whiteouts, devices, xattrs, owners, mtimes);
checksum_tree() fingerprints a lower layer (a test must never modify one); upper_state() records the
upper layer after the test, per path, for the comparison.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from collections.abc import Sequence

from rig.guest.spec import Entry, Spec, SpecError

OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
XATTR_VALUES_KEPT = ("opaque", "redirect", "whiteout")   # overlay xattrs whose value is recorded


def _opaque_xattr(spec: Spec) -> str:
    return ("user" if spec.userxattr else "trusted") + ".overlay.opaque"


def _target(e: Entry, spec: Spec) -> str:
    if e.target is None:      # load_spec requires one for links; an Entry built by hand may lack it
        raise SpecError(f"{spec.path}: {e.path}: a {e.type} needs a 'target'")
    return e.target


def build_layer(root: Path, entries: list[Entry], spec: Spec, bins: Path | None) -> None:
    """Create ENTRIES under ROOT (which must exist)."""
    deferred: list[tuple[Path, Entry]] = []
    for e in entries:
        p = root / e.path
        mode: int | None = None
        p.parent.mkdir(parents=True, exist_ok=True)
        if e.type == "dir":
            p.mkdir(exist_ok=True)
            if e.opaque:
                os.setxattr(p, _opaque_xattr(spec), b"y")
            for k, v in e.xattrs.items():
                os.setxattr(p, k, v)
            deferred.append((p, e))
            continue
        if e.type == "file":
            if e.source == "@bin":
                if bins is None:
                    raise SpecError(f"{spec.path}: {e.path}: source @bin needs the bins dir")
                shutil.copyfile(bins / spec.name, p)
                mode = 0o755 if e.mode is None else e.mode
            else:
                p.write_bytes(e.data())
                mode = 0o644 if e.mode is None else e.mode
        elif e.type == "symlink":
            os.symlink(_target(e, spec), p)
        elif e.type == "hardlink":
            os.link(root / _target(e, spec), p)
            continue      # same inode as the target: attributes are the target's
        elif e.type == "whiteout":
            os.mknod(p, stat.S_IFCHR | (0 if e.mode is None else e.mode), os.makedev(0, 0))
        elif e.type == "char":
            os.mknod(p, stat.S_IFCHR | (0o644 if e.mode is None else e.mode), os.makedev(e.major, e.minor))
        elif e.type == "fifo":
            os.mkfifo(p, 0o644 if e.mode is None else e.mode)
        else:  # pragma: no cover - validated in _entry
            raise SpecError(f"unknown entry type {e.type}")
        for k, v in e.xattrs.items():
            os.setxattr(p, k, v, follow_symlinks=False)
        os.chown(p, e.uid, e.gid, follow_symlinks=False)
        if mode is not None:
            os.chmod(p, mode)      # after chown: chown clears setuid bits
        if e.mtime is not None:
            os.utime(p, (e.mtime, e.mtime), follow_symlinks=False)
    for p, e in deferred:
        os.chown(p, e.uid, e.gid)
        os.chmod(p, 0o755 if e.mode is None else e.mode)
    for p, e in reversed(deferred):   # deepest last-created first, so children don't bump it later
        if e.mtime is not None:
            os.utime(p, (e.mtime, e.mtime))


def _walk(root: Path) -> list[tuple[str, os.stat_result]]:
    """(relpath, lstat) for every entry under ROOT, sorted, not following symlinks."""
    out: list[tuple[str, os.stat_result]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        d = root / rel if rel else root
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for n in names:
            r = f"{rel}/{n}" if rel else n
            st = os.lstat(root / r)
            out.append((r, st))
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)
    return sorted(out, key=lambda t: t[0])


def _xattrs(p: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError:
        return out
    for n in names:
        try:
            out[n] = os.getxattr(p, n, follow_symlinks=False)
        except OSError:
            out[n] = b"?"
    return out


def checksum_tree(root: Path) -> str:
    """Content + metadata (not atime/ctime) of every entry: detects any write to a lower layer."""
    h = hashlib.sha256()
    for rel, st in _walk(root):
        p = root / rel
        h.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_nlink}\0{st.st_rdev}\0"
                 f"{st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else 0}\0".encode())
        if stat.S_ISREG(st.st_mode):
            # O_NOATIME: checksumming must not move the lower files' atime (atime tests rely on it)
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
            with os.fdopen(fd, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        elif stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode(errors="surrogateescape"))
        for k, v in sorted(_xattrs(p).items()):
            h.update(k.encode() + b"\0" + v + b"\0")
        h.update(b"\n")
    return h.hexdigest()


def _ftype(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "unknown"


DATA_XATTR_PREFIXES = ("user.", "security.")   # xattrs a copy-up carries over (overlay-private ones aside)


def _file_sha256(p: Path) -> str | None:
    """sha256 of a regular file's data, or None if it cannot be read. O_NOATIME where allowed (as in
    checksum_tree: recording must not move a lower file's atime; it needs ownership or CAP_FOWNER)."""
    noatime = getattr(os, "O_NOATIME", 0)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    h = hashlib.sha256()
    try:
        try:
            fd = os.open(p, flags | noatime)
        except PermissionError:
            fd = os.open(p, flags)
        with os.fdopen(fd, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _xattr_digests(p: Path) -> dict[str, str]:
    """The user.* / security.* xattrs of P that are not overlay-private: name -> sha256 of the value."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in sorted(_xattrs(p).items())
            if k.startswith(DATA_XATTR_PREFIXES) and not k.startswith(OVERLAY_XATTR_PREFIXES)}


def _lower_record(rel: str, lowers: list[Path]) -> dict | None:
    """REL in the topmost lower layer holding it (lowers[0] is the topmost; the same test as in_lower):
    layer index, type, mode, uid, gid, size and sha256 (regular files), xattr_sha256."""
    for i, lo in enumerate(lowers):
        p = lo / rel
        try:
            st = os.lstat(p)
        except OSError:
            continue
        ftype = _ftype(st.st_mode)
        rec: dict = {"layer": i, "type": ftype, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid,
                     "gid": st.st_gid}
        if ftype == "file":
            rec["size"] = st.st_size
            rec["sha256"] = _file_sha256(p)
        rec["xattr_sha256"] = _xattr_digests(p)
        return rec
    return None


def upper_state(upper: Path, lowers: Sequence[Path] = ()) -> dict[str, dict]:
    """Per path in the upper layer: type, size (files), mode, uid, gid, target (symlinks), whiteout,
    in_lower (the same path exists in some lower layer), and the overlay xattrs (values for
    opaque/redirect/whiteout, null for the others). Also sha256 (regular files: of the data; null if
    unreadable), xattr_sha256 (the user.* / security.* xattrs that are not overlay-private: name -> sha256
    of the value) and, for in_lower paths, `lower`: the same path in the topmost lower layer holding it
    ({layer, type, mode, uid, gid, size, sha256, xattr_sha256}; size/sha256 for regular files), so that
    compare can tell a plain extra copy-up from one that lost a chmod or a write."""
    state: dict[str, dict] = {}
    for rel, st in _walk(upper):
        p = upper / rel
        ftype = _ftype(st.st_mode)
        ent: dict = {"type": ftype, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid,
                     "gid": st.st_gid}
        if ftype == "file":
            ent["size"] = st.st_size
            ent["sha256"] = _file_sha256(p)
        if ftype == "symlink":
            ent["target"] = os.readlink(p)
        ox = {}
        for k, v in _xattrs(p).items():
            if k.startswith(OVERLAY_XATTR_PREFIXES):
                short = k.split(".overlay.", 1)[1]
                ox[k] = v.decode(errors="replace") if short in XATTR_VALUES_KEPT else None
        ent["xattrs"] = ox
        ent["in_lower"] = any(os.path.lexists(lo / rel) for lo in lowers)
        ent["whiteout"] = (ftype == "char" and st.st_rdev == 0) or any(
            k.endswith(".overlay.whiteout") for k in ox)
        ent["xattr_sha256"] = _xattr_digests(p)
        if ent["in_lower"]:
            ent["lower"] = _lower_record(rel, list(lowers))
        state[rel] = ent
    return state
