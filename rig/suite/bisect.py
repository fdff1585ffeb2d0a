"""`kproto bisect`: which patch of a series first makes a criterion bad.

0-day and syzbot answer "which commit introduced this"; for a series under review the question is "which
of my N patches". A criterion is one of

- `--test NAME`: that guest test's status (reference vs baseline vs the prefix) is `regressed`, or the
  prefix's kernel does not boot;
- `--splat SIGNATURE`: a splat with that signature (or title) shows while the tests run on the prefix and
  never on the baseline;
- `--build`: the prefix does not build.

The baseline must be good and the whole series bad, else there is nothing to bisect ("does not regress").
Then a binary search over prefixes: each step builds the prefix through rig.kernel.prepare (incremental in
the baseline's object tree) and, unless the criterion is `--build`, runs `kproto test`'s orchestration
(rig/suite/testrun.run) on only the tests the criterion needs, so the evidence is the same as a `kproto
test` run's: the baseline's results come from the results cache after the first step, and a test whose
outcome can vary is confirmed on `--confirm N` fresh boots of both kernels. A step is `bad` only when the
confirmation boots agree (or lockdep reported a cycle: never a false alarm); a step whose outcome varied
is `flaky` and counts as good unless `--flaky-bad`, so one unlucky boot cannot move the search. A prefix
that does not build (for `--test`/`--splat`) is `skip`ped, as `git bisect skip` would; when only skipped
prefixes are left the answer is the range of candidates.

A caller that already ran `kproto test` on the whole series (the nightly) passes that report as
BisectOptions.whole: the whole-series step and the baseline's judgement come from it instead of a second
run, and its kernels (baseline and whole series) are the build cache's hits.

The result names the first bad patch with every step's evidence (docs/design.md §4: exit 1 when a first
bad patch or range was named, 0 when the series does not regress, 2 bad input, 3 infrastructure).
"""
from __future__ import annotations

import glob
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rig.core.errors import EXIT_CLEAN, EXIT_REGRESSED, BadInput, BuildError
from rig.core.paths import GUEST_TESTS
from rig.guest import harness
from rig.kernel import build as buildmod
from rig.kernel import prepare
from rig.kernel.build import Kernel
from rig.kernel.patches import Patch
from rig.report.model import Report
from rig.suite import testrun
from rig.suite.machine import MachineFactory

KINDS = ("test", "splat", "build")
# (kernel, "baseline" | "patched") -> the machine that boots it; None: QEMU (tests inject a fake)
Machines = Callable[[Kernel, str], MachineFactory]


@dataclass(frozen=True)
class Criterion:
    kind: str                  # test | splat | build
    value: str | None = None   # the test name or the splat signature/title

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"unknown bisect criterion {self.kind!r} (one of --test NAME, --splat SIGNATURE, --build)")
        if self.kind != "build" and not self.value:
            raise BadInput(f"--{self.kind} needs a value")

    def describe(self) -> str:
        return {"test": f"guest test {self.value} regresses", "splat": f"splat {self.value} shows",
                "build": "the kernel does not build"}[self.kind]

    def as_json(self) -> dict:
        return {"kind": self.kind, "value": self.value}


@dataclass
class BisectOptions:
    patches: list[Path]
    criterion: Criterion
    kernel_src: str | None = None
    config: tuple[Path, ...] = ()
    pattern: str | None = None          # --splat: which tests to run (default: all)
    timeout: float | None = None
    confirm: int = 2
    flaky_bad: bool = False             # a flaky step counts as bad (an intermittent bug)
    suite: Path = GUEST_TESTS
    keep: bool = False
    machines: Machines | None = None
    # the whole series' kproto test report when the caller already has it (the nightly): not run again
    whole: Report | None = None
    progress: Callable[[str], None] = field(default=lambda m: print(f"kproto: {m}", file=sys.stderr))


def subject(p: Patch) -> str:
    """The patch's subject without its "[PATCH n/m]" tag."""
    return re.sub(r"^\[[^\]]*\]\s*", "", p.subject) or p.path.name


def patch_json(series: list[Patch], index: int) -> dict:
    """Patch number INDEX (1-based) of the series."""
    p = series[index - 1]
    return {"index": index, "path": str(p.path), "subject": subject(p), "sha256": p.sha256}


@dataclass
class Step:
    prefix: int                # how many patches were applied (0: the baseline)
    verdict: str               # good | bad | flaky | skip
    reason: str
    evidence: dict = field(default_factory=dict)

    def as_json(self, series: list[Patch]) -> dict:
        return {"prefix": self.prefix, "patch": patch_json(series, self.prefix) if self.prefix else None,
                "verdict": self.verdict, "reason": self.reason, "evidence": self.evidence}


