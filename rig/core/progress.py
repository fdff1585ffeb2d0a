"""Progress for long stages (a kernel build, a boot, a test run): done / total, rate and ETA.

A Reporter renders one stage at a time, either as a live line rewritten in place (`\\r`) when its
terminal stream is a tty, or as rate-limited plain lines otherwise (CI logs: a line at every tenth of
the total and at least every 30 s, never one per item). A Reporter is also the plain message callback
the pipeline passes around (`progress: Callable[[str], None]`): `reporter("text")` prints one line
(above the live line, which is redrawn under it). Code that wants counts calls `reporter_for(progress)`:
the Reporter itself, or a plain callback wrapped in plain-line mode, so `lambda m: None` and test
recorders keep working.

    rep = reporter_for(progress)
    rep.stage("building baseline kernel", total=1195, unit="objects", expected_s=1045)
    rep.update(412)            # as often as you like: the Reporter rate-limits what it prints
    rep.done()                 # "building baseline kernel: 1195 objects in 17 min 25 s"
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO

ProgressFn = Callable[[str], None]

CLEAR = "\r\x1b[K"      # back to column 0, erase to the end of the line


# ---------------------------------------------------------------- arithmetic (pure)

def singular(noun: str) -> str:
    """The singular of a plural English NOUN as progress lines use them: objects -> object,
    patches -> patch, boots -> boot (a word that is not a regular plural is returned as is)."""
    if noun.endswith(("ches", "shes", "sses", "xes")):
        return noun[:-2]
    if noun.endswith("s") and not noun.endswith("ss"):
        return noun[:-1]
    return noun


def plural(n: int, noun: str) -> str:
    """N and NOUN (given in the plural) agreeing: "1 object", "0 objects", "2 objects"."""
    return f"{n} {singular(noun) if n == 1 else noun}"


def fmt_duration(seconds: float) -> str:
    """45 s, 3 min 05 s, 1 h 02 min."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def rate(done: int, elapsed: float) -> float | None:
    """Items per second so far (None before the first item or the first instant)."""
    return done / elapsed if done > 0 and elapsed > 0 else None


def eta(done: int, total: int | None, elapsed: float, expected_s: float | None = None) -> float | None:
    """Seconds left. With a total: from the rate so far, blended with the last run's duration when known
    (early on the rate is noisy, so the last run's figure weighs in proportion to what is left:
    weight 1 - done/total). Without a total: what is left of the last run's duration. None: no idea,
    or already past the expected total / duration."""
    if total is not None and total > 0:
        if done >= total:
            return None
        frac = done / total
        r = rate(done, elapsed)
        by_rate = (total - done) / r if r else None
        by_last = expected_s * (1 - frac) if expected_s else None
        if by_rate is None:
            return by_last
        if by_last is None:
            return by_rate
        return frac * by_rate + (1 - frac) * by_last
    if expected_s is not None and expected_s > elapsed:
        return expected_s - elapsed
    return None


@dataclass
class Snapshot:
    """One stage's figures at one instant: what every rendering is made of."""
    name: str
    unit: str
    done: int
    total: int | None
    elapsed: float
    expected_s: float | None = None

    def text(self) -> str:
        parts = []
        if self.total is not None and self.done <= self.total:
            pct = 100 * self.done // self.total if self.total else 100
            unit = singular(self.unit) if self.total == 1 else self.unit     # "1/1 object", "3/36 tests"
            parts.append(f"{self.done}/{self.total} {unit} ({pct}%)".replace("  ", " "))
        elif self.total is not None:
            parts.append(f"{plural(self.done, self.unit)} (more than the {self.total} expected)".replace("  ", " "))
        else:
            parts.append(plural(self.done, self.unit).strip())
        left = eta(self.done, self.total, self.elapsed, self.expected_s)
        if left is not None:               # before the rest: what a narrow live line keeps
            parts.append(f"ETA {fmt_duration(left)}")
        r = rate(self.done, self.elapsed)
        if r is not None and self.elapsed >= 1:
            parts.append(f"{r:.0f}/s" if r >= 10 else f"{r:.1f}/s" if r >= 0.1 else f"{r * 60:.1f}/min")
        parts.append(f"{fmt_duration(self.elapsed)} elapsed")
        return f"{self.name}: " + ", ".join(parts)


# ---------------------------------------------------------------- rendering

