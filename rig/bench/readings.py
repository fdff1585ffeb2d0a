"""What a benchmark program prints: `name=value [unit [higher|lower]]` lines, parsed into Readings."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Reading:
    value: float
    unit: str
    better: str       # "higher" | "lower"


def parse(text: str) -> dict[str, Reading]:
    """`name=value [unit [higher|lower]]` lines; anything else is ignored."""
    out: dict[str, Reading] = {}
    for line in text.splitlines():
        head, _, rest = line.strip().partition(" ")
        name, eq, val = head.partition("=")
        if not eq or not name or not name.replace("_", "").isalnum():
            continue
        try:
            value = float(val)
        except ValueError:
            continue
        if not math.isfinite(value):
            continue
        words = rest.split()
        unit = words[0] if words else ""
        better = words[1] if len(words) > 1 and words[1] in ("higher", "lower") else "higher"
        out[name] = Reading(value, unit, better)
    return out
