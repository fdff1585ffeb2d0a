"""Where sequences run. Each target runs a batch of sequences per call, each sequence in a fresh slot of
a mount made for it (remounted every slots_per_mount sequences), and returns normalised result lines;
results are cached per sequence (shrinking asks for the same ones again).

- PlainTarget: no overlay, lower then upper applied to one directory (the ideal POSIX answer);
- HostOverlayTarget: the host kernel's overlayfs;
- RefTarget: the reference overlay (overlay_ref, FUSE);
- KernelTarget: the guest kernel under test, a batch per SSH command, its console watched for splats
  around every batch (Watch); it boots fresh kernels for probes (one sequence, one program).
Overlay mounts go through THE mounter (rig.guest.mount): Mounter here, mount_commands() for the guest.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rig.analysis.splats import Splat, lockdep_disabled, scan_text
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
        for s, r in zip(todo, self._execute(todo)):
            self.cache[s] = r
        return [self.cache[tuple(s)] for s in seqs]

    def _execute(self, todo: list[tuple[str, ...]]) -> list[SeqResult]:
        """Run TODO now (no cache), in fresh slots, remounting when the slots run out."""
        out: list[SeqResult] = []
        while todo:
            self._ready()
            if not self.mounted or self.next_slot >= self.slots_per_mount:
                self.remount()
            n = min(len(todo), self.slots_per_mount - self.next_slot)
            chunk, todo = todo[:n], todo[n:]
            out += self._run(chunk, self.next_slot)
            self.next_slot += n
            self.executed += n
        return out

    def take_events(self) -> list["Watch"]:
        """Batches since the last call during which the kernel printed a splat or lockdep turned itself
        off (only a kernel target watches a console)."""
        return []

    def _ready(self) -> None:
        """Hook: make sure there is something to run on (a kernel target boots one)."""

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


KSTATE_SH = ("echo \"=== kstate $(cat /proc/sys/kernel/tainted 2>/dev/null) "
             "$(awk '/debug_locks:/ {print $2}' /proc/lockdep_stats 2>/dev/null)\"")
BATCH_MARK = "kproto: fuzz-batch"        # + " N start" / " N end", written to /dev/kmsg around each batch


@dataclass
class Watch:
    """What the console and the kernel's state showed around one batch (or program) on the guest: the
    splats printed between the batch's two /dev/kmsg markers (splats already on the console before the
    batch are not in it), lockdep turning itself off, new taint."""
    batch: int
    seqs: list[list[str]]
    splats: list[Splat]
    boot: str = ""
    first_on_boot: bool = False        # the boot ran nothing before this batch (a fresh boot)
    lockdep_off: bool = False          # lockdep turned itself off during the batch
    lockdep_was_off: bool = False      # it was off already when the batch started
    new_taint: int = 0
    died: bool = False                 # the guest died (panic) or stopped answering during the batch

    @property
    def dirty(self) -> bool:
        """The boot is no longer a fresh kernel's: a splat showed, lockdep is off, new taint, or it died."""
        return bool(self.splats or self.lockdep_off or self.new_taint or self.died)

    @property
    def signatures(self) -> set[str]:
        return {s.signature for s in self.splats}


def _kstate(line: str) -> tuple[int | None, int | None]:
    """(taint mask, debug_locks) from a "=== kstate T D" line (None where the kernel had no such file)."""
    parts = line.split()[2:]
    vals: list[int | None] = []
    for k in range(2):
        try:
            vals.append(int(parts[k]))
        except (IndexError, ValueError):
            vals.append(None)
    return vals[0], vals[1]


