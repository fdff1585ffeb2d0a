"""A Side made of simulated readings (no VM, no overlay): drives run_bench() through the whole decision
procedure, e.g. to measure its A/A false-alarm rate and its power (tests/bench, bench/bench_aa_false_alarm.py)."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rig.bench.readings import Reading


@dataclass(frozen=True)
class SimMetric:
    """One simulated metric: its typical value, boot-to-boot spread and repetition noise (standard
    deviations, in % of the value)."""
    name: str
    value: float = 100.0
    boot_sd_pct: float = 4.0
    rep_sd_pct: float = 1.0
    unit: str = "MB/s"
    better: str = "higher"


class SimulatedSide:
    """A Side made of simulated readings (no VM, no overlay): each start() is a "boot" that draws one
    offset per metric (log-normal, boot_sd_pct), each rep() one reading per metric with repetition
    noise (rep_sd_pct), times scale[name] (the simulated effect of a patch; 1.0 when not given).
    Seeded: drives run_bench() through the whole decision procedure, e.g. to measure its A/A
    false-alarm rate and its power (tests/bench/, bench/bench_aa_false_alarm.py)."""

    def __init__(self, label: str, metrics: list[SimMetric], seed: int,
                 scale: dict[str, float] | None = None) -> None:
        self.label, self.metrics = label, list(metrics)
        self.scale = dict(scale or {})
        self.rng = random.Random(seed)
        self.offsets: dict[str, float] = {}

    def start(self, round_no: int) -> None:
        self.offsets = {m.name: self.rng.gauss(0.0, m.boot_sd_pct / 100) for m in self.metrics}

    def ready(self) -> None:
        pass

    def rep(self) -> dict[str, Reading]:
        return {m.name: Reading(m.value * self.scale.get(m.name, 1.0)
                                * math.exp(self.offsets[m.name] + self.rng.gauss(0.0, m.rep_sd_pct / 100)),
                                m.unit, m.better)
                for m in self.metrics}

    def stop(self) -> None:
        pass
