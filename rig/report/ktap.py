"""Compared tests as KTAP v1 (`kproto run-tests --ktap`)."""
from __future__ import annotations

from typing import Sequence

from rig.analysis import verdict
from rig.analysis.compare import COLUMNS, TestVerdict
from rig.analysis.verdict import TestStatus


def to_ktap(verdicts: list[TestVerdict], columns: Sequence[str] = COLUMNS) -> str:
    """`ok` for match/fixed, `ok ... # SKIP known divergence` for known ones, `not ok` else; the reason and
    the differing observations (COLUMNS: which sides) as `#` diagnostic lines before each result line."""
    out = ["KTAP version 1", f"1..{len(verdicts)}"]
    for i, v in enumerate(verdicts, 1):
        if v.reason:
            out.append(f"# {v.name}: {v.reason}")
        for line in v.diff_lines(columns):
            out.append(f"# {v.name}: {line}")
        if not verdict.passes(v.status, v.known):
            out.append(f"not ok {i} {v.name} # {v.status}")
        elif v.status == TestStatus.DIVERGES:
            out.append(f"ok {i} {v.name} # SKIP known divergence: {v.known}")
        else:
            out.append(f"ok {i} {v.name}" + (" # fixed" if v.status == TestStatus.FIXED else ""))
    return "\n".join(out) + "\n"
