"""The formats table: formats.toml (beside this file) loaded into typed rows and checked.

One row (`Format`) per kernel report format: the header regex that starts such a report, its kind, the
title and signature templates, which stack gives the title's function and which frames are skipped on it,
and how the report is delimited.  formats.toml's opening comment describes every field; this module turns
the file into `Format` rows and rejects a bad one with a `FormatError` naming the row and the field.
Rows are tried in file order, the first whose header matches a line wins (`Formats.match`).

Templates (`Template`): ``{name}`` is a field, ``{a|b|'text'}`` the first non-empty of fields a and b,
else the text; ``[...]`` is a part left out when a field in it is empty (``possible deadlock[ in {fn}]``);
``[[``, ``]]``, ``{{``, ``}}`` are literal brackets and braces.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from rig.analysis.splats.frames import FN


class FormatError(ValueError):
    """formats.toml (or a table given to `load_formats`) is malformed; the message names the row."""


class Kind(StrEnum):
    """What a splat is; `Splat.kind` holds the value."""
    LOCKDEP = "lockdep"
    WARNING = "warning"
    BUG = "bug"
    KASAN = "kasan"
    PANIC = "panic"
    HUNG_TASK = "hung_task"
    RCU_STALL = "rcu_stall"
    LOCKUP = "lockup"
    OOPS = "oops"
    GPF = "gpf"
    UBSAN = "ubsan"
    KFENCE = "kfence"
    LIST_CORRUPTION = "list_corruption"


class Source(StrEnum):
    """Where the title's function may come from (a row's `stack` lists them; titles.py reads them)."""
    HEADER = "header"               # the {{FUNC}} of the header
    RIP = "rip"                     # the RIP/NIP/EIP/IP/pc line
    CALL_TRACE = "call-trace"       # the first stack: Call Trace:, Backtrace:, Allocated by task N:, ...
    INTERRUPTED = "interrupted"     # the first stack after </IRQ>: the code a stall/lockup interrupted
    UNDER_HEADER = "under-header"   # frames printed right under the header (within 8 lines)
    BLOCKED_TASK = "blocked-task"   # the blocked task's frames under the header (within 12 lines)
    SITE = "site"                   # the "at: F" of the lock described after the row's `site` marker
    DEPENDENCY_0 = "dependency-0"   # lockdep "-> #0": the stack of the dependency being added now
    BACKTRACE = "backtrace"         # lockdep: the stack after "stack backtrace:", else the first stack


class LockRule(StrEnum):
    """Which printed lock classes a lockdep report is about (locks.py; the {locks} field)."""
    NONE = "none"
    AFTER = "after"             # the lock described right after each marker
    CHAIN = "chain"             # the "-> #N" entries and "Chain exists of:", plus the locks after the markers
    ALL_AFTER = "all-after"     # every lock described after the (one) marker
    BARE = "bare"               # "(name) at:" right after each marker (no usage flags printed)


class End(StrEnum):
    """Where a report ends besides the next header and the ``---[ end`` marker (scan.py)."""
    NEXT = "next"               # a ===== line after a frame is the next report's opening
    SEPARATOR = "separator"     # framed by ===== lines: the first one after the header closes it
    LOCK_DUMP = "lock-dump"     # a ===== line after a frame closes it, included (the held-locks dump)


@dataclass(frozen=True)
class Field:
    """``{a|b|'text'}`` in a template."""
    names: tuple[str, ...]
    default: str


@dataclass(frozen=True)
class Template:
    text: str
    parts: tuple[tuple[bool, tuple[str | Field, ...]], ...]      # (optional, pieces)

    @property
    def fields(self) -> set[str]:
        return {n for _, pieces in self.parts for p in pieces if isinstance(p, Field) for n in p.names}

    def render(self, values: dict[str, str]) -> str:
        out = []
        for optional, pieces in self.parts:
            rendered = []
            for p in pieces:
                if isinstance(p, str):
                    rendered.append(p)
                    continue
                v = next((values[n] for n in p.names if values.get(n)), p.default)
                if not v and optional:
                    rendered = []
                    break
                rendered.append(v)
            out.extend(rendered)
        return "".join(out)


_FIELD = re.compile(r"\{([^{}]*)\}")
_NAME = re.compile(r"[a-z_][a-z0-9_]*$")


def parse_template(text: str) -> Template:
    """A Template, or ValueError saying what is wrong with `text`."""
    parts: list[tuple[bool, tuple[str | Field, ...]]] = []
    cur: list[str | Field] = []
    optional = False
    i = 0
    while i < len(text):
        two = text[i:i + 2]
        if two in ("[[", "]]", "{{", "}}"):
            cur.append(two[0])
            i += 2
            continue
        c = text[i]
        if c in "[]":
            if (c == "[") == optional:
                raise ValueError(f"unbalanced {c!r} at {i} in {text!r}")
            parts.append((optional, tuple(cur)))
            cur, optional = [], c == "["
            i += 1
        elif c == "{":
            m = _FIELD.match(text, i)
            if not m:
                raise ValueError(f"unclosed '{{' at {i} in {text!r}")
            alts = [a.strip() for a in m.group(1).split("|")]
            default = alts.pop()[1:-1] if len(alts) > 1 and re.fullmatch(r"'[^']*'", alts[-1]) else ""
            bad = [a for a in alts if not _NAME.match(a)]
            if bad or not alts:
                raise ValueError(f"bad field {m.group(0)!r} in {text!r}")
            cur.append(Field(tuple(alts), default))
            i = m.end()
        elif c == "}":
            raise ValueError(f"unmatched '}}' at {i} in {text!r}")
        else:
            cur.append(c)
            i += 1
    if optional:
        raise ValueError(f"unclosed '[' in {text!r}")
    parts.append((False, tuple(cur)))
    return Template(text, tuple((o, _join(p)) for o, p in parts if p))


def _join(pieces: list[str | Field] | tuple[str | Field, ...]) -> tuple[str | Field, ...]:
    out: list[str | Field] = []
    for p in pieces:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class Format:
    """One row of formats.toml, checked (the file's opening comment describes each field)."""
    id: str
    header: re.Pattern[str]
    kind: Kind
    title: Template
    stack: tuple[tuple[Source, ...], ...]      # each entry: alternatives, the first that gives frames
    skip: re.Pattern[str] | None               # the union of the row's skip sets (None: skip nothing)
    site: re.Pattern[str] | None
    site_lines: int
    fields: tuple[tuple[str, re.Pattern[str]], ...]   # read from the report's body
    locks: LockRule
    lock_markers: tuple[str, ...]
    signature: Template | None                 # None: from the title (titles.signature_from_title)
    fatal: bool
    confirm: bool
    inside: frozenset[str]                     # row ids (or "*") whose report this header may be printed in
    end: End


@dataclass(frozen=True)
class Formats:
    rows: tuple[Format, ...]

    def match(self, line: str) -> tuple[Format, re.Match[str]] | None:
        """The first row whose header matches the line (leading blanks ignored), with the match."""
        t = line.lstrip()
        for row in self.rows:
            m = row.header.search(t)
            if m:
                return row, m
        return None

    @property
    def fatal_kinds(self) -> frozenset[str]:
        return frozenset(r.kind.value for r in self.rows if r.fatal)


_KEYS = {"id", "header", "kind", "title", "stack", "skip", "site", "site_lines", "fields", "locks",
         "lock_markers", "signature", "fatal", "confirm", "inside", "end"}
_REQUIRED = {"id", "header", "kind", "title"}


def _get(row: dict[str, Any], key: str, typ: type, default: Any) -> Any:
    v = row.get(key, default)
    if typ is list:
        if not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise ValueError(f"{key}: expected a list of strings, got {v!r}")
    elif not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise ValueError(f"{key}: expected {typ.__name__}, got {v!r}")
    return v


def _compile(rx: str, what: str, macros: dict[str, str], flags: int = 0) -> re.Pattern[str]:
    def expand(m: re.Match[str]) -> str:
        if m.group(1) not in macros:
            raise ValueError(f"{what}: unknown macro {m.group(0)} (have {', '.join(sorted(macros))})")
        return macros[m.group(1)]
    try:
        return re.compile(re.sub(r"\{\{(\w+)\}\}", expand, rx), flags)
    except re.error as e:
        raise ValueError(f"{what}: bad regex {rx!r}: {e}") from None


def _row(raw: dict[str, Any], skip_sets: dict[str, str], macros: dict[str, str]) -> Format:
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(unknown))}")
    missing = _REQUIRED - set(raw)
    if missing:
        raise ValueError(f"missing {', '.join(sorted(missing))}")
    header = _compile(_get(raw, "header", str, ""), "header", macros)
    kind = _enum(Kind, _get(raw, "kind", str, ""), "kind")
    locks = _enum(LockRule, _get(raw, "locks", str, "none"), "locks")
    end = _enum(End, _get(raw, "end", str, "next"), "end")
    stack = tuple(tuple(_enum(Source, s, "stack") for s in entry.split("|"))
                  for entry in _get(raw, "stack", list, []))
    skip_names = _get(raw, "skip", list, ["common"])
    for s in skip_names:
        if s not in skip_sets:
            raise ValueError(f"skip: no skip set {s!r} (have {', '.join(sorted(skip_sets))})")
    site_rx = _get(raw, "site", str, "")
    if bool(site_rx) != any(Source.SITE in e for e in stack) or ("site_lines" in raw and not site_rx):
        raise ValueError("site: a `site` marker (and `site_lines`) goes with the 'site' stack source, and only with it")
    fields: list[tuple[str, re.Pattern[str]]] = []
    for name, rx in _get(raw, "fields", dict, {}).items():
        compiled = _compile(rx, f"fields.{name}", macros, re.M) if isinstance(rx, str) else None
        if compiled is None or compiled.groups != 1 or not _NAME.match(name):
            raise ValueError(f"fields.{name}: a field is a lower-case name and a regex with one group")
        fields.append((name, compiled))
    markers = tuple(_get(raw, "lock_markers", list, []))
    for mk in markers:
        _compile(mk, "lock_markers", {})
    if locks is LockRule.NONE and markers:
        raise ValueError("lock_markers: given, but locks is 'none'")
    if locks in (LockRule.AFTER, LockRule.BARE) and not markers:
        raise ValueError(f"lock_markers: locks = {locks.value!r} needs at least one marker")
    if locks is LockRule.ALL_AFTER and len(markers) != 1:
        raise ValueError("lock_markers: locks = 'all-after' takes exactly one marker")
    try:
        title = parse_template(_get(raw, "title", str, ""))
        sig_text = _get(raw, "signature", str, "")
        signature = parse_template(sig_text) if sig_text else None
    except ValueError as e:
        raise ValueError(f"template: {e}") from None
    known = {"fn", *header.groupindex, *(n for n, _ in fields), *(["locks"] if locks is not LockRule.NONE else [])}
    for what, tpl in (("title", title), ("signature", signature)):
        if tpl is not None and tpl.fields - known:
            raise ValueError(f"{what}: unknown field(s) {', '.join(sorted(tpl.fields - known))} "
                             f"(this row has {', '.join(sorted(known))})")
    if bool(stack) != ("fn" in title.fields):
        raise ValueError("stack: a row with a stack puts {fn} in its title, and a title with {fn} needs a stack")
    if any(Source.HEADER in e for e in stack) and "func" not in header.groupindex:
        raise ValueError("stack: source 'header' needs {{FUNC}} (a group named func) in the header")
    inside = frozenset(_get(raw, "inside", list, []))
    fatal = _get(raw, "fatal", bool, False)
    if fatal and inside:
        raise ValueError("inside: a fatal report always starts its own splat")
    return Format(
        id=_get(raw, "id", str, ""), header=header, kind=kind, title=title, stack=stack,
        skip=re.compile("|".join(f"(?:{skip_sets[s]})" for s in skip_names)) if skip_names else None,
        site=_compile(site_rx, "site", {}) if site_rx else None, site_lines=_get(raw, "site_lines", int, 8),
        fields=tuple(fields), locks=locks, lock_markers=markers, signature=signature, fatal=fatal,
        confirm=_get(raw, "confirm", bool, False), inside=inside, end=end)


