"""A fake guest for --target kernel (no QEMU): a VM whose SSH runs the kernel target's batch commands in
Python (every op answers "ok"), with a console log file on which the batch's /dev/kmsg markers appear, and
a kernel that prints a real 6.12 WARNING (tests/data/logs/real-warn-copyup-6.12.log) the first time per
boot a sequence satisfies TRIGGER (WARN_ON_ONCE), tainting itself. The C reproducer (staged as NAME.c
beside the binary by KernelTarget.run_program) is "run" by reading its ops back from the source."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from rig.fuzz.targets import KSTATE_SH

LOGS = Path(__file__).resolve().parents[1] / "data" / "logs"


def warning_text() -> str:
    lines = (LOGS / "real-warn-copyup-6.12.log").read_text().splitlines()
    i = next(k for k, l in enumerate(lines) if "cut here" in l)
    j = next(k for k, l in enumerate(lines) if k > i and "end trace" in l)
    return "\n".join(lines[i:j + 1]) + "\n"


WARN_SIG = "warning:ovl_copy_up_one@fs/overlayfs/copy_up.c"


def open_then_write(ops: list[str]) -> bool:
    """The fake kernel's bug: a write through an fd that opened kproto-warn for writing."""
    slots = set()
    for op in ops:
        t = op.split()
        if t[0] == "open" and t[2] == "kproto-warn" and ("WRONLY" in t[3] or "RDWR" in t[3]):
            slots.add(t[1])
        elif t[0] == "open":
            slots.discard(t[1])
        elif t[0] in ("write", "pwrite") and t[1] in slots:
            return True
    return False


class FakeSSH:
    def __init__(self, vm: "FakeVM") -> None:
        self.vm = vm
        self.cmds: list[str] = []

    def run(self, cmd: str, timeout: float | None = None) -> tuple[int, str, str]:
        self.cmds.append(cmd)
        vm = self.vm
        if not vm.alive():
            raise OSError("connection lost")
        out: list[str] = []
        # the command's pieces in order: kstate, start marker, body, end marker, kstate
        for piece in re.split(r"(?<=;) ", cmd):
            piece = piece.strip().rstrip(";")
            m = re.search(r"echo '<5>(kproto: [^']*)' > /dev/kmsg", piece)
            if piece == KSTATE_SH:
                out.append(f"=== kstate {vm.taint} 1\n")
            elif m:
                vm.say(m.group(1))
            elif "opinterp run" in piece:
                path = vm.run_dir / "fuzz" / piece.rsplit("/", 1)[1].strip()
                from rig.fuzz.ops import parse_ops
                for i, s in enumerate(parse_ops(path.read_text())):
                    out.append(f"=== seq {i}\n" + "".join(f"{k}: ok\n" for k in range(1, len(s) + 1)))
                    vm.execute(s)
                    out.append(f"=== end {i} exit=0\n")
            elif re.search(r"/mnt/kproto/fuzz/\S+ /tmp/kproto-fuzz/merged/s0000", piece):
                name = re.search(r"/mnt/kproto/fuzz/(\S+) ", piece.split("&& ")[-1]).group(1)
                src = (vm.run_dir / "fuzz" / f"{name}.c").read_text()
                ops = re.findall(r"/\* \d+: (.*?)(?:  ->  .*?)? \*/", src)
                out.append("".join(f"{k}: ok\n" for k in range(1, len(ops) + 1)))
                vm.execute(ops)
                vm.programs.append(ops)
        return 0, "".join(out), ""


class FakeVM:
    """qemu.VM's interface as the fuzz code uses it. TRIGGER: does this kernel WARN on a sequence."""

    instances: list["FakeVM"] = []
    trigger: Callable[[list[str]], bool] | None = staticmethod(open_then_write)   # type: ignore[assignment]
    warn_at_boot = False

    def __init__(self, bzimage: Path, run_dir: Path, name: str = "guest", trigger=...) -> None:
        self.bzimage, self.run_dir, self.name, self.accel = bzimage, run_dir, name, "tcg"
        if trigger is not ...:         # None: a kernel without the bug
            self.trigger = trigger
        self.ssh = FakeSSH(self)
        self.taint = 0
        self.warned = False
        self.up = False
        self.t = 1.0
        self.executed: list[list[str]] = []
        self.programs: list[list[str]] = []
        run_dir.mkdir(parents=True, exist_ok=True)
        self.console_log = run_dir / f"console-{name}.log"
        FakeVM.instances.append(self)

    # lifecycle
    def start(self) -> "FakeVM":
        self.up = True
        self.console_log.write_text("[    0.000000][    T0] Linux version 6.12.117+ (fake)\n")
        if self.warn_at_boot:          # a splat during boot: on the console before any batch
            self.warn()
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        return 0.1

    def __enter__(self) -> "FakeVM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.up = False

    def alive(self) -> bool:
        return self.up

    # console
    def say(self, text: str) -> None:
        self.t += 0.001
        with self.console_log.open("a") as fh:
            fh.write(f"[{self.t:12.6f}][  T100] {text}\n")

    def warn(self) -> None:
        with self.console_log.open("a") as fh:
            fh.write(warning_text())
        self.warned = True
        self.taint |= 512

    def execute(self, ops: list[str]) -> None:
        self.executed.append(list(ops))
        if self.trigger is not None and self.trigger(list(ops)) and not self.warned:
            self.warn()

    def console_text(self) -> str:
        return self.console_log.read_text() if self.console_log.exists() else ""

    def console_since(self, offset: int) -> str:
        return self.console_text()[offset:]

    def console_tail(self, lines: int = 25) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])


def booter(run_dir: Path, trigger=open_then_write, name: str = "fake", warn_at_boot: bool = False):
    """A KernelTarget boot function: a fresh FakeVM per call."""
    n = [0]

    def boot() -> FakeVM:
        n[0] += 1
        vm = FakeVM(Path("/fake/bzImage"), run_dir, f"{name}{n[0]}", trigger=trigger)
        vm.warn_at_boot = warn_at_boot
        return vm.start()
    return boot
