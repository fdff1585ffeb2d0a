"""THE operation table: one fuzz operation is one row of OPS (the interpreter aside).

A row says everything rig/fuzz needs about an operation:
- name and weight: the op line's first token; how often generation picks it (rig/fuzz/strategies.py).
  The table order is also hypothesis's shrink order (earlier rows are simpler).
- args: the argument grammar, one Arg per token, each with its generation strategy: an fd or mapping
  slot (USED_* prefers the slots earlier ops opened or mapped), a fixture path, or one of fixed values
  (earlier values are simpler; repeats weigh a value);
- effect: what the op does to the slot state generation tracks (opens / closes an fd, maps / unmaps);
- c: the C statements of a reproducer (rig/fuzz/emit.py), a str.format template over the arg names,
  with a C spelling after the colon ({path:q} a C string; see C_FORMATS); each formats its result into
  LINE with guest_tests/fuzz/fmt.h, exactly as the interpreter does;
- pseudo_key: the observation key known_divergences.toml `keys` globs match for it (default op_<name>).

The interpreter guest_tests/fuzz/opinterp.c executes the same op lines in C; tests/fuzz/test_fuzz_ops.py
checks, for every row, that generated ops parse, emit C that compiles with fmt.h, and print what the
interpreter prints. Op lines are single-space separated tokens; a sequence file separates sequences
with '---' lines (parse_ops / format_seqs).
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Sequence

from rig.core.errors import BadInput
from rig.fuzz.fixture import PATHS

NFD, NMAP = 3, 2              # fd / mapping slots generation uses (the interpreter has 8 of each)
OPEN_FLAGS = ["RDONLY", "WRONLY", "RDWR", "WRONLY|TRUNC", "RDWR|CREAT", "WRONLY|APPEND",
              "WRONLY|CREAT|EXCL", "RDONLY|DIRECTORY"]
DATA = ["bar", "NEWDATA", "x", "0123456789abcdef"]
OFFSETS = ["0", "3", "8", "100"]
LENGTHS = ["16", "4", "64"]
# the file with a mapping-worthy lower copy, most of the time; the fixture's trip-wire (kproto-warn) takes
# one of a's eight slots, so the list keeps its length and order (a seed draws what it drew before the
# trip-wire existed, but where it drew that slot)
PATH_CHOICES = ["a"] * 7 + ["kproto-warn"] + [p for p in PATHS[1:] if p != "kproto-warn"]


class ArgKind(Enum):
    USED_FD = "fd"            # an fd slot, preferring slots in use
    ANY_FD = "FD"             # any fd slot (the one an open fills)
    USED_MAP = "map"
    ANY_MAP = "MAP"
    PATH = "path"             # one of PATH_CHOICES
    CHOICE = "choice"         # one of Arg.choices


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    choices: tuple[str, ...] = ()

    def values(self) -> tuple[str, ...]:
        """Every value generation can draw (for tests and documentation)."""
        if self.kind in (ArgKind.USED_FD, ArgKind.ANY_FD):
            return tuple(str(i) for i in range(NFD))
        if self.kind in (ArgKind.USED_MAP, ArgKind.ANY_MAP):
            return tuple(str(i) for i in range(NMAP))
        if self.kind is ArgKind.PATH:
            return tuple(dict.fromkeys(PATH_CHOICES))
        return tuple(dict.fromkeys(self.choices))


def fd(name: str = "fd") -> Arg:
    return Arg(name, ArgKind.USED_FD)


def new_fd(name: str = "fd") -> Arg:
    return Arg(name, ArgKind.ANY_FD)


def mapping(name: str = "map") -> Arg:
    return Arg(name, ArgKind.USED_MAP)


def new_map(name: str = "map") -> Arg:
    return Arg(name, ArgKind.ANY_MAP)


def path(name: str = "path") -> Arg:
    return Arg(name, ArgKind.PATH)


def one_of(name: str, *values: str) -> Arg:
    return Arg(name, ArgKind.CHOICE, tuple(values))


class Effect(Enum):
    """What an op does to the slot named by its first argument."""
    NONE = "none"
    OPENS = "opens"           # an fd slot is in use afterwards
    CLOSES = "closes"
    MAPS = "maps"             # a mapping slot is in use afterwards
    UNMAPS = "unmaps"


@dataclass(frozen=True)
class Op:
    name: str
    weight: int
    args: tuple[Arg, ...]
    c: tuple[str, ...]
    effect: Effect = Effect.NONE
    pseudo_key: str = ""

    @property
    def usage(self) -> str:
        return " ".join([self.name, *(a.name.upper() for a in self.args)])

    def bind(self, op: str) -> dict[str, str]:
        """The arguments of op line OP by name (tokens beyond the grammar are ignored, as by the interpreter)."""
        tokens = op.split(" ")[1:]
        if len(tokens) < len(self.args):
            raise BadInput(f"fuzz op {op!r}: expected {self.usage}")
        return {a.name: t for a, t in zip(self.args, tokens)}

    def c_statements(self, op: str) -> list[str]:
        args = self.bind(op)
        return [_CFormatter().format(s, **args) for s in self.c]


# ----------------------------------------------------------------------------------------- C spellings
_FLAG_C = {"RDONLY": "O_RDONLY", "WRONLY": "O_WRONLY", "RDWR": "O_RDWR", "CREAT": "O_CREAT", "TRUNC": "O_TRUNC",
           "APPEND": "O_APPEND", "EXCL": "O_EXCL", "DIRECTORY": "O_DIRECTORY", "NOFOLLOW": "O_NOFOLLOW"}


def c_str(s: str) -> str:
    """S as a C string literal."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            out.append("\\x%02x" % ord(ch))
    return '"' + "".join(out) + '"'


