#!/usr/bin/env python3
"""Per-stage timings of a warm `kproto test` (baseline cached): build, boot-to-SSH, tests, total.

    .venv/bin/python bench/bench_kproto_test.py [PATCH] [--runs N] [--against REV] [--jobs N]
    .venv/bin/python bench/bench_kproto_test.py --cold      # a cold baseline build in an empty cache

The first run of each side may build kernels or fill the result caches; it is reported but not counted.
Prints each run's verdict and new splat signatures (so agreement is counted, not assumed) and a table of
medians. `--against REV` alternates (ABBA) warm runs with the kproto of an older commit (a temporary git
worktree, same kernel cache) for a before/after in one run; `--jobs N` is passed to this checkout's
`kproto test` (not to REV's, which may not have it).
--cold builds the baseline kernel with an empty kernel cache and an empty ccache (a temporary
$KPROTO_CACHE; ~4 min on 2 cores) and prints the build seconds, the compiles and ccache's hits and
misses: the figures issue #17's cold-build goal is measured with. `--cold --against REV` alternates (ABBA)
with the kproto of an older commit (a temporary git worktree) for a before/after in one run:
    .venv/bin/python bench/bench_kproto_test.py --cold --against 6caa081 --runs 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import TypeVar
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rig.core.paths import cache_dir  # noqa: E402
from rig.kernel.build import ccache_stats  # noqa: E402

STAGES = ["build_s", "reference_s", "baseline_tests_s", "boot_s", "tests_s", "patched_tests_s", "confirm_s",
          "total_s"]


def one_run(patch: str, checkout: Path = REPO, extra: tuple[str, ...] = ()) -> tuple[dict, float, str]:
    """One `kproto test PATCH` by the kproto in CHECKOUT: its timings, the process wall time, and
    "VERDICT sig1,sig2" (the new splats' signatures)."""
    import os
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", "from rig.cli.main import main; main()", "test",
                               str(Path(patch).resolve()), "--json", str(out), *extra],
                              capture_output=True, text=True, cwd=checkout, env=env)
        wall = time.monotonic() - t0
        if proc.returncode not in (0, 1) or not out.exists():
            sys.exit(f"kproto test failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        rep = json.loads(out.read_text())
        sigs = ",".join(sorted(s["signature"] for s in rep["splats"]["new"]))
        return rep["timings"], wall, f"{rep['verdict']} {sigs or '-'}"


T = TypeVar("T")


def abba(sides: dict[str, T], round_: int) -> list[tuple[str, T]]:
    """The sides in the order of round ROUND_ (from 0): as given, then reversed, and so on (ABBA). A long
    build or run can leave this machine slower for the next one; a fixed order would always charge that
    to the same side."""
    order = list(sides.items())
    return order[::-1] if round_ % 2 else order


def cold_build(checkout: Path) -> dict:
    """One cold baseline build by the kproto in CHECKOUT: empty kernel cache and ccache, in a temporary
    $KPROTO_CACHE. The unpacked source is hard-linked from this machine's cache when it has one (the
    baseline build only reads it), else unpacked from Debian's tarball (not counted: build_s starts after)."""
    import os
    import shutil
    with tempfile.TemporaryDirectory(prefix="kproto-cold-", dir="/var/tmp") as d:
        src = cache_dir() / "src"
        if src.is_dir():
            subprocess.run(["cp", "-al", str(src), str(Path(d) / "src")], check=True)
            # Linking changes every file's ctime, so git's index no longer matches the copy and the build's
            # first `git reset --hard` would rehash all ~90k files (~14 s here). A tree kproto has just
            # unpacked has a fresh index; refresh the copy's here, before the clock starts.
            for tree in Path(d, "src").glob("*/.git"):
                subprocess.run(["git", "-C", str(tree.parent), "update-index", "-q", "--refresh"],
                               capture_output=True)
        env = {**os.environ, "KPROTO_CACHE": d, "PYTHONPATH": str(checkout)}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", "from rig.cli.main import main; main()", "build"],
                              capture_output=True, text=True, env=env, cwd=checkout)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(f"kproto build ({checkout}) failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        meta = [json.loads(p.read_text()) for p in Path(d, "kernels").glob("*/meta.json")]
        logs = list(Path(d, "build").glob("*.log"))
        compiles = sum(1 for log in logs for line in log.read_text(errors="replace").splitlines()
                       if line.startswith("  CC "))
        counts = ccache_stats(Path(d) / "ccache")
        shutil.rmtree(Path(d) / "src", ignore_errors=True)
    m = meta[0] if meta else {}
    return {"build_s": float(m.get("build_s", 0)), "wall_s": wall, "compiles": compiles,
            "hits": counts.get("direct_cache_hit", 0) + counts.get("preprocessed_cache_hit", 0),
            "misses": counts.get("cache_miss", 0), "preprocessed_misses": counts.get("preprocessed_cache_miss", 0)}


def cold(against: str | None, runs: int) -> None:
    """Cold baseline builds, this checkout's kproto and (--against REV) an older one's, alternating."""
    sides = {"this checkout": REPO}
    worktree = None
    if against:
        worktree = Path(tempfile.mkdtemp(prefix="kproto-before-", dir="/var/tmp"))
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), against],
                       check=True, capture_output=True)
        sides = {against: worktree, "this checkout": REPO}
    rows: dict[str, list[dict]] = {k: [] for k in sides}
    try:
        for i in range(runs):
            for name, checkout in abba(sides, i):
                r = cold_build(checkout)
                rows[name].append(r)
                print(f"run {i + 1} {name}: build {r['build_s']:.0f} s (kproto build wall {r['wall_s']:.0f} s), "
                      f"{r['compiles']} compiles, ccache {r['hits']} hits / {r['misses']} misses, "
                      f"{r['preprocessed_misses']} preprocessed misses", flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
    med = {k: statistics.median(r["build_s"] for r in v) for k, v in rows.items()}
    for k, v in med.items():
        print(f"cold baseline build, {k}: median {v:.0f} s over {runs} run(s)")
    if against:
        pairs = [n["build_s"] / o["build_s"] for n, o in zip(rows["this checkout"], rows[against])]
        print(f"this checkout / {against}: {med['this checkout'] / med[against]:.2f} (medians); per pair "
              f"(run i of each side): {', '.join(f'{r:.3f}' for r in pairs)}, median {statistics.median(pairs):.3f}")
    print("goal (#17): cold build <= half of the same machine's figure before (1,045 s in the issue)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("patch", nargs="?", default=str(REPO / "patches" / "ovl-copyup.patch"))
    ap.add_argument("--runs", type=int, help="runs per side (default: 3 warm runs, 1 cold build)")
    ap.add_argument("--cold", action="store_true", help="time a cold baseline build instead (empty caches)")
    ap.add_argument("--against", metavar="REV", help="also run (--cold: build with) the kproto of git REV, "
                    "alternating, for a before/after in one run")
    ap.add_argument("--jobs", type=int, help="kproto test --jobs N for this checkout (warm runs)")
    a = ap.parse_args()
    if a.cold:
        return cold(a.against, a.runs or 1)
    warm(a.patch, a.against, a.runs or 3, ("--jobs", str(a.jobs)) if a.jobs else ())


def warm(patch: str, against: str | None, runs: int, extra: tuple[str, ...]) -> None:
    """Warm runs of this checkout's kproto and (--against REV) an older one's, alternating."""
    sides: dict[str, tuple[Path, tuple[str, ...]]] = {"this checkout": (REPO, extra)}
    worktree = None
    if against:
        worktree = Path(tempfile.mkdtemp(prefix="kproto-before-", dir="/var/tmp"))
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), against],
                       check=True, capture_output=True)
        sides = {against: (worktree, ()), "this checkout": (REPO, extra)}
    rows: dict[str, list[tuple[dict, float, str]]] = {k: [] for k in sides}
    try:
        for name, (checkout, ex) in sides.items():
            first, wall, answer = one_run(patch, checkout, ex)
            print(f"warm-up {name}: total {first['total_s']:.1f} s (wall {wall:.1f} s): {answer}", flush=True)
        for i in range(runs):
            for name, (checkout, ex) in abba(sides, i):
                r = one_run(patch, checkout, ex)
                rows[name].append(r)
                print(f"run {i + 1} {name}: total {r[0]['total_s']:.1f} s (wall {r[1]:.1f} s): {r[2]}", flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
    for name, got in rows.items():
        print(f"\nwarm `kproto test {Path(patch).name}`, {name}, {runs} runs (medians, seconds)")
        print(f"{'stage':<20}{'median':>10}{'min':>10}{'max':>10}")
        for stage in STAGES:
            vals = [float(v) for r in got if isinstance(v := r[0].get(stage), (int, float))]
            if vals:
                print(f"{stage:<20}{statistics.median(vals):>10.1f}{min(vals):>10.1f}{max(vals):>10.1f}")
        walls = [r[1] for r in got]
        print(f"{'wall (process)':<20}{statistics.median(walls):>10.1f}{min(walls):>10.1f}{max(walls):>10.1f}")
        answers: dict[str, int] = {}
        for r in got:
            answers[r[2]] = answers.get(r[2], 0) + 1
        print("answers: " + "; ".join(f"{k} ({v}/{runs})" for k, v in answers.items()))
    print("goal (#17): warm total <= 25 s on a 2-core TCG machine")


if __name__ == "__main__":
    main()
