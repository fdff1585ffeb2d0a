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
from functools import cached_property
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, TypeVar

from rig.analysis.splats.frames import FN
from rig.analysis.splats.templates import _NAME, Template, parse_template

__all__ = ["parse_template", "Template"]


class FormatError(ValueError):
    """formats.toml (or a table given to `load_formats`) is malformed; the message names the row."""


class Kind(StrEnum):
    """What a splat is; `Splat.kind` holds the value."""
    LOCKDEP = "lockdep"
    WARNING = "warning"
    BUG = "bug"
    KASAN = "kasan"
    KMSAN = "kmsan"
    KCSAN = "kcsan"
    KMEMLEAK = "kmemleak"
    PANIC = "panic"
    HUNG_TASK = "hung_task"
    RCU_STALL = "rcu_stall"
    LOCKUP = "lockup"
    OOPS = "oops"
    GPF = "gpf"
    UBSAN = "ubsan"
    KFENCE = "kfence"
    LIST_CORRUPTION = "list_corruption"
    TOOL = "tool"                   # a userspace tool's failure that syzkaller titles (SYZFAIL, Go runtime)


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
    LOCK_SITES = "lock-sites"       # lockdep: the "at: F" after the site marker, the next "at: F", the frames after
    AFTER_MARK = "after-mark"       # the frames after the line the row's `mark` matches
    PC_LINE = "pc-line"             # the first "[<address>] F+0x.." line after the header
    STALL = "stall"                 # after the timer interrupt: the RIP it interrupted, then the frames after


class Pick(StrEnum):
    """How the title's function is chosen among the candidates left after skipping (row key `pick`)."""
    FIRST = "first"             # the first one
    STALL = "stall"             # the one before the first [anchors] stall entry (the looping code's entry)
    HUNG = "hung"               # an [anchors] hung entry if any, else the first not in the "hung" skip set


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
    signature: Template | None                 # None: from `where` (titles.signature_from_title)
    where: Template | None                     # None: the title template (with the where_stack function)
    where_stack: tuple[tuple[Source, ...], ...] | None    # None: the title's function is the where function
    where_skip: re.Pattern[str] | None
    mark: re.Pattern[str] | None
    pick: Pick
    corrupted: bool                            # syzkaller marks such reports corrupted
    reboot: bool                               # the boot loader's line: a report only after kernel output
    transparent: bool                          # syzkaller reads the report before this header on through it
    needs: tuple[str, ...]                     # fields without which syzkaller titles the report `else_title`
    else_title: Template | None
    fatal: bool
    confirm: bool
    inside: frozenset[str]                     # row ids (or "*") whose report this header may be printed in
    inside_lines: int                          # 0: right after that header, before any frame; N: within N lines
    end: End


@dataclass(frozen=True)
class Formats:
    rows: tuple[Format, ...]
    strip_prefixes: tuple[str, ...] = ()                     # [frames] strip: syscall prefixes dropped
    stall_anchors: re.Pattern[str] | None = None             # [anchors] stall
    hung_anchors: tuple[tuple[re.Pattern[str], str], ...] = ()   # [anchors] hung: (pattern, replacement)
    midline: re.Pattern[str] | None = None                   # [console] midline: headers looked for mid-line

    def match(self, line: str) -> tuple[Format, re.Match[str]] | None:
        """The first row whose header matches the line (leading blanks ignored), with the match."""
        t = line.lstrip()
        if not self._any(t):
            return None
        for row in self.rows:
            m = row.header.search(t)
            if m:
                return row, m
        return None

    @cached_property
    def _any(self) -> Callable[[str], re.Match[str] | None]:
        """Does any row's header match?  One regex, the union of the headers (named groups unnamed), tried
        before the rows one by one: nearly every console line is no header.  Headers anchored at the start
        of the line (all of formats.toml's) are tried there only."""
        pats = [r.header.pattern for r in self.rows]
        try:
            union = re.compile("|".join(f"(?:{re.sub(r'[(][?]P<[A-Za-z_][A-Za-z0-9_]*>', '(?:', p)})" for p in pats))
        except re.error:         # a header the union cannot hold (a backreference, a global flag): no prefilter
            return lambda t: re.match("", t)
        anchored = all(re.match(r"(?:[(][?]P<\w+>)?\^", p) for p in pats)
        return union.match if anchored else union.search

    @property
    def fatal_kinds(self) -> frozenset[str]:
        return frozenset(r.kind.value for r in self.rows if r.fatal)