_E = TypeVar("_E", bound=StrEnum)


def _enum(cls: type[_E], value: str, key: str) -> _E:
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(m.value for m in cls)}") from None


def load_formats(text: str, origin: str = "formats.toml") -> Formats:
    """The checked table from TOML text; FormatError naming the row (index and id) on a bad one."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FormatError(f"{origin}: {e}") from None
    unknown = set(doc) - {"macros", "skip", "format"}
    if unknown:
        raise FormatError(f"{origin}: unknown table(s) {', '.join(sorted(unknown))}")
    if not (isinstance(doc.get("macros", {}), dict) and isinstance(doc.get("skip", {}), dict)
            and isinstance(doc.get("format", []), list) and all(isinstance(r, dict) for r in doc.get("format", []))):
        raise FormatError(f"{origin}: expected tables [macros] and [skip] and an array of tables [[format]]")
    macros = {"FUNC": f"(?P<func>{FN})"}
    for name, rx in doc.get("macros", {}).items():
        if not isinstance(rx, str) or name in macros:
            raise FormatError(f"{origin}: macros.{name}: a macro is a new name and a string")
        macros[name] = rx
    skip_sets: dict[str, str] = {}
    for name, pats in doc.get("skip", {}).items():
        if not (isinstance(pats, list) and pats and all(isinstance(p, str) for p in pats)):
            raise FormatError(f"{origin}: skip.{name}: expected a non-empty list of regexes")
        try:
            skip_sets[name] = re.compile("|".join(f"(?:{p})" for p in pats)).pattern
        except re.error as e:
            raise FormatError(f"{origin}: skip.{name}: bad regex: {e}") from None
    rows: list[Format] = []
    for i, raw in enumerate(doc.get("format", []), 1):
        where = f"{origin}: format row {i} ({raw.get('id', 'no id')})"
        try:
            row = _row(raw, skip_sets, macros)
        except ValueError as e:
            raise FormatError(f"{where}: {e}") from None
        if not re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", row.id) or any(r.id == row.id for r in rows):
            raise FormatError(f"{where}: id: a row id is unique and lower-case-with-dashes")
        rows.append(row)
    if not rows:
        raise FormatError(f"{origin}: no [[format]] rows")
    ids = {r.id for r in rows}
    for i, row in enumerate(rows, 1):
        bad = row.inside - ids - {"*"}
        if bad:
            raise FormatError(f"{origin}: format row {i} ({row.id}): inside: no row {', '.join(sorted(bad))}")
        other = {r.fatal for r in rows if r.kind is row.kind}
        if len(other) > 1:
            raise FormatError(f"{origin}: format row {i} ({row.id}): fatal: rows of kind {row.kind.value!r} "
                              "disagree (is_fatal goes by kind)")
    return Formats(tuple(rows))


TABLE = Path(__file__).with_name("formats.toml")
FORMATS = load_formats(TABLE.read_text(encoding="utf-8"), str(TABLE))
KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
FATAL_KINDS: frozenset[str] = FORMATS.fatal_kinds
