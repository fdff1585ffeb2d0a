"""Finding reports in a console log: where each starts and ends, and the splats they make.

Each caller's stream of lines (console.py) is scanned on its own.  A report starts at a line that a row of
the formats table recognises as its header (table.py; a kernel line, not userspace output on the same
console) and runs to the next header in its stream, an ``---[ end ...`` marker, the ===== line that
closes it (the row's `end`), or the point where report-like lines (frames, registers, lockdep text) give
way to ordinary output.  A header that the kernel prints *inside* another report (the row's `inside`:
``Oops: 0000 [#1]`` after ``BUG: kernel NULL pointer dereference``, ``kernel BUG at lib/list_debug.c``
after ``list_del corruption``; with `inside_lines`, anywhere in its first N lines: SLUB's ``INFO: Freed in``
after its allocation stack) is part of that report, not a new one; a fatal one (``Kernel panic - not
syncing``) always starts its own.  A row with `confirm` (generic ``BUG: ...``) starts a report only if the
kernel's CPU/stack lines follow.  The excerpt also takes the ``=====`` or ``cut here`` line just before
the header.  titles.py gives each report its title and signature; `scan_text` merges reports with the
same signature into one splat with a count.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from rig.analysis.splats import frames
from rig.analysis.splats.console import Stream, streams
from rig.analysis.splats.splat import Splat, merge
from rig.analysis.splats.table import FORMATS, End, Format
from rig.analysis.splats.titles import describe

ABSORB_LINES = 15      # a header printed inside the previous report comes within this many lines of its header
CONFIRM_LINES = 25     # a `confirm` row's header needs the kernel's CPU/stack lines within this many lines
MAX_LINES = 1000       # no report is longer
TAGGED_MIN_LINES = 22  # with caller tags, a panic this many lines after a header ends the title's reading
GAP = 12               # ordinary lines that end a report once a frame was seen (twice as many before)

# Only report-ish lines may continue a report; see _extent.
_REPORTISH = re.compile("|".join([
    frames.ANY_FRAME_RE.pattern, r"\[<[0-9a-f]+>\]", frames.TRACE_MARK.pattern, frames.REG_LINE.pattern,
    r"Call Trace", r"backtrace", r"^\s*[0-9a-f]{8,16}(?: [0-9a-f]{8,16})+\s*$", r"^(?:CPU: \d+|Hardware name|"
    r"Modules linked in|Workqueue|task:|Kernel Offset|Tainted|irq event stamp|hardirqs last|softirqs last|---\[|"
    r"Showing all locks|INFO: lockdep is turned off|#PF|PGD|P4D|PUD|PMD|PTE|Oops|invalid opcode|Allocated by|"
    r"Freed by|Last potentially|The buggy address|Memory state|page:|flags:|raw:|head:|page dumped|Read of size|"
    r"Write of size|rcu: |\(t=|NMI backtrace|Sending NMI|Dumping ftrace|in_atomic|preempt_count|"
    r"Preemption disabled|RCU nest depth|rcu_scheduler_active|other info|Chain exists|Possible unsafe|"
    r"but task is|which lock|the existing|stack backtrace|no locks held|Use-after-free|Out-of-bounds|"
    r"Invalid|Corrupted memory|kfence-#|allocated by task|freed by task|shift exponent|index \d+ is out|"
    r"signed integer overflow|load of value|\S+ is trying|\S+ just changed|\S+ takes|\{\S+\} state was)",
    r"^\s*(?:-> #|#\d+:|\d+ locks? held by|lock\(|\*\*\*|CPU\d|[-\s]{4,}$|=+$|\(|\)|&|-->|\{|Disabling lock debugging)",
    r"^\s*[0-9a-f]{16}: ", r"^\s*\^", r"^\s*\S+\.[ch]:\d+ suspicious",
]))
_END_MARK = re.compile(r"^---\[ end ")
_SEP = re.compile(r"^\s*={20,}\s*$")
_PRE_SEP = re.compile(r"^\s*(?:={20,}|-{12}\[ cut here \]-{12})\s*$")
_CONFIRM = re.compile(r"Call Trace:|^CPU: \d+ (?:UID: \d+ )?PID: \d+|^\s*(?:\[<[0-9a-f]+>\]\s*)?" + frames.FN +
                      r"\+0x[0-9a-f]+/0x[0-9a-f]+")
_TAGGED_STOP = re.compile(r"Kernel panic - not syncing|WARNING: possible circular locking dependency detected")
_LOCKDEP_OFF = re.compile(r"INFO: lockdep is turned off|turning off the locking correctness validator")


@dataclass(frozen=True)
class Report:
    """One report as found, before merging: where its header is among the log's logical lines, the
    row that recognised it, and its splat (count 1)."""
    position: int
    format: Format
    splat: Splat


def _confirmed(lines: list[str], j: int) -> bool:
    """The kernel's CPU/stack lines follow lines[j] (before any other report starts)."""
    for x in lines[j + 1:j + 1 + CONFIRM_LINES]:
        if _CONFIRM.search(x):
            return True
        if FORMATS.match(x):
            return False
    return False


