"""The diff engine: what changed between the last complete nightly run and this one, as change dicts
(kind, severity regression | improvement | info, kernel, series, subject, before, after, detail), and the
exit code they make."""
from __future__ import annotations

from pathlib import Path

from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED
from rig.nightly.config import DEFAULT_NOISE_PCT
from rig.nightly.record import STAGE_RANK, SeriesRecord, finding_key, same_splat, splat_key

OK_STATUSES = ("match", "fixed")


def _ok(t: dict) -> bool:
    return t.get("status") in OK_STATUSES or (t.get("status") == "diverges" and bool(t.get("known")))


def higher_is_better(unit: str | None, better: str | None = None) -> bool | None:
    """Direction of a bench metric: kproto bench's `better` ("higher"/"lower") when given, else by unit."""
    if better in ("higher", "lower"):
        return better == "higher"
    u = (unit or "").strip().lower()
    if u.endswith("/s") or u in ("ops", "iops", "ops/sec") or "per s" in u:
        return True
    if u in ("s", "ms", "us", "µs", "ns", "sec", "seconds", "cycles") or u.endswith("/op"):
        return False
    return None


def _ch(kind: str, severity: str, rec: SeriesRecord | None = None, subject: str | None = None, before=None,
        after=None, detail: str | None = None, kernel: str | None = None) -> dict:
    return {"kind": kind, "severity": severity, "kernel": rec.kernel if rec else kernel,
            "series": rec.name if rec else None, "subject": subject, "before": before, "after": after,
            "detail": detail}


def _unique_splats(splats: list[dict]) -> list[dict]:
    """One dict per splat identity (signature, else title), first one kept."""
    out: dict[str, dict] = {}
    for s in splats:
        out.setdefault(splat_key(s), s)
    return list(out.values())


def diff(prev: list[SeriesRecord] | None, cur: list[SeriesRecord], noise_pct: float = DEFAULT_NOISE_PCT,
         prev_kernels: list[dict] | None = None, cur_kernels: list[dict] | None = None) -> list[dict]:
    """What changed since the previous complete run, one dict per change:
    kind, severity (regression | improvement | info), kernel, series, subject, before, after, detail.

    Regressions: a series that stopped applying / building / booting; a test that was ok (match, fixed,
    known divergence) and is not any more; a splat (by signature; by title for history rows recorded
    before signatures existed) the series' patched kernel did not show last time;
    a bench metric whose patched-vs-baseline change moved outside the noise band in the bad direction.
    """
    out: list[dict] = []
    if prev is None:
        return out
    out += _kernel_changes(prev_kernels or [], cur_kernels or [])
    pmap = {(s.kernel, s.name): s for s in prev}
    seen = set()
    for c in cur:
        p = pmap.get((c.kernel, c.name))
        seen.add((c.kernel, c.name))
        if p is None:
            out.append(_ch("series-added", "info", c, after=c.outcome))
            continue
        out += _series_changes(p, c)
        if c.outcome != "tested":
            continue
        if p.outcome == "tested":
            out += _test_changes(p, c)
        out += _splat_changes(p, c)
        out += _bench_changes(p, c, noise_pct)
        pf = {finding_key(f) for f in p.findings}
        out += [_ch("new-fuzz-finding", "info", c, finding_key(f), detail=f.get("reproducer"))
                for f in c.findings if finding_key(f) not in pf]
    for key, gone in pmap.items():
        if key not in seen:
            out.append(_ch("series-removed", "info", gone, before=gone.outcome))
    return out


def _kernel_changes(prev_kernels: list[dict], cur_kernels: list[dict]) -> list[dict]:
    pk = {k["name"]: k for k in prev_kernels}
    out = []
    for k in cur_kernels:
        p = pk.get(k["name"])
        if p and (p.get("version"), p.get("commit_id")) != (k.get("version"), k.get("commit_id")):
            out.append(_ch("kernel-changed", "info", kernel=k["name"], subject=k["name"],
                           before=f"{p.get('version')} {str(p.get('commit_id') or '')[:12]}",
                           after=f"{k.get('version')} {str(k.get('commit_id') or '')[:12]}"))
    return out


def _series_changes(p: SeriesRecord, c: SeriesRecord) -> list[dict]:
    """The patches, and how far the series got."""
    out = []
    if p.series_hash and c.series_hash and p.series_hash != c.series_hash:
        out.append(_ch("series-patches-changed", "info", c, before=p.series_hash[:12], after=c.series_hash[:12],
                       detail=", ".join(Path(x["path"]).name for x in c.patches)))
    if c.outcome == "error":
        if p.outcome != "error":
            out.append(_ch("series-error", "info", c, before=p.outcome, after="error", detail=c.error))
    elif p.outcome != "error" and STAGE_RANK[c.outcome] < STAGE_RANK[p.outcome]:
        kind = {"apply-failed": "series-stopped-applying", "build-failed": "series-stopped-building",
                "boot-failed": "series-stopped-booting"}[c.outcome]
        out.append(_ch(kind, "regression", c, before=p.outcome, after=c.outcome, detail=c.error))
    elif p.outcome != "error" and STAGE_RANK[c.outcome] > STAGE_RANK[p.outcome]:
        out.append(_ch("series-recovered", "improvement", c, before=p.outcome, after=c.outcome))
    elif p.outcome == "error" and c.outcome != "error":
        out.append(_ch("series-recovered", "info", c, before="error", after=c.outcome))
    return out


