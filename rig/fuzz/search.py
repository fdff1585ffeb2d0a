"""The search: hypothesis.find() rounds, each example a batch of sequences run on the reference and the
target; the condition is "some sequence shows a divergence not seen yet". find() shrinks that batch
towards the same divergence; the shrunk sequence is made 1-minimal (minimise), cut after its first
differing op, and becomes a Finding. Known divergences are recorded once, unshrunk, unless asked for.

A shrink candidate that shows a different divergence is never a shrink step of the finding in hand.
When that divergence is known it is recorded as known (once); when it is not, it is a candidate finding
of its own (_State.candidates), shrunk and reported after the finding in hand -- never filed as known.

A kernel target also watches the guest console around every batch (rig/fuzz/targets.py Watch): a batch
during which the kernel printed a new splat is attributed to the sequence that triggered it (SplatHunter:
the batch's sequences replayed one by one, on a fresh boot whenever the kernel is dirty), and that
sequence is a finding even when its results match the reference, shrunk to 1-minimal by the same
machinery as a divergence (one_minimal) with the condition "a fresh boot running it shows a splat with
that signature", on its own budget. The search's clock stops meanwhile.

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
from rig.analysis.splats import Splat
from rig.fuzz.findings import (Difference, Finding, FuzzResult, SplatInfo, first_difference, known_entry,
                               make_finding)
from rig.fuzz.interp import SeqResult
from rig.fuzz.strategies import batch_strategy
from rig.fuzz.targets import KernelTarget, Target, Watch

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
    splats_seen: set[str] = field(default_factory=set)       # splat signatures handled (found or not)

    def pause(self, dt: float) -> None:
        """DT seconds went to splat work (its own budget): not taken from the search's or a shrink's."""
        self.t0 += dt
        self.last_progress += dt
        if self.shrinking_since is not None:
            self.shrinking_since += dt

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
         on_finding: Callable[[Finding], None] = lambda f: None,
         prober: KernelTarget | None = None, splat_budget_s: float = 600.0) -> FuzzResult:
    """Search for sequences on which TARGET and REFERENCE print different results, or (a kernel
    target) on which the kernel prints a splat.

    Stops when the budget (seconds) or max_sequences is used up; a shrink in progress gets
    shrink_grace_s more. Splats are attributed and shrunk on PROBER (a kernel target of the same kernel
    that boots its own fresh VMs; default TARGET itself), each within splat_budget_s, not taken from the
    budget; the finding goes to on_finding like any other."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample, Unsatisfiable

    if budget_s is None and max_sequences is None:
        raise BadInput("fuzz needs a budget or a maximum number of sequences")
    kn = known or Known([])
    res = FuzzResult(target=target.name, reference=reference.name, seed=seed)
    t_start = time.monotonic()
    st = _State(t0=t_start, last_progress=t_start)
    hunter: SplatHunter | None = None

    def exhausted() -> bool:
        now = time.monotonic()
        if st.shrinking_since is not None:
            return now - st.shrinking_since > shrink_grace_s + (budget_s or 0) * 0.5
        if budget_s is not None and now - st.t0 >= budget_s:
            return True
        return max_sequences is not None and st.count >= max_sequences

    def splat_work() -> None:
        """The target's batches that showed a splat: each new signature attributed, shrunk, reported."""
        nonlocal hunter
        events = target.take_events()
        if not events:
            return
        t = time.monotonic()
        try:
            for ev in events:
                new = [s for s in ev.splats if s.signature not in st.splats_seen]
                if ev.lockdep_off:
                    progress(f"batch {ev.batch}: lockdep turned itself off"
                             + (f" ({'; '.join(s.title for s in ev.splats)})" if ev.splats else "")
                             + ": lock problems after it are not seen on that boot; fresh boot for the rest")
                if (new or ev.lockdep_off) and isinstance(target, KernelTarget) and target is not prober \
                        and target.boot is not None:
                    target.shutdown()          # fresh boot for the rest of the search (and the CPU to probes)
                if not new:
                    continue
                if hunter is None:
                    p = prober or target
                    if not isinstance(p, KernelTarget):
                        raise BadInput(f"splats on a {target.name} target, but nothing to replay them on")
                    hunter = SplatHunter(p, reference, progress, splat_budget_s)
                for sp in new:
                    st.splats_seen.add(sp.signature)
                    got = hunter.hunt(ev, sp)
                    if isinstance(got, Finding):
                        got.found_after = st.count
                        res.findings.append(got)
                        on_finding(got)
                    else:
                        res.unattributed.append(got)
        finally:
            st.pause(time.monotonic() - t)

    def evaluate(seqs: Sequence[list[str]]) -> list[Evaluated]:
        if max_sequences is not None and st.shrinking_since is None:
            seqs = seqs[:max(0, max_sequences - st.count)]
        refs = reference.run(seqs)
        tgts = target.run(seqs)
        st.count += len(seqs)
        splat_work()
        now = time.monotonic()
        if now - st.last_progress > 5:
            st.last_progress = now
            left = f", {max(0, budget_s - (now - st.t0)):.0f} s left" if budget_s else ""
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
        splat_work()
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

    answers: dict[tuple[tuple[str, ...], ...], bool] = {}     # this round's, by example

    def condition(seqs: list[list[str]]) -> bool:
        # the same answer for an example asked again (hypothesis replays the shrunk one at the end: a
        # different answer then, e.g. once the shrink grace ran out, is a FlakyFailure)
        k = tuple(tuple(s) for s in seqs)
        if k not in answers:
            if exhausted():
                if st.shrinking_since is None:
                    raise _Stop()      # ends find() at once; nothing was found in this round
                return False
            answers[k] = _condition(seqs)
        return answers[k]

    def _condition(seqs: list[list[str]]) -> bool:
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
        answers.clear()
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
    splat_work()
    res.sequences_run = st.count
    res.elapsed_s = time.monotonic() - t_start
    return res


