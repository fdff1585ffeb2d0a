"""Where the repetitions run: a Side (rig.bench.run.Side) is started once per round, runs repetitions,
and is stopped.

- GuestSide: a kernel booted afresh in QEMU each round (rig.bench.vm.BenchVM, one vCPU); every
  repetition runs over SSH on the guest kernel's overlayfs, tmpfs layers under /tmp/kb.
- HostSide: an overlay on the host, fresh layers on a private tmpfs every repetition: the host kernel's
  overlayfs ("host") or the reference overlay ("ref", overlay_ref over FUSE).

Both run rig.bench.script.rep_script() with the mount/umount lines of THE mounter (rig.guest.mount).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rig.bench.programs import PROGRAM
from rig.bench.readings import Reading, parse
from rig.bench.run import BenchOptions
from rig.bench.script import GUEST_BENCH_DIR, layer_paths, rep_script
from rig.core import paths
from rig.core.errors import GuestError, InfraError
from rig.guest.mount import is_mounted, mount_commands, mount_tmpfs

if TYPE_CHECKING:
    from rig.bench.vm import BenchVM
    from rig.machine.ssh import GuestSSH


class GuestSide:
    """A kernel booted afresh in QEMU each round; the overlay is the guest kernel's, on tmpfs layers."""

    def __init__(self, label: str, bzimage: Path, bins: Path, run_root: Path, opts: BenchOptions,
                 progress: Callable[[str], None], boot_timeout: float = 180.0) -> None:
        self.label, self.bzimage, self.bins, self.run_root = label, bzimage, bins, run_root
        self.opts, self.progress, self.boot_timeout = opts, progress, boot_timeout
        self.vm: BenchVM | None = None
        self.accel = ""
        self.boots = 0
        self.boot_s: list[float] = []

    def start(self, round_no: int) -> None:
        from rig.bench.vm import BenchVM
        d = self.run_root / f"{self.label}-{round_no}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.bins / PROGRAM, d / PROGRAM)
        os.chmod(d / PROGRAM, 0o755)
        # smp=1: fewer sources of noise inside the guest, and two guests fit the 2-core host
        self.vm = BenchVM(bzimage=self.bzimage, run_dir=d, name=f"bench-{self.label}", smp=1,
                          icount=self.opts.icount)
        self.vm.start()
        self.boots += 1

    def _vm(self) -> BenchVM:
        if self.vm is None:
            raise InfraError(f"[{self.label}] the benchmark guest is not running (start() first)")
        return self.vm

    def _ssh(self, vm: BenchVM) -> GuestSSH:
        if vm.ssh is None:
            raise InfraError(f"[{self.label}] the benchmark guest has no SSH connection (ready() first)")
        return vm.ssh

    def ready(self) -> None:
        vm = self._vm()
        if vm.ssh is None:
            self.boot_s.append(vm.wait_ready(self.boot_timeout))
            self.accel = vm.accel + ("+icount" if vm.accel == "tcg" and self.opts.icount else "")
            self.progress(f"[{self.label}] boot {self.boots}: SSH after {self.boot_s[-1]:.1f} s ({self.accel})")
            rc, out, err = self._ssh(vm).run(f"cp /mnt/kproto/{PROGRAM} /tmp/{PROGRAM} && chmod 755 /tmp/{PROGRAM}",
                                             timeout=60)
            if rc != 0:
                raise GuestError(f"[{self.label}] cannot stage the benchmark program in the guest: {err.strip()[:200]}")
            # one short throw-away pass: first-touch effects of a fresh boot stay out of the samples
            if self.opts.warmup:
                self._run(duration_ms=min(10, self.opts.duration_ms))

    def script(self, duration_ms: int) -> str:
        """The shell of one repetition in the guest: the guest kernel's overlayfs on /tmp/kb."""
        b = GUEST_BENCH_DIR
        layers = layer_paths(b)
        mount, umount = mount_commands("overlay", [layers.lower], layers.upper, layers.work, layers.mnt)
        return rep_script(f"/tmp/{PROGRAM}", b, mount, umount, duration_ms, cold=True)

    def _run(self, duration_ms: int) -> dict[str, Reading]:
        vm = self._vm()
        rc, out, err = self._ssh(vm).run(self.script(duration_ms), timeout=300)
        got = parse(out)
        if rc != 0 or not got:
            raise GuestError(f"[{self.label}] benchmark failed in the guest (exit {rc}): "
                             f"{(err or out).strip()[-300:]}", vm.console_tail(15))
        return got

    def rep(self) -> dict[str, Reading]:
        self.ready()
        return self._run(self.opts.duration_ms)

    def stop(self) -> None:
        if self.vm is not None:
            self.vm.stop()
            self.vm = None


class HostSide:
    """An overlay on the host, fresh layers on a private tmpfs every repetition: the host kernel's
    overlayfs ("host") or the reference overlay ("ref", overlay_ref over FUSE)."""

    def __init__(self, label: str, kind: str, bins: Path, run_root: Path, opts: BenchOptions) -> None:
        if kind not in ("host", "ref"):
            raise ValueError(kind)
        self.label, self.kind, self.bins, self.run_root, self.opts = label, kind, bins, run_root, opts
        self.base = run_root / f"host-{kind}"
        self._tmpfs = False

    def start(self, round_no: int) -> None:
        if not self._tmpfs:
            try:
                mount_tmpfs(self.base, "256m")
            except RuntimeError as e:
                raise InfraError(f"cannot mount a tmpfs for the host benchmark layers: {e}") from None
            self._tmpfs = True

    def ready(self) -> None:
        pass

    @property
    def state_file(self) -> Path:
        """ovlbench's first-mapping set rotation (in the guest: its /tmp), on this side's tmpfs."""
        return self.base / "ovlbench-first-set"

    @property
    def work(self) -> str:
        """BASE of the repetitions: the layers live under it, on this side's tmpfs."""
        return str(self.base / "kb")

    def _mount_cmds(self) -> tuple[str, str]:
        layers = layer_paths(self.work)
        if self.kind == "host":
            return mount_commands("overlay", [layers.lower], layers.upper, layers.work, layers.mnt)
        # the reference overlay with this interpreter, importable from the repository
        return mount_commands("ref", [layers.lower], layers.upper, layers.work, layers.mnt,
                              ref_python=sys.executable, env={"PYTHONPATH": str(paths.REPO)})

    def script(self) -> str:
        """The shell of one repetition on the host (-n: no drop_caches on the shared host)."""
        mount, umount = self._mount_cmds()
        return rep_script(str(self.bins / PROGRAM), self.work, mount, umount, self.opts.duration_ms, cold=False)

    def rep(self) -> dict[str, Reading]:
        p = subprocess.run(["sh", "-c", self.script()], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OVLBENCH_STATE": str(self.state_file)})
        got = parse(p.stdout)
        if p.returncode != 0 or not got:
            raise InfraError(f"[{self.label}] benchmark on the host failed (exit {p.returncode}): "
                             f"{(p.stderr or p.stdout).strip()[-300:]}")
        return got

    def stop(self) -> None:
        pass

    def close(self) -> None:
        if self._tmpfs:
            mnt = layer_paths(self.work).mnt
            if is_mounted(mnt):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
            subprocess.run(["umount", str(self.base)], capture_output=True)
            self._tmpfs = False
