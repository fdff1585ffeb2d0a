"""Emission of a finding: a standalone C reproducer in the style of the 2016 RFC's, and a guest test
(guest_tests/fuzz_<id>.c + .toml) when asked; compile_reproducer() builds the reproducer statically (THE
static-program cache) for the check on fresh boots (rig/fuzz/splatcheck.py).

Both replay the ops with the C of the operation table (rig/fuzz/ops.py) and format results with
guest_tests/fuzz/fmt.h, inlined, so they print exactly what the interpreter prints. A guest test is
written once per signature (first difference + kinds of operations), kept as a `fuzzsig:` tag.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Sequence

from rig.fuzz.findings import Finding
from rig.fuzz.fixture import FIXTURE, FIXTURE_XATTRS, OLD_TIME
from rig.fuzz.interp import FMT_H
from rig.fuzz.ops import c_statements, c_str
from rig.guest.programs import compile_dir


def _fmt_h_body() -> str:
    """fmt.h without its include guard, for inlining."""
    text = FMT_H.read_text()
    text = re.sub(r"^#ifndef KPROTO_FUZZ_FMT_H\n#define KPROTO_FUZZ_FMT_H\n", "", text, flags=re.M)
    return re.sub(r"\n#endif\s*$", "\n", text)


def _fixture_comment() -> list[str]:
    lower = [f"{e.path} ({'symlink -> ' + (e.arg or '') if e.type == 'symlink' else e.type}"
             f"{'' if e.type in ('dir', 'symlink') else ', ' + c_str(e.arg or '')}"
             f"{', %04o' % e.mode if e.type != 'symlink' else ''})" for e in FIXTURE if e.layer == "L"]
    upper = [f"{e.path} ({'whiteout' if e.type == 'whiteout' else e.type + ', ' + c_str(e.arg or '')})"
             for e in FIXTURE if e.layer == "U"]
    x = [f"{a.path}: {a.name}={a.value}" for a in FIXTURE_XATTRS]
    return [" *   lower: " + ", ".join(lower), " *   upper: " + ", ".join(upper), " *   xattrs on lower: " + ", ".join(x)]


def _main_body(ops: Sequence[str], comments: Sequence[str] | None) -> list[str]:
    body = ["\tint fd[8] = {-1, -1, -1, -1, -1, -1, -1, -1};", "\tchar *map[8] = {0};",
            "\tstruct stat st;", "\tstruct timespec ts[2];", "\tint rc;", "",
            "\t(void)st; (void)ts; (void)rc; (void)map;", ""]
    for i, op in enumerate(ops, 1):
        body.append(f"\t/* {i}: {op}" + (f"  ->  {comments[i - 1]}" if comments else "") + " */")
        body += ["\t" + s for s in c_statements(op)]
        body.append(f"\temit({i});")
    return body


def program_c(ops: Sequence[str]) -> str:
    """The bare replay of OPS in the current directory (what reproducer_c wraps), for checking the
    operation table: prints "K: RESULT" lines as the interpreter does."""
    main = ["", "int main(void)", "{", "\tfault_guard_init();", *_main_body(ops, None), "\treturn 0;", "}", ""]
    return _fmt_h_body() + "\n".join(main)


def reproducer_c(f: Finding, target_desc: str, command: str = "") -> str:
    """A standalone C program: replays the ops in DIR (an overlay mount), prints each result as the
    interpreter does, and exits 1 when the first differing op does not give the reference's answer.
    A splat finding's program says which splat the kernel prints while it runs (the console, not the
    exit status, shows it; without a first difference it exits 0)."""
    d = f.diff
    ops = f.ops
    sp = f.splat
    what = f"{d.kind} differs" if d is not None else f"the kernel prints {sp.title if sp else 'a splat'}"
    hdr = [f"/* kproto fuzz finding {f.id}: {what} after {len(ops)} operation(s)", " *",
           " * DIR is an overlay mount (default /ovl) whose layers hold:", *_fixture_comment(), " *",
           " * Sequence (op -> what the reference overlay gives):"]
    for i, op in enumerate(ops, 1):
        ref = f.reference_lines[i - 1] if i - 1 < len(f.reference_lines) else "?"
        hdr.append(f" *   {i}. {op:<28} -> {ref}")
    if sp is not None:
        hdr += [" *", f" * Kernel splat ({sp.kind}): {sp.title}", f" *   signature: {sp.signature}",
                " *   (shown on the console / dmesg while this runs on " + target_desc
                + ("; the baseline kernel shows it too" if sp.baseline else "") + ")"]
    if d is not None and d.op_index < len(ops):
        hdr += [" *", f" * Op {d.op_index + 1} ({ops[d.op_index]}):",
                f" *   reference overlay: {d.reference}", f" *   {target_desc}: {d.target}"]
    elif d is not None:
        hdr += [" *", f" * Exit: reference overlay {d.reference}, {target_desc} {d.target}"]
    if f.known:
        hdr += [" *", f" * Known divergence: {f.known.note} ({f.known.doc})"]
    hdr += [" *", " * Build and run as root: gcc -O2 -Wall -o repro repro.c && ./repro /ovl",
            (" * Exit 0: the reference overlay's answer; 1: the divergence." if d is not None else
             " * Exit 0: the results are the reference overlay's; the finding is the splat in dmesg.")
            + (" Then look for the splat in dmesg." if sp is not None and d is not None else ""),
            (f" * Found by: {command}" if command else " * Found by: kproto fuzz"), " */"]
    comments = [f.reference_lines[i] if i < len(f.reference_lines) else "?" for i in range(len(ops))]
    main = ["", "int main(int argc, char **argv)", "{", "\tconst char *dir = argc > 1 ? argv[1] : \"/ovl\";", "",
            "\tif (chdir(dir) < 0) {", "\t\tperror(dir);", "\t\treturn 2;", "\t}", "\tfault_guard_init();",
            *_main_body(ops, comments), ""]
    if d is not None and d.op_index < len(ops):
        main += [f"\tif (strcmp(LINE, {c_str(d.reference)}) != 0) {{",
                 f"\t\tprintf(\"DIVERGES at op {d.op_index + 1} ({ops[d.op_index].split()[0]}): "
                 f"got \\\"%s\\\", the reference overlay gives \\\"%s\\\"\\n\", LINE, {c_str(d.reference)});",
                 "\t\treturn 1;", "\t}", "\tprintf(\"OK: same as the reference overlay\\n\");"]
    elif d is None:
        main += ["\tprintf(\"DONE: same as the reference overlay; the splat, if any, is in dmesg\\n\");"]
    main += ["\treturn 0;", "}", ""]
    return "\n".join(hdr) + "\n" + _fmt_h_body() + "\n".join(main)


def guest_test_name(f: Finding) -> str:
    return f"fuzz_{f.id}"


def op_signature(f: Finding) -> str:
    """What makes two findings the same test: the first difference's kind and fields, and the
    sequence of operation kinds (arguments aside). Kept as a `fuzzsig:` tag in the guest test's spec."""
    kinds = " ".join(o.split()[0] for o in f.ops if o.split())
    return "fuzzsig:" + hashlib.sha256(f"{f.key}|{kinds}".encode()).hexdigest()[:12]


