"""The adaptive run loop: two Sides interleaved, A B B A ..., round after round, with a look (all metrics
tested, Holm over them, at the look's share of alpha) at every round from `runs` on, until every metric
is decided or `max_runs` is reached. BenchOptions are the knobs of one run; a Side is anything that can
start (boot), run one repetition, and stop: rig.bench.sides (guest, host), rig.bench.simulate (no VM)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Protocol

from rig.bench.metrics import Collected, MetricResult
from rig.bench.readings import Reading
from rig.bench.stats import ALPHA, look_alpha, n_looks
from rig.core.errors import BadInput


class Side(Protocol):
    label: str

    def start(self, round_no: int) -> None: ...
    def ready(self) -> None: ...
    def rep(self) -> dict[str, Reading]: ...
    def stop(self) -> None: ...


@dataclass
class BenchOptions:
    runs: int = 3                 # rounds (A and B boots) at least
    max_runs: int = 6             # rounds at most, while some metric is undecided
    reps: int = 3                 # benchmark repetitions per boot
    duration_ms: int = 200        # per time-boxed metric
    min_effect: float = 3.0       # % below which a change is not called significant
    alpha: float = ALPHA          # false-alarm rate of the whole run (all metrics, all looks)
    n_boot: int = 2000
    seed: int = 0
    only: tuple[str, ...] = ()    # metric name substrings; empty = all
    icount: bool = True           # TCG: guest time counts instructions (-icount), immune to host load
    warmup: bool = True           # one short throw-away pass per boot


def run_bench(a: Side, b: Side, opts: BenchOptions,
              progress: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[Collected, list[MetricResult]]:
    """Interleave A and B: each round starts both sides fresh (a new boot each), then runs the
    repetitions alternately, A B B A A B ..., so slow drift of the host lands on both sides; the
    order of the sides flips every round. After `runs` rounds, keep adding rounds (up to `max_runs`)
    while any metric is undecided. Every round from `runs` on is a look: all metrics are tested, with
    Holm over them, at that look's share of alpha (look_alpha()), so whichever look the run stops at,
    its false-alarm rate over all metrics and looks stays at or below alpha."""
    col = Collected()
    results: list[MetricResult] = []
    looks = n_looks(opts.runs, opts.max_runs)
    while True:
        col.rounds += 1
        r = col.rounds
        first, second = (a, b) if r % 2 else (b, a)
        reps: dict[str, list[dict[str, Reading]]] = {"a": [], "b": []}
        try:
            first.start(r)
            second.start(r)      # both guests boot at once; no measurement runs while either boots
            first.ready()
            second.ready()
            for i in range(opts.reps):
                pair = (first, second) if i % 2 == 0 else (second, first)
                for side in pair:
                    got = side.rep()
                    if opts.only:
                        got = {k: v for k, v in got.items() if any(s in k for s in opts.only)}
                    reps["a" if side is a else "b"].append(got)
        finally:
            first.stop()
            second.stop()
        col.add_boot("a", reps["a"])
        col.add_boot("b", reps["b"])
        if not col.order:
            raise BadInput(f"-k {' '.join(opts.only)}: no metric matches (names: see guest_tests/bench/ovlbench.c)")
        if r < opts.runs:
            progress(f"round {r}/{opts.runs} done")
            continue
        level = look_alpha(min(looks, r - opts.runs + 1), looks, opts.alpha)
        results = col.analyze(opts.min_effect, opts.n_boot, opts.seed, level=level, alpha=opts.alpha)
        undecided = [m.name for m in results if not m.decided]
        if not undecided:
            progress(f"round {r}: every metric decided")
            return col, results
        if r >= opts.max_runs:
            progress(f"round {r}: stopping at --max-runs {opts.max_runs} with {len(undecided)} "
                     f"metric(s) still undecided: {', '.join(undecided)}")
            return col, results
        progress(f"round {r}: {len(undecided)} metric(s) undecided "
                 f"({', '.join(undecided[:4])}{', ...' if len(undecided) > 4 else ''}); another round")