def _open_flags(v: str) -> str:
    try:
        return " | ".join(_FLAG_C[f] for f in v.split("|"))
    except KeyError as e:
        raise BadInput(f"unknown open flag {e.args[0]!r} in {v!r}") from None


# {arg:SPEC} in a row's C template: how an argument token is spelled in C (no SPEC: the token as is).
# Non-matching tokens fall back the way opinterp.c's parsing does.
C_FORMATS: dict[str, Callable[[str], str]] = {
    "q": c_str,
    "len": lambda v: str(len(v)),
    "octal": lambda v: f"0{int(v, 8):o}",
    "oflags": _open_flags,
    "creat_mode": lambda v: ", 0644" if "CREAT" in v else "",
    "prot": lambda v: "PROT_READ | PROT_WRITE" if v == "rw" else "PROT_READ",
    "share": lambda v: "MAP_PRIVATE" if v == "private" else "MAP_SHARED",
    "lock": lambda v: {"ex": "LOCK_EX", "un": "LOCK_UN"}.get(v, "LOCK_SH"),
}


class _CFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if not format_spec:
            return str(value)
        return C_FORMATS[format_spec](str(value))


# ----------------------------------------------------------------------------------------- the table
_NOMAP = 'strcpy(LINE, "nomap");'

OPS: dict[str, Op] = {o.name: o for o in [
    Op("open", 12, (new_fd(), path(), one_of("flags", *["RDONLY"] * 4, *OPEN_FLAGS[1:])),
       ("if (fd[{fd}] >= 0) close(fd[{fd}]);", "fd[{fd}] = open({path:q}, {flags:oflags}{flags:creat_mode});",
        "fmt_rc(fd[{fd}]);"), Effect.OPENS),
    Op("close", 1, (fd(),), ("fmt_rc(close(fd[{fd}]));", "fd[{fd}] = -1;"), Effect.CLOSES),
    Op("read", 2, (fd(), one_of("len", *LENGTHS)), ("fmt_data(read(fd[{fd}], BUF, {len}));",)),
    Op("pread", 2, (fd(), one_of("len", *LENGTHS), one_of("off", *OFFSETS)),
       ("fmt_data(pread(fd[{fd}], BUF, {len}, {off}));",)),
    Op("write", 4, (fd(), one_of("data", *DATA)), ("fmt_n(write(fd[{fd}], {data:q}, {data:len}));",)),
    Op("pwrite", 4, (fd(), one_of("off", *OFFSETS), one_of("data", *DATA)),
       ("fmt_n(pwrite(fd[{fd}], {data:q}, {data:len}, {off}));",)),
    Op("mmap", 6, (new_map(), fd(), one_of("prot", "r", "rw"), one_of("share", "shared", "private")),
       ("if (map[{map}]) munmap(map[{map}], 4096);",
        "map[{map}] = mmap(NULL, 4096, {prot:prot}, {share:share}, fd[{fd}], 0);",
        "fmt_rc(map[{map}] == MAP_FAILED ? -1 : 0);", "if (map[{map}] == MAP_FAILED) map[{map}] = NULL;"),
       Effect.MAPS, "map_mmap"),
    Op("mread", 6, (mapping(), one_of("off", "0", "3"), one_of("len", "16", "4")),
       ("fmt_mread(map[{map}], {off}, {len});",), pseudo_key="map_read"),
    Op("mwrite", 2, (mapping(), one_of("off", "0", "3"), one_of("data", *DATA)),
       ("fmt_mwrite(map[{map}], {off}, {data:q});",), pseudo_key="map_write"),
    Op("msync", 1, (mapping(),), ("if (map[{map}]) fmt_rc(msync(map[{map}], 4096, MS_SYNC)); else " + _NOMAP,),
       pseudo_key="map_msync"),
    Op("munmap", 1, (mapping(),), ("if (map[{map}]) fmt_rc(munmap(map[{map}], 4096)); else " + _NOMAP,
                                   "map[{map}] = NULL;"), Effect.UNMAPS, "map_munmap"),
    Op("truncate", 3, (path(), one_of("len", *OFFSETS)), ("fmt_rc(truncate({path:q}, {len}));",)),
    Op("ftruncate", 2, (fd(), one_of("len", *OFFSETS)), ("fmt_rc(ftruncate(fd[{fd}], {len}));",)),
    Op("fstat", 2, (fd(),), ("rc = fstat(fd[{fd}], &st);", "fmt_stat(rc, &st);")),
    Op("stat", 2, (path(),), ("rc = stat({path:q}, &st);", "fmt_stat(rc, &st);")),
    Op("lstat", 1, (path(),), ("rc = lstat({path:q}, &st);", "fmt_stat(rc, &st);")),
    Op("rename", 1, (path("src"), path("dst")), ("fmt_rc(rename({src:q}, {dst:q}));",)),
    Op("unlink", 1, (path(),), ("fmt_rc(unlink({path:q}));",)),
    Op("link", 1, (path("src"), path("dst")), ("fmt_rc(link({src:q}, {dst:q}));",)),
    Op("symlink", 1, (one_of("target", "a", "n", "d"), path()), ("fmt_rc(symlink({target:q}, {path:q}));",)),
    Op("readlink", 1, (path(),), ("fmt_data(readlink({path:q}, BUF, 2048));",)),
    Op("mkdir", 1, (path(), one_of("mode", "0755", "0700")), ("fmt_rc(mkdir({path:q}, {mode:octal}));",)),
    Op("rmdir", 1, (path(),), ("fmt_rc(rmdir({path:q}));",)),
    Op("readdir", 1, (one_of("path", ".", "d"),), ("fmt_readdir({path:q});",)),
    Op("chmod", 1, (path(), one_of("mode", "0600", "0755", "0444")), ("fmt_rc(chmod({path:q}, {mode:octal}));",)),
    Op("utimens", 1, (path(), one_of("sec", "1000000000", "1234567890")),
       ("ts[0].tv_sec = ts[1].tv_sec = {sec}; ts[0].tv_nsec = ts[1].tv_nsec = 0;",
        "fmt_rc(utimensat(AT_FDCWD, {path:q}, ts, 0));")),
    Op("setxattr", 1, (path(), one_of("name", "user.k", "user.j"), one_of("value", "v2", "v1")),
       ("fmt_rc(setxattr({path:q}, {name:q}, {value:q}, {value:len}, 0));",)),
    Op("getxattr", 1, (path(), one_of("name", "user.k", "user.j")),
       ("fmt_data(getxattr({path:q}, {name:q}, BUF, 2048));",)),
    Op("listxattr", 1, (path(),), ("fmt_listxattr({path:q});",)),
    Op("flock", 1, (fd(), one_of("how", "sh", "ex", "un")), ("fmt_rc(flock(fd[{fd}], {how:lock} | LOCK_NB));",)),
    Op("fsync", 1, (fd(),), ("fmt_rc(fsync(fd[{fd}]));",)),
]}
KINDS = list(OPS)