def existing_test_with(tests_dir: Path, sig: str) -> str | None:
    for spec in sorted(tests_dir.glob("*.toml")):
        try:
            text = spec.read_text()
        except OSError:
            continue
        if f'"{sig}"' in text:
            return spec.stem
    return None


def guest_test_c(f: Finding) -> str:
    what = (f"{f.diff.kind} differs (reference: {f.diff.reference!s}; target: {f.diff.target!s})"
            if f.diff is not None else f"the kernel prints {f.splat.title if f.splat else 'a splat'}")
    hdr = [f"/* kproto fuzz finding {f.id} as a regression test: {what}.",
           " * Generated by rig/fuzz/emit.py: observations op01, op02, ... are the normalised result of each op",
           " * (format: guest_tests/fuzz/fmt.h). Fixture: the .toml beside this file. */",
           "#define KPROTO_FUZZ_KEYED 1"]
    main = ["", "int main(int argc, char **argv)", "{", "\tif (argc < 2) {",
            "\t\tfprintf(stderr, \"usage: %s MERGED_DIR\\n\", argv[0]);", "\t\treturn 2;", "\t}",
            "\tif (chdir(argv[1]) < 0) {", "\t\tprintf(\"fatal=chdir: %s\\n\", ename(errno));", "\t\treturn 1;", "\t}",
            "\tfault_guard_init();", *_main_body(f.ops, None), "\treturn 0;", "}", ""]
    return "\n".join(hdr) + "\n" + _fmt_h_body() + "\n".join(main)


