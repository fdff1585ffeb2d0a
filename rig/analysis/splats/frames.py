"""Stack frames in a report: parse a frame line, read a stack, find the RIP, an ``at:`` site, the
interrupted code; pick the first function that is not skipped.

These are the readers behind the formats table's `stack` sources (see titles.py for which source uses
which reader, formats.toml for which row uses which source).  A frame is ``func+0x1a/0x40`` with or
without an address before it (``[<ffffffff8129f652>] func+0x..``, 4.x), or an inline frame ``func
fs/x.c:12 [inline]``; ``? func+0x..`` marks it unreliable (left out; syzkaller's reading, `stack_to_head`,
also leaves out powerpc's ``func+0x.. (unreliable)``, which our own keeps: it is the caller of a bad call,
the LR).  Compiler suffixes (``.isra.0``, ``.constprop.0``, ``.cold``) are dropped from function names, Rust
and C++ names are demangled (demangle.py).
"""
from __future__ import annotations

import re

from rig.analysis.splats.demangle import demangle

FN = r"[A-Za-z_$][\w.$]*"       # a kernel symbol as %pS prints it (the {{FUNC}} of formats.toml)

FRAME_RE = re.compile(r"^\s*(?:\[<?(?:0x)?[0-9a-f]+>?\]\s*){0,2}(?:\d+:)?\s*(\?\s+)?(" + FN +
                      r")\+0x[0-9a-f]+/0x[0-9a-f]+")
INLINE_FRAME_RE = re.compile(r"^\s*(\?\s+)?(" + FN + r")\s+[\w./-]+\.[chS]:\d+(?::\d+)?\s*\[inline\]")
ANY_FRAME_RE = re.compile(FN + r"\+0x[0-9a-f]+/0x[0-9a-f]+")
AT_RE = re.compile(r"\bat:\s*(?:\[<[0-9a-f]+>\]\s*)?(" + FN + r")\+0x[0-9a-f]+")
# the faulting instruction: x86 RIP/EIP/IP, powerpc NIP (or, in a powerpc trace, "--- interrupt: 700 at F"),
# arm/arm64 pc / "PC is at", riscv epc
RIP_RE = re.compile(r"^\s*(?:RIP|NIP|EIP|IP|e?pc|PC is at|--- interrupt: \d+ at)\s*:?\s*(?:[0-9a-f]{4}:)?"
                    r"(?:\[<?(?:0x)?[0-9a-f]+>?\]\s*)*(" + FN + r")\+0x[0-9a-f]+")
TRACE_MARK = re.compile(r"^\s*</?(?:IRQ|TASK|NMI|EOI|SOFTIRQ)>\s*$")
REG_LINE = re.compile(r"^\s*(?:RIP|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R\d+|FS|GS|CS|DS|ES|CR\d|DR\d|Code|PKRU|"
                      r"EFLAGS|ORIG_RAX|pc|lr|sp|x\d+|pstate|NIP|LR|CTR|MSR|GPR\d+|EIP|EAX|ESI|ESP)\s*:")
STACK_HEAD = re.compile(r"Call Trace:|^\s*(?:Call trace|Backtrace):|^(?:Allocated|Freed) by task \d+:|"
                        r"[^k] backtrace:")
_IRQ_END = re.compile(r"^\s*</IRQ>")


_UNRELIABLE_SUFFIX = " (unreliable)"     # powerpc's mark of an unreliable frame (syzkaller's reading)


def fn_name(name: str) -> str:
    """Drop compiler suffixes: __mutex_lock.constprop.0 -> __mutex_lock, foo.cold -> foo; a Rust or C++
    symbol is demangled, without parameters (demangle.py)."""
    base = name.split(".")[0] or name
    return demangle(base) if base.startswith(("_R", "_Z")) else base


def parse_frame(line: str) -> tuple[str, bool] | None:
    """(function, reliable) for a stack-frame line, else None."""
    m = FRAME_RE.match(line) or INLINE_FRAME_RE.match(line)
    if not m:
        return None
    return fn_name(m.group(2)), not m.group(1)


def pick(candidates: list[str], skip: re.Pattern[str] | None) -> str:
    """The first non-empty candidate that `skip` does not match ("" if none)."""
    for fn in candidates:
        if fn and not (skip is not None and skip.search(fn)):
            return fn
    return ""


def frames_from(lines: list[str], i: int, lead: int = 8) -> list[str]:
    """Reliable frame functions of the stack starting at or after lines[i] (up to `lead` lines of
    non-frame text first), stopping at the first line that is neither a frame, a trace marker nor a
    register line."""
    out: list[str] = []
    seen = False
    skipped_lead = 0
    foreign = 0
    j = i
    while j < len(lines):
        t = lines[j]
        fr = parse_frame(t)
        if fr:
            seen, foreign = True, 0
            if fr[1]:
                out.append(fr[0])
        elif TRACE_MARK.match(t) or REG_LINE.match(t) or (seen and not t.strip()):
            pass
        elif not seen:
            skipped_lead += 1
            if skipped_lead > lead:
                break
        else:
            foreign += 1          # tolerate one stray line (interleaved output) inside a trace
            if foreign > 1 or j + 1 >= len(lines) or not parse_frame(lines[j + 1]):
                break
        j += 1
    return out


