"""Kernel console-log analysis: find splats, title them the way syzkaller does, deduplicate them.

A *splat* is a kernel report on the console: a lockdep report, a WARNING, a BUG/oops, a KASAN/KMSAN/KCSAN/
KFENCE/UBSAN or kmemleak report, a hung task, an RCU stall, a lockup, a panic.  `scan_text` finds them in any
console log or dmesg (from any machine) and gives each the title syzkaller's pkg/report would give it
(``possible deadlock in lock_rename``, ``WARNING in ovl_copy_up_one``, ``KASAN: invalid-free in ...``;
developers search syzbot and lore with it), `where`, our own title when another function is more useful
for overlayfs work (``possible deadlock in ovl_copy_up_one``), whether syzkaller would call the report
corrupted, and a signature (its identity: a lockdep cycle has one signature whichever edge closed it); it
merges splats with the same signature into one (with a count).  Neither carries addresses, offsets, line numbers, pids or task names, so the same bug
gets the same signature on the baseline and on the patched kernel, and `new_splats` tells new from old.

The report formats are data: formats.toml has one row per format (header regex, kind, title template,
which stack gives the title's function and which frames it skips, signature template, fatal or not, how
the report is delimited), the way syzkaller's pkg/report keeps its formats.  Adding a format is adding a
row there and a fixture log under tests/data/logs/ (tests/analysis/test_splats.py checks every row has one).

Layout:

* formats.toml -- the table; its opening comment describes every field;
* table.py     -- loads and checks the table into typed rows (`Format`, `Kind`, `Source`, ...);
                  a bad row is a `FormatError` naming it;
* console.py   -- console prefixes stripped, interleaved lines mended, lines grouped per caller;
* scan.py      -- where reports start and end in each caller's lines; `scan_text`, `find_reports`;
* titles.py    -- title, where, signature, corruption of one report by its row; `signature_of`;
* templates.py -- the title/where/signature templates;
* frames.py    -- stack frames: parse, read a stack, pick the first function not skipped;
* locks.py     -- lockdep lock classes, normalised (`lock_class`), for lockdep signatures;
* splat.py     -- `Splat`, `merge`, `new_splats`, `is_fatal`, `format_table`.

An independent implementation of syzkaller's titles and the kernel's printing formats, stdlib only.
"""
from __future__ import annotations

from rig.analysis.splats.locks import lock_class
from rig.analysis.splats.scan import Report, find_reports, lockdep_disabled, scan_file, scan_text
from rig.analysis.splats.splat import Splat, format_table, is_fatal, merge, new_splats
from rig.analysis.splats.table import FATAL_KINDS, FORMATS, KINDS, Format, FormatError, Kind, load_formats
from rig.analysis.splats.titles import signature_of

__all__ = ["Splat", "scan_text", "merge", "scan_file", "new_splats", "format_table", "is_fatal",
           "lockdep_disabled", "signature_of", "lock_class", "FATAL_KINDS", "KINDS",
           "FORMATS", "Format", "FormatError", "Kind", "load_formats", "Report", "find_reports"]
