"""The report files of a nightly run, in its report directory: report.json, report.html (rendered from
templates/nightly.html.j2 through rig.core.templates), summary.txt (rig/nightly/summary.py) and
junit/<kernel>--<series>.xml (through the JUnit writer of rig/report/junit.py)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

from rig.analysis.compare import TestVerdict
from rig.core import templates
from rig.report import junit
from rig.nightly.record import SeriesRecord
from rig.nightly.store import Store
from rig.nightly.summary import SEVERITY_ORDER, bisect_line, change_text, series_line, text_summary

if TYPE_CHECKING:
    from rig.nightly.config import NightlyConfig

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")
T = TypeVar("T")
_STAGE_OF = {"apply-failed": "apply", "build-failed": "build", "boot-failed": "boot"}


def file_stem(kernel: str, series: str) -> str:
    """<kernel>--<series> with anything but [A-Za-z0-9._+-] replaced: the JUnit file and fuzz directory names."""
    return f"{_SAFE.sub('_', kernel)}--{_SAFE.sub('_', series)}"


# ================================================================ report.json

def record_json(r: SeriesRecord) -> dict:
    return {"kernel": r.kernel, "name": r.name, "outcome": r.outcome, "stages": r.stages(), "verdict": r.verdict,
            "error": r.error, "notes": r.notes, "kernel_version": r.kernel_version, "patches": r.patches,
            "series_hash": r.series_hash, "tests": r.tests, "splats": r.splats, "timings": r.timings,
            "bench": r.bench, "findings": r.findings, "bisect": r.bisect, "reproducers": r.reproducers,
            "started": r.started, "finished": r.finished}


def report_json(run_row: dict, prev: dict | None, kernels: list[dict], records: list[SeriesRecord],
                changes: list[dict]) -> dict:
    keep = ("id", "started", "finished", "complete", "state", "exit_code", "config_path", "config_hash", "host",
            "report_dir")
    return {"run": {k: run_row.get(k) for k in keep}, "previous_run": prev["id"] if prev else None,
            "kernels": kernels, "series": [record_json(r) for r in records], "changes": changes,
            "summary": {"regressions": sum(c["severity"] == "regression" for c in changes),
                        "improvements": sum(c["severity"] == "improvement" for c in changes),
                        "series_errors": sum(r.outcome == "error" for r in records)},
            "exit_code": run_row.get("exit_code")}


# ================================================================ JUnit

def junit_for(r: SeriesRecord) -> str:
    """JUnit per series: the kproto test verdicts, or one failing `<stage>` case when the series did not get
    as far as the tests."""
    suite = f"nightly.{r.kernel}.{r.name}"
    if r.outcome == "tested":
        verdicts = r.verdicts or [TestVerdict.from_json(t) for t in r.tests]
        return junit.to_junit(verdicts, suite)
    why = f"{r.outcome}: {r.error or ''}\n{r.error or ''}"         # message, then text
    case = junit.Case(name=_STAGE_OF.get(r.outcome, "rig"), classname=suite)
    if r.outcome == "error":
        case.error = why
    else:
        case.failure = why
    return junit.to_xml(suite, [case])


# ================================================================ report.html

def sparkline(values: list[float | None], width: int = 180, height: int = 44, pad: int = 5) -> dict:
    """SVG geometry of a small line chart: {"points", "dots": [(x, y, value)], "zero_y"} (None values skipped)."""
    n = len(values)
    real = [v for v in values if v is not None]
    if not real:
        return {"points": "", "dots": [], "zero_y": None, "width": width, "height": height}
    lo, hi = min(real + [0.0]), max(real + [0.0])
    if hi - lo < 1e-9:
        hi, lo = hi + 1, lo - 1
    xs = [pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    ys = lambda v: pad + (height - 2 * pad) * (hi - v) / (hi - lo)
    dots = [(round(xs[i], 1), round(ys(v), 1), v) for i, v in enumerate(values) if v is not None]
    return {"points": " ".join(f"{x},{y}" for x, y, _ in dots), "dots": dots, "zero_y": round(ys(0.0), 1),
            "width": width, "height": height}


def history_view(store: Store, run_row: dict, limit: int) -> dict:
    """Last LIMIT runs (oldest first) with per-series outcomes, per-test statuses and bench series."""
    runs = list(reversed(store.runs(limit=limit)))
    runs = [run_row if r["id"] == run_row["id"] else r for r in runs]
    per_run = {r["id"]: {(s.kernel, s.name): s for s in store.load_series(r["id"])} for r in runs}
    rows = []
    for key in _first_seen(k for r in runs for k in per_run[r["id"]]):
        recs = [per_run[r["id"]].get(key) for r in runs]          # one per run, None where the series was not
        rows.append({"kernel": key[0], "series": key[1],
                     "outcomes": [None if s is None else (s.verdict if s.outcome == "tested" else s.outcome)
                                  for s in recs],
                     "tests": _test_rows(recs), "charts": _bench_charts(recs)})
    return {"runs": runs, "rows": rows}


def _first_seen(items: Iterable[T]) -> list[T]:
    out: list[T] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _test_cell(s: SeriesRecord | None, name: str) -> dict:
    if s is None:
        return {"text": "", "cls": "none"}
    if s.outcome != "tested":
        return {"text": "-", "cls": "none", "title": s.outcome}
    t = next((t for t in s.tests if t["name"] == name), None)
    if t is None:
        return {"text": "", "cls": "none"}
    return {"text": t["status"], "cls": t["status"] + (" known" if t.get("known") else "")}


def _test_rows(recs: list[SeriesRecord | None]) -> list[dict]:
    names = _first_seen(t["name"] for s in recs if s for t in s.tests)
    return [{"test": name, "cells": [_test_cell(s, name) for s in recs]} for name in sorted(names)]


def _bench_charts(recs: list[SeriesRecord | None]) -> list[dict]:
    charts = []
    for name in _first_seen(m["name"] for s in recs if s for m in s.bench):
        hits = [next((m for m in s.bench if m["name"] == name), None) if s else None for s in recs]
        vals = [None if h is None else h.get("change_pct") for h in hits]
        charts.append({"metric": name, "unit": next((h["unit"] for h in hits if h and h.get("unit")), None),
                       "values": vals, "medians": [None if h is None else h.get("patched_median") for h in hits],
                       "last": next((v for v in reversed(vals) if v is not None), None), "svg": sparkline(vals)})
    return charts


def relto(path: str, base: Path | str) -> str:
    """PATH relative to BASE (a link from report.html to a file of its report directory)."""
    return os.path.relpath(path, base)


_HTML_FILTERS: dict[str, Callable[..., Any]] = {"change_text": change_text, "short": lambda s, n=12: (s or "")[:n],
                                               "bisect_line": bisect_line, "relto": relto}


def render_html(ctx: dict) -> str:
    return templates.render("nightly.html.j2", filters=_HTML_FILTERS, **ctx)


# ================================================================ all of them

def write_reports(report_dir: Path, store: Store, cfg: NightlyConfig, run_row: dict, prev: dict | None,
                  kernels: list[dict], records: list[SeriesRecord], changes: list[dict],
                  kernel_errors: list[str]) -> str:
    """report.html, report.json, summary.txt and junit/<kernel>--<series>.xml in REPORT_DIR; returns the summary."""
    summary = text_summary(run_row, prev, kernels, records, changes, kernel_errors, report_dir)
    (report_dir / "summary.txt").write_text(summary)
    (report_dir / "report.json").write_text(json.dumps(report_json(run_row, prev, kernels, records, changes), indent=1) + "\n")
    jd = report_dir / "junit"
    jd.mkdir(exist_ok=True)
    for r in records:
        (jd / f"{file_stem(r.kernel, r.name)}.xml").write_text(junit_for(r))
    ordered = sorted(changes, key=lambda c: SEVERITY_ORDER.get(c["severity"], 9))
    html = render_html({"run": run_row, "prev": prev, "kernels": kernels, "series": records, "changes": ordered,
                        "report_dir": str(report_dir),
                        "summary": summary, "history": history_view(store, run_row, cfg.history),
                        "kernel_errors": kernel_errors, "series_line": series_line,
                        "counts": {s: sum(c["severity"] == s for c in changes) for s in SEVERITY_ORDER}})
    (report_dir / "report.html").write_text(html)
    return summary
