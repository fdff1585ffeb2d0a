"""The guest-test spec schema: <name>.toml (+ fixtures/<fixture>.toml) -> Spec. STDLIB ONLY (runs in the guest).

Entry is one entry of a layer, Spec one test (its layers, mount options, timeout, phase). load_spec /
load_specs validate (SpecError names the file), select() is -k / --names, run_order() the order a boot runs
tests in. See guest_tests/README.md for the schema.

A staged tests dir (rig/guest/programs.py stage()) also holds specs.json: every spec and fixture table,
parsed on the host by write_bundle(). load_specs() reads it instead of the TOML files when it is there,
with the same checks: one open instead of one per file on the guest's uncached run share, and no TOML
parser to import under TCG (issue #17). The TOML files beside it are for people; stage() rewrites both.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 20.0
DEFAULT_FILL = "abcdefghijklmnopqrstuvwxyz\n"
ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "whiteout", "char", "fifo")
ENTRY_KEYS = {"path", "type", "content", "content_hex", "size", "fill", "source", "mode", "uid", "gid",
              "mtime", "xattrs", "target", "major", "minor", "opaque"}
SPEC_KEYS = {"description", "timeout", "tags", "mount_options", "fixture", "lower", "upper", "phase", "order",
             "concurrent"}
PHASES = ("lockdep", "main")     # lockdep: lock-order scenarios, first in a fresh boot, fixed order
LAYER_KEYS = {"entries"}
BUNDLE = "specs.json"            # in a staged tests dir: {"<name>.toml" | "fixtures/<f>.toml": table}
NOT_SPECS = ("known_divergences.toml",)
Tables = dict[str, dict[str, Any]]


class SpecError(ValueError):
    """A fixture spec is malformed (the message names the file)."""


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


def _xattr_value(v: Any, where: str) -> bytes:
    if not isinstance(v, str):
        raise SpecError(f"{where}: xattr values must be strings")
    if v.startswith("hex:"):
        try:
            return bytes.fromhex(v[4:])
        except ValueError as e:
            raise SpecError(f"{where}: bad hex xattr value: {e}") from None
    return v.encode()


def _entry(raw: Any, where: str) -> Entry:
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


def _entries(raw: Any, where: str) -> list[Entry]:
    if raw is None:
        return []
    if not isinstance(raw, dict) or set(raw) - LAYER_KEYS:
        raise SpecError(f"{where}: a layer is a table with only 'entries'")
    ents = raw.get("entries", [])
    if not isinstance(ents, list):
        raise SpecError(f"{where}: entries must be an array of tables ([[...entries]])")
    return [_entry(e, f"{where} entry {i + 1}") for i, e in enumerate(ents)]


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib          # here, not at the top: the guest reads specs.json and never needs it
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: {e}") from None
    except OSError as e:
        raise SpecError(f"{path}: {e.strerror}") from None


def _table(path: Path, rel: str, tables: Tables | None) -> dict[str, Any] | None:
    """The table of PATH (REL inside the tests dir): from TABLES (a bundle) when given, else the file;
    None when there is no such spec."""
    if tables is not None:
        return tables.get(rel)
    return _read_toml(path) if path.exists() else None


def load_spec(path: Path, tables: Tables | None = None) -> Spec:
    """Load one fixture spec (and the fixture it names). TABLES: the tests dir's parsed bundle."""
    path = Path(path)
    got = _table(path, path.name, tables)
    if got is None:
        raise SpecError(f"{path}: no such spec")
    raw = got
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    if "fixture" in raw:
        fx = raw["fixture"]
        if not isinstance(fx, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", fx):
            raise SpecError(f"{path}: fixture must be a name in guest_tests/fixtures/")
        fpath = path.parent / "fixtures" / f"{fx}.toml"
        base = _table(fpath, f"fixtures/{fx}.toml", tables)
        if base is None:
            raise SpecError(f"{path}: fixture {fx!r} not found ({fpath})")
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
    """Every <name>.toml in TESTS_DIR (not fixtures/, not known_divergences.toml), sorted by name; from
    its specs.json when it has one (a staged dir)."""
    tests_dir = Path(tests_dir)
    tables = read_bundle(tests_dir)
    if tables is not None:
        names = sorted(k for k in tables if "/" not in k and k not in NOT_SPECS)
    else:
        names = [p.name for p in sorted(tests_dir.glob("*.toml")) if p.name not in NOT_SPECS]
    return [load_spec(tests_dir / n, tables) for n in names]


def read_bundle(tests_dir: Path) -> Tables | None:
    """TESTS_DIR/specs.json, or None when there is none."""
    path = Path(tests_dir) / BUNDLE
    try:
        with open(path, "rb") as f:
            tables = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: unreadable ({e}): stage the tests again") from None
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise SpecError(f"{path}: not a table per spec file: stage the tests again")
    return tables


def write_bundle(tests_dir: Path) -> Path | None:
    """Parse every spec and fixture of TESTS_DIR into TESTS_DIR/specs.json (what load_specs reads there
    from then on). A table JSON cannot hold (a TOML date) leaves no bundle: the TOML files are read then.
    Returns the bundle's path or None."""
    tests_dir = Path(tests_dir)
    out = tests_dir / BUNDLE
    out.unlink(missing_ok=True)
    files = [p for p in sorted(tests_dir.glob("*.toml")) if p.name not in NOT_SPECS] + \
        sorted((tests_dir / "fixtures").glob("*.toml"))
    tables = {p.relative_to(tests_dir).as_posix(): _read_toml(p) for p in files}
    try:
        text = json.dumps(tables, sort_keys=True)
    except (TypeError, ValueError):
        return None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out


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