def op_kind(op: str) -> str:
    return op.split(" ", 1)[0]


def pseudo_key(kind: str) -> str:
    """The observation key known_divergences.toml `keys` globs match for a difference at op KIND
    (map_read, map_write, ... for mapping ops, op_<kind> otherwise, op_exit for the exit status)."""
    o = OPS.get(kind)
    return (o.pseudo_key if o else "") or f"op_{kind}"


def c_statements(op: str) -> list[str]:
    """C for one op line: the call(s), then the formatting of its result into LINE (same as opinterp)."""
    o = OPS.get(op_kind(op))
    if o is None:
        raise BadInput(f"cannot emit C for op {op!r}")
    return o.c_statements(op)


# ----------------------------------------------------------------------------------------- slot state
@dataclass
class SlotState:
    """The fd and mapping slots in use after some ops (generation prefers them)."""
    fds: set[int]
    maps: set[int]

    @classmethod
    def empty(cls) -> "SlotState":
        return cls(set(), set())

    def track(self, op: str) -> None:
        o = OPS.get(op_kind(op))
        if o is None or o.effect is Effect.NONE:
            return
        slot = int(op.split(" ")[1])
        if o.effect is Effect.OPENS:
            self.fds.add(slot)
        elif o.effect is Effect.CLOSES:
            self.fds.discard(slot)
        elif o.effect is Effect.MAPS:
            self.maps.add(slot)
        elif o.effect is Effect.UNMAPS:
            self.maps.discard(slot)

    def used(self, kind: ArgKind) -> set[int]:
        return self.fds if kind is ArgKind.USED_FD else self.maps


# ----------------------------------------------------------------------------------------- sequence text
def parse_ops(text: str) -> list[list[str]]:
    """Sequences from text: one op a line, sequences separated by '---' lines, '#' comments."""
    seqs: list[list[str]] = []
    cur: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "---":
            if cur:
                seqs.append(cur)
            cur = []
        else:
            if op_kind(line) not in OPS:
                raise BadInput(f"unknown fuzz op {line!r}")
            cur.append(line)
    if cur:
        seqs.append(cur)
    return seqs


def format_seqs(seqs: Sequence[Sequence[str]]) -> str:
    return "---\n".join("".join(op + "\n" for op in s) for s in seqs)

