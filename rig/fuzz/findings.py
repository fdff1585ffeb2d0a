"""What a divergence is: the first difference between a reference's and a target's result lines, keyed
by the first differing op's kind and the result fields that differ (the dedup key); a Finding (the
sequence, its difference and/or the kernel splat it makes, the known-divergence entry it matches) and a
search's FuzzResult.

Known divergences come from THE loader (rig.analysis.known): an entry matches a difference by the op's
kind (`fuzz_ops` globs) or by its pseudo observation key (rig/fuzz/ops.py pseudo_key()).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from rig.analysis.known import Known, KnownEntry
from rig.fuzz.interp import SeqResult
from rig.fuzz.ops import op_kind, pseudo_key


@dataclass
class Difference:
    op_index: int              # 0-based; == len(ops) when only the exit status differs
    reference: str
    target: str
    kind: str                  # op kind, or "exit"
    fields: tuple[str, ...]    # which result fields differ ("status", "data", "size", ...)

    @property
    def key(self) -> str:
        return f"{self.kind}:{','.join(self.fields)}"


def _fields(line: str) -> dict[str, str]:
    head, _, rest = line.partition(" ")
    d = {"status": head}
    if head == "ok" and rest:
        if re.match(r"^[a-z]+=", rest):
            for m in re.finditer(r"(\w+)=(\S*)", rest):
                d[m.group(1)] = m.group(2)
            if "data=" in rest:
                d["data"] = rest.split("data=", 1)[1]
        else:
            d["names"] = rest
    return d


def first_difference(ops: Sequence[str], ref: SeqResult, tgt: SeqResult) -> Difference | None:
    for i, op in enumerate(ops):
        r = ref.lines[i] if i < len(ref.lines) else "<none>"
        t = tgt.lines[i] if i < len(tgt.lines) else "<none>"
        if r != t:
            fr, ft = _fields(r), _fields(t)
            diff = tuple(sorted(k for k in set(fr) | set(ft) if fr.get(k) != ft.get(k)))
            if "status" in diff:
                diff = ("status",)
            return Difference(i, r, t, op_kind(op), diff)
    if ref.end != tgt.end:
        return Difference(len(ops), ref.end, tgt.end, "exit", ("end",))
    return None


def known_entry(known: Known, diff: Difference) -> KnownEntry | None:
    """The known divergence DIFF is (entries with fuzz_ops: by the op's kind; others: by its pseudo key)."""
    return known.match_op(diff.kind, pseudo_key(diff.kind))


@dataclass
class SplatInfo:
    """The kernel splat a finding makes (--target kernel): what the splat scanner (rig.analysis.splats)
    says of it, and what the C reproducer showed on fresh boots of the patched and baseline kernels."""
    title: str
    signature: str
    kind: str
    baseline: bool = False               # the reproducer shows it on the baseline too: not the patch's regression
    reproduced: bool | None = None       # the reproducer showed it on the patched kernel (None: not checked)
    batch: int = 0                       # the search batch that showed it first

    def as_json(self) -> dict:
        return {"title": self.title, "signature": self.signature, "kind": self.kind, "baseline": self.baseline,
                "reproduced": self.reproduced}


@dataclass
class Finding:
    ops: list[str]
    diff: Difference | None              # None: a splat-only finding (the results match the reference)
    reference_lines: list[str]
    target_lines: list[str]
    known: KnownEntry | None = None
    reproducer: Path | None = None
    guest_test: Path | None = None
    duplicate_of: str | None = None      # --add-tests: an existing guest test already covers it
    found_after: int = 0                 # sequences run when it was found
    splat: SplatInfo | None = None       # the kernel splat the sequence makes (a splat finding)
    minimal: bool = True                 # False: shrinking was cut short by its budget

    @property
    def id(self) -> str:
        return hashlib.sha256("\n".join(self.ops).encode()).hexdigest()[:8]

    @property
    def key(self) -> str:
        """The dedup key: the first difference's, else the splat's signature."""
        if self.splat is not None:
            return f"splat:{self.splat.signature}"
        assert self.diff is not None
        return self.diff.key

    @property
    def kind(self) -> str:
        """The first differing op's kind, else "splat"."""
        return self.diff.kind if self.diff is not None else "splat"

    def as_json(self) -> dict:
        fd = None if self.diff is None else {"op_index": self.diff.op_index, "reference": self.diff.reference,
                                             "target": self.diff.target}
        d: dict = {"ops": list(self.ops), "first_difference": fd,
                   "splat": self.splat.as_json() if self.splat else None,
                   "reproducer": str(self.reproducer) if self.reproducer else None,
                   "id": self.id, "key": self.key, "found_after_sequences": self.found_after}
        if not self.minimal:
            d["minimal"] = False
        if self.guest_test:
            d["guest_test"] = str(self.guest_test)
        if self.known:
            d["known"] = {"doc": self.known.doc, **({"note": self.known.note} if self.known.note else {})}
        return d


def make_finding(ops: Sequence[str], r: SeqResult, t: SeqResult, d: Difference, known: KnownEntry | None,
                 count: int) -> Finding:
    return Finding(ops=list(ops), diff=d, reference_lines=list(r.lines), target_lines=list(t.lines),
                   known=known, found_after=count)


@dataclass
class FuzzResult:
    target: str
    reference: str
    seed: int
    sequences_run: int = 0
    findings: list[Finding] = field(default_factory=list)
    known: list[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0
    rounds: int = 0
    # splats no single sequence could be made to show again on its own (no finding): what and why
    unattributed: list[tuple[SplatInfo, str]] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"target": self.target, "seed": self.seed, "sequences_run": self.sequences_run,
                "findings": [f.as_json() for f in self.findings],
                "reference": self.reference, "known": [f.as_json() for f in self.known],
                "unattributed_splats": [{**s.as_json(), "batch": s.batch, "why": why} for s, why in self.unattributed],
                "elapsed_s": round(self.elapsed_s, 1), "rounds": self.rounds}
