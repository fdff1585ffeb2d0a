"""The shell of one benchmark repetition, the same in the guest (over SSH) and on the host (sh -c):
fresh layers under BASE (lower/ upper/ work/ mnt/), `ovlbench prepare` the lower layer, mount, run,
unmount, clean up, exit with the program's status. The mount and umount command lines come from
THE mounter (rig.guest.mount.mount_commands), for the paths layer_paths() names."""
from __future__ import annotations

import shlex
from typing import NamedTuple

GUEST_BENCH_DIR = "/tmp/kb"     # BASE in the guest (tmpfs /tmp)


class Layers(NamedTuple):
    lower: str
    upper: str
    work: str
    mnt: str


def layer_paths(base: str) -> Layers:
    """The directories rep_script() makes under BASE, in the order the mounter takes them."""
    return Layers(f"{base}/lower", f"{base}/upper", f"{base}/work", f"{base}/mnt")


def rep_script(binary: str, base: str, mount_cmd: str, umount_cmd: str, duration_ms: int, cold: bool) -> str:
    """Shell for one repetition: fresh layers, mount, run, unmount. COLD: let the program drop the page
    cache for its cold-cache metric (guest only; `-n` skips it)."""
    q = shlex.quote
    return (f"B={q(base)}; {umount_cmd} 2>/dev/null; rm -rf \"$B\"; "
            f"mkdir -p \"$B/lower\" \"$B/upper\" \"$B/work\" \"$B/mnt\" && {q(binary)} prepare \"$B/lower\" && "
            f"{mount_cmd} && {{ {q(binary)} run \"$B/mnt\" -d {int(duration_ms)}{'' if cold else ' -n'}; rc=$?; "
            f"{umount_cmd}; rm -rf \"$B\"; exit $rc; }}")
