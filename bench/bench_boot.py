#!/usr/bin/env python3
"""Boot to the first SSH command of the cached baseline kernel, N boots: where the time goes.

    .venv/bin/python bench/bench_boot.py [--runs N] [--append "KERNEL PARAMS"]

Per boot: QEMU start to the init's ready marker (seen by the host), the guest's own uptime when the
kernel ran /init and when the init printed ready, and QEMU start to the first SSH command's answer.
Prints figures (medians, min, max); no assertion. Needs the baseline kernel in the cache (a cold
cache builds it first: 10-17 min on 2 cores).
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rig.kernel import build, tree  # noqa: E402
from rig.machine import qemu as vmmod  # noqa: E402


def _uptime(console: str, pattern: str) -> float | None:
    m = re.search(r"\[\s*([0-9.]+)\]\[\s*T\d+\] " + pattern, console)
    return float(m.group(1)) if m else None


def _boot(bzimage: Path, run_dir: Path, append: str) -> dict:
    init: list[float] = []
    with vmmod.VM(bzimage=bzimage, run_dir=run_dir, name="bench", extra_cmdline=append) as vm:
        first_cmd = vm.wait_ready(120, on_init=init.append)
        console = vm.console_text()
    ready = re.search(rf"{vmmod.READY_MARKER} ([0-9.]+)", console)
    return {"marker seen (host)": init[0], "guest: Run /init": _uptime(console, "Run /init"),
            "guest: ready": float(ready.group(1)) if ready else None, "first SSH command": first_cmd,
            "accel": vm.accel}


def _table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'stage':<24}{'median':>8}{'min':>8}{'max':>8}")
    for key in ("guest: Run /init", "guest: ready", "marker seen (host)", "first SSH command"):
        vals = [r[key] for r in rows if isinstance(r[key], float)]
        if vals:
            print(f"{key:<24}{statistics.median(vals):>8.2f}{min(vals):>8.2f}{max(vals):>8.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--append", default="", help="extra kernel command-line parameters (to compare)")
    ap.add_argument("--against", type=Path, metavar="BZIMAGE",
                    help="also boot this kernel image (e.g. a cached kernel of an older config), alternating")
    a = ap.parse_args()
    k = build.build(tree.default_source(), [], progress=lambda m: print(m, file=sys.stderr))
    sides = {"baseline kernel": k.bzimage}
    if a.against:
        sides["--against"] = a.against
    rows: dict[str, list[dict]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory(prefix="kproto-bench-boot-", dir="/var/tmp") as d:
        for i in range(a.runs):
            for name, bz in sides.items():
                r = _boot(bz, Path(d) / f"b{i}-{len(rows[name])}-{name[:2]}", a.append)
                rows[name].append(r)
                print(f"boot {i + 1} ({name}): " + ", ".join(f"{k} {v:.2f} s" for k, v in r.items()
                                                           if isinstance(v, float)), flush=True)
    accel = rows["baseline kernel"][0]["accel"]
    _table(f"{a.runs} boots of {k.version}, this config ({accel}){' with ' + a.append if a.append else ''}",
           rows["baseline kernel"])
    if a.against:
        _table(f"{a.runs} boots of {a.against} ({accel}), alternating with the above", rows["--against"])
    print("goal (#17): first SSH command <= 3 s under TCG")


if __name__ == "__main__":
    main()
