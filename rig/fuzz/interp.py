"""The operation interpreter guest_tests/fuzz/opinterp.c: its build (THE static-program cache,
rig.guest.programs.compile_dir) and its run output, parsed into one SeqResult per sequence.

    opinterp setup SPEC LOWER UPPER NSLOTS   populate slots s0000.. in the layers (rig/fuzz/fixture.py)
    opinterp run BASE FIRST [SEQFILE]        run sequences, the i-th in BASE/s<FIRST+i>, each in a fresh child
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rig.core.paths import GUEST_TESTS
from rig.guest.programs import compile_dir

FUZZ_SRC = GUEST_TESTS / "fuzz"
INTERP_SRC = FUZZ_SRC / "opinterp.c"
FMT_H = FUZZ_SRC / "fmt.h"         # result formatting, shared by the interpreter and every emitted program


def build_interpreter(cache: Path | None = None) -> Path:
    """Compile opinterp.c statically (cached under CACHE or the kproto cache); returns the binary.
    MissingTool without gcc / static libc, BuildError when it does not compile."""
    return compile_dir(INTERP_SRC.parent, cache_name="fuzz", what="fuzz interpreter", cache=cache,
                       sources=[INTERP_SRC]) / INTERP_SRC.stem


@dataclass
class SeqResult:
    lines: list[str]          # normalised result of op k at index k-1
    end: str                  # "exit=0", "signal=SIGALRM", ... or "lost" (the runner died)

    def as_json(self) -> dict:
        return {"lines": self.lines, "end": self.end}


def parse_run_output(out: str, nseqs: int) -> list[SeqResult]:
    """`opinterp run` output ("=== seq I", "K: RESULT" lines, "=== end I exit=N") as NSEQS results."""
    results: list[SeqResult] = []
    cur: SeqResult | None = None
    for line in out.splitlines():
        if line.startswith("=== seq "):
            cur = SeqResult([], "")
        elif line.startswith("=== end ") and cur is not None:
            cur.end = line.split(" ", 3)[3]
            results.append(cur)
            cur = None
        elif cur is not None:
            m = re.match(r"(\d+): (.*)$", line)
            if m:
                cur.lines.append(m.group(2))
    if cur is not None:                   # the runner itself died mid-sequence
        cur.end = "lost"
        results.append(cur)
    while len(results) < nseqs:
        results.append(SeqResult([], "lost"))
    return results[:nseqs]
