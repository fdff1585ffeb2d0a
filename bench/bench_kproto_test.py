#!/usr/bin/env python3
"""Per-stage timings of a warm `kproto test` (baseline cached): build, boot-to-SSH, tests, total.

    .venv/bin/python bench/bench_kproto_test.py [PATCH] [--runs N]
    .venv/bin/python bench/bench_kproto_test.py --cold      # a cold baseline build in an empty cache

The first run may build kernels (cold); it is reported but not counted. Prints a table of medians.
--cold builds the baseline kernel with an empty kernel cache and an empty ccache (a temporary
$KPROTO_CACHE; 10-17 min on 2 cores) and prints the object count, the build seconds and ccache's hit
rate: the figures issue #17's cold-build goal is measured with.
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


def cold() -> None:
    """A cold baseline build: empty kernel cache and ccache (the source tarball is still Debian's)."""
    import os
    with tempfile.TemporaryDirectory(prefix="kproto-cold-", dir="/var/tmp") as d:
        env = {**os.environ, "KPROTO_CACHE": d}
        t0 = time.monotonic()
        proc = subprocess.run([str(KPROTO), "build"], capture_output=True, text=True, env=env)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(f"kproto build failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        meta = [json.loads(p.read_text()) for p in Path(d, "kernels").glob("*/*.json")]
        stats = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True,
                               env={**env, "CCACHE_DIR": str(Path(d) / "ccache")}).stdout
        counts = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
        hits = sum(int(counts.get(k, 0)) for k in ("direct_cache_hit", "preprocessed_cache_hit"))
        misses = int(counts.get("cache_miss", 0))
    m = meta[0] if meta else {}
    print(f"cold baseline build: {m.get('objects', '?')} objects, build {m.get('build_s', '?')} s, "
          f"kproto build wall {wall:.0f} s; ccache {hits} hits / {misses} misses "
          f"({100 * hits / max(1, hits + misses):.0f} % hit rate)")
    print("goal (#17): cold build <= half of 1,045 s (the figure the issue measured)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patch", nargs="?", default=str(REPO / "patches" / "ovl-copyup.patch"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="time a cold baseline build instead (empty caches)")
    a = ap.parse_args()
    if a.cold:
        return cold()
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