@dataclass
class BisectResult:
    criterion: Criterion
    series: list[Patch]
    result: str                # found | range | no-regression | baseline-bad | flaky
    message: str
    first_bad: int | None = None                       # 1-based index into the series
    candidates: list[int] = field(default_factory=list)  # the range when skipped prefixes hide it
    steps: list[Step] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_REGRESSED if self.result in ("found", "range", "flaky") else EXIT_CLEAN

    def as_json(self) -> dict:
        return {"criterion": self.criterion.as_json(), "result": self.result, "message": self.message,
                "first_bad": patch_json(self.series, self.first_bad) if self.first_bad else None,
                "candidates": [patch_json(self.series, i) for i in self.candidates],
                "series": [patch_json(self.series, i) for i in range(1, len(self.series) + 1)],
                "steps": [s.as_json(self.series) for s in self.steps]}

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_json(), indent=1) + "\n")


def exact(name: str) -> str:
    """A -k pattern that selects the test NAME and nothing else (a bare word would match as a substring)."""
    esc = glob.escape(name)
    return esc if esc != name else f"[{name[0]}]{name[1:]}"


# ------------------------------------------------------------------ one step

class _Bisector:
    def __init__(self, opts: BisectOptions) -> None:
        self.opts = opts
        self.crit = opts.criterion
        self.say = opts.progress
        self.spec = prepare.KernelSpec(opts.kernel_src, tuple(opts.config))
        self.series = prepare.open_series(opts.patches)
        if not self.series:
            raise BadInput("the series is empty (pass the patch files or their directory)")
        self.pattern = exact(self.crit.value) if self.crit.kind == "test" and self.crit.value else opts.pattern
        self.tree = prepare.open_tree(self.spec)
        self.base: Kernel | None = None

    def _say(self, k: int, msg: str) -> None:
        self.say(f"[bisect {k}/{len(self.series)}] {msg}")

    def build(self, k: int) -> tuple[Kernel | None, Step | None]:
        """The kernel of the first K patches, or the step's verdict when it does not build."""
        try:
            kernel = prepare.patched(self.spec, self.series[:k], lambda m: self._say(k, m), self.tree)[1]
        except BuildError as e:
            ev = {"build": {"ok": False, "error": e.message, "detail": e.detail.splitlines()[:12]}}
            if self.crit.kind == "build":
                return None, Step(k, "bad", f"does not build: {(e.detail or e.message).splitlines()[0]}", ev)
            return None, Step(k, "skip", "does not build: cannot be tested (skipped)", ev)
        return kernel, None

    def step(self, k: int, report: Report | None = None) -> tuple[Step, Report | None]:
        """Prefix K's verdict; REPORT: its kproto test report when the caller already ran it (not run again)."""
        kernel, failed = self.build(k)
        if failed is not None:
            return failed, None
        assert kernel is not None
        built = {"ok": True, "cached": kernel.cached, "build_s": round(kernel.build_s, 1)}
        if self.crit.kind == "build":
            return Step(k, "good", "builds", {"build": built}), None
        rep = report if report is not None else self._run(k, kernel)
        verdict, reason, ev = (self._judge_test if self.crit.kind == "test" else self._judge_splat)(rep)
        ev["build"] = built
        ev["report"] = {"verdict": str(rep.verdict), "reasons": rep.reasons}
        if report is not None:
            ev["report"]["reused"] = True        # the caller's own run of the whole series
        return Step(k, verdict, reason, ev), rep

    def _run(self, k: int, kernel: Kernel) -> Report:
        factories = None
        if self.opts.machines is not None:
            assert self.base is not None
            factories = {"baseline": self.opts.machines(self.base, "baseline"),
                         "patched": self.opts.machines(kernel, "patched")}
        return testrun.run(testrun.TestOptions(
            patches=[p.path for p in self.series[:k]], kernel_src=self.opts.kernel_src, config=self.opts.config,
            pattern=self.pattern, timeout=self.opts.timeout, keep=self.opts.keep, checks=False,
            suite=self.opts.suite, confirm=self.opts.confirm, allow_flaky=True, machine_factories=factories,
            progress=lambda m: self._say(k, m)))

    def _judge_test(self, rep: Report) -> tuple[str, str, dict]:
        name = self.crit.value
        t = next((x for x in rep.tests if x["name"] == name), None)
        if t is None:
            return "skip", f"{name} did not run", {}
        ev = {"test": {k: t.get(k) for k in ("status", "reason", "boots", "splats", "evidence") if t.get(k) is not None},
              "baseline": (t.get("baseline") or {}).get("status"), "patched": (t.get("patched") or {}).get("status")}
        status, why = t["status"], t.get("reason") or ""
        if status == "regressed" or (status == "error" and "did not boot" in why):
            return "bad", f"{name} {status}: {why}", ev
        if status == "error" and ev["baseline"] == "ok" and (t.get("reference") or {}).get("status") == "ok":
            return "bad", f"{name} fails on the prefix (ok on the baseline): {why}", ev
        if status == "flaky":
            return "flaky", f"{name} flaky: {why}", ev
        # a new splat during the test regresses it too (docs/design.md §4), though testrun keeps the
        # comparison's status for it and counts it in the verdict only
        sigs = t.get("splat_signatures") or {}
        new = (set(sigs.get("patched") or []) - set(sigs.get("baseline") or [])) & \
            {s["signature"] for s in rep.splats.get("new", [])}
        if new:
            summary = (t.get("evidence") or {}).get("summary") or ", ".join(sorted(new))
            return "bad", f"{name} regressed: new splat during the test: {summary}", ev
        return "good", f"{name} {status}" + (f": {why}" if why and status != "match" else ""), ev

    def _hits(self, splats: list[dict]) -> list[dict]:
        return [s for s in splats if self.crit.value in (s.get("signature"), s.get("title"))]

    def _judge_splat(self, rep: Report) -> tuple[str, str, dict]:
        sig = self.crit.value
        tests = []
        for t in rep.tests:
            seen = set(t.get("splat_signatures", {}).get("patched") or []) | set(t.get("splats", {}).get("patched") or [])
            seen |= {y for s in (t.get("evidence") or {}).get("patched", []) for x in s["splats"]
                     for y in (x.get("signature"), x.get("title"))}
            if sig in seen:
                tests.append(t)
        ev: dict = {"tests": {t["name"]: {k: t.get(k) for k in ("status", "reason", "boots", "evidence")
                                          if t.get(k) is not None} for t in tests},
                    "baseline_splats": [s["signature"] for s in self._hits(rep.splats.get("baseline", []))]}
        if ev["baseline_splats"]:
            return "bad", f"{sig} shows on the baseline too", dict(ev, baseline_bad=True)
        if not tests and not self._hits(rep.splats.get("patched", [])):
            if rep.reasons and rep.reasons[0].startswith("the patched kernel did not boot"):
                return "skip", f"cannot be tested: {rep.reasons[0]}", ev
            return "good", f"{sig} did not show", ev
        if tests and all(t["status"] == "flaky" for t in tests):
            return "flaky", f"{sig} came and went: " + "; ".join(t.get("reason") or "" for t in tests), ev
        where = ", ".join(t["name"] for t in tests) or "boot"
        detail = "; ".join((t.get("evidence") or {}).get("summary", t.get("reason") or "") for t in tests)
        return "bad", f"{sig} shows ({where})" + (f": {detail}" if detail else ""), ev


