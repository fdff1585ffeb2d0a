"""The search: hypothesis.find() rounds, each example a batch of sequences run on the reference and the
target; the condition is "some sequence shows a divergence not seen yet". find() shrinks that batch
towards the same divergence; the shrunk sequence is made 1-minimal (minimise), cut after its first
differing op, and becomes a Finding. Known divergences are recorded once, unshrunk, unless asked for.

A shrink candidate that shows a different divergence is never a shrink step of the finding in hand.
When that divergence is known it is recorded as known (once); when it is not, it is a candidate finding
of its own (_State.candidates), shrunk and reported after the finding in hand -- never filed as known.

Deterministic for a given seed: round i draws from Random(f"{seed}:{i}").
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rig.analysis.known import Known
from rig.core.errors import BadInput
from rig.fuzz.findings import (Difference, Finding, FuzzResult, first_difference, known_entry, make_finding)
from rig.fuzz.interp import SeqResult
from rig.fuzz.strategies import batch_strategy
from rig.fuzz.targets import Target

Evaluated = tuple[list[str], SeqResult, SeqResult, Difference | None]


class _Stop(Exception):
    pass


@dataclass
class _State:
    t0: float
    last_progress: float
    shrinking_since: float | None = None     # set while find() shrinks towards KEY
    key: str | None = None
    count: int = 0                           # sequences run
    seen: set[str] = field(default_factory=set)
    # unknown divergences met while shrinking towards KEY, by key (first sequence that showed each):
    # each becomes a finding of its own once the finding in hand is done
    candidates: dict[str, Evaluated] = field(default_factory=dict)
    count_at: dict[str, int] = field(default_factory=dict)   # sequences run when each candidate was met

    def add_candidate(self, e: Evaluated) -> bool:
        """Keep E (an unknown divergence other than KEY) for later; False when its key is already kept."""
        d = e[3]
        if d is None or d.key in self.seen or d.key in self.candidates or d.key == self.key:
            return False
        self.candidates[d.key] = e
        self.count_at[d.key] = self.count
        return True


def fuzz(target: Target, reference: Target, *, seed: int, budget_s: float | None = None,
         max_sequences: int | None = None, batch: int = 8, max_len: int = 10, examples_per_round: int = 150,
         known: Known | None = None, include_known: bool = False, shrink_grace_s: float = 120.0,
         progress: Callable[[str], None] = lambda m: None,
         on_finding: Callable[[Finding], None] = lambda f: None) -> FuzzResult:
    """Search for sequences on which TARGET and REFERENCE print different results.

    Stops when the budget (seconds) or max_sequences is used up; a shrink in progress gets
    shrink_grace_s more."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample, Unsatisfiable

    if budget_s is None and max_sequences is None:
        raise BadInput("fuzz needs a budget or a maximum number of sequences")
    kn = known or Known([])
    res = FuzzResult(target=target.name, reference=reference.name, seed=seed)
    t0 = time.monotonic()
    st = _State(t0=t0, last_progress=t0)

    def exhausted() -> bool:
        now = time.monotonic()
        if st.shrinking_since is not None:
            return now - st.shrinking_since > shrink_grace_s + (budget_s or 0) * 0.5
        if budget_s is not None and now - t0 >= budget_s:
            return True
        return max_sequences is not None and st.count >= max_sequences

    def evaluate(seqs: Sequence[list[str]]) -> list[Evaluated]:
        if max_sequences is not None and st.shrinking_since is None:
            seqs = seqs[:max(0, max_sequences - st.count)]
        refs = reference.run(seqs)
        tgts = target.run(seqs)
        st.count += len(seqs)
        now = time.monotonic()
        if now - st.last_progress > 5:
            st.last_progress = now
            left = f", {max(0, budget_s - (now - t0)):.0f} s left" if budget_s else ""
            progress(f"{st.count} sequences, {len(res.findings)} finding(s), {len(res.known)} known{left}")
        return [(list(s), r, t, first_difference(s, r, t)) for s, r, t in zip(seqs, refs, tgts)]

    def interesting(d: Difference | None) -> bool:
        if d is None or d.key in st.seen:
            return False
        return include_known or known_entry(kn, d) is None

    def record_known(ops: list[str], r: SeqResult, t: SeqResult, d: Difference) -> None:
        st.seen.add(d.key)
        f = make_finding(ops, r, t, d, known_entry(kn, d), st.count)
        res.known.append(f)
        progress(f"known divergence at {d.kind}: {f.known.note if f.known else ''}".rstrip(": "))

    def other(ops: list[str], r: SeqResult, t: SeqResult, d: Difference) -> None:
        """A divergence other than the one being shrunk: known ones are recorded as known, unknown
        ones kept as candidate findings."""
        if d.key in st.seen or d.key == st.key:
            return
        if not interesting(d):
            if not include_known:
                record_known(ops, r, t, d)
            return
        if st.add_candidate((list(ops), r, t, d)):
            progress(f"another divergence at {d.kind} (op {d.op_index + 1} of {len(ops)}) while shrinking: "
                     "kept as a candidate finding")

    def other_evaluated(e: Evaluated) -> None:
        ops, r, t, d = e
        if d is not None:
            other(ops, r, t, d)

    def report(ops: list[str], d: Difference, count: int) -> None:
        """Shrink OPS (which shows D first) to a 1-minimal sequence and report it as a finding."""
        cut, rr, tt, d2 = minimise(ops[:d.op_index + 1], d.key, reference, target, on_other=other_evaluated)
        d2 = d2 or d
        f = make_finding(cut, rr, tt, d2, known_entry(kn, d2), count)
        st.seen.add(d.key)
        st.seen.add(d2.key)
        st.candidates.pop(d.key, None)
        res.findings.append(f)
        progress(f"finding {f.id}: {len(cut)} op(s), {d2.kind} differs: reference {d2.reference!r}, "
                 f"{target.name} {d2.target!r}")
        on_finding(f)

    def report_candidates() -> None:
        """The unknown divergences met while shrinking another one, each shrunk on its own (in the
        order they were met; minimise's own bound, not the search budget)."""
        st.shrinking_since = time.monotonic()
        while st.candidates:
            key, (ops, r, t, d) = next(iter(st.candidates.items()))
            count = st.count_at.pop(key, st.count)
            if d is None or key in st.seen:
                st.candidates.pop(key)
                continue
            st.key = key
            report(ops, d, count)
        st.shrinking_since = None
        st.key = None

    def condition(seqs: list[list[str]]) -> bool:
        if exhausted():
            if st.shrinking_since is None:
                raise _Stop()      # ends find() at once; nothing was found in this round
            return False
        for ops, r, t, d in evaluate(seqs):
            if d is None:
                continue
            if interesting(d):
                if st.shrinking_since is None:
                    # shrink towards this divergence only: without this the shrinker happily slides
                    # to whatever other divergence a smaller sequence shows
                    st.shrinking_since = time.monotonic()
                    st.key = d.key
                    progress(f"divergence at {d.kind} (op {d.op_index + 1} of {len(ops)}): shrinking")
                    return True
                if d.key == st.key:
                    return True
                # a different divergence, and not a known one: not a step towards KEY, but a
                # candidate finding of its own (shrunk after this one)
                other(ops, r, t, d)
            elif d.key not in st.seen and not include_known:
                # a known divergence: record it once, unshrunk, and stop looking for it
                record_known(ops, r, t, d)
        return False

    cfg = settings(max_examples=examples_per_round, database=None, deadline=None,
                   phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False)
    strategy = batch_strategy(batch, max_len)
    while not exhausted():
        st.shrinking_since = None
        st.key = None
        rnd = random.Random(f"{seed}:{res.rounds}")
        res.rounds += 1
        try:
            shrunk = find(strategy, condition, settings=cfg, random=rnd)
        except (NoSuchExample, Unsatisfiable):
            report_candidates()
            continue
        except _Stop:
            break
        st.shrinking_since = time.monotonic()   # re-evaluation below is not budgeted
        evaluated = evaluate(shrunk)
        for ops, r, t, d in evaluated:
            if d is not None and interesting(d) and d.key == st.key:
                report(ops, d, st.count)
                break
        for e in evaluated:
            other_evaluated(e)
        report_candidates()
    report_candidates()     # met while a shrink was cut short by the budget
    res.sequences_run = st.count
    res.elapsed_s = time.monotonic() - t0
    return res


