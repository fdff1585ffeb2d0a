"""Where sequences run. Each target runs a batch of sequences per call, each sequence in a fresh slot of
a mount made for it (remounted every slots_per_mount sequences), and returns normalised result lines;
results are cached per sequence (shrinking asks for the same ones again).

- PlainTarget: no overlay, lower then upper applied to one directory (the ideal POSIX answer);
- HostOverlayTarget: the host kernel's overlayfs;
- RefTarget: the reference overlay (overlay_ref, FUSE);
- KernelTarget: the guest kernel under test, a batch per SSH command.
Overlay mounts go through THE mounter (rig.guest.mount): Mounter here, mount_commands() for the guest.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any, Sequence

from rig.core.errors import BadInput, GuestError, InfraError
from rig.fuzz.fixture import spec_text
from rig.fuzz.interp import SeqResult, parse_run_output
from rig.fuzz.ops import format_seqs
from rig.guest.mount import Mounter, mount_commands, mount_tmpfs


class Target:
    """Runs batches of sequences, each in a fresh slot of a mount made for this target."""

    name = "?"
    slots_per_mount = 400

    def __init__(self, interp: Path, workdir: Path) -> None:
        self.interp = interp
        self.workdir = workdir
        self.next_slot = 0
        self.mounted = False
        self.generation = 0
        self.cache: dict[tuple[str, ...], SeqResult] = {}
        self.executed = 0

    def run(self, seqs: Sequence[Sequence[str]]) -> list[SeqResult]:
        todo = list(dict.fromkeys(tuple(s) for s in seqs if tuple(s) not in self.cache))
        while todo:
            if not self.mounted or self.next_slot >= self.slots_per_mount:
                self.remount()
            n = min(len(todo), self.slots_per_mount - self.next_slot)
            chunk, todo = todo[:n], todo[n:]
            results = self._run(chunk, self.next_slot)
            self.next_slot += n
            self.executed += n
            for s, r in zip(chunk, results):
                self.cache[s] = r
        return [self.cache[tuple(s)] for s in seqs]

    def remount(self) -> None:
        if self.mounted:
            self.unmount()
        self.generation += 1
        self.next_slot = 0
        self._mount()
        self.mounted = True

    def close(self) -> None:
        if self.mounted:
            self.unmount()

    def unmount(self) -> None:
        self.mounted = False
        self._unmount()

    # subclass hooks
    def _mount(self) -> None:
        raise NotImplementedError

    def _unmount(self) -> None:
        raise NotImplementedError

    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        raise NotImplementedError

    def __enter__(self) -> "Target":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LocalTarget(Target):
    """Layers in a tmpfs mounted on the target's work dir (the host's /tmp is a slow disk: setting up
    400 slots took 3.5 s on ext4); the interpreter runs locally."""

    tmpfs = False

    def _ensure_tmpfs(self) -> None:
        if self.tmpfs:
            return
        try:
            mount_tmpfs(self.workdir, "512m", "kproto-fuzz")
        except RuntimeError as e:
            raise InfraError(f"could not mount a tmpfs on {self.workdir}: {e}") from None
        self.tmpfs = True

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.tmpfs:
                subprocess.run(["umount", str(self.workdir)], capture_output=True)
                self.tmpfs = False

    def _gen_dir(self) -> Path:
        return self.workdir / f"g{self.generation}"

    def _layers(self, *dirs: str) -> Path:
        """A fresh generation directory holding the fixture spec and DIRS."""
        self._ensure_tmpfs()
        g = self._gen_dir()
        shutil.rmtree(g, ignore_errors=True)
        g.mkdir(parents=True)
        (g / "spec").write_text(spec_text())
        for d in dirs:
            (g / d).mkdir()
        return g

    def _setup(self, spec: Path, lower: Path, upper: Path) -> None:
        r = subprocess.run([str(self.interp), "setup", str(spec), str(lower), str(upper), str(self.slots_per_mount)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise InfraError(f"fuzz fixture setup failed: {r.stderr.strip()[-300:]}")

    def base(self) -> Path:
        raise NotImplementedError

    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        r = subprocess.run([str(self.interp), "run", str(self.base()), str(first)], input=format_seqs(seqs),
                           capture_output=True, text=True, timeout=30 + 12 * len(seqs))
        return parse_run_output(r.stdout, len(seqs))


class PlainTarget(_LocalTarget):
    """No overlay at all: lower then upper applied to one directory. The ideal POSIX answer."""

    name = "plain"

    def _mount(self) -> None:
        g = self._layers()
        self.dir = g / "plain"
        self._setup(g / "spec", self.dir, self.dir)

    def _unmount(self) -> None:
        shutil.rmtree(self._gen_dir(), ignore_errors=True)

    def base(self) -> Path:
        return self.dir


class _MountedTarget(_LocalTarget):
    """An overlay of the fixture's lower and upper layers, mounted with THE mounter (rig.guest.mount)."""

    mounter_target = "overlay"         # rig.guest.mount.TARGETS
    options = ""                       # extra mount options, comma-separated
    mount_error = "could not mount the host's overlayfs"
    mounter: Mounter | None = None

    def _mount(self) -> None:
        g = self._layers("lower", "upper", "work", "merged")
        self._setup(g / "spec", g / "lower", g / "upper")
        self.merged = g / "merged"
        self.mounter = self.mounter or Mounter(self.mounter_target)
        try:
            self.mounter.mount([g / "lower"], g / "upper", g / "work", self.merged,
                               [o for o in self.options.split(",") if o])
        except RuntimeError as e:
            raise InfraError(f"{self.mount_error}: {e}")

    def _unmount(self) -> None:
        try:
            if self.mounter is not None:
                self.mounter.umount(self.merged)      # lazily detached when it must be
        finally:
            shutil.rmtree(self._gen_dir(), ignore_errors=True)

    def base(self) -> Path:
        return self.merged


