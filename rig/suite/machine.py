"""The machine seam of the runner: what the runner needs of a machine that boots a kernel and runs the
guest harness (Machine, HarnessChannel), and the real one, QemuMachine (rig/machine/qemu.py's VM, the
harness over a paramiko channel). The tests inject a replaying fake (tests/fake_machine.py) instead."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Protocol

from rig.core.errors import GuestError
from rig.guest.programs import HARNESS_ZIP
from rig.kernel.build import Kernel
from rig.machine.qemu import SCRATCH_MNT, VM
from rig.machine.ssh import SSHError

GUEST_PYTHON = "/usr/bin/python3"


class HarnessChannel(Protocol):
    def read_line(self, timeout: float) -> str | None: ...   # None: nothing yet; ChannelClosed at the end
    def send_line(self, line: str) -> None: ...
    def close(self) -> None: ...


class Machine(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def accel(self) -> str: ...                              # kvm | tcg
    @property
    def console_log(self) -> Path: ...

    def boot(self, timeout: float, on_init: Callable[[float], None] | None = None) -> float: ...
    # boot: seconds to the first command; BootError. on_init(s): the guest's init is up (when the machine knows)
    def console_size(self) -> int: ...
    def console_since(self, offset: int) -> str: ...
    def console_tail(self) -> str: ...
    def alive(self) -> bool: ...
    def open_harness(self, names: list[str]) -> HarnessChannel: ...
    def blocked_tasks(self) -> str: ...                      # sysrq-w dump ("" if none came)
    def stop(self) -> None: ...


MachineFactory = Callable[[str], Machine]


class QemuMachine:
    """The real machine: rig/machine/qemu.py's QEMU guest, the harness over a paramiko channel."""

    def __init__(self, kernel: Kernel, run_dir: Path, name: str) -> None:
        self.vm = VM(bzimage=kernel.bzimage, run_dir=run_dir, name=name)
        self.name = name
        self.console_log = self.vm.console_log
        self._opens = 0

    @classmethod
    def factory(cls, kernel: Kernel, run_dir: Path) -> MachineFactory:
        """The runner's default machines: QEMU guests of KERNEL sharing RUN_DIR."""
        def make(name: str) -> Machine:
            return cls(kernel, run_dir, name)
        return make

    @property
    def accel(self) -> str:
        return self.vm.accel

    def boot(self, timeout: float, on_init: Callable[[float], None] | None = None) -> float:
        self.vm.start()
        return self.vm.wait_ready(timeout, on_init)

    def console_size(self) -> int:
        return len(self.vm.console_text())

    def console_since(self, offset: int) -> str:
        return self.vm.console_since(offset)

    def console_tail(self) -> str:
        return self.vm.console_tail()

    def alive(self) -> bool:
        return self.vm.alive()

    def open_harness(self, names: list[str]) -> HarnessChannel:
        # a new file each time: the guest caches the run share (cache=always), so a file rewritten under a
        # name it has read could still show it the old one (rig/machine/virtiofs.py)
        self._opens += 1
        names_file = self.vm.run_dir / "guest" / f"names-{self.name}-{self._opens}.txt"
        names_file.write_text("\n".join(names) + "\n")
        guest = f"{SCRATCH_MNT}/guest"
        cmd = (f"cd / && PYTHONPATH={guest}/{HARNESS_ZIP} exec {GUEST_PYTHON} -S -B -m rig.guest.harness "
               f"--bins {guest}/bins --tests {guest}/tests "
               f"--work /run/kproto-work --target overlay --names {guest}/{names_file.name} "
               f"--step --kernel-state")
        assert self.vm.ssh is not None
        try:
            return self.vm.ssh.open_stream(cmd)
        except SSHError as e:
            raise GuestError(f"could not start the guest test harness: {e}", self.vm.console_tail())

    def blocked_tasks(self) -> str:
        """sysrq-w: dump the blocked (D state) tasks to the console and return that part of it. Through
        the QEMU monitor's keyboard first (works when userspace and sshd are wedged), then over SSH."""
        offset = self.console_size()
        self.vm.sysrq("w")
        for attempt in range(2):
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                text = self.vm.console_since(offset)
                if "Show Blocked State" in text:
                    time.sleep(1.5)            # let the whole dump reach the console
                    text = self.vm.console_since(offset)
                    return text[text.index("Show Blocked State"):][:20000]
                time.sleep(0.2)
            if attempt == 0 and self.vm.ssh is not None:
                try:                         # a new channel beside the test's (one connection per guest)
                    self.vm.ssh.run("echo w > /proc/sysrq-trigger", timeout=10)
                except (SSHError, OSError):
                    pass
        return ""

    def stop(self) -> None:
        self.vm.stop()
