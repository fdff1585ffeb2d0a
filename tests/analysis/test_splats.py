"""Kernel console-log analysis (rig/analysis/splats/: the formats table and the scanner) and `kproto scan`
(rig/cli/cmd_scan.py). Every log read here is a fixture under tests/data/logs/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from rig.analysis import splats
from rig.analysis.splats import FORMATS, FormatError, Splat, find_reports, format_table, is_fatal, load_formats, \
    new_splats, scan_file, scan_text
from rig.analysis.splats import frames
from rig.analysis.splats.demangle import demangle
from rig.analysis.splats.table import TABLE, parse_template

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"
# a 4.9-rc serial console: the RFC overlayfs mmap copy-up deadlock (ovl_copy_up_one taking
# s_vfs_rename_mutex under mmap_sem), class names broken over lines by KERN_CONT pieces and timestamps,
# between lines of the test program's own output
OLD_CYCLE = LOGS / "lockdep-circular-4.9.log"

FIXTURES = sorted(LOGS.glob("*.log"))


def _expected(log: Path) -> list[tuple[str, int, str, str, bool]]:
    """.expect rows: kind, count, title (syzkaller's), then optionally `where` ("=": the title) and the word
    "corrupted"."""
    rows = []
    for line in log.with_suffix(".expect").read_text().splitlines():
        if line.strip():
            kind, count, title, *rest = line.split("\t")
            where = rest[0] if rest and rest[0] != "=" else title
            rows.append((kind, int(count), title, where, rest[-1:] == ["corrupted"]))
    return rows


def _summary(found: list[Splat]) -> list[tuple[str, int, str]]:
    return [(s.kind, s.count, s.title) for s in found]


def _full(found: list[Splat]) -> list[tuple[str, int, str, str, bool]]:
    return [(s.kind, s.count, s.title, s.where, s.corrupted) for s in found]


# ---------------------------------------------------------------------------------------------- fixtures

def test_fixture_directory_is_populated():
    assert len(FIXTURES) >= 10
    for f in FIXTURES:
        assert f.with_suffix(".expect").exists(), f"{f.name} has no .expect file"


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_fixture_titles(log):
    assert _full(scan_file(log)) == _expected(log)


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_titles_and_kinds_are_normalised(log):
    for s in scan_file(log):
        assert s.kind in splats.KINDS
        assert not re.search(r"0x[0-9a-f]|\+0x|\[\s*\d+\.\d+\]|\bT\d{2,}\b|:\d+\b", s.title), s.title
        assert not re.search(r"\[\s*\d+\.\d{6}\]|\[\s*[TC]\d+\]", s.log), "console prefix left in excerpt"


# ---------------------------------------------------------------------------------------------- the formats table

def _rows_seen() -> dict[str, set[str]]:
    """Row id -> the kinds of the reports that row started in the fixture logs."""
    seen: dict[str, set[str]] = {}
    for log in FIXTURES:
        for r in find_reports(log.read_text(encoding="utf-8", errors="replace")):
            seen.setdefault(r.format.id, set()).add(r.splat.kind)
    return seen


def test_every_format_row_has_a_fixture_log_that_produces_its_kind():
    # "adding a format is adding a row and a fixture log": a row no fixture exercises fails here
    seen = _rows_seen()
    missing = [row.id for row in FORMATS.rows if row.kind.value not in seen.get(row.id, set())]
    assert not missing, f"rows without a fixture log in {LOGS} that produces their kind: {missing}"


def test_rows_are_tried_in_order_the_specific_before_the_general():
    def row(line: str) -> str:
        hit = FORMATS.match(line)
        assert hit, line
        return hit[0].id
    assert row("WARNING: CPU: 0 PID: 1 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110") == "warning-refcount"
    assert row("WARNING: CPU: 0 PID: 1 at fs/overlayfs/util.c:9 ovl_foo+0x1/0x2") == "warning"
    assert row("WARNING: CPU: 0 PID: 1 at fs/overlayfs/util.c:9 0xffffffff8123a5c5") == "warning-unnamed"
    assert row("  BUG: KASAN: double-free in kfree+0x8e/0x2d0") == "kasan-double-free"
    assert row("BUG: KASAN: slab-use-after-free in ovl_dentry_upper+0x4a/0x60") == "kasan-access"
    assert row("BUG: spinlock bad magic on CPU#0, t/1") == "bug-spinlock"
    assert row("BUG: t_copyup failed: expected bar") == "bug"
    assert FORMATS.match("Call Trace:") is None


def test_fatal_kinds_come_from_the_table():
    assert splats.FATAL_KINDS == {r.kind.value for r in FORMATS.rows if r.fatal} == {"panic"}
    assert {r.kind.value for r in FORMATS.rows} == set(splats.KINDS)


_ROW = """
[skip]
syz = ['^dump_stack']
[[format]]
id = "thing"
header = '^BUG: thing happened'
kind = "bug"
title = "BUG: thing[ in {fn}]"
stack = ["call-trace"]
"""


def test_a_minimal_table_loads():
    (row,) = load_formats(_ROW).rows
    assert (row.id, row.kind.value, row.title.text) == ("thing", "bug", "BUG: thing[ in {fn}]")
    assert row.skip is not None and row.skip.search("dump_stack_lvl") and not row.fatal
    assert load_formats(TABLE.read_text()).rows == FORMATS.rows


@pytest.mark.parametrize("change, complaint", [
    (('kind = "bug"', 'kind = "bugg"'), "kind: 'bugg' is not one of"),
    (("'^BUG: thing happened'", "'^BUG: (thing'"), "header: bad regex"),
    (("'^BUG: thing happened'", "'^BUG: {{NOPE}}'"), "unknown macro {{NOPE}}"),
    (('title = "BUG: thing[ in {fn}]"', 'title = "BUG: {what}[ in {fn}]"'), "title: unknown field(s) what"),
    (('title = "BUG: thing[ in {fn}]"', 'title = "BUG: thing[ in {fn}"'), "unclosed '['"),
    (('title = "BUG: thing[ in {fn}]"', 'title = "BUG: thing"'), "a row with a stack puts {fn} in its title"),
    (('stack = ["call-trace"]', 'stack = ["call-trace", "elsewhere"]'), "stack: 'elsewhere' is not one of"),
    (('stack = ["call-trace"]', 'stack = ["header"]'), "source 'header' needs {{FUNC}}"),
    (('stack = ["call-trace"]', 'stack = ["site"]'), "site: a `site` marker (and `site_lines`) goes with"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nskip = ["syz", "nope"]'), "no skip set 'nope'"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\ninside = ["other"]'), "inside: no row other"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nfatal = true\ninside = ["*"]'), "a fatal report always"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nlocks = "chain"\nsignature = "x:{lock}"'),
     "signature: unknown field(s) lock"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nlocks = "after"'), "lock_markers: locks = 'after' needs at least one"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nfields = {a = "(x)(y)"}'), "one group"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nconfirm = "yes"'), "confirm: expected bool"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\ncolour = "red"'), "unknown key(s) colour"),
    (('id = "thing"', 'id = "Thing One"'), "id: a row id is unique"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\nneeds = ["what"]\nelse_title = "BUG: x"'), "needs: a list of"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\npick = "last"'), "pick: 'last' is not one of"),
    (('stack = ["call-trace"]', 'stack = ["after-mark"]'), "mark: a `mark` goes with"),
    (('stack = ["call-trace"]', 'stack = ["call-trace"]\ninside_lines = 40'), "inside_lines: a number of lines, with"),
])
def test_a_bad_row_is_an_error_naming_the_row(change, complaint):
    bad = _ROW.replace(*change)
    assert bad != _ROW
    with pytest.raises(FormatError) as e:
        load_formats(bad, "t.toml")
    msg = str(e.value)
    assert msg.startswith("t.toml: format row 1 (") and complaint in msg, msg


def test_table_level_errors():
    with pytest.raises(FormatError, match=r"format row 2 \(thing\): id: a row id is unique"):
        load_formats(_ROW + _ROW.split("[skip]\nsyz = ['^dump_stack']")[1])
    twin = _ROW + '[[format]]\nid = "boom"\nheader = "^boom"\nkind = "bug"\ntitle = "boom"\nfatal = true\n'
    with pytest.raises(FormatError, match=r"format row 1 \(thing\): fatal: rows of kind 'bug' disagree"):
        load_formats(twin)
    with pytest.raises(FormatError, match="no \\[\\[format\\]\\] rows"):
        load_formats("[skip]\ncommon = ['x']\n")
    with pytest.raises(FormatError, match="t.toml: "):
        load_formats("[[format]\n", "t.toml")


@pytest.mark.parametrize("template, values, out", [
    ("possible deadlock[ in {fn}]", {"fn": "ovl_x"}, "possible deadlock in ovl_x"),
    ("possible deadlock[ in {fn}]", {"fn": ""}, "possible deadlock"),
    ("KASAN: {bug}[ {access}][ in {fn}]", {"bug": "uaf", "access": "", "fn": "f"}, "KASAN: uaf in f"),
    ("lockdep-cycle:{locks|fn|'?'}", {"locks": "", "fn": ""}, "lockdep-cycle:?"),
    ("lockdep-cycle:{locks|fn|'?'}", {"locks": "", "fn": "f"}, "lockdep-cycle:f"),
    ("BUG: Dentry still in use [[unmount of {fs}]]", {"fs": "overlay"},
     "BUG: Dentry still in use [unmount of overlay]"),
    ("{{literal}} {x}", {"x": "1"}, "{literal} 1"),
])
def test_templates(template, values, out):
    assert parse_template(template).render(values) == out


# ---------------------------------------------------------------------------------------------- a 4.9 cycle

def test_old_cycle_title():
    # 4.x: syzkaller names the cycle by the "at:" of the lock being acquired, the helper lock_rename;
    # `where` names its caller, where the fix belongs
    found = scan_file(OLD_CYCLE)
    assert _summary(found) == [("lockdep", 1, "possible deadlock in lock_rename")]
    assert found[0].where == "possible deadlock in ovl_copy_up_one" and not found[0].corrupted


def test_old_cycle_excerpt_is_the_whole_report_mended_and_nothing_else():
    (s,) = scan_file(OLD_CYCLE)
    lines = s.log.splitlines()
    assert lines[0].startswith("=====")
    assert lines[1] == "[ INFO: possible circular locking dependency detected ]"
    assert lines[-1].strip().startswith("[<ffffffff818a6c41>] entry_SYSCALL_64_fastpath")
    # fragments split by embedded timestamps are joined back
    assert "t_mmap_copyup/311 is trying to acquire lock:" in s.log
    assert ", at: [<ffffffff812a1b72>] lock_rename+0x25/0xb0" in s.log
    assert "lock(&mm->mmap_sem" in s.log
    assert "-> #0(" in s.log and "*** DEADLOCK ***" in s.log and "stack backtrace:" in s.log
    # no timestamps left, none of the test program's output around the report
    assert "41." not in s.log
    assert "t_mmap_copyup:" not in s.log


def test_old_cycle_where_comes_from_the_new_dependency_not_the_old_chain():
    # "-> #3" was recorded in dcache_readdir, the held lock at vm_mmap_pgoff, the acquire site is the
    # helper lock_rename: none of them may name the splat's `where`.
    (s,) = scan_file(OLD_CYCLE)
    for wrong in ("dcache_readdir", "vm_mmap_pgoff", "lock_rename", "filldir64", "vfs_rmdir"):
        assert not s.where.endswith(wrong)


def test_circular_without_chain_falls_back_to_stack_backtrace():
    text = OLD_CYCLE.read_text()
    start = text.index("[   41.212104] the existing dependency chain")
    end = text.index("[   41.252533] other info")
    truncated = text[:start] + text[end:]
    assert [s.where for s in scan_text(truncated)] == ["possible deadlock in ovl_copy_up_one"]


def test_circular_without_backtrace_uses_the_dependency_0_stack():
    text = OLD_CYCLE.read_text()
    cut = text[:text.index("[   41.252533] other info")]
    assert [s.where for s in scan_text(cut)] == ["possible deadlock in ovl_copy_up_one"]


def test_circular_uses_the_acquire_site_when_it_is_not_a_lock_helper():
    (s,) = scan_file(LOGS / "lockdep-abba-6.12.log")
    assert s.title == "possible deadlock in ovl_copy_up_start"
    # the interleaved [ T302] and [ C1] lines belong to other callers and stay out of the excerpt
    assert "failed to set xattr" not in s.log and "hrtimer: interrupt took" not in s.log
    assert "stack backtrace:" in s.log and s.log.rstrip().endswith("</TASK>")


# ---------------------------------------------------------------------------------------------- prefixes

def test_console_prefixes_are_stripped_and_level_markers_ignored():
    text = ("<4>[  309.075885][ T2468] ------------[ cut here ]------------\n"
            "<4>[  309.075886][ T2468] WARNING: CPU: 0 PID: 2468 at fs/overlayfs/file.c:42 ovl_mmap+0x55/0x90\n"
            "<4>[  309.075887][ T2468] Call Trace:\n"
            "<4>[  309.075888][ T2468]  <TASK>\n"
            "<4>[  309.075889][ T2468]  mmap_region+0x394/0x630\n"
            "<4>[  309.075890][ T2468]  </TASK>\n"
            "<4>[  309.075891][ T2468] ---[ end trace 0000000000000000 ]---\n")
    (s,) = scan_text(text)
    # no RIP line: syzkaller reads the Call Trace; `where` is the function that warned
    assert (s.kind, s.title, s.where) == ("warning", "WARNING in mmap_region", "WARNING in ovl_mmap")
    assert s.log.splitlines()[1].startswith("WARNING: CPU: 0 PID: 2468 at fs/overlayfs/file.c:42")
    assert "<4>" not in s.log and "T2468]" not in s.log


def test_journal_prefix_crlf_and_ansi_codes():
    text = ("Nov 24 03:50:00 guest kernel: WARNING: CPU: 1 PID: 7 at fs/overlayfs/util.c:9 ovl_foo+0x1/0x2\r\n"
            "Nov 24 03:50:00 guest kernel: Call Trace:\r\n"
            "Nov 24 03:50:00 guest kernel:  ovl_bar+0x10/0x20\r\n"
            "\x1b[0;1;31mNov 24 03:50:00 guest kernel: ---[ end trace 0000000000000000 ]---\x1b[0m\r\n")
    (s,) = scan_text(text)
    assert (s.title, s.where) == ("WARNING in ovl_bar", "WARNING in ovl_foo")
    assert "\r" not in s.log and "\x1b" not in s.log and "kernel:" not in s.log


def test_interleaved_callers_are_separated_by_tag():
    a = ["WARNING: CPU: 0 PID: 10 at fs/overlayfs/copy_up.c:1 ovl_copy_up_one+0x1/0x2",
         "Call Trace:", " <TASK>", " ovl_copy_up_flags+0xd2/0x110", " </TASK>", "---[ end trace 0 ]---"]
    b = ["INFO: task t_x:11 blocked for more than 10 seconds.", "task:t_x state:D stack:0 pid:11",
         "Call Trace:", " <TASK>", " __schedule+0x4a1/0xd90", " schedule+0x2e/0xf0",
         " __mutex_lock+0x5e0/0xb40", " ovl_rename+0x148/0x860", " </TASK>"]
    lines = []
    for i in range(max(len(a), len(b))):
        if i < len(a):
            lines.append(f"[   10.{i:06d}][   T10] {a[i]}")
        if i < len(b):
            lines.append(f"[   10.{i:06d}][   C1] {b[i]}")
    found = scan_text("\n".join(lines) + "\n")
    assert _summary(found) == [("warning", 1, "WARNING in ovl_copy_up_flags"),
                               ("hung_task", 1, "INFO: task hung in ovl_rename")]
    assert found[0].where == "WARNING in ovl_copy_up_one"
    assert "__schedule" not in found[0].log and "ovl_copy_up_flags" not in found[1].log


def test_line_broken_by_another_caller_is_split_at_its_timestamp():
    text = ("[    5.000000][  T100] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:585\n"
            "[    5.000001][  T100] CPU: 0 UID: 0 PID: 100 Comm: t Not tainted 6.12.117 #1\n"
            "[    5.000002][  T100] Call Trace:\n"
            "[    5.000003][  T100]  dump_stack_lvl+0x68/0x90[    5.000004][  T200] overlayfs: noise from elsewhere\n"
            "[    5.000005][  T100]  __might_resched+0x19c/0x230\n"
            "[    5.000006][  T100]  ovl_setattr+0x5a/0x1d0\n")
    (s,) = scan_text(text)
    assert s.title == "BUG: sleeping function called from invalid context in ovl_setattr"
    assert "noise from elsewhere" not in s.log
    assert " dump_stack_lvl+0x68/0x90" in s.log.splitlines()


def test_plain_dmesg_without_timestamps_is_scanned():
    found = scan_file(LOGS / "oops-4.9-plain.log")
    assert [s.kind for s in found] == ["oops", "panic"]
    assert "RIP  [<ffffffffa02d1c4b>] ovl_copy_up_one" in found[0].log


# ---------------------------------------------------------------------------------------------- kinds/titles

def _warn(src: str, fn: str, trace: list[str]) -> str:
    body = [f"[    1.000000] WARNING: CPU: 0 PID: 1 at {src}:10 {fn}+0x1/0x2",
            "[    1.000001] RIP: 0010:" + fn + "+0x1/0x2", "[    1.000002] Call Trace:"]
    body += [f"[    1.000003]  {t}+0x10/0x20" for t in trace]
    return "\n".join(body + ["[    1.000004] ---[ end trace 0000000000000000 ]---"]) + "\n"


def test_warning_in_a_skipped_function_is_titled_by_its_caller():
    text = _warn("kernel/locking/mutex.c", "__mutex_lock", ["mutex_lock_nested", "ovl_nlink_start"])
    assert [s.title for s in scan_text(text)] == ["WARNING in ovl_nlink_start"]


@pytest.mark.parametrize("src,fn,title,kind,where", [
    ("kernel/locking/lockdep.c", "lock_release", "WARNING: locking bug in ovl_copy_up_end", "lockdep", ""),
    ("lib/refcount.c", "refcount_warn_saturate", "WARNING: refcount bug in ovl_copy_up_end", "warning", ""),
    ("lib/list_debug.c", "__list_add_valid_or_report", "WARNING in ovl_copy_up_end", "list_corruption",
     "BUG: corrupted list in ovl_copy_up_end"),
    ("lib/debugobjects.c", "debug_print_object", "WARNING: ODEBUG bug in ovl_copy_up_end", "warning", ""),
    ("lib/kobject.c", "kobject_put", "WARNING: kobject bug in ovl_copy_up_end", "warning", ""),
    ("fs/proc/generic.c", "proc_register", "WARNING: proc registration bug in ovl_copy_up_end", "warning", ""),
])
def test_warnings_from_debug_code_get_syzkaller_titles(src, fn, title, kind, where):
    text = _warn(src, fn, ["ovl_copy_up_end", "ovl_copy_up_one"])
    found = scan_text(text)
    assert _summary(found) == [(kind, 1, title)]
    assert found[0].where == (where or title)


def test_new_warning_header_format():
    text = ("[    2.000000] WARNING: fs/overlayfs/copy_up.c:1127 at ovl_copy_up_one+0x3a5/0x590, CPU#1: t/245\n"
            "[    2.000001] Call Trace:\n[    2.000002]  ovl_copy_up_flags+0xd2/0x110\n")
    assert [s.where for s in scan_text(text)] == ["WARNING in ovl_copy_up_one"]
    assert [s.title for s in scan_text(text)] == ["WARNING in ovl_copy_up_flags"]     # no RIP line


def test_kasan_double_free_skips_the_free_functions():
    text = ("[    3.000000] ==================================================================\n"
            "[    3.000001] BUG: KASAN: double-free in kfree+0x8e/0x2d0\n"
            "[    3.000002] Free of addr ffff888008f4a1c0 by task t/9\n"
            "[    3.000003] Call Trace:\n"
            "[    3.000004]  dump_stack_lvl+0x68/0x90\n"
            "[    3.000005]  kasan_report_invalid_free+0x6e/0x90\n"
            "[    3.000006]  kfree+0x8e/0x2d0\n"
            "[    3.000007]  ovl_free_fs+0x1a1/0x250\n"
            "[    3.000008] ==================================================================\n")
    # syzkaller calls a double free an invalid free
    assert _full(scan_text(text)) == [("kasan", 1, "KASAN: invalid-free in ovl_free_fs", "KASAN: double-free in ovl_free_fs",
                                       False)]


@pytest.mark.parametrize("reason,title,where,corrupted", [
    ("Attempted to kill init! exitcode=0x0000000b", "kernel panic: Attempted to kill init!", "", False),
    # 6.x prints the origin first: not syzkaller's "panic_on_warn set" format, so titled as printed
    ("kernel: panic_on_warn set ...", "kernel panic: kernel: panic_on_warn set ...",
     "kernel panic: panic_on_warn set", False),
    ("panic_on_warn set ...", "kernel panic: panic_on_warn set", "kernel panic: panic_on_warn set", True),
    ("hung_task: blocked tasks", "kernel panic: hung_task: blocked tasks", "", True),
    ("stack-protector: Kernel stack is corrupted in: ovl_lookup+0xbb0/0xbb0",
     "kernel panic: stack is corrupted in ovl_lookup", "", False),
    ("VFS: Unable to mount root fs on unknown-block(0,0)",
     "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)",
     "kernel panic: VFS: Unable to mount root fs on unknown-block(0,0)", False),
])
def test_panic_titles_are_normalised_and_fatal(reason, title, where, corrupted):
    (s,) = scan_text(f"[    9.000000] Kernel panic - not syncing: {reason}\n[    9.000001] Kernel Offset: disabled\n")
    assert (s.kind, s.title, s.where, s.corrupted) == ("panic", title, where or title, corrupted)
    assert is_fatal(s)


def test_oops_header_inside_a_report_is_not_a_second_splat():
    found = scan_file(LOGS / "null-deref-6.12.log")
    assert len(found) == 1 and "Oops: Oops: 0000 [#1]" in found[0].log
    assert found[0].log.rstrip().endswith("---[ end trace 0000000000000000 ]---")


def test_hung_task_excerpt_keeps_the_lock_dump_and_stops_before_sysrq():
    found = scan_file(LOGS / "hung-task-6.12.log")
    last = found[-1]
    assert "Showing all locks held in the system:" in last.log
    assert last.log.rstrip().endswith("=============================================")
    assert "sysrq: Show Blocked State" not in last.log


@pytest.mark.parametrize("line", [
    "WARNING: CPU features detected: avx2",
    "BUG: t_copyup failed: expected bar",
    "INFO: lockdep is turned off.",
    '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
    "kernel.hung_task_timeout_secs = 10",
    "Call Trace:",
    "WARNING: The mand mount option has been deprecated and",
    "Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on",
    "rcu: RCU lockdep checking is enabled.",
    "Kernel command line: console=ttyS0 panic=-1",
    "NMI watchdog: Perf NMI watchdog permanently disabled",
    "kfence: initialized - using 2097152 bytes for 255 objects",
])
def test_benign_lookalikes_alone_are_not_splats(line):
    assert scan_text(f"[    1.000000] {line}\n[    1.000001] random: crng init done\n") == []


def test_lockdep_disabled():
    assert splats.lockdep_disabled("[ 6.0] INFO: lockdep is turned off.\n")
    assert not splats.lockdep_disabled(OLD_CYCLE.read_text())


# ---------------------------------------------------------------------------------------------- dedup / API

def test_same_title_is_one_splat_with_a_count_and_first_excerpt():
    found = scan_file(LOGS / "warn-on-6.12.log")
    assert len(found) == 1 and found[0].count == 2
    assert "PID: 245" in found[0].log and "PID: 250" not in found[0].log


def test_order_is_first_appearance():
    text = (LOGS / "stalls-6.12.log").read_text() + (LOGS / "warn-on-6.12.log").read_text() + \
        (LOGS / "stalls-6.12.log").read_text()
    titles = [s.where for s in scan_text(text)]
    assert titles[0] == "INFO: rcu detected stall in ovl_cache_get_impure"
    assert titles[-1] == "WARNING in ovl_copy_up_one"
    assert len(titles) == len(set(titles))


def test_new_splats_by_title():
    base = scan_file(LOGS / "warn-on-6.12.log")
    patched = scan_file(LOGS / "warn-on-6.12.log") + scan_file(OLD_CYCLE)
    new = new_splats(base, patched)
    assert [s.where for s in new] == ["possible deadlock in ovl_copy_up_one"]
    assert new_splats(patched, base) == []
    assert new_splats([], base) == base


def test_as_json_and_back():
    (s,) = scan_file(OLD_CYCLE)
    d = s.as_json()
    assert set(d) == {"kind", "title", "where", "signature", "corrupted", "log", "count"}
    assert (d["title"], d["where"], d["corrupted"]) == ("possible deadlock in lock_rename",
                                                      "possible deadlock in ovl_copy_up_one", False)
    assert json.loads(json.dumps(d)) == d
    assert Splat.from_json(d) == s
    # JSON written before `where` and `corrupted` existed: where is the title, not corrupted
    old = Splat.from_json({k: v for k, v in d.items() if k not in ("where", "corrupted")})
    assert (old.title, old.where, old.corrupted, old.signature) == (s.title, s.title, False, s.signature)


def test_is_fatal_only_for_panics():
    kinds = {s.kind: is_fatal(s) for f in FIXTURES for s in scan_file(f)}
    assert kinds.pop("panic") is True
    assert not any(kinds.values())


def test_format_table():
    found = scan_file(LOGS / "gpf-panic-6.12.log")
    out = format_table(found)
    rows = out.splitlines()
    assert rows[0].split() == ["KIND", "COUNT", "TITLE"]
    assert re.match(r"gpf\s+1\s+general protection fault in ovl_cache_entry_free$", rows[1])
    assert "kernel panic: Fatal exception" in rows[2] and "[kernel died]" in rows[2] and "[corrupted]" in rows[2]
    assert "2 distinct splats" in out and "1 fatal" in out and "--json" in out
    assert format_table([]).startswith("no splats found")


def test_scan_file_tolerates_binary_garbage(tmp_path):
    p = tmp_path / "console.log"
    p.write_bytes(b"\xff\xfe\x00garbage\n" + OLD_CYCLE.read_bytes())
    assert [s.where for s in scan_file(p)] == ["possible deadlock in ovl_copy_up_one"]


# ---------------------------------------------------------------------------------------------- signatures

# one cycle, &mm->mmap_lock --> &ovl_i_lock_key[depth] --> sb_writers --> &type->i_mutex_dir_key --> back,
# reported in two boots: closed by filldir64 faulting under the dir lock (i_mutex_dir_key#5, sb_writers#4)
# and by fault_in_readable under lock_rename's dir lock (i_mutex_dir_key#3/1, sb_writers#7)
FILLDIR, FAULTIN = LOGS / "lockdep-cycle-filldir-6.12.log", LOGS / "lockdep-cycle-faultin-6.12.log"
CYCLE_SIG = "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]|&type->i_mutex_dir_key|sb_writers"


def test_same_cycle_closed_by_different_edges_has_one_signature():
    (a,), (b,) = scan_file(FILLDIR), scan_file(FAULTIN)
    assert (a.where, b.where) == ("possible deadlock in filldir64", "possible deadlock in fault_in_readable")
    assert (a.title, b.title) == ("possible deadlock in iterate_dir", "possible deadlock in lock_mm_and_find_vma")
    assert a.signature == b.signature == CYCLE_SIG
    # what differs between the two reports really is in them: suffixes, subclass, addresses
    assert "i_mutex_dir_key#5){" in a.log and "i_mutex_dir_key#3/1){" in b.log
    assert "sb_writers#4" in a.log and "sb_writers#7" in b.log
    assert "ffff888004d2a4b0" in a.log and "ffff888004d2a4b0" not in b.log


def test_new_splats_by_signature_not_title():
    a, b = scan_file(FILLDIR), scan_file(FAULTIN)
    assert new_splats(a, b) == [] and new_splats(b, a) == []
    abba = scan_file(LOGS / "lockdep-abba-6.12.log")
    assert new_splats(a, b + abba) == abba


def test_dedup_merges_one_cycle_under_two_titles():
    found = scan_text(FILLDIR.read_text() + FAULTIN.read_text())
    assert _summary(found) == [("lockdep", 2, "possible deadlock in iterate_dir")]
    assert found[0].signature == CYCLE_SIG


def test_a_different_cycle_has_a_different_signature():
    (a,) = scan_file(FILLDIR)
    (sub,) = scan_file(LOGS / "lockdep-abba-6.12.log")     # two of the same classes only
    assert sub.signature == "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]"
    other = FILLDIR.read_text().replace("sb_writers#4", "&sb->s_type->i_mutex_key#12")
    (o,) = scan_text(other)
    assert o.title == a.title
    assert o.signature == "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]|&sb->s_type->i_mutex_key|" \
                          "&type->i_mutex_dir_key"
    assert len({a.signature, sub.signature, o.signature}) == 3
    assert new_splats(scan_file(FILLDIR), [o]) == [o]


def test_cycle_signature_uses_the_chain_not_just_the_two_locks_of_the_new_edge():
    # only the "-> #N" entries (and "Chain exists of") name ovl_i_lock: drop them and it is gone
    text = FILLDIR.read_text()
    start, end = text.index("the existing dependency chain"), text.index("other info that might")
    (cut,) = scan_text(text[:start] + text[end:])
    assert cut.signature == "lockdep-cycle:&mm->mmap_lock|&type->i_mutex_dir_key|sb_writers"


def test_old_cycle_signature_from_lines_broken_by_interleaving():
    # 4.9 prints class names in pieces ("&type->s_vfs_rename_key" / "#2"), old format "-> #3("
    (s,) = scan_file(OLD_CYCLE)
    assert s.signature == "lockdep-cycle:&mm->mmap_sem|&type->i_mutex_dir_key|&type->s_vfs_rename_key"


@pytest.mark.parametrize("printed, normal", [
    ("&type->i_mutex_dir_key#5", "&type->i_mutex_dir_key"),
    ("&type->i_mutex_dir_key#3/1", "&type->i_mutex_dir_key"),
    ("sb_writers#4", "sb_writers"),
    ("&ovl_i_lock_key[depth]", "&ovl_i_lock_key[depth]"),
    ("((wq_completion)events_unbound)", "((wq_completion)events_unbound)"),
    ("&sb->s_type->i_lock_key#24/2", "&sb->s_type->i_lock_key"),
    ("&type->s_vfs_rename_key\n#2", "&type->s_vfs_rename_key"),
    ("ovl_key+0x0/0x10", "ovl_key"),
])
def test_lock_class_normalisation(printed, normal):
    assert splats.lock_class(printed) == normal


def test_other_lockdep_reports_are_signed_by_their_lock_classes():
    assert [s.signature for s in scan_file(LOGS / "lockdep-variants-6.12.log")] == [
        "lockdep-recursive:&ovl_i_lock_key[depth]",
        "lockdep-inconsistent:&ofs->lock",
        "lockdep-bad-unlock:&ovl_i_lock_key[depth]",
        "lockdep-rcu-usage:ovl_i_path_real@fs/overlayfs/ovl_entry.h",
    ]
    (real,) = [s for s in scan_file(LOGS / "real-deadlock-6.12.log") if s.kind == "lockdep"]
    assert real.signature == "lockdep-recursive:&ovl_i_lock_key[depth]"


def _warn_at(line: int, fn: str = "ovl_copy_up_one", src: str = "fs/overlayfs/copy_up.c", pid: int = 245,
             off: str = "0x3a5/0x590") -> str:
    return (f"[   12.000000][  T{pid}] ------------[ cut here ]------------\n"
            f"[   12.000001][  T{pid}] WARNING: CPU: 1 PID: {pid} at {src}:{line} {fn}+{off}\n"
            f"[   12.000002][  T{pid}] RIP: 0010:{fn}+{off}\n"
            f"[   12.000003][  T{pid}] Call Trace:\n"
            f"[   12.000004][  T{pid}]  <TASK>\n"
            f"[   12.000005][  T{pid}]  ovl_copy_up_flags+0xd2/0x110\n"
            f"[   12.000006][  T{pid}]  </TASK>\n"
            f"[   12.000007][  T{pid}] ---[ end trace 0000000000000000 ]---\n")


def test_warning_signature_is_function_and_file_without_line():
    (a,) = scan_text(_warn_at(1127))
    (b,) = scan_text(_warn_at(1142, pid=300, off="0x3c1/0x5b0"))     # the patch moved it down 15 lines
    assert a.signature == b.signature == "warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"
    assert new_splats([a], [b]) == []
    (c,) = scan_text(_warn_at(1127, fn="ovl_copy_up_meta_inode_data"))
    (d,) = scan_text(_warn_at(1127, src="fs/overlayfs/util.c"))
    assert len({a.signature, c.signature, d.signature}) == 3
    assert new_splats([a], [c, d]) == [c, d]
    # one splat, counted twice, though the line numbers differ
    found = scan_text(_warn_at(1127) + _warn_at(1142, pid=300))
    assert [(s.count, s.signature) for s in found] == [(2, a.signature)]


def test_warning_signature_of_the_new_header_format_and_of_absolute_paths():
    text = ("[    2.000000] WARNING: fs/overlayfs/copy_up.c:1127 at ovl_copy_up_one+0x3a5/0x590, CPU#1: t/245\n"
            "[    2.000001] Call Trace:\n[    2.000002]  ovl_copy_up_flags+0xd2/0x110\n")
    (new,) = scan_text(text)
    (abs_,) = scan_text(_warn_at(99, src="/build/linux-6.12/fs/overlayfs/copy_up.c"))
    assert new.signature == abs_.signature == "warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"


@pytest.mark.parametrize("log, sigs", [
    ("warn-on-6.12.log", ["warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"]),
    ("bugs-6.12.log", ["bug-sleeping-function-called-from-invalid-context:ovl_workdir_create",
                       "bug-scheduling-while-atomic:ovl_wait_for_copyup",
                       "list-corruption:ovl_cache_entry_del",
                       "kernel-bug:ovl_copy_up_meta_inode_data@fs/overlayfs/copy_up.c"]),
    ("null-deref-6.12.log", ["null-deref:ovl_getattr"]),
    ("real-oops-null-6.12.log", ["null-deref:ovl_copy_up_one"]),
    ("gpf-panic-6.12.log", ["gpf:ovl_cache_entry_free", "panic:Fatal exception"]),
    ("hung-task-6.12.log", ["hung:ovl_copy_up_start", "hung:ovl_do_copy_up"]),
    ("sanitizers-6.12.log", ["kasan-slab-use-after-free-read:ovl_dentry_upper",
                             "kfence-use-after-free-read:ovl_cache_update", "ubsan-shift-out-of-bounds:ovl_map_ino"]),
    ("stalls-6.12.log", ["rcu-stall:ovl_cache_get_impure", "soft-lockup:ovl_lookup_layer",
                         "hard-lockup:ovl_spin_irqoff", "panic:Hard LOCKUP"]),
    ("lockdep-more-6.12.log", ["lockdep-irq-inversion:&ofs->lock|&ovl_i_lock_key[depth]",
                               "lockdep-safe-unsafe:&ofs->lock|&ovl_i_lock_key[depth]",
                               "lockdep-held-freed:&od->lock", "lockdep-held-return:&ovl_i_lock_key[depth]",
                               "lockdep-still-held:&ofs->lock", "lockdep-nonstatic-key:register_lock_class"]),
    ("sanitizers-more-6.12.log", ["kasan-double-free:ovl_cache_free", "kasan-invalid-free:ovl_free_fs",
                                  "kasan-slab-out-of-bounds:ovl_verify_origin_xattr",
                                  "kasan-corrupted:ovl_dentry_upper", "kfence-out-of-bounds-read:ovl_cache_entry_find",
                                  "kfence-memory-corruption:ovl_cache_free"]),
    ("ubsan-5.4.log", ["ubsan-undefined-behaviour:ovl_remap_lower_ino"]),
    ("warnings-6.12.log", ["warning:ovl_inode_unlock@kernel/locking/lockdep.c",
                           "warning:ovl_entry_put@lib/refcount.c"]),
    # the list_del message printed inside the WARNING is one report (it used to make a second one)
    ("warning-list-debug-4.9.log", ["list-corruption:ovl_cache_entry_del"]),
    ("warning-nokallsyms-6.12.log", ["warning:?"]),
    ("warnings-new-header.log", ["warning:ovl_copy_up_one@fs/overlayfs/copy_up.c",
                                 "warning:ovl_entry_get@lib/refcount.c",
                                 "warning:ovl_cache_update@kernel/locking/lockdep.c",
                                 "list-corruption:ovl_cache_entry_del"]),
    ("faults-6.12.log", ["paging-fault:ovl_read_iter", "divide-error:ovl_statfs", "stack-segment-fault:ovl_xattr_get",
                         "invalid-opcode:ovl_real_fileattr_get", "oops:ovl_copyattr"]),
    ("double-fault-6.12.log", ["double-fault:ovl_lookup_real_one", "panic:Fatal exception in interrupt"]),
    ("faults-arm64-6.12.log", ["null-deref:ovl_getattr", "paging-fault:ovl_cache_entry_del"]),
    ("bugs-more-6.12.log", ["kernel-bug:ovl_get_link@mm/usercopy.c", "list-corruption:ovl_cache_entry_del",
                            "workqueue-lockup", "bug-dentry-still-in-use-unmount-of-overlay-overlay",
                            "bug-using-smp-processor-id-in-preemptible-code:ovl_cache_get_impure",
                            "bug-bad-page-state", "bug-spinlock-bad-magic:ovl_cache_get"]),
    ("stack-protector-6.12.log", ["panic:stack is corrupted in ovl_get_link"]),
    ("stack-guard-4.19.log", ["bug-stack-guard-page-was-hit:ovl_lookup_real_one",
                              "panic:Fatal exception in interrupt"]),
    ("bug-ppc64le-6.12.log", ["bug-unable-to-handle-kernel-instruction-fetch:ovl_d_real"]),
])
def test_signature_formats(log, sigs):
    assert [s.signature for s in scan_file(LOGS / log)] == sigs


def test_oops_signature_ignores_addresses_and_offsets():
    text = (LOGS / "null-deref-6.12.log").read_text()
    moved = re.sub(r"ovl_getattr\+0x4e/0x3a0", "ovl_getattr+0x61/0x3c0", text)
    moved = re.sub(r"ffff8880[0-9a-f]{8}", "ffff888007777777", moved)
    assert moved != text
    assert [s.signature for s in scan_text(moved)] == [s.signature for s in scan_text(text)] == ["null-deref:ovl_getattr"]


@pytest.mark.parametrize("log", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_signatures_are_normalised_and_recomputable(log):
    found = scan_file(log)
    assert len({s.signature for s in found}) == len(found)          # dedup is by signature
    for s in found:
        assert s.signature
        assert not re.search(r"0x[0-9a-f]|\+0x|\b[0-9a-f]{8,16}\b|#\d|\.[chS]:\d", s.signature), s.signature
        # from the excerpt alone (JSON written before signatures existed), the same signature
        assert splats.signature_of(s.kind, s.title, s.log) == s.signature
        old = {k: v for k, v in s.as_json().items() if k != "signature"}
        assert Splat.from_json(old) == s


def test_signature_without_an_excerpt_falls_back_to_the_title():
    s = Splat(kind="warning", title="WARNING in ovl_read_iter", log="...")
    assert s.signature == "warning:ovl_read_iter"
    assert Splat.from_json({"kind": "bug", "title": "BUG: Bad rss-counter state"}).signature == \
        "bug-bad-rss-counter-state"
    assert Splat(kind="bug", title="x", log="", signature="given").signature == "given"


# ---------------------------------------------------------------------------------------------- CLI

def _cli():
    from rig.cli.main import main
    return main


def test_cli_scan_table():
    r = CliRunner().invoke(_cli(), ["scan", str(OLD_CYCLE)])
    assert r.exit_code == 0, r.output
    assert "possible deadlock in ovl_copy_up_one" in r.output and "KIND" in r.output


def test_cli_scan_json_contract():
    r = CliRunner().invoke(_cli(), ["scan", "--json", str(LOGS / "gpf-panic-6.12.log")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert list(doc) == ["splats"]
    assert [s["title"] for s in doc["splats"]] == ["general protection fault in ovl_cache_entry_free",
                                                   "kernel panic: Fatal exception"]
    for s in doc["splats"]:
        assert {"kind", "title", "log"} <= set(s) and isinstance(s["log"], str) and s["log"]


def test_cli_scan_json_prints_the_signature():
    r = CliRunner().invoke(_cli(), ["scan", "--json", str(LOGS / "lockdep-cycle-faultin-6.12.log")])
    assert r.exit_code == 0, r.output
    (s,) = json.loads(r.output)["splats"]
    assert (s["title"], s["where"], s["corrupted"]) == ("possible deadlock in lock_mm_and_find_vma",
                                                        "possible deadlock in fault_in_readable", False)
    assert s["signature"] == CYCLE_SIG


def test_cli_scan_clean_log_exits_zero():
    r = CliRunner().invoke(_cli(), ["scan", "--json", str(LOGS / "benign-boot-6.12.log")])
    assert r.exit_code == 0 and json.loads(r.output) == {"splats": []}
    r = CliRunner().invoke(_cli(), ["scan", str(LOGS / "benign-boot-6.12.log")])
    assert r.exit_code == 0 and "no splats found" in r.output


def test_cli_scan_missing_file_is_bad_input(tmp_path):
    r = CliRunner().invoke(_cli(), ["scan", str(tmp_path / "nope.log")])
    assert r.exit_code == 2
    assert "console log not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(_cli(), ["scan", str(LOGS / "benign-boot-6.12.log"), str(tmp_path / "nope.log")])
    assert r.exit_code == 2 and "nope.log" in r.output    # nothing scanned before the bad input is named


def test_cli_scan_takes_several_logs_a_directory_and_stdin(tmp_path):
    d = tmp_path / "logs"
    d.mkdir()
    for name in ("lockdep-cycle-faultin-6.12.log", "lockdep-cycle-filldir-6.12.log", "benign-boot-6.12.log"):
        (d / name).write_text((LOGS / name).read_text())
    r = CliRunner().invoke(_cli(), ["scan", "--json", str(d)])
    assert r.exit_code == 0, r.output
    entries = json.loads(r.output)["inputs"]
    assert [Path(e["path"]).name for e in entries] == sorted(p.name for p in d.iterdir())
    sigs = {Path(e["path"]).name: {s["signature"] for s in e["splats"]} for e in entries}
    assert sigs["benign-boot-6.12.log"] == set()
    assert sigs["lockdep-cycle-faultin-6.12.log"] == sigs["lockdep-cycle-filldir-6.12.log"] != set()
    r = CliRunner().invoke(_cli(), ["scan", "-", str(LOGS / "benign-boot-6.12.log")],
                           input=(LOGS / "warn-on-6.12.log").read_text())
    assert r.exit_code == 0
    assert "== -: " in r.output and "2 log(s), 1 with splats" in r.output
    r = CliRunner().invoke(_cli(), ["scan", "--json", "-"], input=(LOGS / "warn-on-6.12.log").read_text())
    assert json.loads(r.output)["splats"][0]["kind"]


def test_scan_command_is_registered_as_scan():
    from rig.cli import cmd_scan
    assert cmd_scan.command.name == "scan"
    assert "scan" in _cli().commands


# ---------------------------------------------------------------------------------------------- syzkaller's rules

def test_title_reads_on_through_the_panic_the_warning_caused():
    # panic_on_warn: the panic's own stack comes first, the WARNING's RIP after it; syzkaller reads the
    # report on through the "Kernel panic" line for its title, the excerpt stops there
    text = ("[    5.000000] WARNING: CPU: 0 PID: 7 at fs/overlayfs/util.c:9 ovl_foo+0x1/0x2\n"
            "[    5.000001] Kernel panic - not syncing: panic_on_warn set ...\n"
            "[    5.000002] Call Trace:\n"
            "[    5.000003]  dump_stack+0x10/0x20\n"
            "[    5.000004]  panic+0x10/0x20\n"
            "[    5.000005]  __warn+0x10/0x20\n"
            "[    5.000006] RIP: 0010:ovl_bar+0x1/0x2\n"
            "[    5.000007] Kernel Offset: disabled\n")
    found = scan_text(text)
    assert _full(found) == [("warning", 1, "WARNING in ovl_bar", "WARNING in ovl_foo", False),
                            ("panic", 1, "kernel panic: panic_on_warn set", "kernel panic: panic_on_warn set", True)]
    assert "RIP" not in found[0].log


def test_a_fault_injection_stack_in_the_report_makes_it_corrupted():
    # syzkaller: fault injection's stack mixed into a report (its RIP here is the skipped __warn_thing)
    (s,) = scan_text(_warn("fs/overlayfs/util.c", "__warn_thing", ["should_failslab", "ovl_copy_up_end"]))
    assert (s.title, s.corrupted) == ("WARNING in corrupted", True)


def test_arm32_backtrace_gives_both_functions_of_a_line():
    text = ("[    7.000000] Unhandled fault: page domain fault (0x01b) at 0x00000010\n"
            "[    7.000001] CPU: 0 PID: 9 Comm: t Not tainted 6.12.0 #1\n"
            "[    7.000002] PC is at kthread_stop+0x60/0x524\n"
            "[    7.000003] Backtrace:\n"
            "[    7.000004] [<80165504>] (kthread_stop) from [<825e31d8>] (ovl_stop_worker+0x2c/0x90)\n"
            "[    7.000005] [<825e31ac>] (ovl_stop_worker) from [<825e3300>] (ovl_put_super+0x1c/0x70)\n")
    (s,) = scan_text(text)
    assert s.title == "Unhandled fault in ovl_stop_worker"       # kthread_stop is skipped


@pytest.mark.parametrize("line, title", [
    ("BUG: MAX_LOCKDEP_KEYS too low!", "BUG: MAX_LOCKDEP_KEYS too low!"),
    ("BUG: workqueue leaked atomic, lock or RCU: kworker/1:2[345]",
     "BUG: workqueue leaked atomic, lock or RCU: kworker/NUM:NUM[NUM]"),
])
def test_an_unknown_bug_is_titled_by_its_line_numbers_normalised(line, title):
    (s,) = scan_text(f"[    8.000000] {line}\n[    8.000001] CPU: 0 UID: 0 PID: 1 Comm: t Not tainted 6.12.0 #1\n")
    assert s.title == title


def test_cli_scan_json_gives_where_and_corrupted_per_splat_of_every_input(tmp_path):
    r = CliRunner().invoke(_cli(), ["scan", "--json", str(LOGS / "gpf-panic-6.12.log"), str(OLD_CYCLE)])
    assert r.exit_code == 0, r.output
    got = [[(s["title"], s["where"], s["corrupted"]) for s in e["splats"]] for e in json.loads(r.output)["inputs"]]
    assert got == [[("general protection fault in ovl_cache_entry_free", "general protection fault in ovl_cache_entry_free",
                     False), ("kernel panic: Fatal exception", "kernel panic: Fatal exception", True)],
                   [("possible deadlock in lock_rename", "possible deadlock in ovl_copy_up_one", False)]]
    r = CliRunner().invoke(_cli(), ["scan", str(OLD_CYCLE)])
    assert "possible deadlock in lock_rename" in r.output and "where: possible deadlock in ovl_copy_up_one" in r.output


# ---------------------------------------------------------------------------------------------- demangling

@pytest.mark.parametrize("symbol, name", [
    # Rust v0: inherent impl, trait impl, backreferences, generic arguments of a type
    ("_RNvMs0_NtCs4tNsw1ydMx2_6kpdemo5queueNtB5_5Queue7release", "<kpdemo::queue::Queue>::release"),
    ("_RNvXs_Cs4tNsw1ydMx2_6kpdemoNtB4_6KpDemoNtNtCs7yT2kDq0wZb_6kernel10miscdevice10MiscDevice5ioctl",
     "<kpdemo::KpDemo as kernel::miscdevice::MiscDevice>::ioctl"),
    ("_RNvCs5qRr2w0Klpd_7___rustc17rust_begin_unwind", "__rustc::rust_begin_unwind"),
    ("_RNvMs1_NtCs7yT2kDq0wZb_6kernel10miscdeviceINtB5_22MiscDeviceRegistrationNtCs4tNsw1ydMx2_6kpdemo6KpDemoE5ioctlB7_",
     "<kernel::miscdevice::MiscDeviceRegistration<kpdemo::KpDemo>>::ioctl"),
    ("_RINvNtCs1_4core3mem4swapjEB2_", "core::mem::swap::<usize>"),
    # C++ and Rust's legacy scheme: parameters and the hash dropped
    ("_Z8kpd_pokei", "kpd_poke"),
    ("_ZN5kpcxx6Device5flushEv", "kpcxx::Device::flush"),
    ("_ZN4core9panicking9panic_fmt17h0123456789abcdefE", "core::panicking::panic_fmt"),
    # anything else as it is: C names, and symbols this reader does not understand
    ("ovl_copy_up_one", "ovl_copy_up_one"), ("_RNvMs0_Nt", "_RNvMs0_Nt"), ("_ZSt4cout", "_ZSt4cout"),
])
def test_rust_and_cxx_symbols_are_demangled_without_parameters(symbol, name):
    assert demangle(symbol) == name


def test_frames_are_demangled_after_their_compiler_suffix_is_dropped():
    assert frames.fn_name("_RNvCs5qRr2w0Klpd_7___rustc17rust_begin_unwind.llvm.1234") == "__rustc::rust_begin_unwind"
    assert frames.fn_name("ovl_lookup.cold") == "ovl_lookup"


# ---------------------------------------------------------------------------------------------- interleaving

def test_a_header_in_the_middle_of_a_line_starts_a_report():
    # another printk without its newline before the header, with or without a timestamp between
    for cut in ("overlayfs: index verify failed (-2)", "overlayfs: index verify failed (-2)[  101.200100] "):
        (s,) = scan_text(f"[  101.200000] {cut}general protection fault: 0000 [#1] SMP KASAN\n"
                         "[  101.200200] RIP: 0010:ovl_verify_index+0x2e1/0x5a0\n"
                         "[  101.200300] Call Trace:\n[  101.200400]  ovl_indexdir_cleanup+0x2a6/0x4f0\n")
        assert (s.kind, s.title) == ("gpf", "general protection fault in ovl_verify_index")


def test_a_header_word_in_the_middle_of_an_ordinary_line_is_not_a_report():
    text = ("[   44.102311] traps: t_mmap[1733] general protection fault ip:4012f6 sp:7ffd4c1e8a10 error:0 in "
            "t_mmap[401000+2000]\n"
            "[   44.102400] overlayfs: option \"WARNING: at\" is unknown\n"
            "[   44.102500] ---[ end Kernel panic - not syncing: Fatal exception ]---\n")
    assert scan_text(text) == []


def test_slub_tracking_lines_belong_to_their_report():
    # "INFO: Allocated in"/"INFO: Freed in" come after stacks, far below the SLUB header: still one report
    found = find_reports((LOGS / "slub-double-free-4.14.log").read_text())
    assert [(r.format.id, r.splat.title) for r in found] == [("slub-already-free", "BUG: Object already free")]


def test_tool_messages_are_their_own_kind_and_never_fatal():
    assert "tool" in splats.KINDS and "tool" not in splats.FATAL_KINDS
    # in a log with console prefixes, a userspace line does not start a report
    assert scan_text("[    5.000000] init: started\nSYZFAIL: wrong response packet\n") == []


def test_the_union_prefilter_finds_the_rows_the_rows_find():
    # Formats.match tries one union of all headers before the rows; it must never hide a row's match
    lines = [t for log in FIXTURES for t in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines += ["syzkaller login: Unable to handle kernel paging request at virtual address fc14ef08",
              "  WARNING: CPU: 0 PID: 1 at fs/overlayfs/util.c:9 0xffffffff8123a5c5"]
    for raw in lines:
        t = re.sub(r"^\[[^\]]*\](?:\[[^\]]*\])?\s?", "", raw)
        for cut in (t, t[t.find(":") - 7:] if ":" in t else t):
            slow = next(((r.id, m.group(0)) for r in FORMATS.rows if (m := r.header.search(cut.lstrip()))), None)
            hit = FORMATS.match(cut)
            assert ((hit[0].id, hit[1].group(0)) if hit else None) == slow, cut
