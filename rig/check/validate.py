"""`kproto check`: is this series ready to post?

Everything comes from the kernel's own tools, run in the source tree at the base:
- the series is applied patch by patch (`git am`, through rig.kernel.tree's locked, self-restoring applied());
  the first patch that does not apply is named with the hunk that failed;
- `scripts/checkpatch.pl` runs on every patch (`--strict` passed through), its findings parsed per patch;
- `scripts/get_maintainer.pl --nogit --nogit-fallback` gives the To (maintainers) / Cc (reviewers, lists);
- optionally (`each`) every prefix of the series is built with rig.kernel.build (incremental, cached), naming the
  first patch that breaks the build, so the series is bisectable.

An mbox holding several patches is split with `git mailsplit` so each patch is reported on its own; a cover
letter (a `0000-` file, or a message without a diff in an mbox) is not applied, but its subject is kept.
"""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from rig.kernel import patches as patchmod
from rig.core.errors import EXIT_BAD_INPUT, EXIT_CLEAN, EXIT_REGRESSED, BadInput, BuildError, MissingTool, PatchError
from rig.kernel.patches import Patch
from rig.kernel.tree import SourceTree

_FINDING = re.compile(r"^(ERROR|WARNING|CHECK):(?:([A-Z0-9_]+):)? (.*)$")
_WHERE = re.compile(r"^#(\d+): FILE: (\S+?):(\d+):")
_TOTAL = re.compile(r"^total: (\d+) errors, (\d+) warnings,(?: (\d+) checks,)? (\d+) lines checked", re.M)
_HUNK = re.compile(r"hunk at (\S+:\d+)")
_GM_LINE = re.compile(r"^(.*?)\s*\(([^()]*)\)\s*$")
_TO_ROLES = ("maintainer", "supporter", "odd fixer", "chief penguin")
_HAS_DIFF = re.compile(rb"^(diff --git |--- \S|Index: )", re.M)


@dataclass
class SeriesPatch:
    """One patch of the series as the user knows it (file name, or mbox + message number)."""
    patch: Patch
    name: str                   # what reports call it: file name, or "series.mbox#2"
    origin: Path                # the file the user passed
    part: int | None = None     # message number inside an mbox


@dataclass
class CoverLetter:
    path: Path
    subject: str


@dataclass
class Series:
    patches: list[SeriesPatch]
    cover: CoverLetter | None = None


def _subject_of(data: bytes) -> str:
    m = re.search(rb"^Subject: (.*(?:\n[ \t].*)*)", data, re.M)
    return re.sub(r"\s+", " ", m.group(1).decode("utf-8", "replace")).strip() if m else ""