def _extent(lines: list[str], s: int, hard_end: int, end: End) -> int:
    """Index one past the last line of the report starting at lines[s]."""
    limit = min(hard_end, s + MAX_LINES)
    last = s
    seen_frame = False
    foreign = 0
    for j in range(s + 1, limit):
        t = lines[j]
        if _END_MARK.match(t):
            return j + 1
        if _SEP.match(t):
            if end is End.SEPARATOR:
                return j + 1
            if seen_frame:
                return j + 1 if end is End.LOCK_DUMP else last + 1
        if not t.strip():
            continue
        if _REPORTISH.search(t):
            last, foreign = j, 0
            seen_frame = seen_frame or bool(frames.ANY_FRAME_RE.search(t))
            continue
        foreign += 1
        if foreign > (GAP if seen_frame else 2 * GAP):
            break
    return last + 1


def _starts(stream: Stream) -> list[tuple[int, Format, re.Match[str]]]:
    """The headers in a stream that start reports: (line index, row, header match)."""
    lines = stream.lines
    starts: list[tuple[int, Format, re.Match[str]]] = []
    for j, t in enumerate(lines):
        hit = FORMATS.match(t)
        if not hit:
            continue
        row, m = hit
        if row.reboot:
            if not any(stream.kernel[:j]):
                continue
        elif not stream.kernel[j]:
            continue
        if row.confirm and not _confirmed(lines, j):
            continue
        if starts and row.inside:
            pj, prev, _ = starts[-1]
            if ("*" in row.inside or prev.id in row.inside) and not prev.fatal and (
                    j - pj <= row.inside_lines if row.inside_lines else
                    j - pj <= ABSORB_LINES and not any(frames.parse_frame(x) for x in lines[pj + 1:j])):
                continue
        starts.append((j, row, m))
    return starts


def _split_midline(stream: Stream) -> Stream:
    """The stream with each line that has a report header in its middle (formats.toml [console] midline)
    split there: the header's part becomes a line of its own, at the same position, as much a kernel line
    as the line was.  A line whose start a row matches is left whole, and so is the ``---[ end Kernel panic
    - not syncing: ... ]---`` trailer."""
    rx = FORMATS.midline
    if rx is None:
        return stream
    out: Stream | None = None
    for j, t in enumerate(stream.lines):
        pieces: list[str] = []
        rest = t
        while not _END_MARK.match(t.lstrip()):
            m = rx.search(rest, len(rest) - len(rest.lstrip()) + 1)
            if m is None or not FORMATS.match(rest[m.start():]) or (not pieces and FORMATS.match(rest)):
                break
            pieces.append(rest[:m.start()])
            rest = rest[m.start():]
        if not pieces:
            if out is not None:
                out.lines.append(t)
                out.positions.append(stream.positions[j])
                out.kernel.append(stream.kernel[j])
            continue
        if out is None:
            out = Stream(stream.lines[:j], stream.positions[:j], stream.kernel[:j], stream.tag)
        for piece in pieces + [rest]:
            out.lines.append(piece)
            out.positions.append(stream.positions[j])
            out.kernel.append(stream.kernel[j])
    return stream if out is None else out


def _scan_stream(stream: Stream) -> list[Report]:
    stream = _split_midline(stream)
    lines = stream.lines
    starts = _starts(stream)
    found = []
    stops = [k for k, t in enumerate(lines) if _TAGGED_STOP.search(t)] if stream.tag and starts else []
    for n, (j, row, m) in enumerate(starts):
        hard_end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        end = _extent(lines, j, hard_end, row.end)
        first = j - 1 if j > 0 and _PRE_SEP.match(lines[j - 1]) else j
        # syzkaller reads on for the title, through the headers it does not take for a new report; in a log
        # with caller tags, through every later report of the same caller (up to a panic or a lockdep
        # cycle report printed after the report's first lines; we stop MAX_LINES on, where no report's own
        # stack is, so that a log of many stackless reports is not read to its end for each)
        if stream.tag:
            k = bisect.bisect_left(stops, j + TAGGED_MIN_LINES)
            t_end = min(stops[k] if k < len(stops) else len(lines), j + MAX_LINES)
        else:
            t_end = next((s for s, r, _ in starts[n + 1:] if not r.transparent), len(lines))
        d = describe(row, m, lines[j:end], lines[j:t_end])
        log = "\n".join(lines[first:end]).strip("\n")
        found.append(Report(stream.positions[j], row, Splat(kind=row.kind.value, title=d.title, log=log,
                                                            signature=d.signature, where=d.where,
                                                            corrupted=d.corrupted)))
    return found


def find_reports(text: str) -> list[Report]:
    """Every report in a kernel console log, in order of appearance, not merged."""
    found = [r for s in streams(text) for r in _scan_stream(s)]
    found.sort(key=lambda r: r.position)
    return found


def scan_text(text: str) -> list[Splat]:
    """Splats in a kernel console log, deduplicated by signature (with counts; the first occurrence's title
    and excerpt are kept), in order of first appearance."""
    return merge(r.splat for r in find_reports(text))


def scan_file(path: str | Path) -> list[Splat]:
    """scan_text of a file (bytes that are not UTF-8 are replaced, serial consoles emit some)."""
    return scan_text(Path(path).read_text(encoding="utf-8", errors="replace"))


def lockdep_disabled(text: str) -> bool:
    """True when lockdep stopped checking during this log (it reports only its first problem per boot)."""
    return bool(_LOCKDEP_OFF.search(text))
