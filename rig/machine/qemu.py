"""QEMU guests: a curated root and the host's /usr over virtio-fs (read-only; rig/machine/guestroot.py,
rig/machine/virtiofs.py), a writable per-run share, console to a file, no network (the guest kernel has
no CONFIG_NET): SSH reaches the guest through a virtio-serial port on a unix socket in the run directory
(rig/machine/control.py). KVM only when it really works.

Every VM started here is reaped on every path, with its virtiofsd daemons: context manager exit,
exceptions, KeyboardInterrupt, atexit, and PR_SET_PDEATHSIG so even a SIGKILLed kproto takes its QEMU
and daemons down with it.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


from rig.core.errors import BootError, InfraError, MissingTool
from rig.core import templates
from rig.machine import arch
from rig.machine import control
from rig.machine import guestroot
from rig.machine import ssh as sshmod
from rig.machine import virtiofs

READY_MARKER = "KPROTO-GUEST-READY"
ROOT_TAG = "/dev/root"          # the kernel's root= (rootfstype=virtiofs)
USR_TAG = "usr"                 # mounted on /usr by the stage-1 init
SCRATCH_TAG = "kproto"
SCRATCH_MNT = "/mnt/kproto"
_LIVE: dict[int, "VM"] = {}
_PREPARE_LOCK = threading.Lock()


def _write_if_changed(path: Path, text: str) -> None:
    """A guest that is booting may be reading PATH: never truncate it under its feet."""
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _reap_all() -> None:
    for vm in list(_LIVE.values()):
        vm.stop()


atexit.register(_reap_all)


def kvm_works() -> bool:
    """True only when /dev/kvm is usable *and* the CPU exposes vmx/svm (here /dev/kvm exists but
    the CPU has no vmx, and -enable-kvm hangs). KPROTO_ACCEL=tcg|kvm overrides the probe."""
    forced = os.environ.get("KPROTO_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced == "kvm"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    try:
        import fcntl
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


DROPBEAR = "/usr/sbin/dropbear"


def check_ssh_server() -> None:
    """The guest's SSH server is the host's dropbear (Debian's dropbear-bin ships the binary without a
    service, so installing it starts nothing on the host). OpenSSH's sshd cannot serve a guest without
    networking: its privilege separation needs a socketpair, and the guest kernel has no sockets."""
    if not Path(DROPBEAR).exists():
        raise MissingTool(f"{DROPBEAR} is missing: the guest's SSH server (apt-get install dropbear-bin)")


def _pdeathsig() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class VM:
    bzimage: Path
    run_dir: Path                  # 0700, holds console.log, ssh keys, the guest's writable share
    name: str = "guest"
    memory_mb: int = 1024
    smp: int = 2
    hung_task_timeout: int = 10
    extra_cmdline: str = ""
    proc: subprocess.Popen | None = None
    accel: str = ""
    boot_s: float = 0.0
    ssh: "sshmod.GuestSSH | None" = None
    guest_root: Path | None = None  # the curated root (guestroot.ensure()), set by _prepare
    _t0: float = 0.0
    _log_offset: int = 0
    _daemons: list[virtiofs.Daemon] = field(default_factory=list)

    @property
    def console_log(self) -> Path:
        return self.run_dir / f"console-{self.name}.log"

    @property
    def monitor_sock(self) -> Path:
        return self.run_dir / f"monitor-{self.name}.sock"

    @property
    def control_sock(self) -> Path:
        """The unix socket QEMU serves the guest's SSH port on (rig/machine/control.py)."""
        return self.run_dir / f"ssh-{self.name}.sock"

    def shares(self) -> list[virtiofs.Share]:
        """The guest's virtio-fs exports: its root and the host's /usr read-only, the run share writable;
        all three cached in the guest (cache=always: see rig/machine/virtiofs.py for why the run share too)."""
        if self.guest_root is None:
            self.guest_root = guestroot.ensure()
        return [virtiofs.Share("root", ROOT_TAG, self.guest_root, readonly=True, cache="always"),
                virtiofs.Share("usr", USR_TAG, Path("/usr"), readonly=True, cache="always"),
                virtiofs.Share("scratch", SCRATCH_TAG, self.run_dir, readonly=False, cache="always")]

    def share_sock(self, share: virtiofs.Share) -> Path:
        return self.run_dir / f"fs-{self.name}-{share.name}.sock"

    @property
    def known_hosts(self) -> Path:
        return self.run_dir / "ssh" / f"known_hosts-{self.name}"

    # ---------------------------------------------------------------- lifecycle
    def _prepare(self) -> None:
        """The run dir's shared files: keys and boot plan. Guests of one run dir may start side
        by side (rig/suite/boots.py): made once under a lock, rewritten only when different, atomically."""
        with _PREPARE_LOCK:
            self._prepare_locked()

    def _prepare_locked(self) -> None:
        a = arch.load()
        if shutil.which(a.qemu) is None:
            raise MissingTool(f"{a.qemu} is not installed (apt-get install {a.package})")
        check_ssh_server()
        virtiofs.check_installed()
        self.guest_root = guestroot.ensure()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        sshdir = self.run_dir / "ssh"
        if not (sshdir / "host_ed25519").exists():
            sshmod.make_keys(sshdir)
        if not (sshdir / "host_ed25519.dropbear").exists():
            sshmod.dropbear_host_key(sshdir)
        _write_if_changed(self.run_dir / "boot.plan", templates.render(
            "boot.plan.j2", scratch_mnt=SCRATCH_MNT, ready_marker=READY_MARKER,
            hung_task_timeout=self.hung_task_timeout, control_port=control.PORT_NAME,
            hello=control.HELLO.decode(), ack=control.ACK.decode(), sockshim=guestroot.SOCKSHIM))

    def command(self) -> list[str]:
        a = arch.load()
        if self.guest_root is None:
            self.guest_root = guestroot.ensure()
        shares = self.shares()
        fill = dict(init=guestroot.INIT, memory_mb=self.memory_mb, console_log=self.console_log,
                    monitor_sock=self.monitor_sock, control_sock=self.control_sock, control_port=control.PORT_NAME,
                    **{f"fs_{s.name}_sock": self.share_sock(s) for s in shares},
                    **{f"fs_{s.name}_tag": s.tag for s in shares})
        # after "--": the stage-1 init's arguments (rig/machine/init/init.c), the run share's tag and mount point
        cmdline = " ".join(p for p in (a.boot_cmdline(**fill), self.extra_cmdline, "--", SCRATCH_TAG, SCRATCH_MNT) if p)
        return [a.qemu, "-nodefaults", "-display", "none", "-no-reboot",
                "-smp", str(self.smp), "-m", str(self.memory_mb),
                "-kernel", str(self.bzimage), "-append", cmdline, *a.qemu_args(self.accel or "tcg", **fill)]

    def start(self) -> "VM":
        if self.proc is not None:
            raise InfraError(f"VM {self.name} was already started (pid {self.proc.pid})")
        self._prepare()
        self.accel = "kvm" if kvm_works() else "tcg"
        self.console_log.write_text("")
        self.monitor_sock.unlink(missing_ok=True)
        self.control_sock.unlink(missing_ok=True)
        with _PREPARE_LOCK:
            self._t0 = time.monotonic()
            try:
                for share in self.shares():
                    self._daemons.append(virtiofs.start(share, self.share_sock(share), self.fs_log,
                                                        preexec_fn=_pdeathsig))
                self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, start_new_session=True,
                                             preexec_fn=_pdeathsig)
            except BaseException:
                virtiofs.stop_all(self._daemons)
                raise
            _LIVE[self.proc.pid] = self
        return self

    @property
    def fs_log(self) -> Path:
        """What this guest's virtiofsd daemons printed (warnings and errors only)."""
        return self.run_dir / f"virtiofsd-{self.name}.log"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 120.0, on_init: Callable[[float], None] | None = None) -> float:
        """Wait for the init's ready marker, then for SSH; return seconds from QEMU start to first command.
        ON_INIT(seconds) is called when the marker shows (init is up, SSH not yet).
        BootError with the console tail when the kernel dies, never gets to init, or SSH never answers."""
        deadline = self._t0 + timeout
        while READY_MARKER not in self.console_text():
            self._check_alive("before init was ready")
            if time.monotonic() > deadline:
                self.stop()
                raise BootError(f"guest did not reach init within {timeout:.0f} s; console tail:\n{self.console_tail()}")
            time.sleep(0.1)
        if on_init is not None:
            on_init(time.monotonic() - self._t0)
        known_hosts = sshmod.write_known_hosts(self.run_dir / "ssh", self.known_hosts.name)
        self.ssh = sshmod.GuestSSH(control_sock=self.control_sock, key=self.run_dir / "ssh" / "client_ed25519",
                                   known_hosts=known_hosts)
        while True:
            self._check_alive("before SSH answered")
            try:
                self.ssh.connect(timeout=5)
                self.ssh.run("true", timeout=30)
                break
            except sshmod.SSHError as e:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BootError(f"SSH to the guest never answered within {timeout:.0f} s ({e}); "
                                    f"console tail:\n{self.console_tail()}")
                time.sleep(0.05)                # QEMU's socket is not there yet, or the relay is starting
        self.boot_s = time.monotonic() - self._t0
        return self.boot_s

    def _check_alive(self, when: str) -> None:
        if not self.alive():
            out = self.proc.stdout.read().decode(errors="replace") if self.proc and self.proc.stdout else ""
            rc = self.proc.returncode if self.proc else None
            _LIVE.pop(self.proc.pid if self.proc else -1, None)
            virtiofs.stop_all(self._daemons)
            try:
                fs = self.fs_log.read_text(errors="replace").strip()[-300:]
            except FileNotFoundError:
                fs = ""
            raise BootError(f"QEMU exited (status {rc}) {when}: {out.strip()[:300]}"
                            + (f"; virtiofsd: {fs}" if fs else "") + f"; console tail:\n{self.console_tail()}")

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 25) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def console_since(self, offset: int) -> str:
        return self.console_text()[offset:]

    # ---------------------------------------------------------------- monitor
    def monitor(self, command: str, timeout: float = 5.0) -> str:
        """One HMP command through the monitor socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.monitor_sock))
            buf = b""
            try:
                while b"(qemu)" not in buf:
                    buf += s.recv(4096)
                s.sendall(command.encode() + b"\n")
                buf = b""
                end = time.monotonic() + timeout
                while buf.count(b"(qemu)") < 1 and time.monotonic() < end:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
            except (socket.timeout, ConnectionError):
                pass
            return buf.decode(errors="replace")

    def sysrq(self, key: str) -> None:
        """Magic SysRq through the guest's PS/2 keyboard (works when userspace and sshd are wedged)."""
        try:
            self.monitor(f"sendkey alt-sysrq-{key}")
        except OSError:
            pass

    def stop(self) -> None:
        """Power off and reap QEMU. Idempotent."""
        if self.ssh is not None:
            self.ssh.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.monitor("quit", timeout=2)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        _LIVE.pop(self.proc.pid, None)
        if self.proc.stdout:
            self.proc.stdout.close()
        virtiofs.stop_all(self._daemons)
        self.monitor_sock.unlink(missing_ok=True)
        self.control_sock.unlink(missing_ok=True)

    def __enter__(self) -> "VM":
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
