"""Title and signature of one report, by its row of the formats table.

The row's header match gives the named fields (normalised by name: `func`, `src`, `message`, `reason`),
`fields` adds ones read from the report's body, `locks` the lock classes (locks.py) and `stack` the
function ``fn``: the candidates of each source in order (frames.py reads them), the first that none of
the row's skip sets matches.  The title and signature templates are then filled in (templates: table.py).

A title names the report by one function, and for a lockdep cycle that function depends on which edge
happened to close the cycle in this run: the same cycle ``&mm->mmap_lock --> &ovl_i_lock_key[depth] -->
sb_writers --> &type->i_mutex_dir_key --> &mm->mmap_lock`` is "possible deadlock in filldir64" in one boot
and "possible deadlock in fault_in_readable" in another.  So every splat also gets a *signature*, its
identity (deduplication, new vs baseline, the JSON report and the nightly history go by it; the title stays
the human text).  Signatures carry no addresses, offsets, line numbers, pids or task names: a WARNING is
``warning:F@file`` (the file without the line, which shifts between kernels and patches), a fault
``null-deref:F``, a lockdep report the set of its lock classes (``lockdep-cycle:&mm->mmap_lock|...``); a
row without a signature template gets its title as a slug (`signature_from_title`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from rig.analysis.splats import frames
from rig.analysis.splats.frames import FN
from rig.analysis.splats.locks import lock_classes
from rig.analysis.splats.table import FORMATS, Format, LockRule, Pick, Source

_SRC_TOP = re.compile(r"(?:^|/)((?:arch|block|certs|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|"
                      r"net|rust|samples|security|sound|virt)/\S+)$")
_TITLE_FN = re.compile(r" in (" + FN + r")$")
_DEPENDENCY_0 = re.compile(r"^\s*-> #0\b")
_BACKTRACE = re.compile(r"stack backtrace:")


def _src_file(path: str) -> str:
    """A source path as the kernel prints it in WARNING/BUG headers, relative to the tree."""
    m = _SRC_TOP.search(path)
    return m.group(1) if m else path.lstrip("./")


def _norm_message(msg: str) -> str:
    """Generic BUG message without addresses, numbers, task names."""
    msg = re.sub(r"\s*(?:\[[^\]]*\]|\([^)]*\)|\{[^}]*\})", "", msg)
    msg = re.sub(r"\s+in process\s+\S+.*$", "", msg)
    msg = re.sub(r":\s.*$", "", msg)
    words = [w for w in msg.split() if not re.search(r"\d|^0x", w)]
    return " ".join(words).rstrip(",;:")


def _panic_reason(msg: str) -> str:
    msg = re.sub(r"^kernel: ", "", msg.strip())
    msg = re.sub(r"\s*exitcode=0x[0-9a-f]+", "", msg)
    msg = re.sub(r"\s*\.\.\.\s*$", "", msg)
    msg = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,16}\b", "", msg)
    return re.sub(r"\s+", " ", msg).strip()


_NORMALISE: dict[str, Callable[[str], str]] = {
    "func": frames.fn_name, "src": _src_file, "message": _norm_message, "reason": _panic_reason,
}


def _source(src: Source, row: Format, lines: list[str], values: dict[str, str], syz: bool) -> list[str]:
    """Candidate functions from one stack source (table.Source describes each).  `syz`: read a stack the
    way syzkaller does (every frame up to the next stack's opening), for the title."""
    if src is Source.HEADER:
        return [values["func"]]
    if src is Source.RIP:
        return [frames.rip(lines)]
    if src is Source.CALL_TRACE:
        return frames.syz_call_trace(lines) if syz else frames.call_trace(lines)
    if src is Source.INTERRUPTED:
        return frames.interrupted(lines)
    if src is Source.UNDER_HEADER:
        return frames.stack_to_head(lines, 1) if syz else frames.frames_from(lines, 1)
    if src is Source.BLOCKED_TASK:
        return frames.frames_from(lines, 1, lead=12)
    if src is Source.SITE:
        assert row.site is not None          # table.py: a row with the site source has a marker
        i = frames.find(lines, row.site)
        return [frames.at_func(lines, i + 1, row.site_lines)] if i >= 0 else []
    if src is Source.LOCK_SITES:
        assert row.site is not None
        return frames.lock_sites(lines, row.site, row.site_lines)
    if src is Source.AFTER_MARK:
        assert row.mark is not None
        i = frames.find(lines, row.mark)
        return frames.stack_to_head(lines, i + 1) if i >= 0 else []
    if src is Source.PC_LINE:
        return frames.pc_line(lines)
    if src is Source.STALL:
        return frames.stall(lines)
    if src is Source.DEPENDENCY_0:
        z = frames.find(lines, _DEPENDENCY_0)
        return frames.frames_from(lines, z + 1) if z >= 0 else []
    bt = frames.find(lines, _BACKTRACE)          # Source.BACKTRACE
    return frames.call_trace(lines, bt) if bt >= 0 else frames.call_trace(lines)


def _candidates(row: Format, stack: tuple[tuple[Source, ...], ...], lines: list[str], values: dict[str, str],
                syz: bool) -> list[str]:
    """The candidates of the stack entries in order (of an entry "a|b", the first alternative that gives any)."""
    cands: list[str] = []
    for alternatives in stack:
        cands += next((got for got in (_source(s, row, lines, values, syz) for s in alternatives) if got), [])
    return cands


def _strip(fn: str) -> str:
    """Without a syscall prefix (__x64_sys_read -> sys_read): the shortest of the names left by dropping one
    of the table's [frames] strip prefixes."""
    return min((fn[len(p):] for p in FORMATS.strip_prefixes if fn.startswith(p)), key=len, default=fn)


def _syz_function(row: Format, lines: list[str], values: dict[str, str]) -> str:
    """The title's function: of the candidates not skipped, the row's `pick`; "" when there is none."""
    cands: list[str] = []
    for c in _candidates(row, row.stack, lines, values, True):
        if _FAULT_INJECTION.match(c) and not cands:
            return ""                # syzkaller: a fault-injection stack mixed into the report: corrupted
        if c and not (row.skip is not None and row.skip.search(c)):
            cands.append(c)
    if row.pick is Pick.HUNG:
        for c in cands:
            for rx, repl in FORMATS.hung_anchors:
                if rx.search(c):
                    return repl or c
        return _strip(next((c for c in cands if not _HUNG_SKIP.search(c)), ""))
    cands = [_strip(c) for c in cands]
    if row.pick is Pick.STALL:
        prev = cands[0] if cands else ""
        for c in cands:
            if FORMATS.stall_anchors is not None and FORMATS.stall_anchors.search(c):
                return "smp_call_function" if "smp_call_function" in c else prev
            prev = c
        return ""
    return cands[0] if cands else ""


def _norm_title(title: str) -> str:
    """syzkaller's clean-up of every title: addresses, line numbers, offsets, CPU and other numbers."""
    for rx, repl in _TITLE_NORM:
        while True:
            new = rx.sub(repl, title)
            if new == title:
                break
            title = new
    title = re.sub(r"\s+", " ", "".join(c for c in title if " " <= c < "\x7f"))
    return title[:120].strip()


_TITLE_NORM = [(re.compile(a), b) for a, b in (
    (r"([^a-zA-Z0-9])(?:0x)?[0-9a-f]{6,}", r"\1ADDR"), (r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3})", "IP"),
    (r"(\.\w+)(:[0-9]+)+", r"\1:LINE"), (r"([a-zA-Z][a-zA-Z0-9_.]+)\+0x[0-9a-z]+/0x[0-9a-z]+", r"\1"),
    (r"CPU#[0-9]+", "CPU"), (r"(\W)(\d+)(\W|$)", r"\1NUM\3"), (r"(\d+){7,}", "NUM"))]