class KernelTarget(Target):
    """The guest kernel under test: the interpreter, the spec and each batch are staged in the VM's
    run directory (seen at /mnt/kproto over virtio-fs); a batch is one SSH command; layers on the guest's /tmp.

    The console is watched around every batch (the per-test barrier of rig/suite/session.py): the batch's
    command writes a /dev/kmsg marker before and after it and prints the kernel's taint mask and
    debug_locks before and after; once the end marker is on the console, the text between the markers is
    scanned for splats (rig.analysis.splats). A batch that showed a splat or turned lockdep off is kept
    for take_events(). BOOT (a callable returning a started, ready VM) lets the target boot a fresh
    kernel: when the VM is gone (shutdown(), a panic), and for probe()/run_program()."""

    name = "kernel"
    slots_per_mount = 400
    GUEST_WORK = "/tmp/kproto-fuzz"
    barrier_max = 10.0                 # seconds the end marker may take to reach the console

    def __init__(self, interp: Path, workdir: Path, vm: Any, boot: Callable[[], Any] | None = None) -> None:
        super().__init__(interp, workdir)
        from rig.machine.qemu import SCRATCH_MNT
        self.boot = boot
        self.gstage = f"{SCRATCH_MNT}/fuzz"
        self.batch_no = 0
        self._pending_mount = False
        self.events: list[Watch] = []
        self.last_watch: Watch | None = None
        self.boots = 0
        self.used = False
        self.dirty = False
        w = self.GUEST_WORK
        self.mount_sh, self.umount_sh = mount_commands("overlay", [f"{w}/lower"], f"{w}/upper", f"{w}/work",
                                                       f"{w}/merged")
        self.vm: Any = None
        if vm is not None:
            self._attach(vm)

    # ------------------------------------------------------------ boots
    def _attach(self, vm: Any) -> None:
        self.vm = vm
        self.stage = vm.run_dir / "fuzz"
        self.stage.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.interp, self.stage / "opinterp")
        (self.stage / "spec").write_text(spec_text())
        self.mounted = False
        self._pending_mount = False
        self.used = False              # a batch ran on this boot
        self.dirty = False             # a splat, lockdep off, new taint since this boot started
        self.boots += 1

    def shutdown(self) -> None:
        """Stop the VM (the next batch boots a fresh one)."""
        if self.vm is not None:
            self.vm.stop()
        self.vm = None
        self.mounted = False
        self._pending_mount = False

    def reboot(self) -> None:
        if self.boot is None:
            raise InfraError("the fuzz kernel target cannot boot a fresh kernel (no boot function)")
        self.shutdown()
        self._attach(self.boot())

    def _ready(self) -> None:
        if self.vm is None or not self.vm.alive():
            self.reboot()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.boot is not None:
                self.shutdown()        # a VM this target booted itself

    def take_events(self) -> list[Watch]:
        ev, self.events = self.events, []
        return ev

    # ------------------------------------------------------------ mounts
    def _mount(self) -> None:
        self._pending_mount = True       # done by the next batch's command, in the same SSH round trip

    def _mount_cmd(self, slots: int | None = None) -> str:
        w = self.GUEST_WORK
        return (f"{self.umount_sh} 2>/dev/null; rm -rf {w} && mkdir -p {w}/lower {w}/upper {w}/work {w}/merged && "
                f"{self.gstage}/opinterp setup {self.gstage}/spec {w}/lower {w}/upper "
                f"{slots or self.slots_per_mount} && {self.mount_sh} && ")

    def _unmount(self) -> None:
        if self.vm is not None and self.vm.alive() and self.vm.ssh is not None:
            try:
                self.vm.ssh.run(f"{self.umount_sh}; rm -rf {self.GUEST_WORK}", timeout=60)
            except Exception:
                pass

    # ------------------------------------------------------------ batches
    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        name = f"batch-{self.batch_no + 1}.txt"
        (self.stage / name).write_text(format_seqs(seqs))
        body = (self._mount_cmd() if self._pending_mount else "") + \
            f"{self.gstage}/opinterp run {self.GUEST_WORK}/merged {first} {self.gstage}/{name}"
        self._pending_mount = False
        try:
            rc, out, err, w = self._watched(body, [list(s) for s in seqs], 60 + 12 * len(seqs))
        finally:
            (self.stage / name).unlink(missing_ok=True)
        if w.died:
            return [SeqResult([], "lost") for _ in seqs]
        if rc != 0:
            raise GuestError(f"fuzz batch on the guest kernel exited {rc}: {err.strip()[-300:]}", self.vm.console_tail())
        return parse_run_output(out, len(seqs))

    def _watched(self, body: str, seqs: list[list[str]], timeout: float) -> tuple[int, str, str, Watch]:
        """Run BODY in the guest between two kmsg markers; scan the console between them."""
        self.batch_no += 1
        n = self.batch_no
        start, end = f"{BATCH_MARK} {n} start", f"{BATCH_MARK} {n} end"
        offset = len(self.vm.console_text())
        cmd = (f"{KSTATE_SH}; echo '<5>{start}' > /dev/kmsg; {body}; rc=$?; echo '<5>{end}' > /dev/kmsg; "
               f"{KSTATE_SH}; exit $rc")
        first_on_boot = not self.used
        self.used = True
        w = Watch(batch=n, seqs=seqs, splats=[], boot=str(getattr(self.vm, "name", "")), first_on_boot=first_on_boot)
        try:
            rc, out, err = self.vm.ssh.run(cmd, timeout=timeout)
        except Exception as e:
            if self.vm.alive():
                raise GuestError(f"fuzz batch on the guest kernel failed: {e}", self.vm.console_tail())
            # the guest died during the batch (a panic): what it printed is the batch's
            time.sleep(0.5)
            w.splats = scan_text(self._segment(offset, start, None))
            w.died = True
            self._record(w)
            return -1, "", str(e), w
        states = [_kstate(line) for line in out.splitlines() if line.startswith("=== kstate")]
        (t0, d0), (t1, d1) = (states[0], states[-1]) if states else ((None, None), (None, None))
        seg = self._segment(offset, start, end)
        w.splats = scan_text(seg)
        w.lockdep_was_off = d0 == 0
        w.lockdep_off = (d0 != 0 and d1 == 0) or (d0 != 0 and lockdep_disabled(seg))
        w.new_taint = (t1 or 0) & ~(t0 or 0)
        self._record(w)
        return rc, out, err, w

    def _record(self, w: Watch) -> None:
        self.last_watch = w
        if w.dirty:
            self.dirty = True
        if w.splats or w.lockdep_off or w.died:
            self.events.append(w)

    def _segment(self, offset: int, start: str, end: str | None) -> str:
        """The console between the START marker's line and the END marker's line, once END is on it."""
        deadline = time.monotonic() + (self.barrier_max if end else 0)
        text = self.vm.console_since(offset)
        while end and end not in text and time.monotonic() < deadline and self.vm.alive():
            time.sleep(0.05)
            text = self.vm.console_since(offset)
        i = text.find(start)
        if i >= 0:
            nl = text.find("\n", i)
            text = text[nl + 1:] if nl >= 0 else ""
        if end:
            j = text.find(end)
            if j >= 0:
                text = text[:text.rfind("\n", 0, j) + 1]
        return text

    # ------------------------------------------------------------ probes (fresh boots)
    def probe(self, ops: Sequence[str], fresh: bool = False) -> tuple[SeqResult, Watch]:
        """Run OPS alone, as a batch of its own (never from the cache), on a boot that is not dirty (a
        fresh one when FRESH and anything ran on this one); its result and what the console showed."""
        if self.vm is None or not self.vm.alive() or self.dirty or (fresh and self.used):
            self.reboot()
        r = self._execute([tuple(ops)])[0]
        w = self.last_watch
        assert w is not None
        if w in self.events:
            self.events.remove(w)
        return r, w

    def run_program(self, prog: Path, source: Path | None = None) -> tuple[int, str, Watch]:
        """Run the static program PROG (a C reproducer) on a fresh boot, in slot 0 of a fresh overlay of
        the fixture, as `PROG DIR`; its exit status, output and what the console showed. SOURCE, when
        given, is staged beside it (prog.c: for a human with --keep)."""
        if self.vm is None or not self.vm.alive() or self.used:
            self.reboot()
        name = prog.name
        shutil.copy2(prog, self.stage / name)
        if source is not None:
            shutil.copy2(source, self.stage / f"{name}.c")
        body = self._mount_cmd(1) + f"{self.gstage}/{name} {self.GUEST_WORK}/merged/s0000"
        self.mounted = False             # a one-slot mount: the next batch mounts afresh
        rc, out, err, w = self._watched(body, [], 120)
        if w in self.events:
            self.events.remove(w)
        return rc, out + err, w


LOCAL_TARGETS: dict[str, type[_LocalTarget]] = {"host": HostOverlayTarget, "ref": RefTarget, "plain": PlainTarget}


def make_local_target(kind: str, interp: Path, workdir: Path) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    cls = LOCAL_TARGETS.get(kind)
    if cls is None:
        raise BadInput(f"unknown local fuzz target {kind!r} (host, ref, plain)")
    return cls(interp, workdir / kind)