class Reporter:
    """Prints messages through SAY (one complete line each, no newline), and the current stage's
    progress: live on TERMINAL() when that is a tty, else as plain lines through SAY at most every
    EVERY_FRAC of the total and at least every EVERY_S seconds (so a stalled stage still shows life).
    Thread-safe: the reference run reports from another thread."""

    def __init__(self, say: ProgressFn, *, terminal: Callable[[], TextIO | None] | None = None, prefix: str = "",
                 every_s: float = 30.0, every_frac: float = 0.10, redraw_s: float = 0.2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._say, self._terminal, self.prefix = say, terminal, prefix
        self.every_s, self.every_frac, self.redraw_s, self.clock = every_s, every_frac, redraw_s, clock
        self._lock = threading.RLock()
        self._stage: Snapshot | None = None
        self._t0 = 0.0
        self._live: TextIO | None = None
        self._shown = False             # a live line is on the screen
        self._last_out = 0.0            # when the last progress line / redraw went out
        self._last_step = 0             # the last tenth of the total a plain line reported
        self._drawn = -1                # the count the live line last showed

    # ------------------------------------------------ the plain callback interface
    def __call__(self, msg: str) -> None:
        with self._lock:
            self._erase()
            self._say(msg)
            if self._stage is not None and self._live is not None:
                self._draw()

    @property
    def live(self) -> bool:
        """Is the current stage rendered as a live line?"""
        return self._live is not None

    # ------------------------------------------------ stages
    def stage(self, name: str, total: int | None = None, *, unit: str = "", expected_s: float | None = None,
              note: str = "") -> None:
        """Start a stage (ending the previous one without a summary); prints NAME (NOTE) once."""
        with self._lock:
            self._erase()
            self._say(f"{name} ({note})" if note else name)
            now = self.clock()
            self._stage = Snapshot(name, unit, 0, total, 0.0, expected_s)
            self._t0 = self._last_out = now
            self._last_step = 0
            stream = self._terminal() if self._terminal is not None else None
            self._live = stream if stream is not None and _isatty(stream) else None

    def update(self, done: int, total: int | None = None) -> None:
        """The stage's count (and, when it changed, its total). Call it as often as convenient."""
        with self._lock:
            st = self._stage
            if st is None:
                return
            now = self.clock()
            st.done, st.elapsed = done, now - self._t0
            if total is not None:
                st.total = total
            if self._live is not None:
                if now - self._last_out >= self.redraw_s or (done == st.total and done != self._drawn):
                    self._draw()
                return
            step = int(done / st.total / self.every_frac) if st.total else 0
            if (st.total and step > self._last_step and done < st.total) or now - self._last_out >= self.every_s:
                self._last_step = max(step, self._last_step)
                self._last_out = now
                self._say(st.text())

    def done(self, summary: str | None = None) -> None:
        """End the stage: the live line goes away, one summary line stays
        (default: "NAME: N UNIT in DURATION")."""
        with self._lock:
            st = self._stage
            self._erase()
            self._stage, self._live = None, None
            if summary is None and st is not None:
                summary = f"{st.name}: {plural(st.done, st.unit)} in {fmt_duration(self.clock() - self._t0)}".replace("  ", " ")
            if summary:
                self._say(summary)

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return None if self._stage is None else Snapshot(**vars(self._stage))

    # ------------------------------------------------ the live line
    def _draw(self) -> None:
        assert self._live is not None and self._stage is not None
        self._stage.elapsed = self.clock() - self._t0
        width = _columns(self._live) - 1      # never wrap: \r rewrites one screen line only
        line = (self.prefix + self._stage.text())[:max(width, 20)]
        self._live.write(CLEAR + line)
        self._live.flush()
        self._shown, self._drawn = True, self._stage.done
        self._last_out = self.clock()

    def _erase(self) -> None:
        if self._shown and self._live is not None:
            self._live.write(CLEAR)
            self._live.flush()
        self._shown = False


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return shutil.get_terminal_size((100, 24)).columns


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def reporter_for(progress: ProgressFn) -> Reporter:
    """PROGRESS itself when it is a Reporter, else a plain-line Reporter around the callback."""
    return progress if isinstance(progress, Reporter) else Reporter(progress)


def for_stderr(prefix: str) -> Reporter:
    """The CLI's reporter: each message is one line PREFIX + msg on stderr; live lines go to stderr too.
    sys.stderr is looked up at each call (so a swapped sys.stderr, e.g. click's CliRunner, is honoured)
    and the live line is used only when it is a terminal."""
    def say(msg: str) -> None:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)
    return Reporter(say, terminal=lambda: sys.stderr, prefix=prefix)