def _toml_str(s: str) -> str:
    return json.dumps(s)


def guest_test_toml(f: Finding) -> str:
    lines = [f"description = {_toml_str(f'kproto fuzz finding {f.id}: ' + '; '.join(f.ops))}",
             "timeout = 20", f"tags = [\"fuzz\", {_toml_str(f.kind)}, {_toml_str(op_signature(f))}]",
             "mount_options = []", ""]
    for layer, title in (("L", "[[lower]]"), ("U", None)):
        if title:
            lines.append(title)
        for e in FIXTURE:
            if e.layer != layer:
                continue
            lines.append("[[lower.entries]]" if layer == "L" else "[[upper.entries]]")
            lines += [f"path = {_toml_str(e.path)}", f"type = {_toml_str(e.type)}"]
            if e.type == "file":
                lines.append(f"content = {_toml_str(e.arg or '')}")
            if e.type == "symlink":
                lines.append(f"target = {_toml_str(e.arg or '')}")
            if e.type in ("file", "dir"):
                lines.append(f"mode = 0o{e.mode:o}")
            if e.type != "whiteout":
                lines.append(f"mtime = {OLD_TIME}")
            xs = {x.name: x.value for x in FIXTURE_XATTRS if x.layer == layer and x.path == e.path}
            if xs:
                lines.append("xattrs = { " + ", ".join(f"{_toml_str(n)} = {_toml_str(v)}" for n, v in xs.items()) + " }")
            lines.append("")
    return "\n".join(lines)


def compile_reproducer(f: Finding) -> Path:
    """The finding's repro.c (emit_finding wrote it) built statically: the binary's path."""
    assert f.reproducer is not None
    return compile_dir(f.reproducer.parent, cache_name="fuzz-repro", what="fuzz reproducer",
                       sources=[f.reproducer]) / f.reproducer.stem


def emit_finding(f: Finding, findings_dir: Path, tests_dir: Path | None, target_desc: str, command: str = "") -> None:
    """Write the finding's files: DIR/<id>/{ops.txt, result.json, repro.c}, and the guest test
    TESTS_DIR/fuzz_<id>.c + .toml (skipped when tests_dir is None, or when a test of the same
    signature is there already: then f.duplicate_of names it)."""
    d = findings_dir / f.id
    d.mkdir(parents=True, exist_ok=True)
    (d / "ops.txt").write_text("".join(o + "\n" for o in f.ops))
    f.reproducer = d / "repro.c"
    f.reproducer.write_text(reproducer_c(f, target_desc, command))
    if tests_dir is not None:
        tests_dir.mkdir(parents=True, exist_ok=True)
        dup = existing_test_with(tests_dir, op_signature(f))
        if dup is not None:
            f.duplicate_of = dup           # the same first difference after the same kinds of operations
        else:
            name = guest_test_name(f)
            (tests_dir / f"{name}.c").write_text(guest_test_c(f))
            (tests_dir / f"{name}.toml").write_text(guest_test_toml(f))
            f.guest_test = tests_dir / f"{name}.c"
    (d / "result.json").write_text(json.dumps({**f.as_json(), "reference_lines": f.reference_lines,
                                               "target_lines": f.target_lines}, indent=1) + "\n")
