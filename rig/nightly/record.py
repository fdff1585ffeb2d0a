"""What one series produced in one nightly run (SeriesRecord), the order of the outcomes a series gets
through, and what identifies a splat or a fuzz finding across runs. Plain data: the store
(rig/nightly/store.py) keeps it, the diff (rig/nightly/diff.py) compares it, the reports show it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """Outcome of one series in one run; after ERROR (the rig failed: nothing known about the series), in
    the order a series gets through them."""
    ERROR = "error"
    APPLY_FAILED = "apply-failed"
    BUILD_FAILED = "build-failed"
    BOOT_FAILED = "boot-failed"
    TESTED = "tested"


# how far a series got (a higher rank got further); ERROR has no rank
STAGE_RANK: dict[str, int] = {o: i for i, o in enumerate(o for o in Outcome if o is not Outcome.ERROR)}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class SeriesRecord:
    """What one series produced in one run, as the store keeps it."""
    kernel: str
    name: str
    patches: list[dict]                     # [{"path", "sha256", "subject"}]
    outcome: str
    series_hash: str | None = None
    verdict: str | None = None
    error: str | None = None
    kernel_version: str | None = None
    tests: list[dict] = field(default_factory=list)        # kproto test report "tests" entries
    splats: dict = field(default_factory=dict)             # {"baseline": [...], "patched": [...], "new": [...]}
    timings: dict = field(default_factory=dict)
    bench: list[dict] = field(default_factory=list)        # kproto bench --json "metrics" entries
    findings: list[dict] = field(default_factory=list)     # kproto fuzz --json "findings" entries
    notes: list[str] = field(default_factory=list)
    # the first bad patch of a regressed series (rig/nightly/bisecting.py: kproto bisect's --json + "bisected",
    # "evidence"); None when the series did not regress or was not bisected
    bisect: dict | None = None
    # the reproducer bundles (rig/suite/repro.py) of a regressed series, as the driver wrote them under
    # REPORT_DIR/repro/<kernel>--<series>/<test>/ (rig/nightly/matrix.py); empty for any other series
    reproducers: list[str] = field(default_factory=list)
    started: str | None = None
    finished: str | None = None
    verdicts: list = field(default_factory=list, repr=False, compare=False)   # compare.TestVerdict (JUnit), not stored

    def stages(self) -> dict[str, int | None]:
        """applies/builds/boots/tested as 1, 0 or None (unknown)."""
        if self.outcome == "error":
            return {"applies": None, "builds": None, "boots": None, "tested": 0}
        rank = STAGE_RANK[self.outcome]
        out: dict[str, int | None] = {}
        for i, stage in enumerate(("applies", "builds", "boots", "tested")):
            out[stage] = 1 if i < rank or (i == rank == 3) else 0 if i == rank else None
        return out


def splat_key(s: dict) -> str:
    """What identifies a splat dict (kproto test report / history row): its signature, or for splats
    recorded before signatures existed, its title."""
    return s.get("signature") or s.get("title") or ""


def same_splat(a: dict, b: dict) -> bool:
    """Two splat dicts are the same splat: same signature when both have one, else same title (rows from
    before signatures existed)."""
    if a.get("signature") and b.get("signature"):
        return a["signature"] == b["signature"]
    return a.get("title") == b.get("title")


def finding_key(f: dict) -> str:
    """What identifies a fuzz finding across runs: the kind of the first differing op and both results."""
    fd = f.get("first_difference") or {}
    ops = f.get("ops") or []
    idx = fd.get("op_index")
    op = ops[idx] if isinstance(idx, int) and 0 <= idx < len(ops) else ""
    return f"{op.split(' ')[0] if op else '?'}|{fd.get('reference')}|{fd.get('target')}"
