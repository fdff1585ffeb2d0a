"""Per-architecture machine data (rig/machine/arch/<name>.toml): the QEMU binary, accelerator arguments,
kernel command line and devices, which make target gives the kernel image, and kbuild's SRCARCH (where the
tree keeps the arch's config fragments). The code that boots and builds reads them from here; nothing else
in kproto names an architecture."""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rig.core.datafile import load_toml
from rig.core.errors import BadInput

ARCH_DIR = Path(__file__).resolve().parent / "arch"
DEFAULT = "x86_64"


@dataclass(frozen=True)
class Arch:
    name: str
    qemu: str
    package: str
    make_target: str
    kernel_image: str
    srcarch: str
    machine: tuple[str, ...]
    accel: dict[str, tuple[str, ...]]
    cmdline: str
    devices: tuple[str, ...]

    def qemu_args(self, accel: str, **fill: object) -> list[str]:
        """Machine, accelerator and device arguments with the per-boot values filled in."""
        if accel not in self.accel:
            raise BadInput(f"{self.name}: no accelerator {accel!r} in {ARCH_DIR / self.name}.toml "
                           f"(it has {', '.join(sorted(self.accel))})")
        return [*self.machine, *self.accel[accel], *(a.format(**fill) for a in self.devices)]

    def boot_cmdline(self, **fill: object) -> str:
        return self.cmdline.format(**fill)


def available() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.toml"))


def _strs(raw: object, where: str) -> tuple[str, ...]:
    if not (isinstance(raw, list) and all(isinstance(x, str) for x in raw)):
        raise BadInput(f"{where}: expected a list of strings")
    return tuple(raw)


@lru_cache(maxsize=None)
def load(name: str | None = None) -> Arch:
    """The machine for NAME (default: $KPROTO_ARCH, else x86_64); BadInput naming the file on a bad one."""
    name = name or os.environ.get("KPROTO_ARCH") or DEFAULT
    path = ARCH_DIR / f"{name}.toml"
    if not path.is_file():
        raise BadInput(f"no machine data for architecture {name!r} (have: {', '.join(available())}; "
                       f"add {path} or set KPROTO_ARCH to one of them)")
    raw = load_toml(path, f"machine data for {name}")
    try:
        accel = raw["accel"]
        boot = raw["boot"]
        return Arch(name=name, qemu=str(raw["qemu"]), package=str(raw["package"]),
                    make_target=str(raw["make_target"]), kernel_image=str(raw["kernel_image"]),
                    srcarch=str(raw["srcarch"]),
                    machine=_strs(raw.get("machine", []), f"{path}: machine"),
                    accel={k: _strs(v, f"{path}: accel.{k}") for k, v in accel.items()},
                    cmdline=str(boot["cmdline"]), devices=_strs(boot["devices"], f"{path}: boot.devices"))
    except (KeyError, AttributeError, TypeError) as e:
        raise BadInput(f"{path}: bad machine data ({type(e).__name__}: {e}); compare with {DEFAULT}.toml") from None