def one_minimal(ops: list[str], step: Callable[[list[list[str]]], list[str] | None], max_rounds: int = 60,
                deadline: float | None = None) -> tuple[list[str], bool]:
    """THE shrinking loop: remove one operation at a time; STEP(candidates) gives the sequence a candidate
    that keeps the condition leaves (the candidate itself, or it cut shorter), or None when no candidate
    keeps it; repeat until no single removal keeps it. (sequence, 1-minimal): False when max_rounds or the
    DEADLINE (time.monotonic()) cut it short."""
    cur = list(ops)
    for _ in range(max_rounds):
        if deadline is not None and time.monotonic() > deadline:
            return cur, False
        cands = [cur[:i] + cur[i + 1:] for i in range(len(cur)) if len(cur) > 1]
        if not cands:
            return cur, True
        nxt = step(cands)
        if nxt is None:
            return cur, True
        cur = nxt
    return cur, False


def minimise(ops: list[str], key: str, reference: Target, target: Target, max_rounds: int = 60,
             on_other: Callable[[Evaluated], None] | None = None
             ) -> tuple[list[str], SeqResult, SeqResult, Difference | None]:
    """Make a finding 1-minimal: remove one operation at a time (all candidates of a round run as one
    batch on both targets) and keep any removal that still shows the same first difference (KEY); cut
    after the difference; repeat until no single removal keeps it. Runs on its own bound (rounds), not
    the search budget, so a loaded machine cannot cut it short. A removal that shows a different first
    difference is never kept; it is passed to ON_OTHER (a divergence of its own)."""
    def step(cands: list[list[str]]) -> list[str] | None:
        refs, tgts = reference.run(cands), target.run(cands)
        for cand, r, t in zip(cands, refs, tgts):
            d = first_difference(cand, r, t)
            if d is not None and d.key == key:
                return cand[:d.op_index + 1]
            if d is not None and on_other is not None:
                on_other((list(cand), r, t, d))
        return None
    cur, _ = one_minimal(ops, step, max_rounds)
    r, t = reference.run([cur])[0], target.run([cur])[0]
    return cur, r, t, first_difference(cur, r, t)


