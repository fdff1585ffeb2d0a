"""Demangled names of Rust and C++ symbols in kernel stack frames, without parameters.

A kernel with Rust code (or a C++-built module) prints mangled symbols in its traces:
``_RNvMs3_NtCs1a2b_11rust_binder7processNtB5_7Process10update_ref`` (Rust's v0 scheme),
``_ZN4core9panicking9panic_fmt17h0123456789abcdefE`` (Rust's legacy scheme, Itanium-like), ``_Z8fakeNameiii``
(C++).  syzkaller titles a report by the demangled name without parameters, so we do too:
``<rust_binder::process::Process>::update_ref``, ``core::panicking::panic_fmt``, ``fakeName``.

Only what a name needs for that is read: paths, inherent and trait impls, generic arguments and the
common types.  A symbol this reader does not understand is returned as it is (`demangle`), the way
syzkaller's demangler leaves it alone.
"""
from __future__ import annotations

import re
from typing import Callable

_BASIC = {"a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8", "i": "isize",
          "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128", "s": "i16", "t": "u16", "u": "()",
          "v": "...", "x": "i64", "y": "u64", "z": "!", "p": "_"}
_B62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LEGACY_HASH = re.compile(r"^h[0-9a-f]{16}$")


class _Bad(Exception):
    """Not a symbol this reader understands."""