class HostOverlayTarget(_MountedTarget):
    """The host kernel's overlayfs (mount -t overlay; needs root)."""

    name = "host"


class RefTarget(_MountedTarget):
    """The pyfuse3 reference overlay (overlay_ref)."""

    name = "ref"
    mounter_target = "ref"
    mount_error = "could not mount the reference overlay"


class KernelTarget(Target):
    """The guest kernel under test: the interpreter, the spec and each batch are staged in the VM's
    run directory (seen at /mnt/kproto over 9p); a batch is one SSH command; layers on the guest's /tmp."""

    name = "kernel"
    slots_per_mount = 400
    GUEST_WORK = "/tmp/kproto-fuzz"

    def __init__(self, interp: Path, workdir: Path, vm: Any) -> None:
        super().__init__(interp, workdir)
        from rig.machine.qemu import SCRATCH_MNT
        self.vm = vm
        self.stage = vm.run_dir / "fuzz"
        self.stage.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interp, self.stage / "opinterp")
        (self.stage / "spec").write_text(spec_text())
        self.gstage = f"{SCRATCH_MNT}/fuzz"
        self.batch_no = 0
        self._pending_mount = False
        w = self.GUEST_WORK
        self.mount_sh, self.umount_sh = mount_commands("overlay", [f"{w}/lower"], f"{w}/upper", f"{w}/work",
                                                       f"{w}/merged")

    def _mount(self) -> None:
        self._pending_mount = True       # done by the next batch's command, in the same SSH round trip

    def _mount_cmd(self) -> str:
        w = self.GUEST_WORK
        return (f"{self.umount_sh} 2>/dev/null; rm -rf {w} && mkdir -p {w}/lower {w}/upper {w}/work {w}/merged && "
                f"{self.gstage}/opinterp setup {self.gstage}/spec {w}/lower {w}/upper {self.slots_per_mount} && "
                f"{self.mount_sh} && ")

    def _unmount(self) -> None:
        if self.vm.alive() and self.vm.ssh is not None:
            try:
                self.vm.ssh.run(f"{self.umount_sh}; rm -rf {self.GUEST_WORK}", timeout=60)
            except Exception:
                pass

    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        self.batch_no += 1
        name = f"batch-{self.batch_no}.txt"
        (self.stage / name).write_text(format_seqs(seqs))
        cmd = (self._mount_cmd() if self._pending_mount else "") + \
            f"{self.gstage}/opinterp run {self.GUEST_WORK}/merged {first} {self.gstage}/{name}"
        self._pending_mount = False
        try:
            rc, out, err = self.vm.ssh.run(cmd, timeout=60 + 12 * len(seqs))
        except Exception as e:
            raise GuestError(f"fuzz batch on the guest kernel failed: {e}", self.vm.console_tail())
        finally:
            (self.stage / name).unlink(missing_ok=True)
        if rc != 0:
            raise GuestError(f"fuzz batch on the guest kernel exited {rc}: {err.strip()[-300:]}", self.vm.console_tail())
        return parse_run_output(out, len(seqs))


LOCAL_TARGETS: dict[str, type[_LocalTarget]] = {"host": HostOverlayTarget, "ref": RefTarget, "plain": PlainTarget}


def make_local_target(kind: str, interp: Path, workdir: Path) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    cls = LOCAL_TARGETS.get(kind)
    if cls is None:
        raise BadInput(f"unknown local fuzz target {kind!r} (host, ref, plain)")
    return cls(interp, workdir / kind)
