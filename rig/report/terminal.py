"""The text outputs: `render` is the `kproto test` report a kernel developer reads first (fixed / regressed /
diverging tests with the observations that differ side by side, then the splats, then the verdict and
timings); `format_table` is `kproto run-tests`' table (one line per test, the differing observations of
each non-matching test below it)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rig.analysis import verdict as verdictmod
from rig.analysis.compare import COLUMNS, TestVerdict, counts
from rig.analysis.verdict import TestStatus
from rig.core.progress import plural
from rig.report.model import Report

PAD = f"  {'':<10}   "        # indent of the lines under a test in the report


def _test_lines(t: dict, w: int) -> list[str]:
    """One test of the report: its status line, then (unless it matches) what differs and why."""
    tag = str(t["status"]).upper()
    known = f"  [known divergence: {t['known']}]" if t.get("known") else ""
    lines = [f"  {tag:<10} {t['name']:<{w}}{known}"]
    if t.get("reason") and t["status"] in (TestStatus.REGRESSED, TestStatus.FLAKY):
        lines.append(f"{PAD}{t['reason']}")
    elif (t.get("evidence") or {}).get("summary"):
        lines.append(f"{PAD}boots: {t['evidence']['summary']}")
    for note in t.get("side_effects") or []:
        lines.append(f"{PAD}side effect: {note}")
    if t["status"] == TestStatus.MATCH:
        return lines
    for side, evs in (t.get("kernel_events") or {}).items():
        lines.append(f"{PAD}{side} kernel after this test: {'; '.join(evs)}")
    for d in t.get("diffs", [])[:6]:
        lines.append(f"{PAD}{d['key']}: {d.get('reference')!s} | {d.get('baseline')!s} | {d.get('patched')!s}")
    for side in ("baseline", "patched"):
        err = (t.get(side) or {}).get("error")
        if err:
            lines.append(f"{PAD}{side} error: {err}")
    if t.get("blocked_tasks"):
        dump = [ln for ln in t["blocked_tasks"].splitlines() if ln.strip()]
        lines.append(f"{PAD}blocked tasks (sysrq-w, {len(dump)} lines; full dump in --json):")
        lines.extend(f"{PAD}  | {ln}" for ln in dump[:10])
    return lines


def _splat_lines(sp: dict, verbose: bool = False) -> list[str]:
    lines: list[str] = []
    if sp.get("new"):
        lines.append(f"NEW SPLATS in the patched kernel ({len(sp['new'])}):")
        for s in sp["new"]:
            seen = s.get("boots") or {}
            # every boot of the run, where a test's line counts the boots that ran that test
            where = (f"  [seen in {seen.get('patched')} of all patched boots, {seen.get('baseline')} of all "
                     f"baseline boots]" if seen else "")
            lines.append(f"  {s['kind']:<10} {s['title']}{where}")
            if s.get("signature"):
                lines.append(f"  {'':<10} signature: {s['signature']}")
            excerpt = [ln for ln in s["log"].splitlines() if ln.strip()][:14]
            lines.extend(f"      | {ln}" for ln in excerpt)
    else:
        lines.append(f"splats: none new (baseline {len(sp.get('baseline', []))}, patched {len(sp.get('patched', []))})")
    if verbose:
        for s in sp.get("baseline", []):
            lines.append(f"  (also in baseline) {s['kind']}: {s['title']}")
    elif sp.get("new") and sp.get("baseline"):
        lines.append(f"  ({plural(len(sp['baseline']), 'splats')} in the baseline too; -v lists them)")
    return lines


def _check_lines(checks: dict) -> list[str]:
    cp = [p.get("checkpatch") or {} for p in checks.get("patches", [])]
    errs, warns = sum(c.get("errors", 0) for c in cp), sum(c.get("warnings", 0) for c in cp)
    lines = [f"checkpatch: {plural(errs, 'errors')}, {plural(warns, 'warnings')} over {plural(len(cp), 'patches')}"
             + ("" if not (errs or warns) else " (kproto check PATCH... for the findings)")]
    if checks.get("to"):
        lines.append(f"To: {', '.join(checks['to'])}")
    if checks.get("cc"):
        lines.append(f"Cc: {', '.join(checks['cc'])}")
    return lines


def _rest_line(matching: list[dict], shown: int) -> str:
    """The one line that stands for the matching tests the default report does not list."""
    n = len(matching)
    what = (f"all {plural(n, 'tests')}" if not shown and n > 1 else
            plural(n, "tests") if not shown else f"{n} more {'test' if n == 1 else 'tests'}")
    odd = sum(1 for t in matching if t.get("side_effects"))
    return (f"  {what} {'matches' if n == 1 else 'match'} the reference ("
            + (f"{odd} with side effects; " if odd else "") + f"-v lists {'it' if n == 1 else 'them'})")


def render(report: Report, verbose: bool = False) -> str:
    """The whole `kproto test` report as terminal text. By default the tests that do not match the
    reference are listed (with what differs) and the matching ones are one count; the new splats are
    shown, the baseline's only counted. VERBOSE lists every test and every splat."""
    lines: list[str] = []
    k = report.kernel
    names = ", ".join(Path(p["path"]).name for p in report.patches) or "(no patches)"
    lines.append(f"kproto test: {names} on linux {k.get('version', '?')} ({k.get('source', '?')}, accel {k.get('accel', '?')})")
    per: dict[str, int] = {}
    for t in report.tests:
        per[t["status"]] = per.get(t["status"], 0) + 1
    lines.append("tests: " + ", ".join(f"{n} {s}" for s, n in sorted(per.items(), key=lambda x: verdictmod.order(x[0]))))
    lines.append("")
    ordered = sorted(report.tests, key=lambda t: (verdictmod.order(t["status"]), t["name"]))
    listed = ordered if verbose else [t for t in ordered if t["status"] != TestStatus.MATCH]
    matching = [] if verbose else [t for t in ordered if t["status"] == TestStatus.MATCH]
    if listed:
        w = max([len(t["name"]) for t in listed] + [10])
        lines.append(f"  {'STATUS':<10} {'TEST':<{w}}  reference | baseline | patched")
        for t in listed:
            lines.extend(_test_lines(t, w))
    if matching:
        lines.append(_rest_line(matching, len(listed)))
    lines.append("")
    lines.extend(_splat_lines(report.splats, verbose))
    if report.checks:
        lines.extend(_check_lines(report.checks))
    lines.append("")
    for n in report.notes:
        lines.append(f"note: {n}")
    t = report.timings
    detail = "  ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if k.endswith("_s") and isinstance(v, (int, float)))
    lines.append(f"timings: {detail}")
    why = f" ({'; '.join(report.reasons)})" if report.reasons else ""
    lines.append(f"VERDICT: {report.verdict.upper()}{why}")
    return "\n".join(lines)


