"""Known divergences: THE loader of guest_tests/known_divergences.toml, read by compare and by fuzz.

The file documents non-standard behaviours of upstream overlayfs, so a report says "known divergence"
instead of alarming. Each `[[divergence]]` entry has
- `tests`, `keys`: globs over guest-test names and observation keys (compare: a test's divergence is
  known when EVERY differing key is covered by some entry for that test);
- `fuzz_ops` (optional): globs over fuzz op kinds (fuzz: an entry with fuzz_ops applies to a difference
  whose first differing op is of a matching kind; an entry without fuzz_ops applies when one of its keys
  matches the op's pseudo observation key, see rig/fuzz);
- `doc`: where the behaviour is documented (required); `note`: what it looks like (optional).
An entry needs tests and keys, or fuzz_ops (then it only applies to fuzz), or both.

Layout: KnownEntry (one entry, frozen), Known (the entries, with compare's `explain` and fuzz's
`match_op`), load_known (parse + the one validation: BadInput naming the file and the entry number).
"""
from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rig.core import paths
from rig.core.errors import BadInput

FILE_NAME = "known_divergences.toml"
FIELDS = ("tests", "keys", "doc", "note", "fuzz_ops")


@dataclass(frozen=True)
class KnownEntry:
    tests: tuple[str, ...]
    keys: tuple[str, ...]
    doc: str
    note: str = ""
    fuzz_ops: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # lists are accepted (and stored as tuples, so an entry is hashable)
        for name in ("tests", "keys", "fuzz_ops"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def covers(self, test: str, key: str) -> bool:
        """TEST's difference on observation KEY is this documented behaviour."""
        return (any(fnmatch.fnmatchcase(test, t) for t in self.tests)
                and any(fnmatch.fnmatchcase(key, k) for k in self.keys))

    def covers_op(self, kind: str, pseudo_key: str) -> bool:
        """A fuzz difference whose first differing op is of KIND (PSEUDO_KEY: that op as an observation key)
        is this behaviour: by fuzz_ops when the entry has some, else by keys."""
        if self.fuzz_ops:
            return any(fnmatch.fnmatchcase(kind, g) for g in self.fuzz_ops)
        return any(fnmatch.fnmatchcase(pseudo_key, g) for g in self.keys)


@dataclass
class Known:
    entries: list[KnownEntry] = field(default_factory=list)

    def explain(self, test: str, keys: list[str]) -> str | None:
        """The doc reference(s) ("; "-joined, first-seen order) when every one of KEYS is a known
        divergence of TEST, else None (also for no keys)."""
        if not keys:
            return None
        docs: list[str] = []
        for k in keys:
            hit = next((e for e in self.entries if e.covers(test, k)), None)
            if hit is None:
                return None
            if hit.doc not in docs:
                docs.append(hit.doc)
        return "; ".join(docs)

    def match_op(self, kind: str, pseudo_key: str) -> KnownEntry | None:
        """The first entry that applies to a fuzz difference at an op of KIND (see KnownEntry.covers_op)."""
        return next((e for e in self.entries if e.covers_op(kind, pseudo_key)), None)


def _globs(d: dict[str, Any], name: str) -> tuple[str, ...] | str:
    """D[NAME] as a tuple of globs, or what is wrong with it."""
    v = d[name]
    if not isinstance(v, list) or not v:
        return f"{name} must be a non-empty list of globs"
    if not all(isinstance(g, str) and g for g in v):
        return f"{name} must hold non-empty strings"
    return tuple(v)


def _entry(d: object) -> KnownEntry | str:
    """One [[divergence]] table as an entry, or what is wrong with it."""
    if not isinstance(d, dict):
        return "not a table"
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)} (fields: {', '.join(FIELDS)})"
    got: dict[str, tuple[str, ...]] = {}
    for name in ("tests", "keys", "fuzz_ops"):
        if name in d:
            g = _globs(d, name)
            if isinstance(g, str):
                return g
            got[name] = g
    if ("tests" in got) != ("keys" in got) or not (("tests" in got) or ("fuzz_ops" in got)):
        return "needs tests and keys (lists of globs), or fuzz_ops, or both"
    doc, note = d.get("doc"), d.get("note", "")
    if not isinstance(doc, str) or not doc.strip():
        return "needs doc (where the behaviour is documented)"
    if not isinstance(note, str):
        return "note must be a string"
    return KnownEntry(tests=got.get("tests", ()), keys=got.get("keys", ()), doc=doc, note=note,
                      fuzz_ops=got.get("fuzz_ops", ()))


def load_known(path: Path | str | None = None) -> Known:
    """The entries of PATH (default guest_tests/known_divergences.toml); none when the file does not exist.
    BadInput (naming the file, and the entry by its 1-based number) on bad TOML or a bad entry."""
    path = Path(path) if path else paths.GUEST_TESTS / FILE_NAME
    if not path.is_file():
        return Known()
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: {e}") from None
    extra = sorted(set(raw) - {"divergence"})
    items = raw.get("divergence", [])
    if extra or not isinstance(items, list):
        raise BadInput(f"{path}: expected only [[divergence]] entries"
                       + (f", not {', '.join(extra)}" if extra else ""))
    entries: list[KnownEntry] = []
    for i, d in enumerate(items, 1):
        entry = _entry(d)
        if isinstance(entry, str):
            raise BadInput(f"{path}: divergence {i}: {entry}")
        entries.append(entry)
    return Known(entries)