class SplatHunter:
    """A splat printed during a batch of the search, made a finding: attributed to one sequence of the
    batch, shrunk to 1-minimal on fresh boots, on PROBER (a kernel target that boots its own VMs)."""

    def __init__(self, prober: KernelTarget, reference: Target, progress: Callable[[str], None],
                 budget_s: float = 600.0) -> None:
        self.prober, self.reference, self.say, self.budget_s = prober, reference, progress, budget_s
        self.boots_used = 0

    def hunt(self, ev: Watch, sp: Splat) -> Finding | tuple[SplatInfo, str]:
        """The finding SP (shown by batch EV) makes, or (the splat, why not) when no sequence shows it."""
        info = SplatInfo(title=sp.title, signature=sp.signature, kind=sp.kind, batch=ev.batch)
        deadline = time.monotonic() + self.budget_s
        boots0 = self.prober.boots
        self.say(f"batch {ev.batch}: splat {sp.title}, attributing: replaying its {len(ev.seqs)} sequence(s) "
                 "one by one (a fresh boot whenever the kernel is tainted or lockdep is off)")
        # (ops) -> (result, shown on a fresh boot)
        fresh: dict[tuple[str, ...], tuple[SeqResult, bool]] = {}
        found: list[str] | None = None
        for i, ops in enumerate(ev.seqs):
            if time.monotonic() > deadline:
                break
            r, w = self.prober.probe(ops)
            if w.died and not w.splats:
                continue
            if w.first_on_boot:
                fresh[tuple(ops)] = (r, sp.signature in w.signatures)
            if sp.signature in w.signatures:
                found = list(ops)
                self.say(f"batch {ev.batch}: splat {sp.title}: sequence {i + 1} of {len(ev.seqs)} shows it "
                         f"({len(ops)} op(s))")
                break
        if found is None:
            why = ("splat budget used up while attributing" if time.monotonic() > deadline else
                   "no sequence of the batch shows it again on its own")
            self.say(f"batch {ev.batch}: splat {sp.title}: {why}; not a finding")
            return info, why

        def holds(ops: list[str]) -> bool:
            """A fresh boot running OPS shows a splat with SP's signature."""
            k = tuple(ops)
            if k not in fresh:
                r, w = self.prober.probe(ops, fresh=True)
                fresh[k] = (r, sp.signature in w.signatures)
            return fresh[k][1]

        if not holds(found):
            why = "the sequence shows it only after others of its batch on the same boot, not on a fresh boot"
            self.say(f"batch {ev.batch}: splat {sp.title}: {why}; not a finding")
            return info, why
        self.say(f"splat {sp.title}: shrinking {len(found)} op(s) (each candidate on a fresh boot)")
        cut, minimal = minimise_splat(found, holds, deadline)
        r_t = fresh[tuple(cut)][0]
        r_ref = self.reference.run([cut])[0]
        d = first_difference(cut, r_ref, r_t)
        self.prober.shutdown()
        f = Finding(ops=cut, diff=d, reference_lines=list(r_ref.lines), target_lines=list(r_t.lines),
                    splat=info, minimal=minimal)
        self.say(f"finding {f.id}: {len(cut)} op(s), splat {sp.title} ({self.prober.boots - boots0} boot(s))"
                 + ("" if minimal else "; the splat budget cut shrinking short: not 1-minimal")
                 + (f"; {d.kind} also differs from the reference" if d else ""))
        return f


def minimise_splat(ops: list[str], holds: Callable[[list[str]], bool], deadline: float | None = None
                   ) -> tuple[list[str], bool]:
    """Shrink OPS (HOLDS(OPS) is true) to a 1-minimal sequence that HOLDS: first the shortest prefix
    (binary search: the op that triggers it is usually not the last), then one_minimal, each candidate
    checked on its own (HOLDS is a fresh boot: no batching) until one holds."""
    lo, hi = 1, len(ops)
    while lo < hi:
        if deadline is not None and time.monotonic() > deadline:
            break
        mid = (lo + hi) // 2
        if holds(ops[:mid]):
            hi = mid
        else:
            lo = mid + 1
    cur = ops[:hi]

    def step(cands: list[list[str]]) -> list[str] | None:
        for cand in cands:
            if deadline is not None and time.monotonic() > deadline:
                return None
            if holds(cand):
                return cand
        return None
    cut, minimal = one_minimal(cur, step, deadline=deadline)
    if deadline is not None and time.monotonic() > deadline:
        minimal = False
    return cut, minimal


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise BadInput(f"bad --budget {text!r} (examples: 90s, 10m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
