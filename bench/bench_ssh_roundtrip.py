#!/usr/bin/env python3
"""Round trips over the guest's SSH control channel, the way the harness's step mode uses it.

    .venv/bin/python bench/bench_ssh_roundtrip.py [--trips 3000] [--commands 200] [--boots 1]

Boots the cached baseline kernel, opens one long-lived channel running a line echo loop, and sends a
line and waits for its answer TRIPS times (as the runner sends `next` and waits for the next result),
then runs COMMANDS short commands, each on a new channel. Prints the round-trip median, 99th percentile
and worst, and every stall (no answer within 15 s, counted and then poked with one more line). A
control channel that ever stalls shows as a false hang in `kproto test`: the first virtio-serial relay
(0fc423e, an end marker word the host held back look-alike tails for) stalled 9-14 times in 3,000 round
trips; the framed one (docs/design.md §1) and user networking before it never did.
Figures only, no assertion.
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

from rig.kernel import build, tree  # noqa: E402
from rig.machine import qemu as vmmod  # noqa: E402

STALL_S = 15.0


def one_boot(bzimage: Path, trips: int, commands: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="kproto-rt-") as d, \
            vmmod.VM(bzimage=bzimage, run_dir=Path(d), name="rt") as vm:
        vm.wait_ready(120)
        assert vm.ssh is not None
        chan = vm.ssh.open_stream("while read l; do echo got-$l; done")
        lat: list[float] = []
        stalls: list[int] = []
        for i in range(trips):
            t0 = time.monotonic()
            chan.send_line(f"x{i}")
            line = chan.read_line(timeout=STALL_S)
            lat.append(time.monotonic() - t0)
            if line is None:                           # stalled: poke, and both answers should come
                stalls.append(i)
                chan.send_line("poke")
                late = [chan.read_line(timeout=STALL_S), chan.read_line(timeout=5)]
                if late != [f"got-x{i}", "got-poke"]:
                    raise SystemExit(f"round trip {i}: no answer even after a poke ({late!r})")
            elif line != f"got-x{i}":
                raise SystemExit(f"round trip {i}: answer {line!r}, expected 'got-x{i}'")
        chan.close()
        cmd: list[float] = []
        for i in range(commands):
            t0 = time.monotonic()
            rc, out, _ = vm.ssh.run(f"echo {i}", timeout=30)
            cmd.append(time.monotonic() - t0)
            if (rc, out) != (0, f"{i}\n"):
                raise SystemExit(f"command {i}: status {rc}, output {out!r}")
        return {"lat": lat, "stalls": stalls, "cmd": cmd, "accel": vm.accel}


def _pct(vals: list[float], p: float) -> float:
    s = sorted(vals)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trips", type=int, default=3000)
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--boots", type=int, default=1)
    a = ap.parse_args()
    k = build.build(tree.default_source(), [], progress=lambda m: print(m, file=sys.stderr))
    for b in range(1, a.boots + 1):
        r = one_boot(k.bzimage, a.trips, a.commands)
        lat, cmd = r["lat"], r["cmd"]
        print(f"boot {b} ({r['accel']}): {len(lat)} round trips on one channel: median {1000 * statistics.median(lat):.1f} ms, "
              f"p99 {1000 * _pct(lat, 0.99):.1f} ms, worst {1000 * max(lat):.0f} ms; stalls (no answer in "
              f"{STALL_S:.0f} s): {len(r['stalls'])}" + (f" at {r['stalls'][:10]}" if r["stalls"] else "")
              + f"; over 0.5 s: {sum(1 for x in lat if x > 0.5)}")
        if cmd:
            print(f"boot {b}: {len(cmd)} commands, a channel each: median {1000 * statistics.median(cmd):.1f} ms, "
                  f"worst {1000 * max(cmd):.0f} ms")


if __name__ == "__main__":
    main()