def find(lines: list[str], pattern: str | re.Pattern[str], start: int = 0) -> int:
    """Index of the first line at or after `start` that `pattern` searches to, else -1."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    for j in range(start, len(lines)):
        if rx.search(lines[j]):
            return j
    return -1


def call_trace(lines: list[str], start: int = 0) -> list[str]:
    """Frames of the first stack (Call Trace:, Call trace:, Backtrace:, Allocated by task N:, ...) at or
    after lines[start]."""
    j = find(lines, STACK_HEAD, start)
    return frames_from(lines, j + 1) if j >= 0 else []


def at_func(lines: list[str], start: int, within: int = 8) -> str:
    """Function of the first "at: F+0x.." within `within` lines of start (lockdep lock descriptions)."""
    for j in range(start, min(len(lines), start + within)):
        m = AT_RE.search(lines[j])
        if m:
            return fn_name(m.group(1))
    return ""


def rip(lines: list[str]) -> str:
    """Function of the first RIP/NIP/EIP/IP/pc line ("" without one)."""
    for t in lines:
        m = RIP_RE.match(t)
        if m:
            return fn_name(m.group(1))
    return ""


def interrupted(lines: list[str]) -> list[str]:
    """Frames after ``</IRQ>`` in the first stack: the code an interrupt (a stall or lockup detector) cut into."""
    ct = find(lines, STACK_HEAD)
    if ct < 0:
        return []
    j = find(lines, _IRQ_END, ct)
    return frames_from(lines, j + 1) if j >= 0 else []


# ------------------------------------------------------------------ readers of the syzkaller-compatible title

# 32-bit arm: "[<c03a1b00>] (ovl_getattr) from [<c02b4e64>] (vfs_getattr_nosec+0x64/0x90)": both functions
ARM_FRAME_RE = re.compile(r"^\s*\[<[0-9a-f]+>\] \((" + FN + r")\) from \[<[0-9a-f]+>\] \((" + FN + r")\+0x")
PC_LINE_RE = re.compile(r"^\s*\[<?(?:0x)?[0-9a-f]+>?\]\s+(" + FN + r")\+0x[0-9a-f]+")
_UNRELIABLE = re.compile(r"^\s*(?:\[<[0-9a-f]+>\])?\s*\?\s")
_TIMER_IRQ = re.compile(r"apic_timer_interrupt")
_IRQ_ENTRY = re.compile(r"apic_timer_interrupt|Exception stack|el1h_64_irq")


def stack_to_head(lines: list[str], i: int) -> list[str]:
    """Reliable frames from lines[i] on, up to the next stack's opening line (Call Trace:, Allocated by task
    N:, ...): all of them, whatever is printed between (syzkaller reads a stack this way).  Inline frames
    (``f fs/x.c:12 [inline]``, no offset) are not among them: syzkaller's frame has an offset."""
    out: list[str] = []
    for t in lines[i:]:
        if STACK_HEAD.search(t):
            break
        arm = ARM_FRAME_RE.match(t)
        if arm:
            out += [fn_name(arm.group(1)), fn_name(arm.group(2))]
            continue
        m = FRAME_RE.match(t)
        if m and not m.group(1) and not t.endswith(_UNRELIABLE_SUFFIX):
            out.append(fn_name(m.group(2)))
    return out


def syz_call_trace(lines: list[str]) -> list[str]:
    """The frames after the first Call Trace:/Backtrace: line, read the way `stack_to_head` does."""
    j = find(lines, re.compile(r"Call [Tt]race:|Backtrace:"))
    return stack_to_head(lines, j + 1) if j >= 0 else []


def pc_line(lines: list[str]) -> list[str]:
    """The function of the first "[<address>] F+0x.." line (lockdep prints the site of a lock that way)."""
    for t in lines[1:]:
        m = PC_LINE_RE.match(t)
        if m:
            return [fn_name(m.group(1))]
    return []


def lock_sites(lines: list[str], site: re.Pattern[str], within: int) -> list[str]:
    """The "at: F" of the lock after the `site` marker, the next "at: F", then the frames after that one
    (lockdep: the acquired lock, the held lock, the first dependency's stack)."""
    i = find(lines, site)
    if i < 0:
        return []
    out: list[str] = []
    j = i + 1
    for limit in (within, 40):
        k = next((x for x in range(j, min(len(lines), j + limit)) if AT_RE.search(lines[x])), -1)
        if k < 0:
            return out
        out.append(at_func(lines, k, 1))
        j = k + 1
    return out + stack_to_head(lines, j)


def stall(lines: list[str]) -> list[str]:
    """The code a timer interrupt cut into: after the first (reliable) line naming apic_timer_interrupt, the
    RIP line and the frames after it; without such a RIP, the frames after the interrupt entry."""
    for rx, with_rip in ((_TIMER_IRQ, True), (_IRQ_ENTRY, False)):
        i = next((j for j, t in enumerate(lines) if rx.search(t) and not _UNRELIABLE.match(t)), -1)
        if i < 0:
            continue
        if with_rip:
            r = next((j for j in range(i + 1, len(lines)) if RIP_RE.match(lines[j])), -1)
            if r < 0:
                continue
            m = RIP_RE.match(lines[r])
            assert m is not None
            return [fn_name(m.group(1))] + stack_to_head(lines, r + 1)
        return stack_to_head(lines, i + 1)
    return []
