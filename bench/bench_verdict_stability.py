#!/usr/bin/env python3
"""Does `kproto test` give the same answer every time? Figures, not assertions.

Runs `kproto test PATCH --json` N times warm (one unrecorded warm-up run first builds and caches
whatever is missing) for the RFC patch and for a comment-only control patch, and prints per run the
verdict, exit code, new splats (title and signature), confirmation boots and wall time; then per patch
how many runs agreed on the verdict and on the set of new-splat signatures.

    .venv/bin/python bench/bench_verdict_stability.py [--runs 10] [PATCH ...]
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = [REPO / "patches" / "ovl-copyup.patch", REPO / "patches" / "ovl-mmap-comment.patch"]


def one_run(patch: Path, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "rig.cli.main", "test", str(patch), "--json", out.name, *extra],
                              cwd=REPO, capture_output=True, text=True)
        wall = time.monotonic() - t
        try:
            rep = json.loads(Path(out.name).read_text())
        except (OSError, json.JSONDecodeError):
            rep = {}
    new = rep.get("splats", {}).get("new", [])
    return {"rc": proc.returncode, "verdict": rep.get("verdict", "?"), "wall_s": wall,
            "titles": sorted({s["title"] for s in new}), "signatures": sorted({s.get("signature", "") for s in new}),
            "not_match": sorted(f"{t['name']}:{t['status']}" for t in rep.get("tests", []) if t["status"] != "match"),
            "boots": max((t.get("boots", {}).get("patched", 1) for t in rep.get("tests", [])), default=0),
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode not in (0, 1) else []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("patches", nargs="*", type=Path, default=DEFAULT)
    ap.add_argument("--extra", default="", help="extra arguments for kproto test (space separated)")
    a = ap.parse_args()
    extra = a.extra.split()
    summary = []
    for patch in a.patches:
        print(f"== {patch.name}: warm-up run (not counted)", flush=True)
        w = one_run(patch, extra)
        print(f"   warm-up: {w['verdict']} (exit {w['rc']}) in {w['wall_s']:.0f} s {w['stderr_tail']}", flush=True)
        rows = []
        for i in range(1, a.runs + 1):
            r = one_run(patch, extra)
            rows.append(r)
            print(f"   run {i:2}: {r['verdict']:<9} exit {r['rc']}  {r['wall_s']:5.0f} s  max boots/test {r['boots']}  "
                  f"new splats: {'; '.join(r['titles']) or '-'}  {r['stderr_tail'] or ''}", flush=True)
            for sig in r["signatures"]:
                print(f"            signature {sig}", flush=True)
        verdicts = collections.Counter(r["verdict"] for r in rows)
        sigsets = collections.Counter(" + ".join(r["signatures"]) or "(none)" for r in rows)
        statuses = collections.Counter(" ".join(r["not_match"]) for r in rows)
        walls = sorted(r["wall_s"] for r in rows)
        v, vn = verdicts.most_common(1)[0]
        s, sn = sigsets.most_common(1)[0]
        summary.append(f"{patch.name}: verdict {v.upper()} in {vn}/{len(rows)} runs; new-splat signatures "
                       f"[{s}] in {sn}/{len(rows)}; same non-match test statuses in "
                       f"{statuses.most_common(1)[0][1]}/{len(rows)}; wall median {walls[len(walls) // 2]:.0f} s "
                       f"(min {walls[0]:.0f}, max {walls[-1]:.0f})")
    print()
    for line in summary:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
