#!/usr/bin/env python3
"""Where a cold kernel build's time goes: every compiler run of the default config timed, summed per
subsystem.

    .venv/bin/python bench/bench_build_profile.py [--top 30] [--objects N] [--config FILE]

Builds bzImage from the cached kproto source tree with the .config of the default-config baseline
(`kproto build` makes it; --config names another .config) in a scratch object tree under /var/tmp,
without ccache (every object is compiled: a cold build), `make -j<cpus+1>` like kproto, with gcc run
through a timer (a shell wrapper that appends start, end and the object to a log). Prints the wall
time, the compiler runs and compile-seconds (more than wall x CPUs when make runs more jobs than CPUs),
the wall time with no compiler running (make itself, links, kallsyms, objtool on vmlinux.o), and compile-seconds
per subsystem, largest first, with the networking total (what the guest's TCP control channel costs).
Nothing is kept: the scratch tree is removed. About 4 min on 2 cores.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rig.kernel import build, kconfig  # noqa: E402
from rig.kernel.prepare import KernelSpec, open_tree  # noqa: E402
from rig.kernel.tree import SourceTree  # noqa: E402

TIMER = """#!/bin/sh
s=$(date +%s.%N)
"$@"; rc=$?
e=$(date +%s.%N)
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out=$a; prev=$a; done
echo "$s $e $out" >> "$KPROTO_CCTIME_LOG"
exit $rc
"""

#: top directories split one level further (arch/ two) in the table
SPLIT = ("net", "drivers", "fs", "kernel", "arch")


def subsystem(obj: str) -> str:
    parts = obj.split("/")
    if parts[0] == "arch" and len(parts) > 3:
        return "/".join(parts[:3])
    if parts[0] in SPLIT and len(parts) > 2:
        return "/".join(parts[:2])
    return parts[0] if len(parts) > 1 else "(top)"


def busy_seconds(intervals: list[tuple[float, float]], start: float) -> float:
    """Wall seconds after START with at least one of the (start, end) INTERVALS running."""
    busy, end = 0.0, start
    for s, e in sorted(intervals):
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy


def profile(tree: SourceTree, config: Path, top: int, objects: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kproto-profile-", dir="/var/tmp") as d:
        objdir, timer, log = Path(d) / "obj", Path(d) / "cctime", Path(d) / "cctime.log"
        objdir.mkdir()
        shutil.copy(config, objdir / ".config")
        timer.write_text(TIMER)
        timer.chmod(0o755)
        make = ["make", "-C", str(tree.path), f"O={objdir}", "HOSTCC=gcc"]
        subprocess.run(make + ["olddefconfig"], check=True, capture_output=True)
        env = {**os.environ, "KPROTO_CCTIME_LOG": str(log), "KBUILD_BUILD_TIMESTAMP": "kproto"}
        jobs = build.make_jobs()
        t0 = time.time()
        proc = subprocess.run(make + [f"-j{jobs}", f"CC={timer} gcc", "bzImage"], env=env,
                              capture_output=True, text=True)
        t1 = time.time()
        if proc.returncode != 0:
            sys.exit(f"build failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        rows = [(float(s), float(e), o) for s, e, o in
                (line.split() for line in log.read_text().splitlines() if len(line.split()) == 3)]
    total = sum(e - s for s, e, _ in rows)
    busy = busy_seconds([(s, e) for s, e, _ in rows], t0)
    per: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for s, e, o in rows:
        key = subsystem(o)
        per[key] += e - s
        count[key] += 1
    print(f"linux {tree.version()}, config {config}, make -j{jobs} bzImage, no ccache, {os.cpu_count()} CPUs")
    print(f"wall {t1 - t0:.0f} s; {len(rows)} compiler runs, {total:.0f} compile-seconds; "
          f"{t1 - t0 - busy:.0f} s of the wall with no compiler running (make, links, kallsyms, objtool on "
          f"vmlinux.o, bzImage)")
    print(f"{'subsystem':<28} {'runs':>5} {'compile-s':>10} {'share':>6}")
    for key, secs in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{key:<28} {count[key]:>5} {secs:>10.1f} {100 * secs / total:>5.1f}%")
    net = sum(v for k, v in per.items() if k.startswith("net") or k == "drivers/net")
    print(f"networking (net/*, drivers/net): {net:.0f} compile-seconds, {100 * net / total:.1f}%")
    if objects:
        print(f"the {objects} slowest compiler runs:")
        for s, e, o in sorted(rows, key=lambda r: r[0] - r[1])[:objects]:
            print(f"  {e - s:6.2f} s  {o}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=30, help="subsystems to list (default 30)")
    ap.add_argument("--objects", type=int, default=0, help="also list the N slowest compiler runs")
    ap.add_argument("--config", type=Path, help="a .config to build (default: the default-config baseline's)")
    a = ap.parse_args()
    tree = open_tree(KernelSpec())
    config = a.config
    if config is None:
        config = build.objdir_for(tree, kconfig.requested()) / ".config"
        if not config.is_file():
            sys.exit("bench_build_profile: no default-config build in the kernel cache; run `.venv/bin/kproto build`"
                     " first (or give --config FILE)")
    elif not config.is_file():
        sys.exit(f"bench_build_profile: {config}: no such file; give a kernel .config")
    profile(tree, config, a.top, a.objects)


if __name__ == "__main__":
    main()