@contextlib.contextmanager
def prepared(series: list[Patch], cover_paths: tuple[Path, ...] = ()) -> Iterator[Series]:
    """Split mboxes holding several messages into one patch each (in a temp dir that lives as long as the
    context); a message without a diff is the cover letter."""
    tmp = Path(tempfile.mkdtemp(prefix="kproto-check-"))
    try:
        out: list[SeriesPatch] = []
        cover: CoverLetter | None = None
        for cp in cover_paths:
            cover = CoverLetter(Path(cp), _subject_of(Path(cp).read_bytes()))
        for n, p in enumerate(series):
            if p.count <= 1:
                out.append(SeriesPatch(p, p.path.name, p.path))
                continue
            dest = tmp / f"{n:03d}"
            dest.mkdir()
            proc = subprocess.run(["git", "mailsplit", "-b", "--keep-cr", f"-o{dest}", str(p.path)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise BadInput(f"cannot split mbox {p.path}: {proc.stderr.strip()[:200]}")
            for i, msg in enumerate(sorted(dest.iterdir()), 1):
                data = msg.read_bytes()
                if not _HAS_DIFF.search(data):
                    cover = CoverLetter(p.path, _subject_of(data))
                    continue
                part = patchmod.load(msg)
                out.append(SeriesPatch(part, f"{p.path.name}#{i}", p.path, i))
        if not out:
            raise BadInput("no patches to check")
        yield Series(out, cover)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cover_letters(args: tuple[Path, ...] | list[Path]) -> tuple[Path, ...]:
    """The 0000- cover letters that expand() skips in directories, or that were named directly."""
    found = []
    for a in map(Path, args):
        if a.is_dir():
            found += sorted(f for f in a.iterdir() if f.name.startswith("0000-") and f.suffix == ".patch")
        elif a.is_file() and a.name.startswith("0000-") and not _HAS_DIFF.search(a.read_bytes()):
            found.append(a)
    return tuple(found)


def patch_args(args: tuple[Path, ...] | list[Path]) -> list[Path]:
    """ARGS without directly named cover letters (which have no diff and would be refused by load())."""
    covers = set(cover_letters([a for a in map(Path, args) if not a.is_dir()]))
    return [Path(a) for a in args if Path(a) not in covers]


# --- the kernel's scripts ------------------------------------------------------------------------------

def _perl_script(tree: SourceTree, name: str) -> list[str]:
    if shutil.which("perl") is None:
        raise MissingTool("perl is not installed (apt-get install perl); checkpatch.pl needs it")
    script = tree.path / "scripts" / name
    if not script.is_file():
        raise BadInput(f"{tree.origin} has no scripts/{name}; is it a kernel tree?")
    return ["perl", str(script)]


def parse_checkpatch(output: str) -> dict:
    """checkpatch.pl output → {errors, warnings, checks, findings: [{level, type, message, file, line}]}."""
    findings: list[dict] = []
    for line in output.splitlines():
        m = _FINDING.match(line)
        if m:
            findings.append({"level": m.group(1), "type": m.group(2) or "", "message": m.group(3).strip(),
                             "file": None, "line": None})
            continue
        w = _WHERE.match(line)
        if w and findings and findings[-1]["file"] is None:
            findings[-1]["file"] = w.group(2)
            findings[-1]["line"] = int(w.group(3))
    t = _TOTAL.search(output)
    if t:
        errors, warnings, checks = int(t.group(1)), int(t.group(2)), int(t.group(3) or 0)
    else:   # no summary line: count what was seen
        errors = sum(f["level"] == "ERROR" for f in findings)
        warnings = sum(f["level"] == "WARNING" for f in findings)
        checks = sum(f["level"] == "CHECK" for f in findings)
    return {"errors": errors, "warnings": warnings, "checks": checks, "findings": findings}


def checkpatch(tree: SourceTree, patch: Path, strict: bool = False) -> dict:
    cmd = _perl_script(tree, "checkpatch.pl") + ["--show-types", "--color=never"]
    if strict:
        cmd.append("--strict")
    proc = subprocess.run([*cmd, str(patch)], cwd=tree.path, capture_output=True, text=True, timeout=600)
    out = parse_checkpatch(proc.stdout)
    if not _TOTAL.search(proc.stdout) and proc.returncode != 0 and not out["findings"]:
        raise BadInput(f"checkpatch.pl could not check {patch.name}: "
                       f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return out


def parse_get_maintainer(output: str) -> list[dict]:
    """get_maintainer.pl lines 'Name <mail> (role:SECTION)' → [{address, role, to}]."""
    out = []
    for line in output.splitlines():
        line = line.strip()
        if not line or "@" not in line:
            continue
        m = _GM_LINE.match(line)
        addr, role = (m.group(1), m.group(2)) if m else (line, "")
        kind = role.split(":", 1)[0].strip()
        out.append({"address": addr.strip(), "role": role, "to": kind in _TO_ROLES})
    return out


def get_maintainer(tree: SourceTree, patches: list[Path]) -> list[dict]:
    cmd = _perl_script(tree, "get_maintainer.pl") + ["--nogit", "--nogit-fallback", "--roles", "--norolestats"]
    proc = subprocess.run([*cmd, *map(str, patches)], cwd=tree.path, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise BadInput(f"get_maintainer.pl failed: {proc.stderr.strip().splitlines()[-1:]}")
    return parse_get_maintainer(proc.stdout)


# --- the check -----------------------------------------------------------------------------------------

def _rename(message: str, patch: SeriesPatch, index: int) -> str:
    """PatchError names the file it applied; for a split mbox that is a temp file: use the user's name."""
    tmpname = patch.patch.path.name
    message = patch.name + message[len(tmpname):] if message.startswith(tmpname) else message
    # git am numbers the messages of the one file it was given ("patch 0001 '...'"): not the series index
    message = re.sub(r" \(patch \d+ '.*?'\)", "", message, count=1)
    if index > 1:
        prior = "patch 1" if index == 2 else f"patches 1-{index - 1}"
        message = message.replace("does not apply to the base", f"does not apply on the base + {prior}", 1)
    return message


def _compiler_lines(detail: str, tree: SourceTree) -> list[str]:
    """The compiler's error lines of a failed build, with paths relative to the source tree."""
    lines = [l for l in detail.splitlines() if l.strip()]
    errors = [l for l in lines if re.search(r"error:|undefined reference", l)] or lines
    prefix = re.compile(rf"^(?:{re.escape(str(tree.path))}/|(?:\.\./)+(?:[^/\s]+/)*?{re.escape(tree.path.name)}/)")
    return [prefix.sub("", l) for l in errors]


def check_series(tree: SourceTree, series: Series, *, strict: bool = False, each: bool = False,
                 build_all: bool = False, config: tuple[Path, ...] = (),
                 progress: Callable[[str], None] = lambda m: None) -> dict:
    n = len(series.patches)
    results: list[dict] = []
    for i, sp in enumerate(series.patches, 1):
        results.append({"index": i, "name": sp.name, "path": str(sp.origin), "part": sp.part,
                        "subject": sp.patch.subject, "applies": None, "apply_error": None, "hunk": None,
                        "checkpatch": None, "build": None})

    # checkpatch, get_maintainer and the apply run under the tree lock; applied([]) restores the base.
    with tree.applied([]):
        for r, sp in zip(results, series.patches):
            progress(f"checkpatch{' --strict' if strict else ''} {sp.name}")
            r["checkpatch"] = checkpatch(tree, sp.patch.path, strict)
        maint = get_maintainer(tree, [sp.patch.path for sp in series.patches])
        for r, sp in zip(results, series.patches):
            try:
                tree._apply_one(sp.patch)
                r["applies"] = True
            except PatchError as e:
                r["applies"] = False
                r["apply_error"] = _rename(e.message, sp, r["index"])
                h = _HUNK.search(e.message)
                r["hunk"] = h.group(1) if h else None
                break

    all_apply = all(r["applies"] for r in results)
    if all_apply and (each or build_all):
        from rig.kernel import build as buildmod
        prefixes = range(1, n + 1) if each else [n]
        for k in prefixes:
            r = results[k - 1]
            progress(f"building the series up to patch {k}/{n} ({series.patches[k - 1].name})")
            try:
                kern = buildmod.build(tree, [sp.patch for sp in series.patches[:k]], config, progress=progress)
                r["build"] = {"ok": True, "version": kern.version, "cached": kern.cached,
                              "build_s": round(kern.build_s, 1), "error": None, "compiler": []}
            except BuildError as e:
                r["build"] = {"ok": False, "version": None, "cached": False, "build_s": None,
                              "error": e.message, "compiler": _compiler_lines(e.detail, tree)}
                break

    problems: list[str] = []
    for r in results:
        if r["applies"] is False:
            where = f" (hunk at {r['hunk']})" if r["hunk"] else ""
            problems.append(f"patch {r['index']}/{n} {r['name']} does not apply{where}")
    does_not_apply = bool(problems)
    for r in results:
        cp = r["checkpatch"]
        if cp and cp["errors"]:
            problems.append(f"patch {r['index']}/{n} {r['name']}: checkpatch: {cp['errors']} errors")
        if r["build"] and not r["build"]["ok"]:
            problems.append(f"patch {r['index']}/{n} {r['name']} breaks the build")
    exit_code = EXIT_BAD_INPUT if does_not_apply else EXIT_REGRESSED if problems else EXIT_CLEAN

    return {
        "ready": exit_code == EXIT_CLEAN,
        "exit_code": exit_code,
        "problems": problems,
        "kernel": {"source": tree.origin, "base": tree.base, "version": tree.version()},
        "strict": strict,
        "built": "each" if each else "series" if build_all else "none",
        "cover_letter": {"path": str(series.cover.path), "subject": series.cover.subject} if series.cover else None,
        "patches": results,
        "maintainers": [m["address"] for m in maint],
        "to": [m["address"] for m in maint if m["to"]],
        "cc": [m["address"] for m in maint if not m["to"]],
        "maintainer_roles": maint,
    }


def run_checks(tree: SourceTree, series: list[Patch], strict: bool = False, **kw) -> dict:
    """The pre-build checks `kproto test` runs: per patch {path, subject, applies, checkpatch: {errors,
    warnings, findings[]}}, plus maintainers / to / cc. No build unless each=True or build_all=True is
    passed. JSON-able. Raises nothing for findings; BadInput for unusable input, MissingTool without perl."""
    with prepared(series) as s:
        return check_series(tree, s, strict=strict, **kw)


# --- text ----------------------------------------------------------------------------------------------

def format_text(res: dict) -> str:
    k = res["kernel"]
    n = len(res["patches"])
    lines = [f"kproto check: {n} patch{'es' if n != 1 else ''} on linux {k['version']} "
             f"(base {k['base'][:12]}, {k['source']})"]
    if res.get("cover_letter"):
        lines.append(f"cover letter: {res['cover_letter']['subject']}")
    lines.append("")
    for r in res["patches"]:
        lines.append(f"[{r['index']}/{n}] {r['name']}")
        if r["subject"]:
            lines.append(f"      subject:    {r['subject']}")
        if r["applies"] is None:
            lines.append("      applies:    not tried (an earlier patch does not apply)")
        elif r["applies"]:
            lines.append("      applies:    yes")
        else:
            lines.append(f"      applies:    NO: {r['apply_error']}")
        cp = r["checkpatch"]
        if cp:
            extra = f", {cp['checks']} checks" if res.get("strict") else ""
            lines.append(f"      checkpatch: {cp['errors']} errors, {cp['warnings']} warnings{extra}")
            for f in cp["findings"]:
                where = f"{f['file']}:{f['line']}: " if f["file"] else ""
                lines.append(f"        {f['level']}:{f['type']} {where}{f['message']}")
        b = r["build"]
        if b is None and res["built"] == "each" and any(x["build"] and not x["build"]["ok"] for x in res["patches"]):
            lines.append("      build:      not tried (an earlier patch breaks the build)")
        if b:
            if b["ok"]:
                how = "cached" if b["cached"] else f"{b['build_s']:.0f} s"
                lines.append(f"      build:      ok (linux {b['version']}, {how})")
            else:
                lines.append("      build:      BROKEN by this patch")
                lines.extend(f"        {l}" for l in b["compiler"][:12])
    lines.append("")
    if res["to"] or res["cc"]:
        lines.append("To: " + ", ".join(res["to"]))
        lines.append("Cc: " + ", ".join(res["cc"]))
    if res["built"] == "none":
        lines.append("build: not checked (pass --each to build every patch of the series in turn)")
    if res["ready"]:
        lines.append("READY to post")
    else:
        lines.append("NOT READY: " + "; ".join(res["problems"]))
    return "\n".join(lines)
