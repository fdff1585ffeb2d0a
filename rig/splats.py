"""Kernel console-log analysis: find splats, title them the way syzkaller does, deduplicate them.

A *splat* is a kernel report on the console: a lockdep report, a WARNING, a BUG/oops, a KASAN/KFENCE/UBSAN
report, a hung task, an RCU stall, a lockup, a panic.  `scan_text` finds them in any console log or dmesg
(from any machine), gives each a title such as ``possible deadlock in ovl_copy_up_one``, ``WARNING in
ovl_copy_up_one`` or ``INFO: task hung in ovl_copy_up_start`` and a signature (its identity, below), and
merges splats with the same signature into one (with a count).  Neither carries addresses, offsets, line
numbers, pids or task names, so the same bug gets the same signature on the baseline and on the patched
kernel, and `new_splats` can tell new from old by signature.

How a log is read
-----------------
1. Console prefixes are stripped: ``<N>`` log levels, ``[  309.075885]`` timestamps, ``[ T123]``/``[ C4]``
   caller tags (CONFIG_PRINTK_CALLER), syslog/journal ``... kernel:`` prefixes, ``dmesg -T`` dates, ``\\r``
   and ANSI colour codes.
2. Lines broken by interleaving are mended: a timestamp in the *middle* of a line (the seed log's
   ``lock([ 309.139211] &mm->mmap_sem``: a continuation printed by another printk) is removed, joining the
   fragments; one that carries a *different* caller tag splits the line, and the part goes to its caller.
3. When the log has caller tags, lines are grouped by tag into streams (one per task/CPU) and each stream is
   scanned on its own, so two CPUs printing at once do not mix their reports.  Untagged lines follow the
   tagged line before them (continuations, or logs without tags: then there is a single stream).
4. A report starts at a recognised header line (see `_STARTS`) and runs to the next header in its stream, an
   ``---[ end ...`` marker, the closing ``=====`` of KASAN/KFENCE/UBSAN, or the point where report-like lines
   (frames, registers, lockdep text) give way to ordinary output.  A few headers that the kernel prints
   *inside* another report (``Oops: 0000 [#1]`` after ``BUG: kernel NULL pointer dereference``, ``kernel BUG
   at lib/list_debug.c`` after ``list_del corruption``) are absorbed into it instead of starting a new one.
   ``Kernel panic - not syncing`` always starts its own splat (kind ``panic``): it is what `is_fatal` looks for.

Titles
------
The function F in a title comes from the report's stack, skipping frames that only say *how* the kernel
noticed (lockdep, lock primitives, dump_stack, WARN/BUG trap handling, sanitizer runtime, list debugging,
scheduler, string/copy helpers; see `_COMMON_SKIP`) and frames marked unreliable (``? func+0x..``).  Compiler
suffixes (``.isra.0``, ``.constprop.0``, ``.cold``) are dropped.  Which stack, per kind:

* circular locking dependency: see `_title_lockdep`;
* WARNING: the function of the header (``WARNING: CPU: 0 PID: 1 at fs/x.c:12 F+0x1/0x2``), or the stack
  after RIP when that function is itself a skipped one;
* faults (NULL dereference, paging request, GPF, kernel BUG, soft/hard lockup, RCU stall): RIP/pc, then the
  call trace (for stalls, the interrupted code after ``</IRQ>`` first);
* hung task: the first frame of the blocked task's stack that is not scheduler, waiting or locking code;
* KASAN/KFENCE: the function named in the header, else the call trace.

Signatures
----------
A title names the report by one function, and for a lockdep cycle that function depends on which edge
happened to close the cycle in this run: the same cycle ``&mm->mmap_lock --> &ovl_i_lock_key[depth] -->
sb_writers --> &type->i_mutex_dir_key --> &mm->mmap_lock`` is "possible deadlock in filldir64" in one boot
and "possible deadlock in fault_in_readable" in another.  So every splat also gets a *signature*, its
identity: deduplication, `new_splats` (new vs baseline), the JSON report and the nightly history go by
it, the title stays the human text.  Per kind (`_signature`):

* lockdep circular dependency: ``lockdep-cycle:`` + the sorted set of the lock classes of the cycle
  (the ``-> #N (class)`` entries of the dependency chain, ``Chain exists of:``, the acquired and the held
  lock), joined by ``|``;
* other lockdep reports: ``lockdep-<what>:`` + the lock classes the report is about (recursive locking:
  the acquired and held lock; inconsistent state: the lock taken; bad unlock balance: the lock released;
  ...), or the function when the report names no lock class (suspicious RCU usage: function@file);
* lock class names are normalised: ``#N`` (registration order) and ``/N`` (subclass) suffixes, addresses
  and symbol offsets are dropped (``&type->i_mutex_dir_key#5/1`` -> ``&type->i_mutex_dir_key``);
* WARNING: ``warning:F@file``, kernel BUG: ``kernel-bug:F@file`` (the file without the line number,
  which shifts between kernels and patches; F as in the title);
* faults: ``null-deref:F``, ``paging-fault:F``, ``gpf:F``, ``oops:F``, ``invalid-opcode:F``, ... (F: the
  RIP function, or the first interesting caller, as in the title); list corruption ``list-corruption:F``;
* hung task ``hung:F``, ``rcu-stall:F``, ``soft-lockup:F``, ``hard-lockup:F``, ``panic:<reason>``;
* anything else (KASAN/KFENCE/UBSAN, sleeping in atomic, other BUGs): the title as a slug, ``:F`` kept
  apart (``kasan-slab-use-after-free-read:ovl_dentry_upper``).

The formats follow syzkaller's pkg/report (titles) and the kernel's own printing code (lockdep.c, panic.c,
hung_task.c, kasan/report.c, ...); this is an independent implementation, stdlib only.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["Splat", "scan_text", "merge", "scan_file", "new_splats", "format_table", "is_fatal",
           "lockdep_disabled", "signature_of", "lock_class", "FATAL_KINDS", "KINDS"]

KINDS = ("lockdep", "warning", "bug", "kasan", "panic", "hung_task", "rcu_stall", "lockup", "oops", "gpf",
         "ubsan", "kfence", "list_corruption")
FATAL_KINDS = frozenset({"panic"})


@dataclass
class Splat:
    kind: str      # one of KINDS
    title: str     # syzkaller-style title, e.g. "possible deadlock in ovl_copy_up_one"
    log: str       # the first occurrence's full excerpt, console prefixes stripped
    count: int = 1
    # stable identity (see "Signatures" above), e.g. "lockdep-cycle:&mm->mmap_lock|sb_writers";
    # left empty, it is computed from the excerpt (or, without one, from the title)
    signature: str = ""

    def __post_init__(self) -> None:
        if not self.signature:
            self.signature = signature_of(self.kind, self.title, self.log)

    def as_json(self) -> dict:
        return {"kind": self.kind, "title": self.title, "signature": self.signature, "log": self.log,
                "count": self.count}

    @classmethod
    def from_json(cls, d: dict) -> "Splat":
        """Also reads JSON written before signatures existed: the signature is then computed from the log."""
        return cls(kind=d["kind"], title=d["title"], log=d.get("log", ""), count=int(d.get("count", 1)),
                   signature=d.get("signature") or "")


def is_fatal(splat: Splat) -> bool:
    """True when the splat means the kernel died (a panic: nothing after it in that boot can be trusted)."""
    return splat.kind in FATAL_KINDS


# --------------------------------------------------------------------------------------------------------
# 1. console prefixes and interleaving

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]")
# syslog / journalctl: "Nov 24 03:50:00 host kernel: "; dmesg -T: "[Mon Nov 24 03:50:00 2025] "
_SYSLOG = re.compile(r"^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ kernel: |"
                     r"\d{4}-\d\d-\d\dT\S+ \S+ kernel: )")
_DMESG_T = re.compile(r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?")
_PREFIX = re.compile(r"^(?:\*\* \d+ printk messages dropped \*\*\s*)?(?:<\d{1,3}>)?"
                     r"(?:\[\s*\d+\.\d+\])(?:\s*\[\s*([TC]\d+)\])?\s?")
_LEVEL_ONLY = re.compile(r"^<\d{1,3}>")
_EMBEDDED_TS = re.compile(r"\[\s*\d+\.\d{6}\](?:\[\s*([TC]\d+)\])?\s?")


def _logical_lines(text: str) -> list[tuple[int, str, str, bool]]:
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


def lockdep_disabled(text: str) -> bool:
    """True when lockdep stopped checking during this log (it reports only its first problem per boot)."""
    return bool(re.search(r"INFO: lockdep is turned off|turning off the locking correctness validator", text))


# --------------------------------------------------------------------------------------------------------
# 2. stack frames and the frames titles skip

_FN = r"[A-Za-z_$][\w.$]*"
_FRAME_RE = re.compile(r"^\s*(?:\[<?(?:0x)?[0-9a-f]+>?\]\s*){0,2}(?:\d+:)?\s*(\?\s+)?(" + _FN +
                       r")\+0x[0-9a-f]+/0x[0-9a-f]+")
_INLINE_FRAME_RE = re.compile(r"^\s*(\?\s+)?(" + _FN + r")\s+[\w./-]+\.[chS]:\d+(?::\d+)?\s*\[inline\]")
_ANY_FRAME_RE = re.compile(_FN + r"\+0x[0-9a-f]+/0x[0-9a-f]+")
_AT_RE = re.compile(r"\bat:\s*(?:\[<[0-9a-f]+>\]\s*)?(" + _FN + r")\+0x[0-9a-f]+")
_RIP_RE = re.compile(r"^\s*(?:RIP|NIP|EIP|IP|pc|PC is at)\s*:?\s*(?:[0-9a-f]{4}:)?(?:\[<[0-9a-f]+>\]\s*)*(" +
                     _FN + r")\+0x[0-9a-f]+")
_TRACE_MARK = re.compile(r"^\s*</?(?:IRQ|TASK|NMI|EOI|SOFTIRQ)>\s*$")
_REG_LINE = re.compile(r"^\s*(?:RIP|RSP|RAX|RBX|RCX|RDX|RSI|RDI|RBP|R\d+|FS|GS|CS|DS|ES|CR\d|DR\d|Code|PKRU|"
                       r"EFLAGS|ORIG_RAX|pc|lr|sp|x\d+|pstate|NIP|LR|CTR|MSR|GPR\d+|EIP|EAX|ESI|ESP)\s*:")
_STACK_HEAD = re.compile(r"Call Trace:|^\s*(?:Call trace|Backtrace):|^(?:Allocated|Freed) by task \d+:|"
                         r"[^k] backtrace:")


def _fn(name: str) -> str:
    """Drop compiler suffixes: __mutex_lock.constprop.0 -> __mutex_lock, foo.cold -> foo."""
    return name.split(".")[0] or name


def _parse_frame(line: str) -> tuple[str, bool] | None:
    """(function, reliable) for a stack-frame line, else None."""
    m = _FRAME_RE.match(line) or _INLINE_FRAME_RE.match(line)
    if not m:
        return None
    return _fn(m.group(2)), not m.group(1)


_COMMON_SKIP = re.compile("|".join([
    # lockdep and lock primitives (the lock helper lock_rename/lock_sock/lock_page/... included)
    r"^_*lock_", r"lockdep", r"^_*check_", r"^validate_chain", r"^mark_(?:lock|usage|held)", r"^_*print_",
    r"^debug_", r"^_*(?:raw_)?(?:spin|read|write)_(?:un)?lock", r"^_*raw_(?:spin|read|write)_", r"^do_raw_",
    r"^_*(?:native_)?queued_(?:spin|read|write)", r"^_*pv_queued", r"^_*mutex_(?:lock|unlock|trylock)",
    r"^mutex_remove_waiter", r"^_*rt_mutex", r"^_*ww_mutex", r"^osq_", r"^_*down(?:_|$)",
    r"^_*up_(?:read|write)", r"^up$", r"^_*rwsem_", r"^_*percpu_(?:down|up|rwsem)",
    r"_lock(?:_nested|_killable|_interruptible|_irq|_irqsave|_bh|_shared|_slowpath)?$",
    r"^_*sb_start_(?:write|pagefault|intwrite)", r"^_*sb_end_",
    # reporting machinery
    r"^_*dump_stack", r"^show_(?:stack|trace|regs)", r"^_*show_regs", r"^_*warn", r"warn_slowpath",
    r"^report_bug", r"^handle_bug", r"^fixup_bug", r"^_*exc_", r"^asm_exc_", r"^do_error_trap", r"^do_trap",
    r"^do_int3", r"^do_invalid_op", r"^invalid_op", r"^_*bug$", r"^_*BUG", r"panic", r"^_*die$", r"^oops_",
    # page-fault handling (a lock taken on a fault is titled by the code that faulted)
    r"^do_(?:user|kern)_addr_fault$", r"^_*do_page_fault$", r"^_*handle_page_fault$", r"^page_fault_oops$",
    r"^_*might_(?:sleep|fault|resched)", r"^_*_might_sleep", r"^_*cant_(?:sleep|migrate)",
    r"^_*schedule", r"^io_schedule", r"^preempt_schedule",
    # sanitizers and debug checks
    r"kasan", r"^_*asan", r"^check_memory_region", r"kfence", r"ubsan", r"kmsan",
    r"^_*h?list_(?:add|del|replace|move|splice|valid)", r"^__list_", r"^_*refcount_",
    # string and user-copy helpers (the caller is the interesting part)
    r"^_*mem(?:cpy|set|move|cmp|chr)", r"^_*str(?:n?cmp|n?cpy|lcpy|scpy|n?len|chr|nstr)$",
    r"^_*(?:raw_)?copy_(?:to|from)_user", r"^_*(?:get|put)_user", r"^_*printk", r"^v?printk", r"^_printk",
    r"_indirect_thunk", r"^_*wake_up", r"^rcu_lockdep", r"^lockdep_rcu_suspicious",
]))
_HUNG_SKIP = re.compile(r"sched|_slowlock|completion|^kthread|wait|^_*synchronize_|switch_to|^context_switch|"
                        r"^cancel_delayed_work|^_*flush_work|(?:^|_)down(?:_|$)|rwsem|_lock(?:_|$)|mutex|"
                        r"^freezer|^_*refrigerator|^do_nanosleep|^hrtimer_nanosleep")
_STALL_SKIP = re.compile(r"rcu|apic_timer_interrupt|^_*sysvec_|^asm_sysvec|(?:^|_)irq(?:_|$)|^_*do_IRQ|"
                         r"^common_interrupt|hrtimer|^tick_|^update_process_times|watchdog|softirq|"
                         r"^run_timer|^call_timer_fn|(?:^|_)nmi(?:_|$)|"
                         r"^arch_trigger|^trigger_|^cpu_stall|timer_interrupt|^(?:scheduler|sched)_tick|"
                         r"^_*cpuidle|^default_idle|^do_idle|^cpu_startup|^native_safe_halt|^pv_native")
_FREE_SKIP = re.compile(r"^_*kfree|^_*kmem_cache_free|slab_free|^_*kvfree|^_*vfree|^free_|^_*free_pages|"
                        r"^kmem_|^slab_")
_RCU_SKIP = re.compile(r"rcu")


def _skipped(fn: str, extra: re.Pattern | None = None) -> bool:
    return bool(_COMMON_SKIP.search(fn) or (extra is not None and extra.search(fn)))


def _pick(candidates, extra: re.Pattern | None = None) -> str:
    for fn in candidates:
        if fn and not _skipped(fn, extra):
            return fn
    return ""


def _frames_from(lines: list[str], i: int, lead: int = 8) -> list[str]:
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
        fr = _parse_frame(t)
        if fr:
            seen, foreign = True, 0
            if fr[1]:
                out.append(fr[0])
        elif _TRACE_MARK.match(t) or _REG_LINE.match(t) or (seen and not t.strip()):
            pass
        elif not seen:
            skipped_lead += 1
            if skipped_lead > lead:
                break
        else:
            foreign += 1          # tolerate one stray line (interleaved output) inside a trace
            if foreign > 1 or j + 1 >= len(lines) or not _parse_frame(lines[j + 1]):
                break
        j += 1
    return out


def _find(lines: list[str], pattern: str | re.Pattern, start: int = 0, stop: int | None = None) -> int:
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    for j in range(start, len(lines) if stop is None else min(stop, len(lines))):
        if rx.search(lines[j]):
            return j
    return -1


def _call_trace(lines: list[str], start: int = 0) -> list[str]:
    j = _find(lines, _STACK_HEAD, start)
    return _frames_from(lines, j + 1) if j >= 0 else []


def _at_func(lines: list[str], start: int, within: int = 8) -> str:
    """Function of the first "at: F+0x.." within `within` lines of start (lockdep lock descriptions)."""
    for j in range(start, min(len(lines), start + within)):
        m = _AT_RE.search(lines[j])
        if m:
            return _fn(m.group(1))
    return ""


def _rip(lines: list[str]) -> str:
    for t in lines:
        m = _RIP_RE.match(t)
        if m:
            return _fn(m.group(1))
    return ""


def _after_irq(frames_lines: list[str]) -> list[str]:
    j = _find(frames_lines, r"^\s*</IRQ>")
    return _frames_from(frames_lines, j + 1) if j >= 0 else []


def _with(prefix: str, fn: str) -> str:
    return f"{prefix} in {fn}" if fn else prefix


# --------------------------------------------------------------------------------------------------------
# 3. titles per report type

def _title_lockdep(lines: list[str], sub: str) -> str:
    """Title of a lockdep report: "possible deadlock in F" and friends.

    For a circular dependency (AB-BA), lockdep prints: the lock the task "is trying to acquire ... at: G",
    the lock it already holds, "the existing dependency chain (in reverse order)" as entries "-> #N" with
    the stack that recorded each dependency, down to "-> #0" (the dependency being added now, with the
    current task's stack), the scenario, and "stack backtrace:" (the current stack again, seen from inside
    lockdep).  syzkaller titles it by the acquisition site: the "at:" function G of the lock being
    acquired, continuing into the stack when G is uninteresting.  We do the same, but treat lock helpers
    (lock_rename, lock_sock, lock_page, inode_lock_nested, ...) as uninteresting like the primitives,
    and continue down the "-> #0" stack: it *is* the stack of that same acquisition (printed without
    lockdep's own reporting frames and without "? " unreliable frames), so its first non-lock frame is the
    code that takes the new lock while holding the old one.  Only if there is no "-> #0" stack (truncated
    report) do we fall back to the final "stack backtrace:".

    Why not a function from the chain's other entries (e.g. ext4_readdir in "-> #3" in the seed log):
    those are where *earlier*, legitimate dependencies were recorded; the new edge, the one a patch
    introduces, is "-> #0".  Why not the held lock's site (vm_mmap_pgoff in the seed): it is generic
    and would merge unrelated reports.  For the seed (RFC overlayfs mmap copy-up under mmap_sem):
    G = lock_rename (a lock helper, skipped), "-> #0" = __lock_acquire, lock_acquire, mutex_lock_nested,
    lock_rename, ovl_copy_up_one -> "possible deadlock in ovl_copy_up_one", which names the overlayfs
    function taking s_vfs_rename_mutex under mmap_sem, where the fix belongs.  (Plain syzkaller would say
    "possible deadlock in lock_rename", which lumps this with every rename-path deadlock in the tree.)
    """
    bt = _find(lines, r"stack backtrace:")
    backtrace = _call_trace(lines, bt) if bt >= 0 else _call_trace(lines)
    if sub in ("circular", "recursive", "safe_unsafe"):
        i = _find(lines, r"is trying to acquire")
        cands = [_at_func(lines, i + 1)] if i >= 0 else []
        if sub == "circular":
            z = _find(lines, r"^\s*-> #0\b")
            if z >= 0:
                cands += _frames_from(lines, z + 1)
        return _with("possible deadlock", _pick(cands + backtrace))
    if sub == "irq_inversion":
        i = _find(lines, r"just changed the state of lock")
        cands = [_at_func(lines, i + 1)] if i >= 0 else []
        return _with("possible deadlock", _pick(cands + backtrace))
    if sub == "inconsistent":
        i = _find(lines, r"\btakes:")
        cands = [_at_func(lines, i + 1)] if i >= 0 else []
        return _with("inconsistent lock state", _pick(cands + backtrace))
    if sub == "bad_unlock":
        i = _find(lines, r"is trying to release lock")
        cands = [_at_func(lines, i + 1)] if i >= 0 else []
        return _with("WARNING: bad unlock balance", _pick(cands + backtrace))
    if sub == "held_freed":
        return _with("WARNING: held lock freed", _pick(backtrace, _FREE_SKIP))
    if sub == "rcu_usage":
        return _with("WARNING: suspicious RCU usage", _pick(backtrace, _RCU_SKIP))
    if sub == "held_return":
        i = _find(lines, r"with locks still held")
        return _with("WARNING: lock held when returning to user space", _at_func(lines, i + 1, 12)
                     if i >= 0 else "")
    if sub == "still_held":
        return _with("BUG: still has locks held", _pick(backtrace))
    if sub == "nonstatic_key":
        return _with("INFO: trying to register non-static key", _pick(backtrace))
    return _with("possible deadlock", _pick(backtrace))


_WARN_HDR = re.compile(r"^WARNING:(?: CPU: \d+ PID: \d+)?\s+at (?P<src>\S+?):\d+\s+(?P<fn>" + _FN + r")(?:\+0x|\(|\s|$)")
_WARN_HDR_NEW = re.compile(r"^WARNING: (?:\[.*?\] )?(?P<src>\S+\.[chS]):\d+ at (?P<fn>" + _FN + r")")


def _fault_frames(lines: list[str]) -> list[str]:
    return [_rip(lines)] + _call_trace(lines)


def _title_warning(lines: list[str], head: re.Match) -> tuple[str, str]:
    src, fn = head.group("src"), _fn(head.group("fn"))
    rest = _fault_frames(lines)
    if src.endswith("lib/list_debug.c"):
        return "list_corruption", _with("BUG: corrupted list", _pick(rest))
    if src.endswith("kernel/locking/lockdep.c"):
        return "lockdep", _with("WARNING: locking bug", _pick(rest))
    if src.endswith("lib/refcount.c"):
        return "warning", _with("WARNING: refcount bug", _pick(rest))
    return "warning", _with("WARNING", _pick([fn] + rest))


def _title_hung(lines: list[str]) -> str:
    frames = _call_trace(lines)
    if not frames:    # some kernels print the stack without a "Call Trace:" line
        frames = _frames_from(lines, 1, lead=12)
    return _with("INFO: task hung", _pick(frames, _HUNG_SKIP))


def _title_stall(prefix: str, lines: list[str]) -> str:
    ct = _find(lines, _STACK_HEAD)
    trace = lines[ct:] if ct >= 0 else []
    cands = [_rip(lines)] + _after_irq(trace) + (_call_trace(lines) if ct >= 0 else [])
    return _with(prefix, _pick(cands, _STALL_SKIP))


def _norm_message(msg: str) -> str:
    """Generic BUG message without addresses, numbers, task names."""
    msg = re.sub(r"\s*(?:\[[^\]]*\]|\([^)]*\)|\{[^}]*\})", "", msg)
    msg = re.sub(r"\s+in process\s+\S+.*$", "", msg)
    msg = re.sub(r":\s.*$", "", msg)
    words = [w for w in msg.split() if not re.search(r"\d|^0x", w)]
    return " ".join(words).rstrip(",;:")


def _title_generic_bug(lines: list[str], msg: str) -> str:
    m = re.match(r"Dentry .* still in use \(\d+\) \[unmount of ([^\]]+)\]", msg)
    if m:
        return f"BUG: Dentry still in use [unmount of {m.group(1)}]"
    m = re.match(r"using (__this_cpu_\w+\(\)|smp_processor_id\(\)) in preemptible", msg)
    if m:
        return _with(f"BUG: using {m.group(1)} in preemptible code", _pick(_call_trace(lines),
                                                                          re.compile("preempt")))
    for fixed in ("Bad page state", "Bad page map", "Bad rss-counter state", "workqueue leaked lock or atomic",
                  "non-zero nr_ptes on freeing mm", "non-zero nr_pmds on freeing mm"):
        if msg.startswith(fixed):
            return f"BUG: {fixed}"
    m = re.match(r"spinlock (lockup suspected|already unlocked|recursion|bad magic|wrong owner|wrong CPU)", msg)
    if m:
        return _with(f"BUG: spinlock {m.group(1)}", _pick(_call_trace(lines)))
    if msg.startswith("stack guard page was hit"):
        return _with("BUG: stack guard page was hit", _pick([_rip(lines)]))
    return _with("BUG: " + (_norm_message(msg) or "corrupted"), _pick(_fault_frames(lines)))


def _panic_reason(msg: str) -> str:
    msg = re.sub(r"^kernel: ", "", msg.strip())
    msg = re.sub(r"\s*exitcode=0x[0-9a-f]+", "", msg)
    msg = re.sub(r"\s*\.\.\.\s*$", "", msg)
    m = re.match(r"stack-protector: Kernel stack is corrupted in: (" + _FN + ")", msg)
    if m:
        return "stack is corrupted in " + _fn(m.group(1))
    msg = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,16}\b", "", msg)
    return re.sub(r"\s+", " ", msg).strip()


# --------------------------------------------------------------------------------------------------------
# 4. report headers

_LD = r"^(?:\[ )?(?:WARNING|INFO|BUG): "


@dataclass(frozen=True)
class _Start:
    rx: re.Pattern
    kind: str
    sub: str
    absorbable: bool = False     # printed inside another report right after its header
    confirm: bool = False        # generic header: only a splat if a kernel stack/CPU line follows


def _s(rx: str, kind: str, sub: str, **kw) -> _Start:
    return _Start(re.compile(rx), kind, sub, **kw)


_STARTS: list[_Start] = [
    _s(_LD + r"possible circular locking dependency detected", "lockdep", "circular"),
    _s(_LD + r"possible recursive locking detected", "lockdep", "recursive"),
    _s(_LD + r"inconsistent lock state", "lockdep", "inconsistent"),
    _s(_LD + r"possible irq lock inversion dependency detected", "lockdep", "irq_inversion"),
    _s(_LD + r"(?:HARD|SOFT)IRQ-(?:safe|READ-safe) -> (?:HARD|SOFT)IRQ-\w*unsafe lock order detected",
       "lockdep", "safe_unsafe"),
    _s(_LD + r"bad unlock balance detected!", "lockdep", "bad_unlock"),
    _s(_LD + r"held lock freed!", "lockdep", "held_freed"),
    _s(_LD + r"suspicious RCU usage", "lockdep", "rcu_usage"),
    _s(_LD + r"lock held when returning to user space", "lockdep", "held_return"),
    _s(_LD + r".*still has locks held!", "lockdep", "still_held"),
    _s(r"^INFO: trying to register non-static key", "lockdep", "nonstatic_key"),
    _s(r"^BUG: KASAN: ", "kasan", "kasan"),
    _s(r"^BUG: KFENCE: ", "kfence", "kfence"),
    _s(r"^UBSAN: ", "ubsan", "ubsan"),
    _s(r"^(?:h?list_\w+|list) corruption", "list_corruption", "list"),
    _s(r"^WARNING:(?: CPU: \d+ PID: \d+)?\s+at \S+:\d+ ", "warning", "warn"),
    _s(r"^WARNING: (?:\[.*?\] )?\S+\.[chS]:\d+ at " + _FN, "warning", "warn_new"),
    _s(r"^kernel BUG at \S+", "bug", "kernel_bug", absorbable=True),
    _s(r"^BUG: (?:unable to handle kernel NULL pointer dereference|kernel NULL pointer dereference|"
       r"Kernel NULL pointer dereference)", "oops", "null"),
    _s(r"^BUG: (?:unable to handle kernel paging request|unable to handle page fault for address|"
       r"unable to handle kernel|Unable to handle kernel data access)", "oops", "paging"),
    _s(r"^Unable to handle kernel (?:NULL pointer dereference|paging request)", "oops", "arm_fault"),
    _s(r"^(?:Oops: )?general protection fault", "gpf", "gpf"),
    _s(r"^(?:Oops: )?(?:invalid opcode|divide error|stack segment): ", "oops", "trap", absorbable=True),
    _s(r"^Oops: (?:Oops: )?(?:[0-9a-f]{4} )?\[#\d+\]|^Oops(?: - \w+)?: [0-9a-f]+ \[#\d+\]|^Internal error: ",
       "oops", "oops", absorbable=True),
    _s(r"^BUG: sleeping function called from invalid context", "bug", "sleeping"),
    _s(r"^BUG: scheduling while atomic", "bug", "sched_atomic"),
    _s(r"^(?:(?:NMI )?watchdog: )?BUG: soft lockup", "lockup", "soft"),
    _s(r"^(?:(?:NMI )?watchdog: )?Watchdog detected hard LOCKUP", "lockup", "hard"),
    _s(r"^BUG: workqueue lockup", "lockup", "workqueue"),
    _s(r"^INFO: task .+ blocked for more than \d+ seconds", "hung_task", "hung"),
    _s(r"^(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?", "rcu_stall", "rcu"),
    _s(r"^Kernel panic - not syncing: ", "panic", "panic"),
    _s(r"^PANIC: double fault", "oops", "double_fault"),
    _s(r"^BUG: (?!KASAN|KFENCE)\S", "bug", "generic", confirm=True),
]
# Only report-ish lines may continue a report; see _extent.
_REPORTISH = re.compile("|".join([
    _ANY_FRAME_RE.pattern, r"\[<[0-9a-f]+>\]", _TRACE_MARK.pattern, _REG_LINE.pattern, r"Call Trace",
    r"backtrace", r"^\s*[0-9a-f]{8,16}(?: [0-9a-f]{8,16})+\s*$", r"^(?:CPU: \d+|Hardware name|Modules linked in|"
    r"Workqueue|task:|Kernel Offset|Tainted|irq event stamp|hardirqs last|softirqs last|---\[|Showing all locks|"
    r"INFO: lockdep is turned off|#PF|PGD|P4D|PUD|PMD|PTE|Oops|invalid opcode|Allocated by|Freed by|"
    r"Last potentially|The buggy address|Memory state|page:|flags:|raw:|head:|page dumped|Read of size|"
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
_CONFIRM = re.compile(r"Call Trace:|^CPU: \d+ (?:UID: \d+ )?PID: \d+|^\s*(?:\[<[0-9a-f]+>\]\s*)?" + _FN +
                      r"\+0x[0-9a-f]+/0x[0-9a-f]+")


def _match_start(text: str) -> tuple[_Start, re.Match] | None:
    t = text.lstrip()
    for st in _STARTS:
        m = st.rx.search(t)
        if m:
            return st, m
    return None


def _extent(lines: list[str], s: int, hard_end: int, kind: str) -> int:
    """Index one past the last line of the report starting at lines[s]."""
    limit = min(hard_end, s + 1000)
    last = s
    seen_frame = False
    foreign = 0
    gap = 12
    for j in range(s + 1, limit):
        t = lines[j]
        if _END_MARK.match(t):
            return j + 1
        if _SEP.match(t):
            if kind in ("kasan", "kfence", "ubsan"):
                return j + 1               # these reports are framed by ===== lines
            if seen_frame:                 # hung task: closes the "Showing all locks held" dump;
                return j + 1 if kind == "hung_task" else last + 1   # else: the next report's opening
        if not t.strip():
            continue
        if _REPORTISH.search(t):
            last, foreign = j, 0
            seen_frame = seen_frame or bool(_ANY_FRAME_RE.search(t))
            continue
        foreign += 1
        if foreign > (gap if seen_frame else 2 * gap):
            break
    return last + 1


def _title_of(st: _Start, m: re.Match, lines: list[str]) -> tuple[str, str]:
    """(kind, title) of the report in lines (lines[0] is the header)."""
    kind, sub = st.kind, st.sub
    head = lines[0].lstrip()
    if kind == "lockdep":
        return kind, _title_lockdep(lines, sub)
    if sub in ("warn", "warn_new"):
        hm = (_WARN_HDR if sub == "warn" else _WARN_HDR_NEW).search(head)
        if hm:
            return _title_warning(lines, hm)
        return kind, _with("WARNING", _pick(_fault_frames(lines)))
    if kind == "kasan":
        km = re.match(r"BUG: KASAN: ([\w-]+) in (" + _FN + r")", head)
        acc = re.search(r"\b(Read|Write) of size", "\n".join(lines[1:6]))
        if km:
            bug, fn = km.group(1), _fn(km.group(2))
            if bug in ("double-free", "invalid-free", "double-free-or-invalid-free"):
                bug = "double-free" if bug == "double-free" else "invalid-free"
                return kind, _with(f"KASAN: {bug}", _pick([fn] + _call_trace(lines), _FREE_SKIP))
            label = f"KASAN: {bug}" + (f" {acc.group(1)}" if acc else "")
            return kind, _with(label, _pick([fn] + _call_trace(lines)))
        km = re.match(r"BUG: KASAN: ([\w-]+)", head)
        return kind, _with(f"KASAN: {km.group(1) if km else 'corrupted'}", _pick(_call_trace(lines)))
    if kind == "kfence":
        km = re.match(r"BUG: KFENCE: ([\w-]+(?: (?:read|write))?) in (" + _FN + r")", head)
        if km:
            frames = _frames_from(lines, 1)
            extra = _FREE_SKIP if "free" in km.group(1) else None
            return kind, _with(f"KFENCE: {km.group(1)}", _pick([_fn(km.group(2))] + frames, extra))
        km = re.match(r"BUG: KFENCE: (.*?)(?: in \S+)?$", head)
        return kind, _with(f"KFENCE: {_norm_message(km.group(1)) if km else 'corrupted'}",
                           _pick(_frames_from(lines, 1)))
    if kind == "ubsan":
        um = re.match(r"UBSAN: (.+?) in \S+", head)
        what = um.group(1) if um else "undefined behaviour"
        what = "undefined-behaviour" if what.lower().startswith("undefined behav") else what
        return kind, _with(f"UBSAN: {what}", _pick(_call_trace(lines) or _frames_from(lines, 1)))
    if kind == "list_corruption":
        return kind, _with("BUG: corrupted list", _pick(_fault_frames(lines)))
    if sub == "kernel_bug":
        if re.match(r"kernel BUG at \S*lib/list_debug\.c", head):
            return "list_corruption", _with("BUG: corrupted list", _pick(_fault_frames(lines)))
        if re.match(r"kernel BUG at \S*mm/usercopy\.c", head):
            return kind, _with("BUG: bad usercopy", _pick(_call_trace(lines), re.compile("usercopy|__check")))
        return kind, _with("kernel BUG", _pick(_fault_frames(lines)))
    if sub == "null":
        return kind, _with("BUG: unable to handle kernel NULL pointer dereference", _pick(_fault_frames(lines)))
    if sub == "paging":
        return kind, _with("BUG: unable to handle kernel paging request", _pick(_fault_frames(lines)))
    if sub == "arm_fault":
        what = "NULL pointer dereference" if "NULL" in head else "paging request"
        return kind, _with(f"BUG: unable to handle kernel {what}", _pick(_fault_frames(lines)))
    if sub == "gpf":
        return kind, _with("general protection fault", _pick(_fault_frames(lines)))
    if sub == "trap":
        tm = re.match(r"(?:Oops: )?(invalid opcode|divide error|stack segment)", head)
        name = {"stack segment": "stack segment fault"}.get(tm.group(1), tm.group(1)) if tm else "Oops"
        return kind, _with(name, _pick(_fault_frames(lines)))
    if sub == "oops":
        return kind, _with("Oops", _pick(_fault_frames(lines)))
    if sub == "double_fault":
        return kind, _with("PANIC: double fault", _pick([_rip(lines)]))
    if sub == "sleeping":
        return kind, _with("BUG: sleeping function called from invalid context", _pick(_call_trace(lines)))
    if sub == "sched_atomic":
        return kind, _with("BUG: scheduling while atomic", _pick(_call_trace(lines)))
    if sub == "soft":
        return kind, _title_stall("BUG: soft lockup", lines)
    if sub == "hard":
        return kind, _title_stall("BUG: hard lockup", lines)
    if sub == "workqueue":
        return kind, "BUG: workqueue lockup"
    if sub == "hung":
        return kind, _title_hung(lines)
    if sub == "rcu":
        return kind, _title_stall("INFO: rcu detected stall", lines)
    if sub == "panic":
        return kind, "kernel panic: " + _panic_reason(head[m.end():] if m else head)
    if sub == "generic":
        return kind, _title_generic_bug(lines, re.sub(r"^BUG:\s*", "", head))
    return kind, head


# --------------------------------------------------------------------------------------------------------
# 5. signatures

# a lock class as lockdep prints it, "(name){flags}": the name may be broken over lines by interleaving
# (KERN_CONT pieces, the seed log) and may contain parentheses ("((wq_completion)events)")
_LOCK_NAME = r"((?:[^\s{}]|[ \t]*\n[ \t]*)+?)"
_LOCK_DESC = re.compile(r"\(" + _LOCK_NAME + r"\)\s*\{[-+.?]{2,}\}")
_CHAIN_ENTRY = re.compile(r"->\s*#\d+\s*\(" + _LOCK_NAME + r"\)\s*\{[-+.?]{2,}\}")
_CHAIN_EXISTS = re.compile(r"Chain exists of:[ \t]*\n(.*?)(?:\n[ \t]*\n|\Z)", re.S)
_RELEASE = re.compile(r"is trying to release lock\s*\(" + _LOCK_NAME + r"\)\s*at:")
# which printed locks a non-circular lockdep report is about: the lock description after each marker
_LOCKDEP_MARKERS: dict[str, tuple[str, ...]] = {
    "recursive": (r"is trying to acquire(?: lock)?:", r"already holding(?: lock)?:"),
    "safe_unsafe": (r"is trying to acquire(?: lock)?:", r"already holding(?: lock)?:"),
    "irq_inversion": (r"just changed the state of lock:", r"lock in the past:"),
    "inconsistent": (r"\btakes:",),
    "held_freed": (r"with a lock still held there!",),
}
_LOCKDEP_ALL_AFTER = {"held_return": r"with locks still held!", "still_held": r"still has locks held!"}
_SRC_TOP = re.compile(r"(?:^|/)((?:arch|block|certs|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|"
                      r"net|rust|samples|security|sound|virt)/\S+)$")
_FAULT_TAGS = {"null": "null-deref", "paging": "paging-fault", "gpf": "gpf", "oops": "oops",
               "double_fault": "double-fault", "soft": "soft-lockup", "hard": "hard-lockup", "rcu": "rcu-stall",
               "hung": "hung"}


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


def _classes(names) -> str:
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


def _lockdep_classes(sub: str, text: str) -> str:
    if sub == "circular":
        names = [m.group(1) for m in _CHAIN_ENTRY.finditer(text)]
        ce = _CHAIN_EXISTS.search(text)
        if ce:
            names += ce.group(1).split("-->")
        names += _lock_after(text, r"is trying to acquire lock:") + _lock_after(text, r"already holding lock:")
        return _classes(names)
    if sub == "bad_unlock":
        return _classes(m.group(1) for m in _RELEASE.finditer(text))
    if sub in _LOCKDEP_ALL_AFTER:
        mm = re.search(_LOCKDEP_ALL_AFTER[sub], text)
        return _classes(m.group(1) for m in _LOCK_DESC.finditer(text, mm.end() if mm else 0))
    names = []
    for marker in _LOCKDEP_MARKERS.get(sub, ()):
        names += _lock_after(text, marker)
    return _classes(names)


def _title_fn(title: str) -> str:
    m = re.search(r" in (" + _FN + r")$", title)
    return m.group(1) if m else ""


def _src_file(path: str) -> str:
    """A source path as the kernel prints it in WARNING/BUG headers, relative to the tree."""
    m = _SRC_TOP.search(path)
    return m.group(1) if m else path.lstrip("./")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _signature_from_title(title: str) -> str:
    """Fallback: the title, numbers and addresses normalised, as a slug, with its function kept apart."""
    fn = _title_fn(title)
    prefix = title[:-len(fn) - 4] if fn else title
    prefix = re.sub(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{8,16}\b", "", prefix)
    prefix = re.sub(r"\d+", "N", prefix)
    return (_slug(prefix) or "splat") + (f":{fn}" if fn else "")


def _signature(st: _Start, m: re.Match | None, lines: list[str], kind: str, title: str) -> str:
    """Signature of the report in lines (lines[0] is the header) whose kind and title are known."""
    sub = st.sub
    head = lines[0].lstrip()
    fn = _title_fn(title)
    if kind == "list_corruption":
        return f"list-corruption:{fn}" if fn else "list-corruption"
    if sub in ("warn", "warn_new"):
        hm = (_WARN_HDR if sub == "warn" else _WARN_HDR_NEW).search(head)
        if hm:
            return f"warning:{fn or _fn(hm.group('fn'))}@{_src_file(hm.group('src'))}"
        return "warning:" + (fn or "?")
    if st.kind == "lockdep":
        what = "cycle" if sub == "circular" else sub.replace("_", "-")
        text = "\n".join(lines)
        if sub == "rcu_usage":
            fm = re.search(r"^\s*(\S+\.[chS]):\d+ suspicious", text, re.M)
            return f"lockdep-{what}:{fn or '?'}" + (f"@{_src_file(fm.group(1))}" if fm else "")
        classes = _lockdep_classes(sub, text)
        if classes:
            return f"lockdep-{what}:{classes}"
        return f"lockdep-{what}:{fn or '?'}"      # no lock class in the report (truncated, non-static key)
    if sub == "kernel_bug":
        bm = re.match(r"kernel BUG at (\S+?):\d+", head)
        return f"kernel-bug:{fn or '?'}" + (f"@{_src_file(bm.group(1))}" if bm else "")
    if sub == "arm_fault":
        return ("null-deref" if "NULL" in head else "paging-fault") + f":{fn or '?'}"
    if sub == "trap":
        return _slug(title[:-len(fn) - 4] if fn else title) + f":{fn or '?'}"
    if sub in _FAULT_TAGS:
        return f"{_FAULT_TAGS[sub]}:{fn or '?'}"
    if sub == "workqueue":
        return "workqueue-lockup"
    if sub == "panic":
        return "panic:" + re.sub(r"^kernel panic: ", "", title)
    return _signature_from_title(title)


def signature_of(kind: str, title: str, log: str = "") -> str:
    """The signature of a splat known by kind, title and excerpt (e.g. from JSON written before signatures
    existed): computed from the excerpt when it holds the report, else from the title."""
    if log:
        lines = log.splitlines()
        for j, t in enumerate(lines):
            hit = _match_start(t)
            if hit:
                st, m = hit
                k, tt = _title_of(st, m, lines[j:])
                return _signature(st, m, lines[j:], k, re.sub(r"\s+", " ", tt).strip())
    return _signature_from_title(title)


# --------------------------------------------------------------------------------------------------------
# 6. scanning

def _confirmed(lines: list[str], j: int, window: int = 25) -> bool:
    """A generic "BUG: ..." line is a kernel report only if the kernel's CPU/stack lines follow it
    (before any other report starts)."""
    for x in lines[j + 1:j + 1 + window]:
        if _CONFIRM.search(x):
            return True
        if _match_start(x):
            return False
    return False


def _scan_stream(lines: list[str], positions: list[int], kernel: list[bool]) -> list[tuple[int, Splat]]:
    starts: list[tuple[int, _Start, re.Match]] = []
    for j, t in enumerate(lines):
        if not kernel[j]:
            continue
        hit = _match_start(t)
        if not hit:
            continue
        st, m = hit
        if st.confirm and not _confirmed(lines, j):
            continue
        if starts and st.kind != "panic":
            pj, pst, _ = starts[-1]
            # a header the kernel prints inside the previous report, before that report's stack
            lead = pst.kind == "list_corruption" and st.sub in ("warn", "warn_new", "kernel_bug")
            if (st.absorbable or lead) and j - pj <= 15 and pst.kind != "panic" and \
                    not any(_parse_frame(x) for x in lines[pj + 1:j]):
                continue
        starts.append((j, st, m))
    found: list[tuple[int, Splat]] = []
    for n, (j, st, m) in enumerate(starts):
        hard_end = starts[n + 1][0] if n + 1 < len(starts) else len(lines)
        end = _extent(lines, j, hard_end, st.kind)
        first = j - 1 if j > 0 and _PRE_SEP.match(lines[j - 1]) else j
        kind, title = _title_of(st, m, lines[j:end])
        title = re.sub(r"\s+", " ", title).strip()
        signature = _signature(st, m, lines[j:end], kind, title)
        log = "\n".join(lines[first:end]).strip("\n")
        found.append((positions[j], Splat(kind=kind, title=title, log=log, signature=signature)))
    return found


def scan_text(text: str) -> list[Splat]:
    """Splats in a kernel console log, deduplicated by signature (with counts; the first occurrence's title
    and excerpt are kept), in order of first appearance."""
    logical = _logical_lines(text)
    prefixed_log = any(k for _, _, _, k in logical)   # no prefixes at all: plain dmesg, every line counts
    streams: dict[str, tuple[list[str], list[int], list[bool]]] = {}
    for pos, tag, t, k in logical:
        ls, ps, ks = streams.setdefault(tag, ([], [], []))
        ls.append(t)
        ps.append(pos)
        ks.append(k or not prefixed_log)
    found: list[tuple[int, Splat]] = []
    for ls, ps, ks in streams.values():
        found.extend(_scan_stream(ls, ps, ks))
    found.sort(key=lambda x: x[0])
    return merge(sp for _, sp in found)


def merge(splats: Iterable[Splat]) -> list[Splat]:
    """One Splat per signature, in order of first appearance, counts summed; the first occurrence's
    title and excerpt are kept. The inputs are not modified."""
    out: dict[str, Splat] = {}
    for sp in splats:
        if sp.signature in out:
            out[sp.signature].count += sp.count
        else:
            out[sp.signature] = dataclasses.replace(sp)
    return list(out.values())


def scan_file(path) -> list[Splat]:
    """scan_text of a file (bytes that are not UTF-8 are replaced, serial consoles emit some)."""
    return scan_text(Path(path).read_text(encoding="utf-8", errors="replace"))


def new_splats(baseline: list[Splat], patched: list[Splat]) -> list[Splat]:
    """The patched run's splats whose signatures the baseline run did not have (a lockdep cycle that the
    baseline closed by another edge, under another title, is not new)."""
    seen = {s.signature for s in baseline}
    return [s for s in patched if s.signature not in seen]


def format_table(splats: list[Splat]) -> str:
    """Readable table (kind, count, title) with a one-line hint under it."""
    if not splats:
        return "no splats found (no lockdep report, WARNING, BUG, oops, sanitizer report, hang or panic)"
    kw = max(4, max(len(s.kind) for s in splats))
    rows = [f"{'KIND':<{kw}}  {'COUNT':>5}  TITLE"]
    for s in splats:
        rows.append(f"{s.kind:<{kw}}  {s.count:>5}  {s.title}" + ("   [kernel died]" if is_fatal(s) else ""))
    fatal = sum(1 for s in splats if is_fatal(s))
    n = len(splats)
    hint = f"{n} distinct splat{'s' if n != 1 else ''}"
    if fatal:
        hint += f", {fatal} fatal (the kernel panicked; later output of that boot is not trustworthy)"
    hint += ". Full excerpts: --json."
    return "\n".join(rows + ["", hint])
