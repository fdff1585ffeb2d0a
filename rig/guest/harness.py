"""Guest-test harness: build the layers of each test, mount the target, run the program, record.

STDLIB ONLY. It runs inside the guest (Debian's /usr/bin/python3 3.11) from the package zip that
rig.guest.programs.stage() puts in the run dir, `PYTHONPATH=guest/harness.zip python3 -S -m rig.guest.harness ...`,
and on the host as `python -m rig.guest.harness` or in-process (`kproto run-tests`, the reference runs).
See guest_tests/README.md for the spec schema and the observation format.

    python3 -S -m rig.guest.harness --bins DIR --tests DIR --work DIR --target {overlay,ref} [-k PATTERN]
               [--names FILE] [--timeout S] [--ref-python PATH] [--step] [--kernel-state]

Layout (rig/guest/, every module but programs.py stdlib-only and staged into the guest):
    spec.py     the spec schema: Entry, Spec, SpecError, load_spec(s), select, run_order
    layers.py   build_layer, checksum_tree, upper_state (what a test left in the upper layer)
    mount.py    THE mounter: mount_argv / mount_commands / Mounter / is_mounted, targets overlay and ref
    observe.py  parse_observations (key=value output), kernel_state, kmsg (barrier markers)
    run.py      run_program, run_one, run_tests (the JSON events below)
    harness.py  this CLI; re-exports the names the host uses as `harness.X`
    programs.py (host only) THE static-program cache, build() and stage() of the guest tests

Output: JSON lines on stdout, flushed per line:
    {"event": "start", "name": N}            -- printed before the layers are built and mounted
    {"event": "result", "name": N, "status": "ok"|"error"|"timeout", "observations": {k: v},
     "exit_code": int|null, "signal": int|null, "upper": {path: {...}}, "stderr": str,
     "duration_s": float, "error": str|null, "lower_modified": bool, "diagnostics": [str]}
    {"event": "done"}                        -- every selected test ran
    {"event": "stopped"}                     -- --step: the host said stop (it reboots for the rest)
With --kernel-state, start and result events carry "kernel": {"debug_locks": 0|1|null, "tainted": int|null}.
With --step, after each result the harness reads one line from stdin: `next` runs the next test.

status: ok = the program ran and exited (any exit code, or killed by a signal of its own: both are
compared as observations); timeout = killed after the test's timeout; error = the harness could not
run the test (bad spec, layer build, mount, exec, unmount).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # run as a file (python3 -S .../rig/guest/harness.py): import the package from the tree holding rig/
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from rig.guest.layers import build_layer, checksum_tree, upper_state
from rig.guest.mount import TARGETS, Mounter, is_mounted
from rig.guest.observe import kernel_state, kmsg, parse_observations
from rig.guest.run import print_event, run_one, run_program, run_tests
from rig.guest.spec import (DEFAULT_TIMEOUT, PHASES, Entry, Spec, SpecError, load_spec, load_specs, read_bundle,
                            run_order, select, write_bundle)

__all__ = ["DEFAULT_TIMEOUT", "PHASES", "Entry", "Mounter", "Spec", "SpecError", "build_layer", "checksum_tree",
           "is_mounted", "kernel_state", "kmsg", "load_spec", "load_specs", "main", "parse_observations", "read_bundle",
           "run_one", "run_order", "run_program", "run_tests", "select", "upper_state", "write_bundle"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -S -m rig.guest.harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bins", required=True, type=Path, help="dir of the built test programs")
    ap.add_argument("--tests", required=True, type=Path, help="dir of the specs (guest_tests/)")
    ap.add_argument("--work", required=True, type=Path, help="scratch dir for layers and mounts")
    ap.add_argument("--target", required=True, choices=TARGETS)
    ap.add_argument("-k", dest="pattern", default=None, help="select tests: glob or substring, comma-separated")
    ap.add_argument("--names", type=Path, default=None, help="file with test names to run, one per line")
    ap.add_argument("--timeout", type=float, default=None, help="override every test's timeout (s)")
    ap.add_argument("--ref-python", default=None, help="python that can import overlay_ref")
    ap.add_argument("--step", action="store_true",
                    help="after each result wait for `next` on stdin before the next test (host barrier)")
    ap.add_argument("--kernel-state", action="store_true",
                    help="add debug_locks and the taint mask to every start/result event")
    a = ap.parse_args(argv)
    names = None
    if a.names is not None:
        names = [n.strip() for n in a.names.read_text().splitlines() if n.strip()]
    try:
        run_tests(a.bins, a.tests, a.work, a.target, a.pattern, a.timeout, print_event, a.ref_python, names,
                  step=sys.stdin if a.step else None, with_kernel_state=a.kernel_state)
    except SpecError as e:
        print(f"harness: bad spec: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
