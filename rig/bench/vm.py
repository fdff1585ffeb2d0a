"""The benchmark's QEMU guest: rig.machine.qemu.VM plus, under TCG, `-icount shift=0,sleep=off`.

With -icount, guest time counts emulated instructions instead of host wall-clock time, so the
measurements are immune to host load (other builds, the other guest). A subclass here, so
rig/machine/qemu.py stays as it is; imported only when a guest side starts (it pulls in the SSH stack)."""
from __future__ import annotations

from dataclasses import dataclass

from rig.machine.qemu import VM

ICOUNT_SHIFT = 0     # -icount shift=0: one emulated instruction = 1 ns of guest time


@dataclass
class BenchVM(VM):
    icount: bool = True          # only under TCG: KVM runs on real cycles

    def command(self) -> list[str]:
        cmd = super().command()
        if self.accel == "tcg" and self.icount:
            cmd += ["-icount", f"shift={ICOUNT_SHIFT},sleep=off,align=off"]
        return cmd
