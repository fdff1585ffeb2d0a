"""Guest-test harness: build the layers of each test, mount the target, run the program, record.

STDLIB ONLY. It runs inside the guest (Debian's /usr/bin/python3 3.11, `python3 -S harness.py ...`) and is
imported on the host as `rig.guest.harness`. See guest_tests/README.md for the spec schema and the
observation format.

    harness.py --bins DIR --tests DIR --work DIR --target {overlay,ref} [-k PATTERN] [--names FILE]
               [--timeout S] [--ref-python PATH] [--step] [--kernel-state]

Output: JSON lines on stdout, flushed per line:
    {"event": "start", "name": N}            -- printed before the layers are built and mounted
    {"event": "result", "name": N, "status": "ok"|"error"|"timeout", "observations": {k: v},
     "exit_code": int|null, "signal": int|null, "upper": {path: {...}}, "stderr": str,
     "duration_s": float, "error": str|null, "lower_modified": bool, "diagnostics": [str]}
    {"event": "done"}                        -- every selected test ran
    {"event": "stopped"}                     -- --step: the host said stop (it reboots for the rest)
With --kernel-state, start and result events carry "kernel": {"debug_locks": 0|1|null, "tainted": int|null}.
With --step, after each result the harness reads one line from stdin: `next` runs the next test.

status: ok = the program ran and exited (any exit code, or killed by a signal of its own: both are
compared as observations); timeout = killed after the test's timeout; error = the harness could not
run the test (bad spec, layer build, mount, exec, unmount).
"""
from __future__ import annotations

import argparse
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEFAULT_TIMEOUT = 20.0
DEFAULT_FILL = "abcdefghijklmnopqrstuvwxyz\n"
ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "whiteout", "char", "fifo")
ENTRY_KEYS = {"path", "type", "content", "content_hex", "size", "fill", "source", "mode", "uid", "gid",
              "mtime", "xattrs", "target", "major", "minor", "opaque"}
SPEC_KEYS = {"description", "timeout", "tags", "mount_options", "fixture", "lower", "upper", "phase", "order",
             "concurrent"}
PHASES = ("lockdep", "main")     # lockdep: lock-order scenarios, first in a fresh boot, fixed order
LAYER_KEYS = {"entries"}
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
XATTR_VALUES_KEPT = ("opaque", "redirect", "whiteout")   # overlay xattrs whose value is recorded
STDERR_TAIL = 2000
KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


class SpecError(ValueError):
    """A fixture spec is malformed (the message names the file)."""


# ---------------------------------------------------------------- specs