class _V0:
    """A reader of one Rust v0 symbol (https://doc.rust-lang.org/rustc/symbol-mangling/v0.html) after "_R"."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0
        self.depth = 0
        self.in_type = False                 # generic arguments of a type are printed without "::"

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        c = self.peek()
        if not c:
            raise _Bad
        self.i += 1
        return c

    def eat(self, c: str) -> bool:
        if self.peek() == c:
            self.i += 1
            return True
        return False

    def decimal(self) -> int:
        start = self.i
        while self.peek().isdigit():
            self.i += 1
        if start == self.i:
            raise _Bad
        return int(self.s[start:self.i])

    def base62(self) -> int:
        if self.eat("_"):
            return 0
        n = 0
        while not self.eat("_"):
            c = self.take()
            if c not in _B62:
                raise _Bad
            n = n * 62 + _B62.index(c)
        return n + 1

    def disambiguator(self) -> None:
        if self.eat("s"):
            self.base62()

    def ident(self) -> str:
        self.disambiguator()
        if self.eat("u"):
            raise _Bad                       # punycode: not in kernel symbols
        n = self.decimal()
        self.eat("_")
        if self.i + n > len(self.s):
            raise _Bad
        name = self.s[self.i:self.i + n]
        self.i += n
        return name

    def backref(self, read: Callable[[], str]) -> str:
        pos = self.base62()
        if pos >= self.i - 1 or self.depth > 40:
            raise _Bad
        saved = self.i
        self.i = pos
        self.depth += 1
        try:
            return read()
        finally:
            self.depth -= 1
            self.i = saved

    def path(self) -> str:
        c = self.take()
        if c == "C":
            return self.ident()
        if c == "M":                         # inherent impl: <Type>
            self.disambiguator()
            self.path()
            return f"<{self.type()}>"
        if c == "X":                         # trait impl: <Type as Trait>
            self.disambiguator()
            self.path()
            t = self.type()
            return f"<{t} as {self.type_path()}>"
        if c == "Y":                         # trait definition
            t = self.type()
            return f"<{t} as {self.type_path()}>"
        if c == "N":
            ns = self.take()
            parent = self.path()
            name = self.ident()
            if ns.islower():                 # an implementation detail: printed only when named
                return f"{parent}::{name}" if name else parent
            what = {"C": "closure", "S": "shim"}.get(ns, ns)
            return f"{parent}::{{{what}{':' + name if name else ''}}}"
        if c == "I":
            p = self.path()
            args = []
            while not self.eat("E"):
                args.append(self.generic_arg())
            return f"{p}{'' if self.in_type else '::'}<{', '.join(args)}>"
        if c == "B":
            return self.backref(self.path)
        raise _Bad

    def type_path(self) -> str:
        outer, self.in_type = self.in_type, True
        try:
            return self.path()
        finally:
            self.in_type = outer

    def generic_arg(self) -> str:
        if self.eat("L"):
            self.base62()
            return "'_"
        if self.eat("K"):
            return self.const()
        return self.type()

    def const(self) -> str:
        if self.eat("p"):
            return "_"
        if self.eat("B"):
            return self.backref(self.const)
        t = self.take()
        if t not in _BASIC:
            raise _Bad
        neg = self.eat("n")
        start = self.i
        while self.peek() and self.peek() != "_":
            self.i += 1
        digits = self.s[start:self.i]
        self.take()
        if t == "b":
            return "true" if digits == "1" else "false"
        return ("-" if neg else "") + str(int(digits or "0", 16))

    def type(self) -> str:
        c = self.take()
        if c in _BASIC:
            return _BASIC[c]
        if c in "RQ":
            if self.eat("L"):
                self.base62()
            return ("&" if c == "R" else "&mut ") + self.type()
        if c in "PO":
            return ("*const " if c == "P" else "*mut ") + self.type()
        if c == "A":
            t = self.type()
            return f"[{t}; {self.const()}]"
        if c == "S":
            return f"[{self.type()}]"
        if c == "T":
            items = []
            while not self.eat("E"):
                items.append(self.type())
            return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
        if c == "B":
            return self.backref(self.type)
        if c in "CMXYNI":
            self.i -= 1
            outer, self.in_type = self.in_type, True
            try:
                return self.path()
            finally:
                self.in_type = outer
        raise _Bad                           # fn pointers, dyn traits: not in kernel symbols we title by


def _rust_v0(sym: str) -> str:
    r = _V0(sym[2:])
    if r.peek().isdigit():                   # encoding version
        raise _Bad
    out = r.path()
    # an instantiating crate may follow; anything after that (a vendor suffix) is ignored
    return out


def _itanium(sym: str) -> str:
    """``_Z`` names, parameters dropped: ``_Z8fakeNameiii`` -> fakeName, ``_ZN3foo3barEv`` -> foo::bar; a
    Rust legacy name without its hash (``_ZN4core3fmt5write17h..E`` -> core::fmt::write)."""
    s, i = sym, 2
    parts: list[str] = []

    def name_at(j: int) -> tuple[str, int]:
        m = re.match(r"\d+", s[j:])
        if not m:
            raise _Bad
        n = int(m.group(0))
        j += len(m.group(0))
        if n == 0 or j + n > len(s):
            raise _Bad
        return s[j:j + n], j + n

    if s.startswith("N", i):
        i += 1
        while i < len(s) and s[i] in "rVKL":          # cv-qualifiers
            i += 1
        while not s.startswith("E", i):
            if i >= len(s) or not s[i].isdigit():
                raise _Bad                           # templates, substitutions, operators: not read
            part, i = name_at(i)
            parts.append(part)
        if parts and _LEGACY_HASH.match(parts[-1]):
            parts.pop()
            parts = [p.replace("$LT$", "<").replace("$GT$", ">").replace("$u20$", " ").replace("$C$", ",")
                     .replace("..", "::") for p in parts]
    else:
        if s.startswith("L", i):
            i += 1
        part, i = name_at(i)
        parts.append(part)
    if not parts:
        raise _Bad
    return "::".join(parts)


def demangle(sym: str) -> str:
    """The demangled name of a Rust (v0 or legacy) or C++ symbol without parameters; any other name, or a
    symbol not understood, as it is."""
    try:
        if sym.startswith("_R"):
            return _rust_v0(sym)
        if sym.startswith("_Z"):
            return _itanium(sym)
    except (_Bad, RecursionError, ValueError):
        pass
    return sym
