"""Reading a console log: console prefixes stripped, lines broken by interleaving mended, and the lines
grouped into one stream per caller.

1. Console prefixes are stripped: ``<N>`` log levels, ``[  309.075885]`` timestamps, ``[ T123]``/``[ C4]``
   caller tags (CONFIG_PRINTK_CALLER), syslog/journal ``... kernel:`` prefixes, ``dmesg -T`` dates, ``\\r``
   and ANSI colour codes.
2. Lines broken by interleaving are mended: a timestamp in the *middle* of a line (4.x lockdep's
   ``lock([ 309.139211] &mm->mmap_sem``: a continuation printed by another printk) is removed, joining the
   fragments; one that carries a *different* caller tag splits the line, and the part goes to its caller.
3. When the log has caller tags, lines are grouped by tag into streams (one per task/CPU) and each stream is
   scanned on its own (scan.py), so two CPUs printing at once do not mix their reports.  Untagged lines
   follow the tagged line before them (continuations, or logs without tags: then there is a single stream).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]")
# syslog / journalctl: "Nov 24 03:50:00 host kernel: "; dmesg -T: "[Mon Nov 24 03:50:00 2025] "
_SYSLOG = re.compile(r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ kernel: |"
                     r"\d{4}-\d\d-\d\dT\S+ \S+ kernel: )")
_DMESG_T = re.compile(r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?")
_PREFIX = re.compile(r"^(?:\*\* \d+ printk messages dropped \*\*\s*)?(?:.* login: )?(?:<\d{1,3}>)?"
                     r"(?:\[\s*\d+\.\d+\])(?:\s*\[\s*([TC]\d+)\])?\s?")
_LEVEL_ONLY = re.compile(r"^<\d{1,3}>")
# kmemleak's verbose report has its pr_fmt on every line: "kmemleak: unreferenced object ...", "kmemleak:   ..."
_KMEMLEAK = re.compile(r"^kmemleak: (?=unreferenced object|\s)")
_EMBEDDED_TS = re.compile(r"\[\s*\d+\.\d{6}\](?:\[\s*([TC]\d+)\])?\s?")


def logical_lines(text: str) -> list[tuple[int, str, str, bool]]:
    """(position, caller tag or "", text, kernel) per logical line, prefixes stripped, fragments mended.

    `kernel` is False for a line without a console prefix in a log whose other lines have one: that is
    a continuation, or userspace output on the same serial console (a test printing "BUG: ..."), and
    such a line may continue a report but never starts one."""
    out: list[tuple[int, str, str, bool]] = []
    text = _ANSI.sub("", text.replace("\x00", ""))
    last_tag = ""
    pos = 0
    for raw in text.splitlines():
        line = raw.rstrip("\r").rstrip()
        n0 = len(line)
        line = _SYSLOG.sub("", line, count=1)
        line = _DMESG_T.sub("", line, count=1)
        prefixed = len(line) != n0
        m = _PREFIX.match(line)
        if m:
            prefixed = True
            tag = m.group(1) or ""
            if tag:
                last_tag = tag
            else:
                tag = last_tag
            line = line[m.end():]
        else:
            line = _LEVEL_ONLY.sub("", line, count=1)
            tag = last_tag   # continuation (or a log without timestamps)
        line = _KMEMLEAK.sub("", line, count=1)
        # timestamps inside the line: another printk cut in.  Same caller (or no tags): mend the line.
        # Another caller: split there and give the rest to that caller.
        pieces: list[tuple[str, str]] = []
        cur_tag, start = tag, 0
        buf = ""
        for em in _EMBEDDED_TS.finditer(line):
            buf += line[start:em.start()]
            start = em.end()
            etag = em.group(1) or ""
            if etag and etag != cur_tag:
                pieces.append((cur_tag, buf))
                buf, cur_tag = "", etag
        buf += line[start:]
        pieces.append((cur_tag, buf))
        for k, (ptag, ptext) in enumerate(pieces):
            out.append((pos, ptag, ptext.rstrip(), prefixed or k > 0))
            pos += 1
        if pieces[-1][0]:
            last_tag = pieces[-1][0]
    return out


@dataclass
class Stream:
    """One caller's lines, in order: the text, its position among all logical lines of the log, and
    whether it may start a report (`logical_lines`: a kernel line)."""
    lines: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    kernel: list[bool] = field(default_factory=list)
    tag: str = ""            # the caller tag ("T123", "C1"), "" in a log without them


def streams(text: str) -> list[Stream]:
    """The log's lines by caller tag, in order of each caller's first line.  A log without any console
    prefix (plain dmesg) has every line count as a kernel line."""
    logical = logical_lines(text)
    prefixed_log = any(k for _, _, _, k in logical)
    by_tag: dict[str, Stream] = {}
    for pos, tag, t, k in logical:
        s = by_tag.setdefault(tag, Stream(tag=tag))
        s.lines.append(t)
        s.positions.append(pos)
        s.kernel.append(k or not prefixed_log)
    return list(by_tag.values())
