"""Lock classes in a lockdep report: what a lockdep signature is made of (the ``{locks}`` field of a row
whose `locks` rule is not "none").

Lockdep prints a lock as ``(name){flags}`` (``{+.+.}-{3:3}`` in 6.x, ``{+.+.+.}`` in 4.x), and in 4.x
consoles the name may be broken over lines by interleaving (``&type->s_vfs_rename_key`` / ``#2``).  Which
printed locks a report is about is the row's `locks` rule (`LockRule`) with its `lock_markers`.  Class
names are normalised by `lock_class`, and the result is the sorted set joined by ``|``.
"""
from __future__ import annotations

import re
from typing import Iterable

from rig.analysis.splats.table import LockRule

# a lock class as lockdep prints it, "(name){flags}": the name may be broken over lines by interleaving
# (KERN_CONT pieces, 4.x consoles) and may contain parentheses ("((wq_completion)events)")
_LOCK_NAME = r"((?:[^\s{}]|[ \t]*\n[ \t]*)+?)"
_LOCK_DESC = re.compile(r"\(" + _LOCK_NAME + r"\)\s*\{[-+.?]{2,}\}")
_CHAIN_ENTRY = re.compile(r"->\s*#\d+\s*\(" + _LOCK_NAME + r"\)\s*\{[-+.?]{2,}\}")
_CHAIN_EXISTS = re.compile(r"Chain exists of:[ \t]*\n(.*?)(?:\n[ \t]*\n|\Z)", re.S)


def lock_class(name: str) -> str:
    """A lock class name as lockdep prints it, without what varies between boots and kernels: the ``#N``
    suffix (the order the class was registered in), the ``/N`` subclass, addresses and symbol offsets,
    and whitespace.  ``&type->i_mutex_dir_key#5/1`` -> ``&type->i_mutex_dir_key``."""
    name = re.sub(r"\s+", "", name)
    name = re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+", "", name)
    name = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,16}\b", "", name)
    name = re.sub(r"#\d+", "", name)
    name = re.sub(r"(?:/\d+)+$", "", name)
    return name


def _classes(names: Iterable[str]) -> str:
    return "|".join(sorted({c for c in (lock_class(n) for n in names) if c}))


def _lock_after(text: str, marker: str) -> list[str]:
    """The lock class printed right after `marker` (on its line or the next ones, before a blank line)."""
    out = []
    for mm in re.finditer(marker, text):
        rest = text[mm.end():mm.end() + 600]
        dm = _LOCK_DESC.search(rest)
        if dm and not re.search(r"\n[ \t]*\n", rest[:dm.start()]):
            out.append(dm.group(1))
    return out


def lock_classes(rule: LockRule, markers: tuple[str, ...], text: str) -> str:
    """The normalised classes the report in `text` is about, joined by "|" ("" when it names none)."""
    names: list[str] = []
    if rule is LockRule.CHAIN:
        names += [m.group(1) for m in _CHAIN_ENTRY.finditer(text)]
        ce = _CHAIN_EXISTS.search(text)
        if ce:
            names += ce.group(1).split("-->")
    if rule is LockRule.BARE:
        for marker in markers:
            names += [m.group(1) for m in re.finditer(marker + r"\s*\(" + _LOCK_NAME + r"\)\s*at:", text)]
    elif rule is LockRule.ALL_AFTER:
        mm = re.search(markers[0], text)
        names += [m.group(1) for m in _LOCK_DESC.finditer(text, mm.end() if mm else 0)]
    elif rule is not LockRule.NONE:
        for marker in markers:
            names += _lock_after(text, marker)
    return _classes(names)