@dataclass
class Entry:
    path: str
    type: str = "file"
    content: bytes | None = None
    size: int | None = None
    fill: str = DEFAULT_FILL
    source: str | None = None
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    target: str | None = None
    major: int = 0
    minor: int = 0
    opaque: bool = False

    def data(self) -> bytes:
        if self.content is not None:
            return self.content
        if self.size:
            fill = self.fill.encode() or b"\0"
            return (fill * (self.size // len(fill) + 1))[: self.size]
        return b""


@dataclass
class Spec:
    name: str
    path: Path
    description: str = ""
    timeout: float = DEFAULT_TIMEOUT
    tags: list[str] = field(default_factory=list)
    mount_options: list[str] = field(default_factory=list)
    lower: list[list[Entry]] = field(default_factory=list)   # first = topmost
    upper: list[Entry] = field(default_factory=list)
    phase: str = "main"            # "lockdep": runs before every other test of a boot, by `order`
    order: int = 0
    concurrent: bool = False       # threads/timing: its outcome may vary from boot to boot

    @property
    def userxattr(self) -> bool:
        return "userxattr" in self.mount_options


def _xattr_value(v, where: str) -> bytes:
    if not isinstance(v, str):
        raise SpecError(f"{where}: xattr values must be strings")
    if v.startswith("hex:"):
        try:
            return bytes.fromhex(v[4:])
        except ValueError as e:
            raise SpecError(f"{where}: bad hex xattr value: {e}") from None
    return v.encode()


def _entry(raw, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: an entry must be a table")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise SpecError(f"{where}: unknown entry field(s) {', '.join(sorted(unknown))}")
    path = raw.get("path")
    if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
        raise SpecError(f"{where}: entry needs a relative 'path' inside the layer (got {path!r})")
    where = f"{where} ({path})"
    etype = raw.get("type", "file")
    if etype not in ENTRY_TYPES:
        raise SpecError(f"{where}: type must be one of {', '.join(ENTRY_TYPES)} (got {etype!r})")
    content = None
    if "content" in raw:
        if not isinstance(raw["content"], str):
            raise SpecError(f"{where}: content must be a string")
        content = raw["content"].encode()
    if "content_hex" in raw:
        try:
            content = bytes.fromhex(raw["content_hex"])
        except (ValueError, TypeError) as e:
            raise SpecError(f"{where}: bad content_hex: {e}") from None
    if (content is not None or "size" in raw or "source" in raw) and etype != "file":
        raise SpecError(f"{where}: content/size/source only apply to type file")
    if "source" in raw and raw["source"] != "@bin":
        raise SpecError(f"{where}: source must be \"@bin\"")
    if etype in ("symlink", "hardlink") and not isinstance(raw.get("target"), str):
        raise SpecError(f"{where}: a {etype} needs a 'target'")
    if "opaque" in raw and etype != "dir":
        raise SpecError(f"{where}: opaque only applies to dirs")
    for k in ("mode", "uid", "gid", "mtime", "size", "major", "minor"):
        if k in raw and (not isinstance(raw[k], int) or isinstance(raw[k], bool) or raw[k] < 0):
            raise SpecError(f"{where}: {k} must be a non-negative integer")
    xattrs = raw.get("xattrs", {})
    if not isinstance(xattrs, dict):
        raise SpecError(f"{where}: xattrs must be a table")
    return Entry(path=path.rstrip("/"), type=etype, content=content, size=raw.get("size"),
                 fill=raw.get("fill", DEFAULT_FILL), source=raw.get("source"), mode=raw.get("mode"),
                 uid=raw.get("uid", 0), gid=raw.get("gid", 0), mtime=raw.get("mtime"),
                 xattrs={str(k): _xattr_value(v, where) for k, v in xattrs.items()},
                 target=raw.get("target"), major=raw.get("major", 0), minor=raw.get("minor", 0),
                 opaque=bool(raw.get("opaque", False)))


def _entries(raw, where: str) -> list[Entry]:
    if raw is None:
        return []
    if not isinstance(raw, dict) or set(raw) - LAYER_KEYS:
        raise SpecError(f"{where}: a layer is a table with only 'entries'")
    ents = raw.get("entries", [])
    if not isinstance(ents, list):
        raise SpecError(f"{where}: entries must be an array of tables ([[...entries]])")
    return [_entry(e, f"{where} entry {i + 1}") for i, e in enumerate(ents)]


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: {e}") from None
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None


def load_spec(path: Path) -> Spec:
    """Load one fixture spec (and the fixture it names)."""
    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    if "fixture" in raw:
        fx = raw["fixture"]
        if not isinstance(fx, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", fx):
            raise SpecError(f"{path}: fixture must be a name in guest_tests/fixtures/")
        fpath = path.parent / "fixtures" / f"{fx}.toml"
        if not fpath.exists():
            raise SpecError(f"{path}: fixture {fx!r} not found ({fpath})")
        base = _read_toml(fpath)
        if "fixture" in base:
            raise SpecError(f"{fpath}: a fixture cannot name another fixture")
        bad = set(base) - SPEC_KEYS
        if bad:
            raise SpecError(f"{fpath}: unknown key(s) {', '.join(sorted(bad))}")
        merged = dict(base)
        merged.update({k: v for k, v in raw.items() if k != "fixture"})
        raw = merged
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise SpecError(f"{path}: timeout must be a positive number of seconds")
    for k in ("tags", "mount_options"):
        v = raw.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise SpecError(f"{path}: {k} must be an array of strings")
    for opt in raw.get("mount_options", []):
        if opt.split("=")[0] in ("lowerdir", "upperdir", "workdir") or "," in opt:
            raise SpecError(f"{path}: mount option {opt!r}: layers come from the spec, one option per string")
    phase = raw.get("phase", "main")
    if phase not in PHASES:
        raise SpecError(f"{path}: phase must be one of {', '.join(PHASES)}")
    order = raw.get("order", 0)
    if not isinstance(order, int) or isinstance(order, bool):
        raise SpecError(f"{path}: order must be an integer")
    if not isinstance(raw.get("concurrent", False), bool):
        raise SpecError(f"{path}: concurrent must be true or false")
    lower = raw.get("lower", [])
    if not isinstance(lower, list) or not lower:
        raise SpecError(f"{path}: at least one [[lower]] layer is needed")
    spec = Spec(name=path.stem, path=path, description=str(raw.get("description", "")),
                timeout=float(timeout), tags=list(raw.get("tags", [])),
                mount_options=list(raw.get("mount_options", [])),
                lower=[_entries(layer, f"{path}: lower layer {i + 1}") for i, layer in enumerate(lower)],
                upper=_entries(raw.get("upper"), f"{path}: upper"), phase=phase, order=order,
                concurrent=bool(raw.get("concurrent", False)))
    for li, layer in enumerate(spec.lower + [spec.upper]):
        seen: set[str] = set()
        for e in layer:
            if e.type == "hardlink" and e.target not in seen:
                raise SpecError(f"{path}: hardlink {e.path}: target {e.target!r} must be an earlier entry")
            seen.add(e.path)
    return spec


def load_specs(tests_dir: Path) -> list[Spec]:
    """Every <name>.toml in TESTS_DIR (not fixtures/, not known_divergences.toml), sorted by name."""
    tests_dir = Path(tests_dir)
    specs = []
    for p in sorted(tests_dir.glob("*.toml")):
        if p.name == "known_divergences.toml":
            continue
        specs.append(load_spec(p))
    return specs


def select(specs: list[Spec], pattern: str | None = None, names: list[str] | None = None) -> list[Spec]:
    """-k PATTERN: comma-separated; each a glob (when it has *?[) or a substring of the name or a tag."""
    out = specs
    if names is not None:
        wanted = set(names)
        out = [s for s in out if s.name in wanted]
    if pattern:
        pats = [p.strip() for p in pattern.split(",") if p.strip()]

        def hit(s: Spec) -> bool:
            for p in pats:
                if any(c in p for c in "*?["):
                    if fnmatch.fnmatchcase(s.name, p):
                        return True
                elif p in s.name or p in s.tags:
                    return True
            return False
        out = [s for s in out if hit(s)]
    return sorted(out, key=run_order)


def run_order(spec: Spec) -> tuple[int, int, str]:
    """The order tests run in: the lockdep phase first (by `order`, then name), then the rest by name.
    Lockdep reports a cycle only when every edge was recorded in the same boot, so the lock-order
    scenarios run before anything else of a boot records edges, always in the same order."""
    return (PHASES.index(spec.phase), spec.order if spec.phase == "lockdep" else 0, spec.name)


# ---------------------------------------------------------------- observations

def parse_observations(stdout: str) -> tuple[dict[str, str], list[str]]:
    """key=value lines -> (observations, diagnostics). See guest_tests/README.md."""
    obs: dict[str, str] = {}
    diags: list[str] = []
    counts: dict[str, int] = {}
    stray = 0
    for line in stdout.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        if line.startswith("#"):
            diags.append(line[1:].strip())
            continue
        key, sep, value = line.partition("=")
        if not sep or not KEY_RE.match(key):
            stray += 1
            obs[f"_stray.{stray}"] = line
            continue
        counts[key] = counts.get(key, 0) + 1
        obs[key] = value
    for key, n in counts.items():
        if n > 1:
            obs[f"_dup.{key}"] = str(n)
    return obs, diags


# ---------------------------------------------------------------- layers

def _opaque_xattr(spec: Spec) -> str:
    return ("user" if spec.userxattr else "trusted") + ".overlay.opaque"


def build_layer(root: Path, entries: list[Entry], spec: Spec, bins: Path | None) -> None:
    """Create ENTRIES under ROOT (which must exist)."""
    deferred: list[tuple[Path, Entry]] = []
    for e in entries:
        p = root / e.path
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
            os.symlink(e.target, p)
            mode = None
        elif e.type == "hardlink":
            os.link(root / e.target, p)
            continue      # same inode as the target: attributes are the target's
        elif e.type == "whiteout":
            os.mknod(p, stat.S_IFCHR | (0 if e.mode is None else e.mode), os.makedev(0, 0))
            mode = None
        elif e.type == "char":
            os.mknod(p, stat.S_IFCHR | (0o644 if e.mode is None else e.mode), os.makedev(e.major, e.minor))
            mode = None
        elif e.type == "fifo":
            os.mkfifo(p, 0o644 if e.mode is None else e.mode)
            mode = None
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


def _walk(root: Path):
    """(relpath, lstat) for every entry under ROOT, sorted, not following symlinks."""
    out = []
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
    out = {}
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


def upper_state(upper: Path, lowers: list[Path] = ()) -> dict[str, dict]:
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


# ---------------------------------------------------------------- mounting

def _run(cmd: list[str], timeout: float = 30.0, env=None) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd[:4])}...: timed out after {timeout:.0f} s"
    return p.returncode, p.stdout.decode(errors="replace").strip()


def _repo_root() -> Path | None:
    """The checkout when this file is rig/guest/harness.py inside it (for `-m overlay_ref`)."""
    here = Path(__file__).resolve()
    if len(here.parents) > 2 and (here.parents[2] / "overlay_ref").is_dir():
        return here.parents[2]
    return None


class Mounter:
    def __init__(self, target: str, ref_python: str | None = None):
        if target not in ("overlay", "ref"):
            raise ValueError(f"unknown target {target!r} (overlay or ref)")
        self.target = target
        self.ref_python = ref_python or sys.executable or "python3"
        self.env = dict(os.environ)
        root = _repo_root()
        if root is not None:
            pp = self.env.get("PYTHONPATH")
            self.env["PYTHONPATH"] = str(root) + (os.pathsep + pp if pp else "")

    def mount(self, lowers: list[Path], upper: Path, work: Path, merged: Path, opts: list[str]) -> None:
        if self.target == "overlay":
            o = ",".join([f"lowerdir={':'.join(str(p) for p in lowers)}", f"upperdir={upper}",
                          f"workdir={work}"] + opts)
            rc, out = _run(["mount", "-t", "overlay", "overlay", "-o", o, str(merged)])
            if rc != 0:
                raise RuntimeError(f"mount -t overlay -o {o} failed ({rc}): {out}")
            return
        cmd = [self.ref_python, "-m", "overlay_ref", "mount", ":".join(str(p) for p in lowers), str(upper),
               str(work), str(merged)]
        if opts:
            cmd += ["-o", ",".join(opts)]
        rc, out = _run(cmd, timeout=60, env=self.env)
        if rc != 0:
            raise RuntimeError(f"overlay_ref mount failed ({rc}): {out[-500:]}")
        deadline = time.monotonic() + 15
        while not _is_mounted(merged):
            if time.monotonic() > deadline:
                raise RuntimeError("overlay_ref mount returned but the mount point is not mounted")
            time.sleep(0.05)

    def umount(self, merged: Path) -> str | None:
        """Unmount; lazy fallback. Returns an error string when something was left behind."""
        if not _is_mounted(merged):
            return None
        if self.target == "ref":
            rc, out = _run([self.ref_python, "-m", "overlay_ref", "umount", str(merged)], timeout=30, env=self.env)
        else:
            rc, out = _run(["umount", str(merged)])
        if rc == 0 and not _is_mounted(merged):
            return None
        rc2, out2 = _run(["umount", "-l", str(merged)])
        if rc2 != 0 and self.target == "ref":
            rc2, out2 = _run(["fusermount3", "-u", "-z", str(merged)])
        if _is_mounted(merged):
            return f"could not unmount {merged}: {out} / {out2}"
        return f"unmount needed lazy detach: {out}"


# ---------------------------------------------------------------- running

def _is_mounted(path: Path) -> bool:
    """Is PATH a mount point? From /proc/self/mounts, not stat(): a FUSE mount whose daemon died fails
    every stat with ENOTCONN, and os.path.ismount() then says False while it is still mounted."""
    want = str(Path(path).absolute())
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                mp = line.split()[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                if mp == want:
                    return True
    except OSError:
        return os.path.ismount(path)
    return False


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_program(prog: Path, merged: Path, timeout: float) -> dict:
    """Run PROG MERGED in its own session; kill the whole group after TIMEOUT or when it exits."""
    res = {"stdout": "", "stderr": "", "exit_code": None, "signal": None, "timed_out": False, "error": None}
    try:
        proc = subprocess.Popen([str(prog), str(merged)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/", start_new_session=True)
    except OSError as e:
        res["error"] = f"cannot execute {prog}: {e.strerror}"
        return res
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        res["timed_out"] = True
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:   # stuck in the kernel (D state): leave it
            out, err = b"", b""
            res["error"] = "the program did not die after SIGKILL (blocked in the kernel?)"
    _kill_group(proc)          # stray children (e.g. a sleeping exec'd child)
    res["stdout"] = out.decode(errors="replace")
    res["stderr"] = err.decode(errors="replace")
    rc = proc.returncode
    if rc is not None and not res["timed_out"]:
        if rc < 0:
            res["signal"] = -rc
        else:
            res["exit_code"] = rc
    return res


def _result(name: str) -> dict:
    return {"event": "result", "name": name, "status": "error", "observations": {}, "exit_code": None,
            "signal": None, "upper": {}, "stderr": "", "duration_s": 0.0, "error": None,
            "lower_modified": False, "diagnostics": []}


def run_one(spec: Spec, bins: Path, work: Path, mounter: Mounter, timeout: float | None = None) -> dict:
    """Build, mount, run, record, unmount, clean up one test. Never raises for a test's own failure."""
    res = _result(spec.name)
    t0 = time.monotonic()
    tdir = Path(tempfile.mkdtemp(prefix=f"{spec.name[:40]}-", dir=work))
    merged = tdir / "merged"
    mounted = False
    errors: list[str] = []
    try:
        prog = bins / spec.name
        if not prog.is_file():
            raise RuntimeError(f"no binary for {spec.name} in {bins}")
        lowers = []
        for i, layer in enumerate(spec.lower):
            d = tdir / f"lower{i}"
            d.mkdir()
            build_layer(d, layer, spec, bins)
            lowers.append(d)
        upper, wdir = tdir / "upper", tdir / "work"
        for d in (upper, wdir, merged):
            d.mkdir()
        build_layer(upper, spec.upper, spec, bins)
        sums = [checksum_tree(d) for d in lowers]
        mounter.mount(lowers, upper, wdir, merged, spec.mount_options)
        mounted = True
        run = run_program(prog, merged, timeout or spec.timeout)
        try:
            os.stat(merged)
        except OSError as e:
            if e.errno != errno.ENOTCONN:
                raise
            # a FUSE target whose daemon died: what the program saw says nothing about the overlay
            run["error"] = "the filesystem daemon died during the test (Transport endpoint is not connected)"
        obs, diags = parse_observations(run["stdout"])
        res.update(observations=obs, diagnostics=diags, exit_code=run["exit_code"], signal=run["signal"],
                   stderr=run["stderr"][-STDERR_TAIL:])
        if run["error"]:
            errors.append(run["error"])
        if run["timed_out"]:
            res["status"] = "timeout"
            errors.insert(0, f"timed out after {timeout or spec.timeout:g} s")
        elif run["error"]:
            res["status"] = "error"
        else:
            res["status"] = "ok"
        err = mounter.umount(merged)
        mounted = False
        if err:
            errors.append(err)
            if _is_mounted(merged):
                res["status"] = "error"
        res["upper"] = upper_state(upper, lowers)
        res["lower_modified"] = [checksum_tree(d) for d in lowers] != sums
    except (OSError, RuntimeError, SpecError, subprocess.SubprocessError) as e:
        res["status"] = "error"
        errors.append(f"{type(e).__name__}: {e}" if not isinstance(e, RuntimeError) else str(e))
    finally:
        if mounted:
            err = mounter.umount(merged)
            if err:
                errors.append(err)
        if not _is_mounted(merged):
            shutil.rmtree(tdir, ignore_errors=True)
        else:
            errors.append(f"left {tdir} behind: still mounted")
    res["error"] = "; ".join(errors) if errors else None
    res["duration_s"] = round(time.monotonic() - t0, 3)
    return res


def _print_event(ev: dict) -> None:
    sys.stdout.write(json.dumps(ev, sort_keys=False) + "\n")
    sys.stdout.flush()


def kernel_state() -> dict:
    """The running kernel's own health, read after each test: `debug_locks` from /proc/lockdep_stats
    (0: lockdep turned itself off after a report) and the taint mask. None where the kernel has no such
    file (no lockdep, or not Linux)."""
    state: dict = {"debug_locks": None, "tainted": None}
    try:
        with open("/proc/lockdep_stats") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k.strip() == "debug_locks":
                    state["debug_locks"] = int(v.strip())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/sys/kernel/tainted") as fh:
            state["tainted"] = int(fh.read().strip())
    except (OSError, ValueError):
        pass
    return state


def kmsg(text: str) -> bool:
    """Write one line to the kernel log (/dev/kmsg): it reaches the console in order with the kernel's
    own messages, so once the host sees it, everything printed before it is on the console too."""
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, f"<5>kproto: {text}\n".encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _wait_go(stdin) -> bool:
    """Step mode: the host answers `next` when the next test may start (after its barrier), `stop` to end."""
    line = stdin.readline()
    return line.strip() == "next"


def run_tests(bins: Path, tests: Path, work: Path, target: str, pattern: str | None = None,
              timeout: float | None = None, emit: Callable[[dict], None] | None = _print_event,
              ref_python: str | None = None, names: list[str] | None = None, step=None,
              with_kernel_state: bool = False) -> list[dict]:
    """Run the selected tests (run_order) on TARGET; EMIT each event; return the result events.
    STEP (a text stream, e.g. stdin): after each result, wait for the host's `next` (anything else or
    EOF ends the run) -- the host runs its per-test barrier in between. WITH_KERNEL_STATE adds
    kernel_state() to every start and result event (in the guest)."""
    bins, tests, work = Path(bins), Path(tests), Path(work)
    emit = emit or (lambda ev: None)
    work.mkdir(parents=True, exist_ok=True)
    mounter = Mounter(target, ref_python)
    results = []
    specs = select(load_specs(tests), pattern, names)
    for i, spec in enumerate(specs):
        start = {"event": "start", "name": spec.name}
        if with_kernel_state:
            start["kernel"] = kernel_state()
            kmsg(f"start {spec.name}")
        emit(start)
        res = run_one(spec, bins, work, mounter, timeout)
        if with_kernel_state:
            res["kernel"] = kernel_state()
            token = f"barrier {spec.name} {os.getpid()}-{i}"
            if kmsg(token):
                res["barrier"] = f"kproto: {token}"
        emit(res)
        results.append(res)
        if step is not None and i + 1 < len(specs) and not _wait_go(step):
            emit({"event": "stopped"})
            return results
    emit({"event": "done"})
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="harness.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bins", required=True, type=Path, help="dir of the built test programs")
    ap.add_argument("--tests", required=True, type=Path, help="dir of the specs (guest_tests/)")
    ap.add_argument("--work", required=True, type=Path, help="scratch dir for layers and mounts")
    ap.add_argument("--target", required=True, choices=("overlay", "ref"))
    ap.add_argument("-k", dest="pattern", default=None, help="select tests: glob or substring, comma-separated")
    ap.add_argument("--names", type=Path, default=None, help="file with test names to run, one per line")
    ap.add_argument("--timeout", type=float, default=None, help="override every test's timeout (s)")
    ap.add_argument("--ref-python", default=None, help="python that can import overlay_ref")
    ap.add_argument("--step", action="store_true",
                    help="after each result wait for `next` on stdin before the next test (host barrier)")
    ap.add_argument("--kernel-state", action="store_true",
                    help="add debug_locks and the taint mask to every start/result event")
    a = ap.parse_args(argv)
    names = None
    if a.names is not None:
        names = [n.strip() for n in a.names.read_text().splitlines() if n.strip()]
    try:
        run_tests(a.bins, a.tests, a.work, a.target, a.pattern, a.timeout, _print_event, a.ref_python, names,
                  step=sys.stdin if a.step else None, with_kernel_state=a.kernel_state)
    except SpecError as e:
        print(f"harness: bad spec: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
