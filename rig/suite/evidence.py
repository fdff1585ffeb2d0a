"""Evidence, not one sample: which tests need confirmation boots, and what the boots add up to.

When the baseline and patched kernels disagree on a test whose outcome can vary from boot to boot
(a splat, a hang, an error, or a spec marked `concurrent`), `kproto test` reruns those tests on fresh
boots of both kernels (`--confirm N`) and decides here:

- a lockdep report seen on the patched kernel in any boot and on none of the baseline's boots is a
  regression however rarely it shows (lockdep never reports a cycle that is not there);
- otherwise a test whose outcome (status, observations, splat signatures) differs between boots of one
  kernel is `flaky`: the report names the boots, the verdict needs attention unless --allow-flaky;
- a test that behaves the same on every boot keeps the status the comparison gave it.

Single-threaded deterministic programs need no rerun: a difference in their observations alone is the
same on every boot.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rig.suite.results import KernelRun, outcome_key
from rig.analysis.splats import Splat

LOCKDEP_KINDS = ("lockdep",)


@dataclass
class Sample:
    """One test on one boot."""
    boot: str
    status: str
    outcome: str
    splats: list[Splat] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"boot": self.boot, "status": self.status,
                "splats": [{"title": s.title, "signature": s.signature, "kind": s.kind} for s in self.splats]}


@dataclass
class Evidence:
    """Every boot of both kernels for one test."""
    name: str
    baseline: list[Sample] = field(default_factory=list)
    patched: list[Sample] = field(default_factory=list)

    @property
    def rerun(self) -> bool:
        """Confirmation boots ran it: more than one boot of either kernel."""
        return len(self.baseline) > 1 or len(self.patched) > 1

    def varies(self, side: str) -> bool:
        return len({s.outcome for s in getattr(self, side)}) > 1

    def splat_counts(self, side: str) -> dict[str, int]:
        """signature -> number of boots of SIDE that showed it during this test."""
        out: dict[str, int] = {}
        for s in getattr(self, side):
            for sig in {x.signature for x in s.splats}:
                out[sig] = out.get(sig, 0) + 1
        return out

    def new_lockdep(self) -> list[Splat]:
        """Lockdep reports seen on a patched boot and on no baseline boot (one per signature)."""
        base = {x.signature for s in self.baseline for x in s.splats}
        out: dict[str, Splat] = {}
        for s in self.patched:
            for x in s.splats:
                if x.kind in LOCKDEP_KINDS and x.signature not in base:
                    out.setdefault(x.signature, x)
        return list(out.values())

    def signatures(self) -> list[str]:
        """Every splat signature seen on a boot of either kernel, sorted."""
        return sorted(set(self.splat_counts("patched")) | set(self.splat_counts("baseline")))

    def seen(self, sig: str) -> str:
        """ "seen in 3/3 patched boots, 0/3 baseline boots" for one splat signature."""
        return (f"seen in {self.splat_counts('patched').get(sig, 0)}/{len(self.patched)} patched boots, "
                f"{self.splat_counts('baseline').get(sig, 0)}/{len(self.baseline)} baseline boots")

    def summary(self) -> str:
        """ "<title>: seen in 3/3 patched boots, 0/3 baseline boots" per splat signature."""
        sigs = self.signatures()
        if sigs:
            parts = []
            for sig in sigs:
                title = next((x.title for s in self.patched + self.baseline for x in s.splats if x.signature == sig), sig)
                parts.append(f"{title}: {self.seen(sig)}")
            return "; ".join(parts)
        def tally(side: str) -> str:
            counts: dict[str, int] = {}
            for s in getattr(self, side):
                counts[s.status] = counts.get(s.status, 0) + 1
            return ", ".join(f"{k} {v}/{len(getattr(self, side))}" for k, v in sorted(counts.items()))
        return f"patched boots: {tally('patched')}; baseline boots: {tally('baseline')}"

    def as_json(self) -> dict:
        return {"baseline": [s.as_json() for s in self.baseline], "patched": [s.as_json() for s in self.patched],
                "summary": self.summary()}


def sample(run: KernelRun, name: str) -> Sample | None:
    res = run.results.get(name)
    if res is None:
        return None
    splats = run.test_splats.get(name, [])
    return Sample(boot=str(res.get("boot") or f"{run.label}-?"), status=str(res.get("status")),
                  outcome=outcome_key(res, splats), splats=list(splats))


def add_run(evidence: dict[str, Evidence], run: KernelRun, side: str) -> None:
    for name in run.results:
        s = sample(run, name)
        if s is not None:
            getattr(evidence.setdefault(name, Evidence(name)), side).append(s)


def needs_confirmation(ev: Evidence, concurrent: bool) -> bool:
    """The kernels disagree on a test whose outcome can vary from boot to boot."""
    if not ev.baseline or not ev.patched:
        return False
    outcomes_b = {s.outcome for s in ev.baseline}
    outcomes_p = {s.outcome for s in ev.patched}
    if outcomes_b == outcomes_p and len(outcomes_b) == 1:
        return False
    return concurrent or any(s.splats or s.status != "ok" for s in ev.baseline + ev.patched)


@dataclass
class Decision:
    status: str | None          # "regressed" | "flaky" | None (keep the comparison's status)
    reason: str | None = None


def decide(ev: Evidence) -> Decision:
    lock = ev.new_lockdep()
    if lock:
        # one splat: its counts after its title (the summary would repeat the title); more: every one's
        counts = ev.seen(lock[0].signature) if ev.signatures() == [lock[0].signature] else ev.summary()
        return Decision("regressed", f"lockdep: {lock[0].title} [{counts}]")
    flaky_sides = [side for side in ("patched", "baseline") if ev.varies(side)]
    if flaky_sides:
        boots = "; ".join(f"{s.boot}: {s.status}" + (f" ({', '.join(x.title for x in s.splats)})" if s.splats else "")
                          for side in flaky_sides for s in getattr(ev, side))
        return Decision("flaky", f"outcome varies across boots of the {' and '.join(flaky_sides)} kernel "
                                 f"[{boots}]")
    return Decision(None)