def _cell(v: str | None, width: int) -> str:
    s = "(absent)" if v is None else (v if v != "" else '""')
    return s if len(s) <= width else s[: width - 1] + "…"


def format_table(verdicts: list[TestVerdict], columns: Sequence[str] = COLUMNS) -> str:
    """Terminal table: one line per test; for each non-matching test the differing observations side by
    side below it. A column is "attr" or "attr:label" (attr in reference/baseline/patched)."""
    cols = [(c.split(":", 1) + [c])[:2] if ":" in c else [c, c] for c in columns]
    name_w = max([len(v.name) for v in verdicts] + [4])
    lines = [f"{'TEST'.ljust(name_w)}  STATUS"]
    cell_w = 30
    for v in verdicts:
        lines.append(f"{v.name.ljust(name_w)}  {verdictmod.label(v.status, v.known)}")
        if v.status == TestStatus.MATCH:
            continue
        if v.reason:
            lines.append(f"    ! {v.reason}")
        if v.known:
            lines.append(f"    known: {v.known}")
        if v.diffs:
            key_w = min(max(len(d.key) for d in v.diffs), 40)
            lines.append("    " + "".join([("key".ljust(key_w))] + [f"  {lbl[:cell_w].ljust(cell_w)}"
                                                                    for _, lbl in cols]).rstrip())
            for d in v.diffs:
                row = _cell(d.key, 40).ljust(key_w)
                for attr, _ in cols:
                    row += "  " + _cell(getattr(d, attr), cell_w).ljust(cell_w)
                lines.append("    " + row.rstrip())
    c = counts(verdicts)
    summary = ", ".join(f"{n} {s}" for s, n in c.items() if n and s != "known")
    if c["known"]:
        summary += f" ({c['known']} known)"
    lines.append(f"{plural(len(verdicts), 'tests')}: {summary or 'none'}")
    return "\n".join(lines)