# ------------------------------------------------------------------ the search

def _decided_bad(step: Step, flaky_bad: bool) -> bool | None:
    """True bad, False good, None cannot tell (skip)."""
    if step.verdict == "skip":
        return None
    return step.verdict == "bad" or (step.verdict == "flaky" and flaky_bad)


def run(opts: BisectOptions) -> BisectResult:
    crit = opts.criterion
    if crit.kind == "test":
        names = [s.name for s in harness.load_specs(Path(opts.suite))]
        if crit.value not in names:
            raise BadInput(f"--test {crit.value}: no such guest test in {opts.suite} "
                           f"(one of: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})")
    if crit.kind == "splat" and opts.pattern:
        testrun.select_tests(Path(opts.suite), opts.pattern, opts.timeout)     # BadInput: selects nothing
    b = _Bisector(opts)
    series, n = b.series, len(b.series)
    for p in series:
        if p.count > 1:
            b.say(f"{p.path.name} holds {p.count} patches: bisect treats it as one step (split it to bisect inside)")
    if not buildmod.cached(b.tree, series, tuple(opts.config)):
        b.tree.check_applies(series)     # exit 2 before any build
    b.say(f"bisecting {n} patch(es): first one where {crit.describe()}")
    b.base = prepare.baseline(b.spec, b.say, b.tree)[1]       # BuildError here: exit 3 (infrastructure)
    steps: list[Step] = []

    def done(result: str, message: str, **kw) -> BisectResult:
        return BisectResult(crit, series, result, message, steps=steps, **kw)

    # the endpoints: the baseline must be good, the whole series bad
    last, rep = b.step(n, opts.whole)
    b.say(f"whole series ({n}/{n}): {last.verdict}: {last.reason}")
    steps.append(_baseline_step(crit, rep, last))
    if steps[0].verdict == "bad":
        return done("baseline-bad", f"the baseline already fails ({steps[0].reason}): the series did not bring it")
    steps.append(last)
    if last.verdict == "skip":
        raise BadInput(f"the whole series cannot be tested for {crit.kind} {crit.value}: {last.reason} "
                       f"(bisect a build break with --build, a boot failure with --splat and the panic's title)")
    if last.verdict == "flaky" and not opts.flaky_bad:
        return done("flaky", f"the whole series is flaky, not consistently bad ({last.reason}); "
                             f"--flaky-bad bisects it as bad, more --confirm boots may settle it")
    if last.verdict == "good":
        return done("no-regression", f"the series does not regress: {last.reason}")

    if crit.kind == "splat" and opts.pattern is None and last.evidence.get("tests"):
        b.pattern = ",".join(exact(t) for t in last.evidence["tests"])   # only the tests that showed it
    good, bad, skipped = 0, n, set()
    while True:
        todo = [k for k in range(good + 1, bad) if k not in skipped]
        if not todo:
            break
        mid = min(todo, key=lambda k: (abs(k - (good + bad) // 2), k))
        s = b.step(mid)[0]
        steps.append(s)
        b.say(f"prefix {mid}/{n}: {s.verdict}: {s.reason}")
        decided = _decided_bad(s, opts.flaky_bad)
        if decided is None:
            skipped.add(mid)
        elif decided:
            bad = mid
        else:
            good = mid
    if bad - good == 1:
        return done("found", f"first bad patch: {_name(series, bad)}", first_bad=bad)
    cands = list(range(good + 1, bad + 1))
    return done("range", f"the first bad patch is one of {_name(series, good + 1)} .. {_name(series, bad)} "
                         f"(prefixes {', '.join(map(str, sorted(skipped)))} could not be tested)", candidates=cands)


def _baseline_step(crit: Criterion, rep: Report | None, last: Step) -> Step:
    """Prefix 0: the baseline's side of the whole series' run (its results are the ones every step uses)."""
    if crit.kind == "build" or rep is None:
        return Step(0, "good", "builds" if crit.kind == "build" else "not run", {})
    if crit.kind == "splat":
        if last.evidence.get("baseline_bad"):
            return Step(0, "bad", f"{crit.value} shows on the baseline", {"splats": last.evidence["baseline_splats"]})
        return Step(0, "good", f"{crit.value} did not show", {})
    t = next((x for x in rep.tests if x["name"] == crit.value), {})
    base = (t.get("baseline") or {}).get("status")
    boots = (t.get("boots") or {}).get("baseline")
    ev = {"status": base, "boots": boots}
    if base not in (None, "ok"):
        return Step(0, "bad", f"{crit.value} already fails on the baseline ({base})", ev)
    if t.get("status") in ("diverges", "fixed"):
        return Step(0, "bad", f"{crit.value} already diverges from the reference on the baseline", ev)
    return Step(0, "good", f"{crit.value}: {base}", ev)


# ------------------------------------------------------------------ output

def _name(series: list[Patch], index: int) -> str:
    p = series[index - 1]
    return f"{index:04d} {subject(p)} ({p.sha256[:12]})"


def render(res: BisectResult) -> str:
    n = len(res.series)
    lines = [f"kproto bisect: {n} patch(es), bad = {res.criterion.describe()}", ""]
    for i, s in enumerate(res.steps, 1):
        what = "baseline (no patch)" if s.prefix == 0 else \
            f"patches 1..{s.prefix} of {n}, last {s.prefix:04d} {subject(res.series[s.prefix - 1])}"
        boots = (s.evidence.get("test") or {}).get("boots") or \
            next((t["boots"] for t in (s.evidence.get("tests") or {}).values() if t.get("boots")), None)
        built = s.evidence.get("build") or {}
        extra = ([f"boots: baseline {boots['baseline']}, patched {boots['patched']}"] if boots and s.prefix else []) + \
            ([f"built in {built['build_s']:.0f} s"] if built.get("ok") and not built.get("cached") else [])
        lines.append(f"  step {i}: {s.verdict.upper():<5} {what}")
        lines.append(f"          {s.reason}" + (f" [{'; '.join(extra)}]" if extra else ""))
    lines.append("")
    flaky = [s.prefix for s in res.steps if s.verdict == "flaky" and s.prefix != res.first_bad]
    if flaky and res.result in ("found", "range"):
        lines.append(f"note: prefix {', '.join(map(str, flaky))} varied across boots and counted as good "
                     f"(--flaky-bad counts it as bad)")
    if res.result == "found" and res.first_bad:
        lines.append(f"first bad patch: {_name(res.series, res.first_bad)}")
        lines.append(f"  {res.series[res.first_bad - 1].path}")
    else:
        lines.append(res.message)
    return "\n".join(lines)
