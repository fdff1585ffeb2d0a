"""The `kproto test` report (docs/design.md §4): the Report dataclass and its JSON codec.

JSON only at the edges: as_json / write_json write it, from_json reads it back. The renderings live next
to it: terminal.py (what a developer reads first), html.py (report.html.j2), junit.py and ktap.py (CI).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rig.analysis.compare import TestVerdict
from rig.analysis.verdict import Verdict


@dataclass
class Report:
    verdict: Verdict                   # clean | regressed | flaky | error (a plain string is accepted)
    kernel: dict                       # {"source", "version", "base", "accel"}
    patches: list[dict]
    tests: list[dict]                  # TestVerdict.as_json() (+ splats, boots, evidence ... per test)
    splats: dict                       # {"baseline": [...], "patched": [...], "new": [...]}
    timings: dict                      # build_s, boot_s, tests_s, total_s (+ details)
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: dict | None = None
    verdicts: list[TestVerdict] = field(default_factory=list)    # the compared tests (for JUnit/KTAP), not in JSON

    def __post_init__(self) -> None:
        self.verdict = Verdict(self.verdict)

    def as_json(self) -> dict:
        out = {"verdict": str(self.verdict), "kernel": self.kernel, "patches": self.patches, "tests": self.tests,
               "splats": self.splats, "timings": self.timings, "reasons": self.reasons, "notes": self.notes}
        if self.checks is not None:
            out["checks"] = self.checks
        return out

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json(), indent=1) + "\n")

    @classmethod
    def from_json(cls, d: dict) -> Report:
        """Back from as_json() (a report.json); `verdicts` are rebuilt from the tests."""
        tests = list(d.get("tests") or [])
        return cls(verdict=Verdict(d["verdict"]), kernel=d.get("kernel") or {}, patches=list(d.get("patches") or []),
                   tests=tests, splats=d.get("splats") or {}, timings=d.get("timings") or {},
                   reasons=list(d.get("reasons") or []), notes=list(d.get("notes") or []), checks=d.get("checks"),
                   verdicts=[TestVerdict.from_json(t) for t in tests])

    @classmethod
    def read_json(cls, path: Path) -> Report:
        return cls.from_json(json.loads(Path(path).read_text()))
