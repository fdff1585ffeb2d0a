#!/usr/bin/env python3
"""The configure step of a full kernel build: `make tinyconfig` + merge + olddefconfig (three Kconfig runs)
against kproto's own tinyconfig steps with one merge (two), alternating, each in an empty object tree.

    .venv/bin/python bench/bench_configure.py [--runs 3]

Uses the cached kproto source tree (`kproto build` unpacks it) and rig/kernel/build.py's _configure with
use_recipe False and True, so both sides are the code kproto runs. Prints each run's seconds and the
medians, and checks that both sides wrote the same .config (exit 1 if not). An empty object tree also
builds Kconfig's own tools (conf, fixdep), as every new config does. About 1 min on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_kproto_test import abba  # noqa: E402
from rig.kernel import build, kconfig  # noqa: E402
from rig.kernel.prepare import KernelSpec, open_tree  # noqa: E402

SIDES = {"make tinyconfig, merge, olddefconfig": False, "kproto's tinyconfig steps, one merge": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    a = ap.parse_args()
    tree = open_tree(KernelSpec())
    if kconfig.tinyconfig_recipe(tree.path, build.arch.load().srcarch) is None:
        sys.exit(f"bench_configure: {tree.path} has a tinyconfig recipe kproto does not know; both sides would "
                 "run `make tinyconfig`")
    want = kconfig.requested()
    times: dict[str, list[float]] = {k: [] for k in SIDES}
    configs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="kproto-configure-", dir="/var/tmp") as d:
        for i in range(a.runs):
            for name, use_recipe in abba(SIDES, i):
                objdir = Path(d) / f"{i}-{int(use_recipe)}"
                t0 = time.monotonic()
                build._configure(tree, objdir, want, Path(d) / "log", use_recipe=use_recipe)
                times[name].append(time.monotonic() - t0)
                config = (objdir / ".config").read_text()
                if configs.setdefault(name, config) != config:
                    sys.exit(f"bench_configure: {name} wrote a different .config in run {i + 1}")
                print(f"run {i + 1} {name}: {times[name][-1]:.1f} s", flush=True)
    for name, secs in times.items():
        print(f"{name}: median {statistics.median(secs):.1f} s over {a.runs} run(s) "
              f"({min(secs):.1f}-{max(secs):.1f})")
    (old, new) = (statistics.median(times[n]) for n in SIDES)
    print(f"saved per configure: {old - new:.1f} s ({new / old:.2f}x)")
    same = len(set(configs.values())) == 1
    print(f"the two .configs: {'identical' if same else 'DIFFERENT'} "
          f"({len(next(iter(configs.values())).splitlines())} lines)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