def _test_changes(p: SeriesRecord, c: SeriesRecord) -> list[dict]:
    """Both runs tested the series: test by test."""
    out = []
    pt = {t["name"]: t for t in p.tests}
    ct = {t["name"]: t for t in c.tests}
    for name in sorted(ct):
        t = ct[name]
        if name not in pt:
            out.append(_ch("test-added", "info", c, name, after=t["status"]))
            continue
        before = pt[name]
        if _ok(before) and not _ok(t):
            out.append(_ch("test-newly-failing", "regression", c, name, before["status"], t["status"],
                           detail=_diff_detail(t)))
        elif not _ok(before) and _ok(t):
            out.append(_ch("test-newly-fixed", "improvement", c, name, before["status"], t["status"]))
        elif before["status"] != t["status"]:
            out.append(_ch("test-status-changed", "info", c, name, before["status"], t["status"]))
    for name in sorted(set(pt) - set(ct)):
        out.append(_ch("test-removed", "info", c, name, before=pt[name]["status"]))
    return out


def _splat_changes(p: SeriesRecord, c: SeriesRecord) -> list[dict]:
    """Splats by signature (a lockdep cycle closed by another edge gets another title, same signature), by
    title for rows recorded before signatures existed; the title is the subject shown. When the last run
    did not test the series, the splats new against this run's baseline kernel."""
    out = []
    if p.outcome != "tested":
        for s in c.splats.get("new", []):
            out.append(_ch("new-splat", "regression", c, s["title"], after=s.get("kind")))
        return out
    cur_sp = _unique_splats(c.splats.get("patched", []))
    base_sp = c.splats.get("baseline", [])
    prev_sp = _unique_splats(p.splats.get("patched", []))
    for s in sorted(cur_sp, key=lambda s: s.get("title", "")):
        if not any(same_splat(s, q) for q in prev_sp):
            out.append(_ch("new-splat", "regression", c, s.get("title"), after=s.get("kind"),
                           detail="also in the baseline kernel" if any(same_splat(s, b) for b in base_sp)
                           else None))
    for q in sorted(prev_sp, key=lambda s: s.get("title", "")):
        if not any(same_splat(q, s) for s in cur_sp):
            out.append(_ch("splat-gone", "improvement", c, q.get("title")))
    return out


def _bench_changes(p: SeriesRecord, c: SeriesRecord, noise_pct: float) -> list[dict]:
    out = []
    pb = {m["name"]: m for m in p.bench}
    for m in c.bench:
        q = pb.get(m["name"])
        if q is None or m.get("change_pct") is None or q.get("change_pct") is None:
            continue
        ch = bench_change(q, m, noise_pct)
        if ch is None:
            continue
        delta, band = ch
        better = higher_is_better(m.get("unit"), m.get("better"))
        sev = "info" if better is None else ("improvement" if (delta > 0) == better else "regression")
        out.append(_ch("bench-change", sev, c, m["name"], f"{q['change_pct']:+.1f}%", f"{m['change_pct']:+.1f}%",
                       detail=f"patched vs baseline moved {delta:+.1f} points (noise band ±{band:.1f}); "
                              f"patched median {_num(q.get('patched_median'))} -> {_num(m.get('patched_median'))} {m.get('unit') or ''}".strip()))
    return out


def bench_change(prev: dict, cur: dict, noise_pct: float) -> tuple[float, float] | None:
    """(delta, band) when the metric's patched-vs-baseline change moved by more than the noise band:
    the larger of NOISE_PCT and the half-widths of either run's 95% confidence interval. Comparing the
    change against the same night's baseline cancels machine-speed drift between nights."""
    delta = float(cur["change_pct"]) - float(prev["change_pct"])
    halves = [noise_pct]
    for m in (prev, cur):
        ci = m.get("ci95_pct") or [None, None]
        if ci[0] is not None and ci[1] is not None:
            halves.append(abs(float(ci[1]) - float(ci[0])) / 2)
    band = max(halves)
    return (delta, band) if abs(delta) > band else None


def _num(v) -> str:
    if v is None:
        return "?"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _diff_detail(t: dict) -> str | None:
    ds = [d for d in t.get("diffs") or [] if d.get("patched") != d.get("reference")] or t.get("diffs") or []
    if ds:
        return "; ".join(f"{d['key']}: reference {d.get('reference')!s}, patched {d.get('patched')!s}" for d in ds[:4])
    return t.get("reason")


def exit_code_for(changes: list[dict], series: list[SeriesRecord], kernel_errors: list[str]) -> int:
    if any(c["severity"] == "regression" for c in changes):
        return EXIT_REGRESSED
    if kernel_errors or any(s.outcome == "error" for s in series):
        return EXIT_INFRA
    return EXIT_CLEAN
