"""Shrinking a finding must not mistake a different, unknown divergence for a known one (issue 19 A).

Pure Python: two fake targets (no mounts, no VM) whose results follow a fixed rule, so shrinking one
divergence meets candidates that show another one."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rig.analysis.known import Known, KnownEntry
from rig.fuzz import search
from rig.fuzz.findings import first_difference
from rig.fuzz.interp import SeqResult
from rig.fuzz.ops import op_kind
from rig.fuzz.targets import Target

# A: a truncate after some other op fails on the target (the finding being shrunk);
# B: a sequence that starts with a truncate kills the target's runner (a different first difference,
#    reached by deleting the ops before the truncate -- exactly what the shrinker tries)
KEY_A, KEY_B = "truncate:status", "exit:end"


class RuleTarget(Target):
    """Results from a rule instead of a mount: the reference says ok to everything."""

    def __init__(self, name: str, diverging: bool) -> None:
        super().__init__(Path("/nonexistent"), Path("/nonexistent"))
        self.name = name
        self.diverging = diverging

    def _mount(self) -> None:
        pass

    def _unmount(self) -> None:
        pass

    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        return [self._one(s) for s in seqs]

    def _one(self, ops: Sequence[str]) -> SeqResult:
        lines = ["ok"] * len(ops)
        if not self.diverging:
            return SeqResult(lines, "exit=0")
        for i, op in enumerate(ops):
            if op_kind(op) == "truncate" and i > 0:
                lines[i] = "err EIO"
        return SeqResult(lines, "signal=SIGBUS" if ops and op_kind(ops[0]) == "truncate" else "exit=0")


def _key(ops: list[str]) -> str | None:
    ref, tgt = RuleTarget("ref", False), RuleTarget("fake", True)
    d = first_difference(ops, ref.run([ops])[0], tgt.run([ops])[0])
    return d.key if d else None


def test_the_rule_gives_two_divergences():
    assert _key(["open 0 a RDONLY", "truncate a 0"]) == KEY_A
    assert _key(["truncate a 0"]) == KEY_B
    assert _key(["open 0 a RDONLY"]) is None


def test_an_unknown_divergence_met_while_shrinking_is_a_finding_not_a_known_one():
    """Nothing is known here, so nothing may be filtered as known: both divergences are findings."""
    logs: list[str] = []
    found: list[str] = []
    res = search.fuzz(RuleTarget("fake", True), RuleTarget("ref", False), seed=1, max_sequences=3000,
                      known=Known([]), progress=logs.append, on_finding=lambda f: found.append(f.diff.key))
    assert res.known == [], [(f.ops, f.diff.key) for f in res.known]
    keys = [f.diff.key for f in res.findings]
    assert sorted(keys) == sorted([KEY_A, KEY_B]), (keys, logs)
    assert sorted(found) == sorted(keys)
    by_key = {f.diff.key: f for f in res.findings}
    # each is shrunk on its own: 1-minimal for its own first difference
    assert by_key[KEY_B].ops == ["truncate a 0"] or len(by_key[KEY_B].ops) == 1
    assert len(by_key[KEY_A].ops) == 2 and op_kind(by_key[KEY_A].ops[1]) == "truncate"
    assert not any(m.startswith("known divergence") for m in logs), logs


def test_a_known_divergence_met_while_shrinking_is_still_filtered_as_known():
    """B is documented: shrinking A meets it, records it once as known, and does not report it."""
    known = Known([KnownEntry(tests=(), keys=("op_exit",), doc="test doc", note="runner dies")])
    res = search.fuzz(RuleTarget("fake", True), RuleTarget("ref", False), seed=1, max_sequences=3000,
                      known=known)
    assert [f.diff.key for f in res.findings] == [KEY_A]
    assert [f.diff.key for f in res.known] == [KEY_B]
    assert res.known[0].known is not None and res.known[0].known.note == "runner dies"


def test_minimise_never_takes_a_step_to_another_divergence():
    """Deleting the open would show B: that is not a shrink step of A, but it is reported to the caller."""
    ref, tgt = RuleTarget("ref", False), RuleTarget("fake", True)
    other: list[str] = []
    ops, r, t, d = search.minimise(["open 0 a RDONLY", "stat a", "truncate a 0"], KEY_A, ref, tgt,
                                   on_other=lambda e: other.append(e[3].key if e[3] else ""))
    assert d is not None and d.key == KEY_A and len(ops) == 2 and op_kind(ops[-1]) == "truncate"
    assert KEY_B in other
