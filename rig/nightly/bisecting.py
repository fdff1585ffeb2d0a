"""The first bad patch of a regressed series (docs/design.md §4, `kproto nightly`): the nightly runs
`kproto bisect` (rig/suite/bisect.py) on a series whose kproto test verdict is `regressed`, and the record
(SeriesRecord.bisect) carries the answer into report.json, report.html, summary.txt and the history.

- The criterion comes from the series' own report: its first `regressed` test (`--test NAME`), else its
  first new splat (`--splat SIGNATURE`), else its first test that errors on the patched kernel only.
- A series of one patch file names that patch without bisecting (bisect treats a file as one step).
- Bisection reuses what the nightly already has: the series' report is the whole-series step
  (BisectOptions.whole), its baseline and whole-series kernels are build-cache hits, and each prefix is
  built incrementally in the baseline's object tree.
- A bisection that fails (a prefix that does not apply, a rig error) costs the series nothing but a note:
  the entry says `error` and the series keeps its outcome.

The entry is kproto bisect's --json (criterion, result, message, first_bad, candidates, series, steps) plus
`bisected` (false: the series' only patch, named without bisecting) and `evidence` (one line for the
summary). report.json has it as `series[].bisect`; a series that did not regress has none (null).
"""
from __future__ import annotations

import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rig.core.errors import KprotoError
from rig.nightly.summary import bisect_line as text      # noqa: F401  (the entry as one line)

if TYPE_CHECKING:
    from rig.kernel.patches import Patch
    from rig.report.model import Report
    from rig.suite import bisect

Say = Callable[[str], None]
BisectFn = Callable[["bisect.BisectOptions"], "bisect.BisectResult"]


class NoCriterion(KprotoError):
    """A regressed report that names neither a regressed test nor a new splat: nothing to bisect for."""


def criterion_for(tests: list[dict], splats: dict) -> bisect.Criterion:
    """What makes the series bad, from its kproto test report (JSON): its first regressed test, else its
    first new splat (by signature, or by title for a splat without one), else its first test that errors
    on the patched kernel and not on the baseline."""
    from rig.suite import bisect
    for t in tests:
        if t.get("status") == "regressed":
            return bisect.Criterion("test", t["name"])
    for s in splats.get("new") or []:
        key = s.get("signature") or s.get("title")
        if key:
            return bisect.Criterion("splat", key)
    for t in tests:     # fails on the patched kernel only (it did not boot, say): bisect judges that bad too
        if t.get("status") == "error" and (t.get("baseline") or {}).get("status") in (None, "ok"):
            return bisect.Criterion("test", t["name"])
    raise NoCriterion("the report names no regressed test and no new splat")


def needs_bisect(outcome: str, verdict: str | None) -> bool:
    """A series gets a first-bad-patch entry when kproto test says it regressed."""
    return outcome == "tested" and verdict == "regressed"


def single_patch(series: list[Patch], crit: bisect.Criterion | None) -> dict:
    """The entry of a one-patch series: that patch, named without bisecting."""
    from rig.suite import bisect
    only = bisect.patch_json(series, 1)
    return {"criterion": crit.as_json() if crit else None, "result": "found",
            "message": f"first bad patch: {Path(only['path']).name} (the series' only patch: not bisected)",
            "first_bad": only, "candidates": [], "series": [only], "steps": [], "bisected": False,
            "evidence": "the series' only patch, not bisected" + (f"; bad: {crit.describe()}" if crit else "")}


def _evidence(res: bisect.BisectResult) -> str:
    """One line: why that patch (the bad step and the good step next to it), how many steps."""
    n = len(res.series)
    by = {s.prefix: s for s in res.steps}
    if res.result == "found" and res.first_bad:
        bad, good = by.get(res.first_bad), by.get(res.first_bad - 1)
        parts = [f"{res.criterion.describe()}"]
        if bad is not None:
            parts.append(f"bad with patches 1..{bad.prefix}/{n}: {bad.reason}")
        if good is not None:
            parts.append("good on the baseline" if good.prefix == 0 else f"good with 1..{good.prefix}/{n}")
        return "; ".join(parts) + f"; {len(res.steps)} step(s)"
    return res.message


def entry(res: bisect.BisectResult) -> dict:
    d = res.as_json()
    d["bisected"] = True
    d["evidence"] = _evidence(res)
    return d


def error_entry(series: list[Patch], crit: bisect.Criterion | None, message: str) -> dict:
    from rig.suite import bisect
    return {"criterion": crit.as_json() if crit else None, "result": "error", "message": message,
            "first_bad": None, "candidates": [],
            "series": [bisect.patch_json(series, i) for i in range(1, len(series) + 1)], "steps": [],
            "bisected": False, "evidence": message}


def first_bad(patches: list[Path], kernel_src: str | None, config: tuple[Path, ...], timeout: float | None,
              tests: list[dict], splats: dict, report: Report | None, say: Say, enabled: bool,
              bisect_fn: BisectFn | None = None) -> dict | None:
    """The first-bad-patch entry of a regressed series (None when bisection is off and the series has more
    than one patch). REPORT: the series' kproto test report (the whole-series step, not run again)."""
    from rig.kernel import prepare
    from rig.suite import bisect
    series = prepare.open_series(patches)
    try:
        crit: bisect.Criterion | None = criterion_for(tests, splats)
    except NoCriterion:
        crit = None
    if len(series) == 1:
        return single_patch(series, crit)
    if not enabled:
        return None
    if crit is None:
        return error_entry(series, None, "not bisected: the report names no regressed test and no new splat")
    say(f"bisecting {len(series)} patches: first one where {crit.describe()}")
    opts = bisect.BisectOptions(patches=list(patches), criterion=crit, kernel_src=kernel_src, config=config,
                                timeout=timeout, whole=report, progress=say)
    try:
        res = (bisect_fn or bisect.run)(opts)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        msg = e.message if isinstance(e, KprotoError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, KprotoError):
            say("internal error:\n" + traceback.format_exc())
        return error_entry(series, crit, f"bisect failed: {' '.join(str(msg).split())[:400]}")
    out = entry(res)
    say(f"bisect: {out['evidence'] if res.result != 'found' else res.message}")
    return out
