"""Kernel config: the kproto fragment (jinja2), user fragments, and the check that every option landed.

Modelled on tools/testing/kunit/kunit_config.py: a Kconfig is a set of (name, value) entries, and the
requested set must be a subset of the resulting .config after olddefconfig.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path


from rig.core.errors import BadInput, ConfigError
from rig.core import templates

_ENTRY = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

# What `make <base_target>` the fragment is merged onto. tinyconfig + fragment: 3.5 min cold here,
# x86_64_defconfig + fragment: 10.5 min (docs/design.md §1).
BASE_TARGET = "tinyconfig"

# tinyconfig's recipe in scripts/kconfig/Makefile as 6.12 has it (kernel/configs/tiny-base.config), and how
# `make <name>.config` finds a fragment. kproto runs those steps itself with its fragment merged in one
# go (rig/kernel/build.py), so Kconfig runs twice instead of three times; any other recipe gets
# `make tinyconfig` as it is.
_TINYCONFIG_RULE = re.compile(
    r"^tinyconfig:\n"
    r"\t\$\(Q\)KCONFIG_ALLCONFIG=(?P<allconfig>\S+) \$\(MAKE\) -f \$\(srctree\)/Makefile allnoconfig\n"
    r"\t\$\(Q\)\$\(MAKE\) -f \$\(srctree\)/Makefile (?P<fragment>[\w.-]+\.config)\n", re.M)
_CONFIGFILES = ("configfiles = $(wildcard $(srctree)/kernel/configs/$(1) "
                "$(srctree)/arch/$(SRCARCH)/configs/$(1))")


@dataclass
class Kconfig:
    entries: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: str) -> None:
        self.entries[name] = value

    def merge(self, other: "Kconfig") -> None:
        self.entries.update(other.entries)

    def value(self, name: str) -> str:
        """The value of NAME, 'n' when unset (as Kconfig treats it)."""
        return self.entries.get(name, "n")

    def missing_from(self, actual: "Kconfig") -> list[tuple[str, str, str]]:
        """Requested (name, wanted, got) triples that `actual` does not honour."""
        out = []
        for name, want in self.entries.items():
            got = actual.value(name)
            if want != got:
                out.append((name, want, got))
        return out

    def text(self) -> str:
        lines = []
        for name, value in self.entries.items():
            lines.append(f"# {name} is not set" if value == "n" else f"{name}={value}")
        return "\n".join(lines) + "\n"

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()


def parse(text: str, origin: str = "<string>") -> Kconfig:
    """Parse .config / fragment text. Unknown lines are an error so typos in fragments are caught."""
    cfg = Kconfig()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = _ENTRY.match(line)
        if m:
            cfg.set(m.group(1), m.group(2))
            continue
        m = _NOT_SET.match(line)
        if m:
            cfg.set(m.group(1), "n")
            continue
        if line.startswith("#"):
            continue
        raise BadInput(f"{origin}:{lineno}: not a Kconfig line: {line!r} (expected CONFIG_FOO=y or '# CONFIG_FOO is not set')")
    return cfg


def parse_file(path: Path) -> Kconfig:
    if not path.is_file():
        raise BadInput(f"config fragment not found: {path} (pass an existing file to --config)")
    return parse(path.read_text(errors="replace"), str(path))


def render_fragment(*, lockdep: bool = True, kasan: bool = False, hung_task_timeout: int = 10,
                    nr_cpus: int = 4) -> str:
    return templates.render("kproto.config.j2", 
        base_target=BASE_TARGET, lockdep=lockdep, kasan=kasan,
        hung_task_timeout=hung_task_timeout, nr_cpus=nr_cpus)


def requested(user_fragments: list[Path] | tuple[Path, ...] = ()) -> Kconfig:
    """The kproto fragment with the user's fragments merged on top (later wins)."""
    cfg = parse(render_fragment(), "kproto.config.j2")
    for frag in user_fragments:
        cfg.merge(parse_file(Path(frag)))
    return cfg


@dataclass(frozen=True)
class BaseRecipe:
    """What `make tinyconfig` does in a tree: allnoconfig with ALLCONFIG as KCONFIG_ALLCONFIG, then
    FRAGMENTS merged on top (merge_config.sh) and olddefconfig."""
    allconfig: Path
    fragments: tuple[Path, ...]


def tinyconfig_recipe(tree: Path, srcarch: str) -> BaseRecipe | None:
    """tinyconfig's steps in the kernel tree TREE, when its scripts/kconfig/Makefile has the recipe kproto
    knows (6.12's); None for any other, which gets `make tinyconfig` itself."""
    try:
        makefile = (tree / "scripts/kconfig/Makefile").read_text(errors="replace")
    except OSError:
        return None
    m = _TINYCONFIG_RULE.search(makefile)
    if m is None or _CONFIGFILES not in makefile:
        return None
    allconfig = tree / m.group("allconfig")
    name = m.group("fragment")
    fragments = tuple(p for p in (tree / "kernel/configs" / name, tree / "arch" / srcarch / "configs" / name)
                      if p.is_file())
    if not allconfig.is_file() or not fragments:
        return None
    return BaseRecipe(allconfig, fragments)


def check_landed(want: Kconfig, config_path: Path) -> None:
    """Raise ConfigError naming each requested option olddefconfig dropped or changed."""
    actual = parse(config_path.read_text(errors="replace"), str(config_path))
    missing = want.missing_from(actual)
    if missing:
        names = ", ".join(f"{n}={w} (got {g})" for n, w, g in missing)
        raise ConfigError(
            f"config options did not survive olddefconfig: {names}; "
            "check their dependencies (make menuconfig, search with '/') and fix the fragment")
