"""The `kproto test` report: JSON per DESIGN.md §4, the terminal summary, JUnit and HTML."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from .paths import TEMPLATES

STATUS_ORDER = {"regressed": 0, "flaky": 1, "error": 2, "fixed": 3, "diverges": 4, "match": 5}


@dataclass
class Report:
    verdict: str                       # clean | regressed | flaky | error
    kernel: dict                       # {"source", "version", "base", "accel"}
    patches: list[dict]
    tests: list[dict]                  # TestVerdict.as_json()
    splats: dict                       # {"baseline": [...], "patched": [...], "new": [...]}
    timings: dict                      # build_s, boot_s, tests_s, total_s (+ details)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict | None = None
    verdicts: list = field(default_factory=list)    # compare.TestVerdict objects (for JUnit/KTAP)

    def as_json(self) -> dict:
        out = {"verdict": self.verdict, "kernel": self.kernel, "patches": self.patches, "tests": self.tests,
               "splats": self.splats, "timings": self.timings, "reasons": self.reasons, "notes": self.notes}
        if self.checks is not None:
            out["checks"] = self.checks
        return out

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json(), indent=1) + "\n")


def _fmt_obs(obs: dict, key: str) -> str:
    if not obs:
        return "-"
    if key == "<exit>":
        return f"signal {obs.get('signal')}" if obs.get("signal") else f"exit {obs.get('exit_code')}"
    val = obs.get("observations", {}).get(key)
    if val is None:
        val = obs.get("upper", {}).get(key) if key.startswith("upper:") else None
    return "(absent)" if val is None else str(val)


def terminal(report: Report) -> str:
    """What a kernel developer reads first: fixed / regressed / diverging tests with the observations
    that differ side by side, then the splats, then the verdict and timings."""
    lines: list[str] = []
    k = report.kernel
    names = ", ".join(Path(p["path"]).name for p in report.patches) or "(no patches)"
    lines.append(f"kproto test: {names} on linux {k.get('version', '?')} ({k.get('source', '?')}, accel {k.get('accel', '?')})")
    counts: dict[str, int] = {}
    for t in report.tests:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines.append("tests: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: STATUS_ORDER.get(x[0], 9))))
    lines.append("")
    w = max([len(t["name"]) for t in report.tests] + [10])
    lines.append(f"  {'STATUS':<10} {'TEST':<{w}}  reference | baseline | patched")
    for t in sorted(report.tests, key=lambda t: (STATUS_ORDER.get(t["status"], 9), t["name"])):
        tag = t["status"].upper()
        known = f"  [known divergence: {t['known']}]" if t.get("known") else ""
        lines.append(f"  {tag:<10} {t['name']:<{w}}{known}")
        if t.get("reason") and t["status"] in ("regressed", "flaky"):
            lines.append(f"  {'':<10}   {t['reason']}")
        elif (t.get("evidence") or {}).get("summary"):
            lines.append(f"  {'':<10}   boots: {t['evidence']['summary']}")
        for note in t.get("side_effects") or []:
            lines.append(f"  {'':<10}   side effect: {note}")
        if t["status"] == "match":
            continue
        for side, evs in (t.get("kernel_events") or {}).items():
            lines.append(f"  {'':<10}   {side} kernel after this test: {'; '.join(evs)}")
        for d in t.get("diffs", [])[:6]:
            lines.append(f"  {'':<10}   {d['key']}: {d.get('reference')!s} | {d.get('baseline')!s} | {d.get('patched')!s}")
        for side in ("baseline", "patched"):
            err = (t.get(side) or {}).get("error")
            if err:
                lines.append(f"  {'':<10}   {side} error: {err}")
        if t.get("blocked_tasks"):
            dump = [l for l in t["blocked_tasks"].splitlines() if l.strip()]
            lines.append(f"  {'':<10}   blocked tasks (sysrq-w, {len(dump)} lines; full dump in --json):")
            lines.extend(f"  {'':<10}     | {l}" for l in dump[:10])
    lines.append("")
    sp = report.splats
    if sp.get("new"):
        lines.append(f"NEW SPLATS in the patched kernel ({len(sp['new'])}):")
        for s in sp["new"]:
            seen = s.get("boots") or {}
            where = (f"  [seen in {seen.get('patched')} patched boots, {seen.get('baseline')} baseline boots]"
                     if seen else "")
            lines.append(f"  {s['kind']:<10} {s['title']}{where}")
            if s.get("signature"):
                lines.append(f"  {'':<10} signature: {s['signature']}")
            excerpt = [l for l in s["log"].splitlines() if l.strip()][:14]
            lines.extend(f"      | {l}" for l in excerpt)
    else:
        lines.append(f"splats: none new (baseline {len(sp.get('baseline', []))}, patched {len(sp.get('patched', []))})")
    for s in sp.get("baseline", []):
        lines.append(f"  (also in baseline) {s['kind']}: {s['title']}")
    if report.checks:
        cp = [p.get("checkpatch") or {} for p in report.checks.get("patches", [])]
        errs, warns = sum(c.get("errors", 0) for c in cp), sum(c.get("warnings", 0) for c in cp)
        lines.append(f"checkpatch: {errs} error(s), {warns} warning(s) over {len(cp)} patch(es)"
                     + ("" if not (errs or warns) else " (kproto check PATCH... for the findings)"))
        if report.checks.get("to"):
            lines.append(f"To: {', '.join(report.checks['to'])}")
        if report.checks.get("cc"):
            lines.append(f"Cc: {', '.join(report.checks['cc'])}")
    lines.append("")
    for n in report.notes:
        lines.append(f"note: {n}")
    t = report.timings
    detail = "  ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items() if k.endswith("_s") and isinstance(v, (int, float)))
    lines.append(f"timings: {detail}")
    why = f" ({'; '.join(report.reasons)})" if report.reasons else ""
    lines.append(f"VERDICT: {report.verdict.upper()}{why}")
    return "\n".join(lines)


def html(report: Report) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    return env.get_template("report.html.j2").render(r=report.as_json(), order=STATUS_ORDER)
