#!/usr/bin/env python3
"""Per-stage timings of a warm `kproto test` (baseline cached): build, boot-to-SSH, tests, total.

    .venv/bin/python bench/bench_kproto_test.py [PATCH] [--runs N]

The first run may build kernels (cold); it is reported but not counted. Prints a table of medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KPROTO = REPO / ".venv" / "bin" / "kproto"
STAGES = ["build_s", "reference_s", "baseline_tests_s", "boot_s", "tests_s", "patched_tests_s", "total_s"]


def one_run(patch: str) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        t0 = time.monotonic()
        proc = subprocess.run([str(KPROTO), "test", patch, "--json", str(out)], capture_output=True, text=True)
        wall = time.monotonic() - t0
        if proc.returncode not in (0, 1) or not out.exists():
            sys.exit(f"kproto test failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())["timings"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patch", nargs="?", default=str(REPO / "patches" / "ovl-copyup.patch"))
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    first, wall = one_run(a.patch)
    print(f"warm-up run: total {first['total_s']:.1f} s (wall {wall:.1f} s)")
    rows = [one_run(a.patch) for _ in range(a.runs)]
    print(f"\nwarm `kproto test {Path(a.patch).name}`, {a.runs} runs (medians, seconds)")
    print(f"{'stage':<20}{'median':>10}{'min':>10}{'max':>10}")
    for stage in STAGES:
        vals = [r[0].get(stage) for r in rows if isinstance(r[0].get(stage), (int, float))]
        if vals:
            print(f"{stage:<20}{statistics.median(vals):>10.1f}{min(vals):>10.1f}{max(vals):>10.1f}")
    walls = [r[1] for r in rows]
    print(f"{'wall (process)':<20}{statistics.median(walls):>10.1f}{min(walls):>10.1f}{max(walls):>10.1f}")
    print("goal: warm total <= 45 s on a 2-core TCG machine")


if __name__ == "__main__":
    main()