_KEYS = {"id", "header", "kind", "title", "stack", "skip", "site", "site_lines", "fields", "locks",
         "lock_markers", "signature", "fatal", "confirm", "inside", "inside_lines", "end", "where", "where_stack",
         "where_skip", "mark", "pick", "corrupted", "reboot",
         "transparent", "needs", "else_title"}
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
    stack = _stack(raw, "stack")
    where_stack = _stack(raw, "where_stack") if "where_stack" in raw else None
    both = stack + (where_stack or ())
    skip = _skip(raw, "skip", ["syz"], skip_sets)
    where_skip = _skip(raw, "where_skip", ["common"], skip_sets) if where_stack is not None else skip
    if "where_skip" in raw and where_stack is None:
        raise ValueError("where_skip: goes with where_stack")
    site_rx = _get(raw, "site", str, "")
    with_site = any(Source.SITE in e or Source.LOCK_SITES in e for e in both)
    if bool(site_rx) != with_site or ("site_lines" in raw and not site_rx):
        raise ValueError("site: a `site` marker (and `site_lines`) goes with the 'site' stack source, and only with it")
    mark_rx = _get(raw, "mark", str, "")
    if bool(mark_rx) != any(Source.AFTER_MARK in e for e in both):
        raise ValueError("mark: a `mark` goes with the 'after-mark' stack source, and only with it")
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
        where_text = _get(raw, "where", str, "")
        where = parse_template(where_text) if where_text else None
    except ValueError as e:
        raise ValueError(f"template: {e}") from None
    known = {"fn", *header.groupindex, *(n for n, _ in fields), *(["locks"] if locks is not LockRule.NONE else [])}
    for what, tpl in (("title", title), ("signature", signature), ("where", where)):
        if tpl is not None and tpl.fields - known:
            raise ValueError(f"{what}: unknown field(s) {', '.join(sorted(tpl.fields - known))} "
                             f"(this row has {', '.join(sorted(known))})")
    if bool(stack) != ("fn" in title.fields):
        raise ValueError("stack: a row with a stack puts {fn} in its title, and a title with {fn} needs a stack")
    if any(Source.HEADER in e for e in stack) and "func" not in header.groupindex:
        raise ValueError("stack: source 'header' needs {{FUNC}} (a group named func) in the header")
    needs = tuple(_get(raw, "needs", list, []))
    else_text = _get(raw, "else_title", str, "")
    else_title = parse_template(else_text) if else_text else None
    if bool(needs) != bool(else_title) or set(needs) - known or (else_title and else_title.fields - known):
        raise ValueError("needs: a list of this row's fields, with an else_title (of this row's fields)")
    inside = frozenset(_get(raw, "inside", list, []))
    fatal = _get(raw, "fatal", bool, False)
    if fatal and inside:
        raise ValueError("inside: a fatal report always starts its own splat")
    inside_lines = _get(raw, "inside_lines", int, 0)
    if inside_lines < 0 or (inside_lines and not inside):
        raise ValueError("inside_lines: a number of lines, with `inside`")
    return Format(
        id=_get(raw, "id", str, ""), header=header, kind=kind, title=title, stack=stack, skip=skip,
        where=where, where_stack=where_stack, where_skip=where_skip,
        mark=_compile(mark_rx, "mark", macros) if mark_rx else None,
        pick=_enum(Pick, _get(raw, "pick", str, "first"), "pick"), corrupted=_get(raw, "corrupted", bool, False),
        reboot=_get(raw, "reboot", bool, False), transparent=_get(raw, "transparent", bool, False),
        needs=needs, else_title=else_title,
        site=_compile(site_rx, "site", {}) if site_rx else None, site_lines=_get(raw, "site_lines", int, 8),
        fields=tuple(fields), locks=locks, lock_markers=markers, signature=signature, fatal=fatal,
        confirm=_get(raw, "confirm", bool, False), inside=inside, inside_lines=inside_lines, end=end)


def _stack(raw: dict[str, Any], key: str) -> tuple[tuple[Source, ...], ...]:
    return tuple(tuple(_enum(Source, s, key) for s in entry.split("|")) for entry in _get(raw, key, list, []))


def _skip(raw: dict[str, Any], key: str, default: list[str], skip_sets: dict[str, str]) -> re.Pattern[str] | None:
    names = _get(raw, key, list, default)
    for s in names:
        if s not in skip_sets:
            raise ValueError(f"{key}: no skip set {s!r} (have {', '.join(sorted(skip_sets))})")
    return re.compile("|".join(f"(?:{skip_sets[s]})" for s in names)) if names else None


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
    unknown = set(doc) - {"macros", "skip", "format", "frames", "anchors", "console"}
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
    try:
        strip = tuple(_get(doc.get("frames", {}), "strip", list, []))
        anchors = doc.get("anchors", {})
        stall = _get(anchors, "stall", list, [])
        hung = anchors.get("hung", [])
        if not all(isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in hung):
            raise ValueError("hung: expected a list of [regex, name] pairs")
        midline = _get(doc.get("console", {}), "midline", list, [])
        return Formats(tuple(rows), strip, re.compile("|".join(f"(?:{p})" for p in stall)) if stall else None,
                       tuple((re.compile(k), v) for k, v in hung),
                       re.compile("|".join(f"(?:{p})" for p in midline)) if midline else None)
    except (ValueError, re.error) as e:
        raise FormatError(f"{origin}: [frames]/[anchors]/[console]: {e}") from None


TABLE = Path(__file__).with_name("formats.toml")
FORMATS = load_formats(TABLE.read_text(encoding="utf-8"), str(TABLE))
KINDS: tuple[str, ...] = tuple(k.value for k in Kind)
FATAL_KINDS: frozenset[str] = FORMATS.fatal_kinds
