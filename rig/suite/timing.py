"""The runner's waits, in one place (the fake machine's tests use short ones)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """The runner's waits (seconds); the fake machine's tests use short ones."""
    hang_margin: float = 20.0     # on top of the test's own timeout (the hung-task detector fires at 10 s)
    idle_limit: float = 60.0      # no test started and nothing heard: the harness is stuck
    barrier_max: float = 10.0     # the marker must reach the console within this
    quiet: float = 0.1            # console unchanged this long after the marker
    poll: float = 0.2
    death_grace: float = 5.0      # a panicking guest takes a moment to print and power off


TIMING = Timing()
