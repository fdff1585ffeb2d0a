"""Statuses and verdicts as enums, and the rules that read them (docs/design.md §4).

TestStatus: what one guest test did on the patched kernel compared with the reference (and the baseline);
Verdict: what the whole `kproto test` run says about the patch. Both are StrEnums: a member IS its value
string, so JSON output, templates, f-strings and `status == "fixed"` comparisons are unchanged.

Layout: the enums; ORDER (most alarming first, for reports); the per-status rules every output shares
(label, passes, is_failure); exit_code (verdict -> process exit status). How test statuses and splats
make the verdict of a run is verdict_of (the policy), on plain per-test results.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Protocol, Sequence

from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED
from rig.core.progress import plural


class TestStatus(StrEnum):
    __test__ = False  # not a pytest class

    MATCH = "match"            # the patched kernel agrees with the reference (so did the baseline, or it was not run)
    FIXED = "fixed"            # the baseline diverged (or errored), the patched kernel agrees
    REGRESSED = "regressed"    # new divergences (or confirmed on extra boots)
    FLAKY = "flaky"            # the outcome varies across boots
    DIVERGES = "diverges"      # diverges only where, and as, the baseline did ("known" may qualify it)
    ERROR = "error"            # a result is missing, errored or timed out


class Verdict(StrEnum):
    CLEAN = "clean"
    REGRESSED = "regressed"
    FLAKY = "flaky"
    ERROR = "error"            # the rig (or the reference overlay) failed: no verdict on the patch

    def exit_code(self) -> int:
        """`kproto test`'s exit status: 0 clean, 1 regressed or flaky, 3 error."""
        return {Verdict.CLEAN: EXIT_CLEAN, Verdict.REGRESSED: EXIT_REGRESSED,
                Verdict.FLAKY: EXIT_REGRESSED}.get(self, EXIT_INFRA)


# most alarming first: the order of a report's test list and of its counts
ORDER: dict[str, int] = {s: i for i, s in enumerate((TestStatus.REGRESSED, TestStatus.FLAKY, TestStatus.ERROR,
                                                     TestStatus.FIXED, TestStatus.DIVERGES, TestStatus.MATCH))}


def order(status: str) -> int:
    """Sort key of STATUS (unknown statuses last)."""
    return ORDER.get(status, len(ORDER))


def label(status: str, known: str | None) -> str:
    """The status as a table shows it: a known divergence says so."""
    if status == TestStatus.DIVERGES and known:
        return "diverges (known)"
    if status == TestStatus.FIXED and known:
        return "fixed (was known)"
    return str(status)


def passes(status: str, known: str | None) -> bool:
    """Nothing to look at: match, fixed, or a divergence the known-divergences file explains."""
    return status in (TestStatus.MATCH, TestStatus.FIXED) or (status == TestStatus.DIVERGES and bool(known))


def is_failure(status: str, known: str | None) -> bool:
    """A test failure (not an error): regressed, flaky, or a divergence no known entry explains."""
    return status in (TestStatus.REGRESSED, TestStatus.FLAKY) or (status == TestStatus.DIVERGES and not known)


# ---------------------------------------------------------------- the verdict policy

class Titled(Protocol):
    @property
    def title(self) -> str: ...


class KernelOutcome(Protocol):
    """What the policy reads of one kernel's run (rig/suite/results.KernelRun has these)."""
    @property
    def results(self) -> dict[str, dict]: ...
    @property
    def deadlock(self) -> dict | None: ...


def verdict_of(tests: list[dict], new_splats: Sequence[Titled], base: KernelOutcome | None,
               patched: KernelOutcome | None, reference: dict[str, dict] | None = None,
               allow_flaky: bool = False) -> tuple[Verdict, list[str]]:
    """clean | regressed | flaky | error. A failure of the reference overlay itself is the rig's problem
    (error, exit 3), not the patch's: without the oracle there is no verdict for that test. `flaky`
    (exit 1): nothing regressed for sure, but a test's outcome varied across boots (--allow-flaky: clean)."""
    reasons: list[str] = []
    ref_failed = sorted(n for n, r in (reference or {}).items() if r.get("status") != "ok")
    if ref_failed:
        return Verdict.ERROR, [f"the reference overlay failed on {plural(len(ref_failed), 'tests')}: {', '.join(ref_failed[:5])} "
                         f"({(reference or {})[ref_failed[0]].get('error')})"]
    regressed = [t["name"] for t in tests if t["status"] == TestStatus.REGRESSED]
    if regressed:
        reasons.append(f"{plural(len(regressed), 'tests')} regressed: {', '.join(regressed[:5])}")
    pres = patched.results if patched else {}
    bres = base.results if base else {}
    new_errors = [t["name"] for t in tests if t["status"] == TestStatus.ERROR
                  and (pres.get(t["name"], {}).get("status") != "ok")
                  and bres.get(t["name"], {}).get("status") == "ok"]
    dl = patched.deadlock if patched else None
    if dl:
        reasons.append(f"{plural(len(dl['hung']), 'tests')} hung with the same blocked tasks ({dl['signature']}): "
                       f"{', '.join(dl['hung'][:5])}" + (f"; {len(dl['not_run'])} not run" if dl["not_run"] else ""))
        new_errors = [n for n in new_errors if n not in dl["hung"] and n not in dl["not_run"]]
    if new_errors:
        reasons.append(f"{plural(len(new_errors), 'tests')} {'fails' if len(new_errors) == 1 else 'fail'} only on the patched kernel: {', '.join(new_errors[:5])}")
    if new_splats:
        reasons.append(f"{len(new_splats)} new {'splat' if len(new_splats) == 1 else 'splats'}: {'; '.join(s.title for s in new_splats[:3])}")
    if reasons:
        return Verdict.REGRESSED, reasons
    flaky = [t["name"] for t in tests if t["status"] == TestStatus.FLAKY]
    if flaky and not allow_flaky:
        return Verdict.FLAKY, [f"{plural(len(flaky), 'tests')} flaky (outcome varies across boots): {', '.join(flaky[:5])}; "
                         "--allow-flaky to accept"]
    return Verdict.CLEAN, []
