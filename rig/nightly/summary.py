"""The plain-text summary of a nightly run (the email body, summary.txt, what `kproto nightly` prints), and
the one-line texts of a change and of a series that the HTML report and `kproto history` share."""
from __future__ import annotations

import time
from pathlib import Path

from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED
from rig.nightly.record import SeriesRecord

SEVERITY_ORDER = {"regression": 0, "improvement": 1, "info": 2}


def change_text(c: dict, with_kernel: bool = False) -> str:
    if c.get("series"):
        who = c["series"] + (f" [{c['kernel']}]" if with_kernel and c.get("kernel") else "")
    else:
        who = c.get("kernel") or ""
    k = c["kind"]
    subj, before, after = c.get("subject"), c.get("before"), c.get("after")
    phrases = {
        "series-stopped-applying": f"no longer applies (last run: {before})",
        "series-stopped-building": f"no longer builds (last run: {before})",
        "series-stopped-booting": f"no longer boots (last run: {before})",
        "series-recovered": f"gets further again: {before} -> {after}",
        "series-error": f"rig error (last run: {before})",
        "series-added": f"new series ({after})",
        "series-removed": f"series gone from the config (last run: {before})",
        "series-patches-changed": f"patches changed ({before} -> {after})",
        "kernel-changed": f"kernel moved: {before} -> {after}",
        "test-newly-failing": f"test {subj}: {before} -> {after}",
        "test-newly-fixed": f"test {subj}: {before} -> {after}",
        "test-status-changed": f"test {subj}: {before} -> {after}",
        "test-added": f"test {subj} added ({after})",
        "test-removed": f"test {subj} no longer run (was {before})",
        "new-splat": f"new splat: {subj}",
        "splat-gone": f"splat gone: {subj}",
        "bench-change": f"bench {subj}: {before} -> {after} vs baseline",
        "new-fuzz-finding": f"new fuzz finding: {subj}",
    }
    fallback = f"{k} {subj or ''} {before or ''} -> {after or ''}"
    text = f"{who}: {phrases.get(k, fallback)}"
    if c.get("detail"):
        text += f"\n      {c['detail']}"
    return text


def bisect_line(b: dict) -> str:
    """A series' first-bad-patch entry (rig/nightly/bisecting.py) as the summary and the HTML report say it:
    "first bad patch: 0003-foo.patch (evidence ...)"."""
    fb = b.get("first_bad")
    if fb:
        return f"first bad patch: {Path(fb['path']).name} ({b.get('evidence') or b.get('message') or ''})"
    if b.get("candidates"):
        names = ", ".join(Path(c["path"]).name for c in b["candidates"])
        return f"first bad patch: one of {names} ({b.get('message') or ''})"
    return f"bisect: {b.get('result')}: {b.get('message') or ''}"


def duration(a: str | None, b: str | None) -> str:
    if not a or not b:
        return "?"
    try:
        s = int(time.mktime(time.strptime(b, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.strptime(a, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return "?"
    return f"{s // 60}m{s % 60:02d}s"


def series_line(r: SeriesRecord) -> str:
    if r.outcome == "tested":
        counts: dict[str, int] = {}
        for t in r.tests:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no tests"
        sp = len(r.splats.get("new", []))
        return f"tested, {r.verdict}: {what}" + (f"; {sp} new splat(s) vs baseline" if sp else "")
    return f"{r.outcome}: {r.error or ''}".rstrip(": ")


def text_summary(run_row: dict, prev: dict | None, kernels: list[dict], records: list[SeriesRecord],
                 changes: list[dict], kernel_errors: list[str], report_dir: Path | None = None) -> str:
    """The plain-text summary: the email body."""
    reg = [c for c in changes if c["severity"] == "regression"]
    imp = [c for c in changes if c["severity"] == "improvement"]
    info = [c for c in changes if c["severity"] == "info"]
    code = run_row.get("exit_code")
    names: dict[object, str] = {EXIT_CLEAN: "OK", EXIT_REGRESSED: "REGRESSED", EXIT_INFRA: "INFRA ERROR"}
    state = names.get(code, str(code))
    L = [f"kproto nightly run {run_row['id']}: {state} -- {len(reg)} regression(s), {len(imp)} improvement(s)"]
    L.append(f"started {run_row['started']}, finished {run_row.get('finished') or '-'} "
             f"({duration(run_row['started'], run_row.get('finished'))}) on {run_row.get('host') or '?'}")
    L.append(f"compared with run {prev['id']} of {prev['started']}" if prev else "first complete run: nothing to compare with")
    for k in kernels:
        if k.get("error"):
            L.append(f"kernel {k['name']}: ERROR {k['error']}")
        else:
            L.append(f"kernel {k['name']}: linux {k.get('version')} at {str(k.get('commit_id') or '')[:12]} ({k.get('source')})")
    L.append("")
    for title, group in (("REGRESSIONS", reg), ("IMPROVEMENTS", imp), ("OTHER CHANGES", info)):
        if group:
            L.append(f"{title} ({len(group)}):")
            L.extend(f"  - {change_text(c, len(kernels) > 1)}" for c in group)
            L.append("")
    if not changes and prev:
        L.extend(["no changes since the last complete run", ""])
    L.append("SERIES:")
    w = max([len(r.name) for r in records] + [6])
    for r in records:
        kn = f" [{r.kernel}]" if len(kernels) > 1 else ""
        L.append(f"  {r.name:<{w}}{kn}  {series_line(r)}")
        if r.bisect:
            L.append(f"  {'':<{w}}  {bisect_line(r.bisect)}")
        for path in r.reproducers:
            L.append(f"  {'':<{w}}  reproducer: {path}")
        for n in r.notes:
            L.append(f"  {'':<{w}}  note: {n}")
    for e in kernel_errors:
        L.append(f"  infra: {e}")
    if report_dir:
        L += ["", f"report: {report_dir / 'report.html'}", f"json:   {report_dir / 'report.json'}",
              f"junit:  {report_dir / 'junit'}/"]
    L.append(f"exit {code}")
    return "\n".join(L) + "\n"