_FAULT_INJECTION = re.compile(r"should_fail(?:slab)?$")
_HUNG_SKIP = re.compile("sched|_lock|_slowlock|down|rwsem|completion|kthread|wait|synchronize|context_switch|"
                        "__switch_to|cancel_delayed_work|rcu_barrier")


@dataclass(frozen=True)
class Description:
    """What titles.py says of one report: the syzkaller-compatible title, our own more useful title (the
    function overlayfs work wants: `where`), the signature, and whether syzkaller would call it corrupted."""
    title: str
    where: str
    signature: str
    corrupted: bool


def describe(row: Format, header: re.Match[str], lines: list[str], title_lines: list[str] | None = None) -> Description:
    """Title, where, signature and corruption of the report in `lines` (lines[0] is the header `row` matched).
    syzkaller reads a report for its title on to the next report it does not read through (`title_lines`:
    by default the report itself)."""
    tlines = lines if title_lines is None else title_lines
    values = {k: _NORMALISE.get(k, str)(v) for k, v in header.groupdict(default="").items()}
    body = "\n".join(lines[1:])
    for name, rx in row.fields:
        m = rx.search(body)
        values[name] = _NORMALISE.get(name, str)(m.group(1)) if m else ""
    if row.locks is not LockRule.NONE:
        values["locks"] = lock_classes(row.locks, row.lock_markers, "\n".join(lines))
    corrupted = row.corrupted
    fn = _syz_function(row, tlines, values) if row.stack else ""
    if row.stack and not fn:
        fn, corrupted = "corrupted", True
    title = _norm_title(row.title.render({**values, "fn": fn}))
    if row.else_title is not None and not all(values.get(n) for n in row.needs):
        title, corrupted = _norm_title(row.else_title.render(values)), True
    # `where` and the signature read the report alone (a signature recomputed from the excerpt is the same)
    if row.where_stack is not None:
        wfn = frames.pick(_candidates(row, row.where_stack, lines, values, False), row.where_skip)
    else:
        wfn = _syz_function(row, lines, values) if row.stack else ""
    wvalues = {**values, "fn": wfn}
    where = re.sub(r"\s+", " ", (row.where or row.title).render(wvalues)).strip()
    signature = row.signature.render(wvalues) if row.signature else signature_from_title(where)
    return Description(title, where, signature, corrupted)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def signature_from_title(title: str) -> str:
    """The title, numbers and addresses normalised, as a slug, with its function kept apart."""
    m = _TITLE_FN.search(title)
    fn = m.group(1) if m else ""
    prefix = title[:-len(fn) - 4] if fn else title
    prefix = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,16}\b", "", prefix)
    prefix = re.sub(r"\d+", "N", prefix)
    return (_slug(prefix) or "splat") + (f":{fn}" if fn else "")


def signature_of(kind: str, title: str, log: str = "") -> str:
    """The signature of a splat known by kind, title and excerpt (e.g. from JSON written before signatures
    existed): computed from the excerpt when it holds the report, else from the title."""
    if log:
        lines = log.splitlines()
        for j, t in enumerate(lines):
            hit = FORMATS.match(t)
            if hit:
                return describe(hit[0], hit[1], lines[j:]).signature
    return signature_from_title(title)
