"""The layer fixture every fuzz sequence starts from: a small namespace of paths on the lower layer, on
the upper layer, or nowhere.

The interpreter (guest_tests/fuzz/opinterp.c) populates it from spec_text() in numbered slot directories
s0000, s0001, ... so that one mount serves hundreds of sequences, each in a fresh slot. The C reproducer
describes it in a comment and the guest test spells it out as [[lower]]/[[upper]] layers (rig/fuzz/emit.py).
"""
from __future__ import annotations

from typing import NamedTuple

OLD_TIME = 946684800          # every fixture entry's mtime (opinterp.c's OLD_TIME, the guest test's mtime)


class Entry(NamedTuple):
    layer: str                # "L" the lower layer, "U" the upper layer
    type: str                 # file, dir, symlink, whiteout
    path: str
    mode: int
    arg: str | None           # a file's content, a symlink's target


class Xattr(NamedTuple):
    layer: str
    path: str
    name: str
    value: str


FIXTURE: list[Entry] = [
    Entry("L", "file", "a", 0o644, "foo-lower-data\n"),
    Entry("L", "file", "b", 0o600, "b-lower\n"),
    Entry("L", "dir", "d", 0o755, None),
    Entry("L", "file", "d/f", 0o644, "f-in-lower-dir\n"),
    Entry("L", "symlink", "s", 0o777, "a"),
    Entry("L", "file", "w", 0o644, "whited-out\n"),
    Entry("U", "whiteout", "w", 0, None),
    # a trip-wire for the rig's fixture patches (tests/data/patches/README.md, "Trigger names"): they
    # misbehave only on copy-up of a name starting with kproto-warn, so `kproto fuzz --target kernel
    # warn-copyup.patch` can find its WARN; on any other kernel it is a lower file like b
    Entry("L", "file", "kproto-warn", 0o644, "trip-wire\n"),
    Entry("U", "file", "u", 0o644, "upper-only\n"),
]
FIXTURE_XATTRS: list[Xattr] = [Xattr("L", "a", "user.k", "v1")]
# where each path of the namespace lives, for humans
WHERE = {"a": "lower", "b": "lower", "d": "lower dir", "d/f": "lower", "s": "lower symlink -> a",
         "u": "upper", "w": "lower, whited out on upper", "n": "nowhere", "d/n": "nowhere",
         "kproto-warn": "lower (the fixture patches' trip-wire name)"}
# the paths operations choose from (rig/fuzz/ops.py weighs them)
PATHS = ["a", "b", "d", "d/f", "s", "u", "w", "n", "d/n", "kproto-warn"]


def spec_text() -> str:
    """The fixture as opinterp's setup spec ("L|U type path mode hex-content|target")."""
    lines = ["# kproto fuzz fixture: layer type path mode hex-content|target"]
    for e in FIXTURE:
        if e.type == "file":
            a = (e.arg or "").encode().hex() or "-"
        elif e.type == "symlink":
            a = e.arg or "-"
        else:
            a = "-"
        lines.append(f"{e.layer} {e.type} {e.path} {e.mode:04o} {a}")
    for x in FIXTURE_XATTRS:
        lines.append(f"{x.layer} xattr {x.path} {x.name} {x.value.encode().hex()}")
    return "\n".join(lines) + "\n"