def minimise(ops: list[str], key: str, reference: Target, target: Target, max_rounds: int = 60,
             on_other: Callable[[Evaluated], None] | None = None
             ) -> tuple[list[str], SeqResult, SeqResult, Difference | None]:
    """Make a finding 1-minimal: remove one operation at a time (all candidates of a round run as one
    batch on both targets) and keep any removal that still shows the same first difference (KEY); cut
    after the difference; repeat until no single removal keeps it. Runs on its own bound (rounds), not
    the search budget, so a loaded machine cannot cut it short. A removal that shows a different first
    difference is never kept; it is passed to ON_OTHER (a divergence of its own)."""
    cur = list(ops)
    for _ in range(max_rounds):
        cands = [cur[:i] + cur[i + 1:] for i in range(len(cur)) if len(cur) > 1]
        if not cands:
            break
        refs, tgts = reference.run(cands), target.run(cands)
        for cand, r, t in zip(cands, refs, tgts):
            d = first_difference(cand, r, t)
            if d is not None and d.key == key:
                cur = cand[:d.op_index + 1]
                break
            if d is not None and on_other is not None:
                on_other((list(cand), r, t, d))
        else:
            break
    r, t = reference.run([cur])[0], target.run([cur])[0]
    return cur, r, t, first_difference(cur, r, t)


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise BadInput(f"bad --budget {text!r} (examples: 90s, 10m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
