"""Differential fuzzing of file-operation sequences: a target overlay vs the reference, shrunk with
hypothesis to a standalone C reproducer and a new guest test.

Pieces, in data-flow order:
- the fixture: a small namespace of paths on the lower layer, on the upper, or nowhere (FIXTURE);
  guest_tests/fuzz/opinterp.c populates it from a text spec (spec_text()) in numbered slot
  directories s0000, s0001, ... so one mount serves hundreds of sequences, each in a fresh slot;
- ops: one text line each (the interpreter's format, see opinterp.c); hypothesis strategies draw them;
- targets: where sequences run (host overlayfs, the reference overlay, a plain directory as the ideal,
  the guest kernel over SSH); each runs a batch of sequences per call and returns normalised lines;
- comparison: line by line; a difference is keyed by the first differing op's kind and the result
  fields that differ (dedup key); known divergences (guest_tests/known_divergences.toml) are filtered
  unless asked for;
- the loop: hypothesis.find() rounds with a seeded Random, each example a batch of sequences, the
  condition "some sequence shows a divergence not seen yet"; find() shrinks it; the shrunk sequence is
  cut after its first differing op and becomes a Finding;
- emission: a C reproducer in the style of the 2016 RFC's, and guest_tests/fuzz_<id>.c + .toml.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .errors import BadInput, InfraError, MissingTool
from .paths import GUEST_TESTS, cache_dir

FUZZ_SRC = GUEST_TESTS / "fuzz"
INTERP_SRC = FUZZ_SRC / "opinterp.c"
FMT_H = FUZZ_SRC / "fmt.h"
KNOWN_FILE = GUEST_TESTS / "known_divergences.toml"
OLD_TIME = 946684800

# ----------------------------------------------------------------------------------------- fixture
# (layer, type, path, mode, content-or-target). L = the lower layer, U = the upper layer.
FIXTURE: list[tuple[str, str, str, int, str | None]] = [
    ("L", "file", "a", 0o644, "foo-lower-data\n"),
    ("L", "file", "b", 0o600, "b-lower\n"),
    ("L", "dir", "d", 0o755, None),
    ("L", "file", "d/f", 0o644, "f-in-lower-dir\n"),
    ("L", "symlink", "s", 0o777, "a"),
    ("L", "file", "w", 0o644, "whited-out\n"),
    ("U", "whiteout", "w", 0, None),
    ("U", "file", "u", 0o644, "upper-only\n"),
]
FIXTURE_XATTRS: list[tuple[str, str, str, str]] = [("L", "a", "user.k", "v1")]
# where each path of the namespace lives, for humans (reproducer header)
WHERE = {"a": "lower", "b": "lower", "d": "lower dir", "d/f": "lower", "s": "lower symlink -> a",
         "u": "upper", "w": "lower, whited out on upper", "n": "nowhere", "d/n": "nowhere"}
PATHS = ["a", "b", "d", "d/f", "s", "u", "w", "n", "d/n"]


def spec_text() -> str:
    """The fixture as opinterp's setup spec."""
    lines = ["# kproto fuzz fixture: layer type path mode hex-content|target"]
    for layer, typ, path, mode, arg in FIXTURE:
        if typ == "file":
            a = arg.encode().hex() or "-"
        elif typ == "symlink":
            a = arg
        else:
            a = "-"
        lines.append(f"{layer} {typ} {path} {mode:04o} {a}")
    for layer, path, name, value in FIXTURE_XATTRS:
        lines.append(f"{layer} xattr {path} {name} {value.encode().hex()}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- ops
NFD, NMAP = 3, 2
OPEN_FLAGS = ["RDONLY", "WRONLY", "RDWR", "WRONLY|TRUNC", "RDWR|CREAT", "WRONLY|APPEND",
              "WRONLY|CREAT|EXCL", "RDONLY|DIRECTORY"]
DATA = ["bar", "NEWDATA", "x", "0123456789abcdef"]
# kind -> weight in generation (the list order is also hypothesis's shrink order: earlier is simpler)
KIND_WEIGHTS = {
    "open": 12, "close": 1, "read": 2, "pread": 2, "write": 4, "pwrite": 4, "mmap": 6, "mread": 6,
    "mwrite": 2, "msync": 1, "munmap": 1, "truncate": 3, "ftruncate": 2, "fstat": 2, "stat": 2,
    "lstat": 1, "rename": 1, "unlink": 1, "link": 1, "symlink": 1, "readlink": 1, "mkdir": 1, "rmdir": 1,
    "readdir": 1, "chmod": 1, "utimens": 1, "setxattr": 1, "getxattr": 1, "listxattr": 1, "flock": 1,
    "fsync": 1,
}
KINDS = list(KIND_WEIGHTS)


def op_kind(op: str) -> str:
    return op.split(" ", 1)[0]


# argument kinds per op: fd = an fd slot (prefers slots in use), FD = any fd slot, map/MAP likewise,
# path = a namespace path, a list = one of these literal values
_ARGS: dict[str, list] = {
    "open": ["FD", "path", ["RDONLY"] * 4 + OPEN_FLAGS[1:]],
    "close": ["fd"],
    "read": ["fd", [16, 4, 64]],
    "pread": ["fd", [16, 4, 64], [0, 3, 8, 100]],
    "write": ["fd", DATA],
    "pwrite": ["fd", [0, 3, 8, 100], DATA],
    "mmap": ["MAP", "fd", ["r", "rw"], ["shared", "private"]],
    "mread": ["map", [0, 3], [16, 4]],
    "mwrite": ["map", [0, 3], DATA],
    "msync": ["map"],
    "munmap": ["map"],
    "truncate": ["path", [0, 3, 8, 100]],
    "ftruncate": ["fd", [0, 3, 8, 100]],
    "fstat": ["fd"],
    "stat": ["path"],
    "lstat": ["path"],
    "rename": ["path", "path"],
    "unlink": ["path"],
    "link": ["path", "path"],
    "symlink": [["a", "n", "d"], "path"],
    "readlink": ["path"],
    "mkdir": ["path", ["0755", "0700"]],
    "rmdir": ["path"],
    "readdir": [[".", "d"]],
    "chmod": ["path", ["0600", "0755", "0444"]],
    "utimens": ["path", [1000000000, 1234567890]],
    "setxattr": ["path", ["user.k", "user.j"], ["v2", "v1"]],
    "getxattr": ["path", ["user.k", "user.j"]],
    "listxattr": ["path"],
    "flock": ["fd", ["sh", "ex", "un"]],
    "fsync": ["fd"],
}
_PATH_CHOICES = ["a"] * 8 + PATHS[1:]


def _track(state: dict, op: str) -> None:
    t = op.split(" ")
    if t[0] == "open":
        state["fds"].add(int(t[1]))
    elif t[0] == "close":
        state["fds"].discard(int(t[1]))
    elif t[0] == "mmap":
        state["maps"].add(int(t[1]))
    elif t[0] == "munmap":
        state["maps"].discard(int(t[1]))


def sequence_strategy(max_len: int = 10):
    """A sequence of ops (hypothesis strategy). Slot arguments prefer the slots earlier ops opened or
    mapped (two times in three), so generated sequences mostly do something meaningful. Every choice
    is an index into a fixed list, so hypothesis shrinks towards the first kind/value of each list."""
    from hypothesis import strategies as st

    weighted = [k for k, w in KIND_WEIGHTS.items() for _ in range(w)]
    pick_kind = st.integers(0, len(weighted) - 1)
    idx = {n: st.integers(0, n - 1) for n in range(1, 64)}
    more = st.integers(0, 7)

    def slot(draw, used: set, n: int) -> int:
        if used and draw(idx[3]) < 2:
            u = sorted(used)
            return u[draw(idx[len(u)])]
        return draw(idx[n])

    @st.composite
    def seq(draw):
        state: dict = {"fds": set(), "maps": set()}
        ops: list[str] = []
        # like st.lists: a "go on" choice before each op, so the shrinker can delete any op as a
        # block (the choice + the op's own choices); stops with probability 1/8, at MAX_LEN at the latest
        while len(ops) < max_len and draw(more) != 0:
            kind = weighted[draw(pick_kind)]
            parts = [kind]
            for a in _ARGS[kind]:
                if a == "fd":
                    v = slot(draw, state["fds"], NFD)
                elif a == "FD":
                    v = draw(idx[NFD])
                elif a == "map":
                    v = slot(draw, state["maps"], NMAP)
                elif a == "MAP":
                    v = draw(idx[NMAP])
                elif a == "path":
                    v = _PATH_CHOICES[draw(idx[len(_PATH_CHOICES)])]
                else:
                    v = a[draw(idx[len(a)])]
                parts.append(str(v))
            op = " ".join(parts)
            _track(state, op)
            ops.append(op)
        return ops
    return seq().filter(bool)


def batch_strategy(batch: int, max_len: int = 10):
    from hypothesis import strategies as st
    return st.lists(sequence_strategy(max_len), min_size=1, max_size=batch)


def parse_ops(text: str) -> list[list[str]]:
    """Sequences from text: one op a line, sequences separated by '---' lines, '#' comments."""
    seqs, cur = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "---":
            if cur:
                seqs.append(cur)
            cur = []
        else:
            if op_kind(line) not in KIND_WEIGHTS:
                raise BadInput(f"unknown fuzz op {line!r}")
            cur.append(line)
    if cur:
        seqs.append(cur)
    return seqs


def format_seqs(seqs: Sequence[Sequence[str]]) -> str:
    return "---\n".join("".join(op + "\n" for op in s) for s in seqs)


# ----------------------------------------------------------------------------------------- interpreter
def build_interpreter(out_dir: Path | None = None) -> Path:
    """Compile opinterp.c statically (cached by source hash); returns the binary."""
    if shutil.which("gcc") is None:
        raise MissingTool("gcc is not installed (apt-get install gcc)")
    h = hashlib.sha256(INTERP_SRC.read_bytes() + FMT_H.read_bytes()).hexdigest()[:16]
    d = out_dir or (cache_dir() / "fuzz")
    d.mkdir(parents=True, exist_ok=True)
    binary = d / f"opinterp-{h}"
    if binary.is_file():
        return binary
    tmp = d / f".opinterp-{h}.{os.getpid()}"
    r = subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(tmp), str(INTERP_SRC)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise InfraError("could not compile the fuzz interpreter", r.stderr[-2000:])
    os.rename(tmp, binary)
    return binary


@dataclass
class SeqResult:
    lines: list[str]          # normalised result of op k at index k-1
    end: str                  # "exit=0", "signal=SIGALRM", ...

    def as_json(self) -> dict:
        return {"lines": self.lines, "end": self.end}


def parse_run_output(out: str, nseqs: int) -> list[SeqResult]:
    results: list[SeqResult] = []
    cur: SeqResult | None = None
    for line in out.splitlines():
        if line.startswith("=== seq "):
            cur = SeqResult([], "")
        elif line.startswith("=== end ") and cur is not None:
            cur.end = line.split(" ", 3)[3]
            results.append(cur)
            cur = None
        elif cur is not None:
            m = re.match(r"(\d+): (.*)$", line)
            if m:
                cur.lines.append(m.group(2))
    if cur is not None:                   # the runner itself died mid-sequence
        cur.end = "lost"
        results.append(cur)
    while len(results) < nseqs:
        results.append(SeqResult([], "lost"))
    return results[:nseqs]


# ----------------------------------------------------------------------------------------- targets
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
        todo = [tuple(s) for s in seqs if tuple(s) not in self.cache]
        todo = list(dict.fromkeys(todo))
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
    def _mount(self) -> None: ...
    def _unmount(self) -> None: ...
    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _LocalTarget(Target):
    """Layers in a tmpfs mounted on the target's work dir (the host's /tmp is a slow disk: setting up
    400 slots took 3.5 s on ext4); the interpreter runs locally."""

    tmpfs = False

    def _ensure_tmpfs(self) -> None:
        if self.tmpfs:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "kproto-fuzz", str(self.workdir)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise InfraError(f"could not mount a tmpfs on {self.workdir}: {r.stderr.strip()}")
        self.tmpfs = True

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.tmpfs:
                subprocess.run(["umount", str(self.workdir)], capture_output=True)
                self.tmpfs = False

    def _layers(self) -> Path:
        self._ensure_tmpfs()
        g = self.workdir / f"g{self.generation}"
        shutil.rmtree(g, ignore_errors=True)
        g.mkdir(parents=True)
        spec = g / "spec"
        spec.write_text(spec_text())
        return g

    def _setup(self, spec: Path, lower: Path, upper: Path) -> None:
        r = subprocess.run([str(self.interp), "setup", str(spec), str(lower), str(upper), str(self.slots_per_mount)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise InfraError(f"fuzz fixture setup failed: {r.stderr.strip()[-300:]}")

    def base(self) -> Path:
        raise NotImplementedError

    def _run(self, seqs, first):
        r = subprocess.run([str(self.interp), "run", str(self.base()), str(first)], input=format_seqs(seqs),
                           capture_output=True, text=True, timeout=30 + 12 * len(seqs))
        return parse_run_output(r.stdout, len(seqs))


class PlainTarget(_LocalTarget):
    """No overlay at all: lower then upper applied to one directory. The ideal POSIX answer."""

    name = "plain"

    def _mount(self):
        g = self._layers()
        self.dir = g / "plain"
        self._setup(g / "spec", self.dir, self.dir)

    def _unmount(self):
        shutil.rmtree(self.workdir / f"g{self.generation}", ignore_errors=True)

    def base(self):
        return self.dir


class HostOverlayTarget(_LocalTarget):
    """The host kernel's overlayfs (mount -t overlay; needs root)."""

    name = "host"
    options = ""

    def _mount(self):
        g = self._layers()
        for d in ("lower", "upper", "work", "merged"):
            (g / d).mkdir()
        self._setup(g / "spec", g / "lower", g / "upper")
        self.merged = g / "merged"
        opts = f"lowerdir={g / 'lower'},upperdir={g / 'upper'},workdir={g / 'work'}" + (
            f",{self.options}" if self.options else "")
        r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise InfraError(f"mount -t overlay failed: {r.stderr.strip()}")

    def _unmount(self):
        subprocess.run(["umount", str(self.merged)], capture_output=True)
        shutil.rmtree(self.workdir / f"g{self.generation}", ignore_errors=True)

    def base(self):
        return self.merged


class RefTarget(_LocalTarget):
    """The pyfuse3 reference overlay (overlay_ref)."""

    name = "ref"
    slots_per_mount = 400

    def _mount(self):
        import overlay_ref
        g = self._layers()
        for d in ("lower", "upper", "work", "merged"):
            (g / d).mkdir()
        self._setup(g / "spec", g / "lower", g / "upper")
        self.merged = g / "merged"
        try:
            overlay_ref.mount([str(g / "lower")], str(g / "upper"), str(g / "work"), str(self.merged))
        except Exception as e:  # OverlayRefError and anything the daemon start raises
            raise InfraError(f"could not mount the reference overlay: {e}")

    def _unmount(self):
        import overlay_ref
        try:
            overlay_ref.umount(str(self.merged))
        finally:
            subprocess.run(["umount", "-l", str(self.merged)], capture_output=True) if os.path.ismount(self.merged) else None
            shutil.rmtree(self.workdir / f"g{self.generation}", ignore_errors=True)

    def base(self):
        return self.merged


class KernelTarget(Target):
    """The guest kernel under test: the interpreter, the spec and each batch are staged in the VM's
    run directory (seen at /mnt/kproto over 9p); a batch is one SSH command; layers on the guest's /tmp."""

    name = "kernel"
    slots_per_mount = 400
    GUEST_WORK = "/tmp/kproto-fuzz"

    def __init__(self, interp: Path, workdir: Path, vm) -> None:
        super().__init__(interp, workdir)
        from .vm import SCRATCH_MNT
        self.vm = vm
        self.stage = vm.run_dir / "fuzz"
        self.stage.mkdir(parents=True, exist_ok=True)
        shutil.copy2(interp, self.stage / "opinterp")
        (self.stage / "spec").write_text(spec_text())
        self.gstage = f"{SCRATCH_MNT}/fuzz"
        self.batch_no = 0
        self._pending_mount = False

    def _mount(self):
        self._pending_mount = True       # done by the next batch's command, in the same SSH round trip

    def _mount_cmd(self) -> str:
        w = self.GUEST_WORK
        return (f"umount {w}/merged 2>/dev/null; rm -rf {w} && mkdir -p {w}/lower {w}/upper {w}/work {w}/merged && "
                f"{self.gstage}/opinterp setup {self.gstage}/spec {w}/lower {w}/upper {self.slots_per_mount} && "
                f"mount -t overlay overlay -o lowerdir={w}/lower,upperdir={w}/upper,workdir={w}/work {w}/merged && ")

    def _unmount(self):
        if self.vm.alive() and self.vm.ssh is not None:
            try:
                self.vm.ssh.run(f"umount {self.GUEST_WORK}/merged; rm -rf {self.GUEST_WORK}", timeout=60)
            except Exception:
                pass

    def _run(self, seqs, first):
        from .errors import GuestError
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


def make_local_target(kind: str, interp: Path, workdir: Path) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    cls = {"host": HostOverlayTarget, "ref": RefTarget, "plain": PlainTarget}.get(kind)
    if cls is None:
        raise BadInput(f"unknown local fuzz target {kind!r} (host, ref, plain)")
    return cls(interp, workdir / kind)


# ----------------------------------------------------------------------------------------- compare
@dataclass
class Difference:
    op_index: int              # 0-based; == len(ops) when only the exit status differs
    reference: str
    target: str
    kind: str                  # op kind, or "exit"
    fields: tuple[str, ...]    # which result fields differ ("status", "data", "size", ...)

    @property
    def key(self) -> str:
        return f"{self.kind}:{','.join(self.fields)}"


def _fields(line: str) -> dict[str, str]:
    head, _, rest = line.partition(" ")
    d = {"status": head}
    if head == "ok" and rest:
        if re.match(r"^[a-z]+=", rest):
            for m in re.finditer(r"(\w+)=(\S*)", rest):
                d[m.group(1)] = m.group(2)
            if "data=" in rest:
                d["data"] = rest.split("data=", 1)[1]
        else:
            d["names"] = rest
    return d


def first_difference(ops: Sequence[str], ref: SeqResult, tgt: SeqResult) -> Difference | None:
    for i, op in enumerate(ops):
        r = ref.lines[i] if i < len(ref.lines) else "<none>"
        t = tgt.lines[i] if i < len(tgt.lines) else "<none>"
        if r != t:
            fr, ft = _fields(r), _fields(t)
            diff = tuple(sorted(k for k in set(fr) | set(ft) if fr.get(k) != ft.get(k)))
            if "status" in diff:
                diff = ("status",)
            return Difference(i, r, t, op_kind(op), diff)
    if ref.end != tgt.end:
        return Difference(len(ops), ref.end, tgt.end, "exit", ("end",))
    return None


# ----------------------------------------------------------------------------------------- known divergences
PSEUDO_KEYS = {"mread": "map_read", "mwrite": "map_write", "msync": "map_msync", "munmap": "map_munmap",
               "mmap": "map_mmap"}


@dataclass
class Known:
    entries: list[dict]

    @classmethod
    def load(cls, path: Path | None = None) -> "Known":
        path = path or KNOWN_FILE
        if not path.is_file():
            return cls([])
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise BadInput(f"{path}: {e}")
        return cls(list(data.get("divergence", [])))

    def match(self, diff: Difference) -> dict | None:
        """An entry applies to a fuzz difference when its `fuzz_ops` globs match the first differing op's
        kind, or (entries without fuzz_ops) when one of its `keys` globs matches the op's pseudo
        observation key: map_read/map_write/map_msync/map_munmap/map_mmap for mapping ops, op_<kind>
        otherwise (e.g. keys = ["map_*"] covers reads through a stale mapping)."""
        pseudo = PSEUDO_KEYS.get(diff.kind, f"op_{diff.kind}")
        for e in self.entries:
            if "fuzz_ops" in e:
                if any(fnmatch.fnmatchcase(diff.kind, g) for g in e["fuzz_ops"]):
                    return e
            elif any(fnmatch.fnmatchcase(pseudo, g) for g in e.get("keys", [])):
                return e
        return None


# ----------------------------------------------------------------------------------------- findings
@dataclass
class Finding:
    ops: list[str]
    diff: Difference
    reference_lines: list[str]
    target_lines: list[str]
    known: dict | None = None
    reproducer: Path | None = None
    guest_test: Path | None = None
    duplicate_of: str | None = None      # --add-tests: an existing guest test already covers it
    found_after: int = 0           # sequences run when it was found

    @property
    def id(self) -> str:
        return hashlib.sha256("\n".join(self.ops).encode()).hexdigest()[:8]

    def as_json(self) -> dict:
        d = {"ops": list(self.ops),
             "first_difference": {"op_index": self.diff.op_index, "reference": self.diff.reference,
                                  "target": self.diff.target},
             "reproducer": str(self.reproducer) if self.reproducer else None,
             "id": self.id, "key": self.diff.key, "found_after_sequences": self.found_after}
        if self.guest_test:
            d["guest_test"] = str(self.guest_test)
        if self.known:
            d["known"] = {k: self.known.get(k) for k in ("doc", "note") if k in self.known}
        return d


@dataclass
class FuzzResult:
    target: str
    reference: str
    seed: int
    sequences_run: int = 0
    findings: list[Finding] = field(default_factory=list)
    known: list[Finding] = field(default_factory=list)
    elapsed_s: float = 0.0
    rounds: int = 0

    def as_json(self) -> dict:
        return {"target": self.target, "seed": self.seed, "sequences_run": self.sequences_run,
                "findings": [f.as_json() for f in self.findings],
                "reference": self.reference, "known": [f.as_json() for f in self.known],
                "elapsed_s": round(self.elapsed_s, 1), "rounds": self.rounds}


class _Stop(Exception):
    pass


def fuzz(target: Target, reference: Target, *, seed: int, budget_s: float | None = None,
         max_sequences: int | None = None, batch: int = 8, max_len: int = 10, examples_per_round: int = 150,
         known: Known | None = None, include_known: bool = False, shrink_grace_s: float = 120.0,
         progress: Callable[[str], None] = lambda m: None,
         on_finding: Callable[[Finding], None] = lambda f: None) -> FuzzResult:
    """Search for sequences on which TARGET and REFERENCE print different results.

    Deterministic for a given seed: round i draws from Random(f"{seed}:{i}"). Stops when the budget
    (seconds) or max_sequences is used up; a shrink in progress gets shrink_grace_s more."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample, Unsatisfiable

    if budget_s is None and max_sequences is None:
        raise BadInput("fuzz needs a budget or a maximum number of sequences")
    known = known or Known([])
    res = FuzzResult(target=target.name, reference=reference.name, seed=seed)
    seen: set[str] = set()
    t0 = time.monotonic()
    state = {"shrinking_since": None, "key": None, "count": 0, "last_progress": t0}

    def exhausted() -> bool:
        now = time.monotonic()
        if state["shrinking_since"] is not None:
            return now - state["shrinking_since"] > shrink_grace_s + (budget_s or 0) * 0.5
        if budget_s is not None and now - t0 >= budget_s:
            return True
        return max_sequences is not None and state["count"] >= max_sequences

    def evaluate(seqs) -> list[tuple[list[str], SeqResult, SeqResult, Difference | None]]:
        if max_sequences is not None and state["shrinking_since"] is None:
            seqs = seqs[:max(0, max_sequences - state["count"])]
        refs = reference.run(seqs)
        tgts = target.run(seqs)
        state["count"] += len(seqs)
        now = time.monotonic()
        if now - state["last_progress"] > 5:
            state["last_progress"] = now
            left = f", {max(0, budget_s - (now - t0)):.0f} s left" if budget_s else ""
            progress(f"{state['count']} sequences, {len(res.findings)} finding(s), {len(res.known)} known{left}")
        return [(list(s), r, t, first_difference(s, r, t)) for s, r, t in zip(seqs, refs, tgts)]

    def interesting(d: Difference | None) -> bool:
        if d is None or d.key in seen:
            return False
        return include_known or known.match(d) is None

    def condition(seqs) -> bool:
        if exhausted():
            if state["shrinking_since"] is None:
                raise _Stop()      # ends find() at once; nothing was found in this round
            return False
        for ops, r, t, d in evaluate(seqs):
            if interesting(d):
                if state["shrinking_since"] is None:
                    # shrink towards this divergence only: without this the shrinker happily slides
                    # to whatever other divergence a smaller sequence shows
                    state["shrinking_since"] = time.monotonic()
                    state["key"] = d.key
                    progress(f"divergence at {d.kind} (op {d.op_index + 1} of {len(ops)}): shrinking")
                    return True
                if d.key == state["key"]:
                    return True
            if d is not None and d.key not in seen and not include_known:
                # a known divergence: record it once, unshrunk, and stop looking for it
                seen.add(d.key)
                f = _finding(ops, r, t, d, known.match(d), state["count"])
                res.known.append(f)
                progress(f"known divergence at {d.kind}: {(f.known or {}).get('note', '')}".rstrip(": "))
        return False

    cfg = settings(max_examples=examples_per_round, database=None, deadline=None,
                   phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck),
                   report_multiple_bugs=False)
    strategy = batch_strategy(batch, max_len)
    while not exhausted():
        state["shrinking_since"] = state["key"] = None
        rnd = random.Random(f"{seed}:{res.rounds}")
        res.rounds += 1
        try:
            shrunk = find(strategy, condition, settings=cfg, random=rnd)
        except (NoSuchExample, Unsatisfiable):
            continue
        except _Stop:
            break
        state["shrinking_since"] = time.monotonic()   # re-evaluation below is not budgeted
        for ops, r, t, d in evaluate(shrunk):
            if interesting(d) and d.key == state["key"]:
                cut, rr, tt, d2 = minimise(ops[:d.op_index + 1], d.key, reference, target)
                d2 = d2 or d
                f = _finding(cut, rr, tt, d2, known.match(d2), state["count"])
                seen.add(d.key)
                seen.add(d2.key)
                res.findings.append(f)
                progress(f"finding {f.id}: {len(cut)} op(s), {d2.kind} differs: reference {d2.reference!r}, "
                         f"{target.name} {d2.target!r}")
                on_finding(f)
                break
        state["shrinking_since"] = None
    res.sequences_run = state["count"]
    res.elapsed_s = time.monotonic() - t0
    return res


def minimise(ops: list[str], key: str, reference: Target, target: Target,
             max_rounds: int = 60) -> tuple[list[str], SeqResult, SeqResult, Difference | None]:
    """Make a finding 1-minimal: remove one operation at a time (all candidates of a round run as one
    batch on both targets) and keep any removal that still shows the same first difference (KEY); cut
    after the difference; repeat until no single removal keeps it. Runs on its own bound (rounds), not
    the search budget, so a loaded machine cannot cut it short."""
    cur = list(ops)
    for _ in range(max_rounds):
        cands = [cur[:i] + cur[i + 1:] for i in range(len(cur)) if len(cur) > 1]
        if not cands:
            break
        refs, tgts = reference.run(cands), target.run(cands)
        for cand, r, t in zip(cands, refs, tgts):
            d = first_difference(cand, r, t)
            if d is not None and d.key == key:
                cur = cand[:d.op_index + 1]
                break
        else:
            break
    r, t = reference.run([cur])[0], target.run([cur])[0]
    return cur, r, t, first_difference(cur, r, t)


def _finding(ops, r: SeqResult, t: SeqResult, d: Difference, known: dict | None, count: int) -> Finding:
    return Finding(ops=list(ops), diff=d, reference_lines=list(r.lines), target_lines=list(t.lines),
                   known=known, found_after=count)


# ----------------------------------------------------------------------------------------- C emission
_FLAG_C = {"RDONLY": "O_RDONLY", "WRONLY": "O_WRONLY", "RDWR": "O_RDWR", "CREAT": "O_CREAT", "TRUNC": "O_TRUNC",
           "APPEND": "O_APPEND", "EXCL": "O_EXCL", "DIRECTORY": "O_DIRECTORY", "NOFOLLOW": "O_NOFOLLOW"}


def c_str(s: str) -> str:
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


def c_statements(op: str) -> list[str]:
    """C for one op: the call(s), then the formatting of its result into LINE (same as opinterp)."""
    t = op.split(" ")
    k, a = t[0], t[1:]
    q = c_str
    if k == "open":
        flags = " | ".join(_FLAG_C[f] for f in a[2].split("|"))
        mode = ", 0644" if "CREAT" in a[2] else ""
        return [f"if (fd[{a[0]}] >= 0) close(fd[{a[0]}]);", f"fd[{a[0]}] = open({q(a[1])}, {flags}{mode});",
                f"fmt_rc(fd[{a[0]}]);"]
    if k == "close":
        return [f"fmt_rc(close(fd[{a[0]}]));", f"fd[{a[0]}] = -1;"]
    if k == "read":
        return [f"fmt_data(read(fd[{a[0]}], BUF, {a[1]}));"]
    if k == "pread":
        return [f"fmt_data(pread(fd[{a[0]}], BUF, {a[1]}, {a[2]}));"]
    if k == "write":
        return [f"fmt_n(write(fd[{a[0]}], {q(a[1])}, {len(a[1])}));"]
    if k == "pwrite":
        return [f"fmt_n(pwrite(fd[{a[0]}], {q(a[2])}, {len(a[2])}, {a[1]}));"]
    if k == "mmap":
        prot = "PROT_READ | PROT_WRITE" if a[2] == "rw" else "PROT_READ"
        fl = "MAP_PRIVATE" if a[3] == "private" else "MAP_SHARED"
        return [f"if (map[{a[0]}]) munmap(map[{a[0]}], 4096);",
                f"map[{a[0]}] = mmap(NULL, 4096, {prot}, {fl}, fd[{a[1]}], 0);",
                f"fmt_rc(map[{a[0]}] == MAP_FAILED ? -1 : 0);",
                f"if (map[{a[0]}] == MAP_FAILED) map[{a[0]}] = NULL;"]
    if k == "mread":
        return [f"fmt_mread(map[{a[0]}], {a[1]}, {a[2]});"]
    if k == "mwrite":
        return [f"fmt_mwrite(map[{a[0]}], {a[1]}, {q(a[2])});"]
    if k == "msync":
        return [f"if (map[{a[0]}]) fmt_rc(msync(map[{a[0]}], 4096, MS_SYNC)); else strcpy(LINE, \"nomap\");"]
    if k == "munmap":
        return [f"if (map[{a[0]}]) fmt_rc(munmap(map[{a[0]}], 4096)); else strcpy(LINE, \"nomap\");",
                f"map[{a[0]}] = NULL;"]
    if k == "truncate":
        return [f"fmt_rc(truncate({q(a[0])}, {a[1]}));"]
    if k == "ftruncate":
        return [f"fmt_rc(ftruncate(fd[{a[0]}], {a[1]}));"]
    if k == "fstat":
        return [f"rc = fstat(fd[{a[0]}], &st);", "fmt_stat(rc, &st);"]
    if k in ("stat", "lstat"):
        return [f"rc = {k}({q(a[0])}, &st);", "fmt_stat(rc, &st);"]
    if k in ("rename", "link", "symlink"):
        return [f"fmt_rc({k}({q(a[0])}, {q(a[1])}));"]
    if k == "unlink" or k == "rmdir":
        return [f"fmt_rc({k}({q(a[0])}));"]
    if k == "readlink":
        return [f"fmt_data(readlink({q(a[0])}, BUF, 2048));"]
    if k in ("mkdir", "chmod"):
        return [f"fmt_rc({k}({q(a[0])}, 0{int(a[1], 8):o}));"]
    if k == "readdir":
        return [f"fmt_readdir({q(a[0])});"]
    if k == "utimens":
        return [f"ts[0].tv_sec = ts[1].tv_sec = {a[1]}; ts[0].tv_nsec = ts[1].tv_nsec = 0;",
                f"fmt_rc(utimensat(AT_FDCWD, {q(a[0])}, ts, 0));"]
    if k == "setxattr":
        return [f"fmt_rc(setxattr({q(a[0])}, {q(a[1])}, {q(a[2])}, {len(a[2])}, 0));"]
    if k == "getxattr":
        return [f"fmt_data(getxattr({q(a[0])}, {q(a[1])}, BUF, 2048));"]
    if k == "listxattr":
        return [f"fmt_listxattr({q(a[0])});"]
    if k == "flock":
        how = {"ex": "LOCK_EX", "un": "LOCK_UN"}.get(a[1], "LOCK_SH")
        return [f"fmt_rc(flock(fd[{a[0]}], {how} | LOCK_NB));"]
    if k == "fsync":
        return [f"fmt_rc(fsync(fd[{a[0]}]));"]
    raise BadInput(f"cannot emit C for op {op!r}")


def _fmt_h_body() -> str:
    """fmt.h without its include guard, for inlining."""
    text = FMT_H.read_text()
    text = re.sub(r"^#ifndef KPROTO_FUZZ_FMT_H\n#define KPROTO_FUZZ_FMT_H\n", "", text, flags=re.M)
    return re.sub(r"\n#endif\s*$", "\n", text)


def _fixture_comment() -> list[str]:
    lower = [f"{p} ({'symlink -> ' + a if t == 'symlink' else t}{'' if t in ('dir', 'symlink') else ', ' + c_str(a or '')}"
             f"{', %04o' % m if t != 'symlink' else ''})" for L, t, p, m, a in FIXTURE if L == "L"]
    upper = [f"{p} ({'whiteout' if t == 'whiteout' else t + ', ' + c_str(a or '')})" for L, t, p, m, a in FIXTURE if L == "U"]
    x = [f"{p}: {n}={v}" for _, p, n, v in FIXTURE_XATTRS]
    return [" *   lower: " + ", ".join(lower), " *   upper: " + ", ".join(upper), " *   xattrs on lower: " + ", ".join(x)]


def _main_body(ops: Sequence[str], comments: Sequence[str] | None) -> list[str]:
    body = ["\tint fd[8] = {-1, -1, -1, -1, -1, -1, -1, -1};", "\tchar *map[8] = {0};",
            "\tstruct stat st;", "\tstruct timespec ts[2];", "\tint rc;", "",
            "\t(void)st; (void)ts; (void)rc; (void)map;", ""]
    for i, op in enumerate(ops, 1):
        body.append(f"\t/* {i}: {op}" + (f"  ->  {comments[i - 1]}" if comments else "") + " */")
        body += ["\t" + s for s in c_statements(op)]
        body.append(f"\temit({i});")
    return body


def reproducer_c(f: Finding, target_desc: str, command: str = "") -> str:
    """A standalone C program: replays the ops in DIR (an overlay mount), prints each result as the
    interpreter does, and exits 1 when the first differing op does not give the reference's answer."""
    d = f.diff
    ops = f.ops
    hdr = [f"/* kproto fuzz finding {f.id}: {d.kind} differs after {len(ops)} operation(s)", " *",
           " * DIR is an overlay mount (default /ovl) whose layers hold:", *_fixture_comment(), " *",
           " * Sequence (op -> what the reference overlay gives):"]
    for i, op in enumerate(ops, 1):
        ref = f.reference_lines[i - 1] if i - 1 < len(f.reference_lines) else "?"
        hdr.append(f" *   {i}. {op:<28} -> {ref}")
    if d.op_index < len(ops):
        hdr += [" *", f" * Op {d.op_index + 1} ({ops[d.op_index]}):",
                f" *   reference overlay: {d.reference}", f" *   {target_desc}: {d.target}"]
    else:
        hdr += [" *", f" * Exit: reference overlay {d.reference}, {target_desc} {d.target}"]
    if f.known:
        hdr += [" *", f" * Known divergence: {f.known.get('note', '')} ({f.known.get('doc', '')})"]
    hdr += [" *", " * Build and run as root: gcc -O2 -Wall -o repro repro.c && ./repro /ovl",
            " * Exit 0: the reference overlay's answer; 1: the divergence.",
            (f" * Found by: {command}" if command else " * Found by: kproto fuzz"), " */"]
    comments = [f.reference_lines[i] if i < len(f.reference_lines) else "?" for i in range(len(ops))]
    main = ["", "int main(int argc, char **argv)", "{", "\tconst char *dir = argc > 1 ? argv[1] : \"/ovl\";", "",
            "\tif (chdir(dir) < 0) {", "\t\tperror(dir);", "\t\treturn 2;", "\t}", "\tfault_guard_init();",
            *_main_body(ops, comments), ""]
    if d.op_index < len(ops):
        main += [f"\tif (strcmp(LINE, {c_str(d.reference)}) != 0) {{",
                 f"\t\tprintf(\"DIVERGES at op {d.op_index + 1} ({ops[d.op_index].split()[0]}): "
                 f"got \\\"%s\\\", the reference overlay gives \\\"%s\\\"\\n\", LINE, {c_str(d.reference)});",
                 "\t\treturn 1;", "\t}", "\tprintf(\"OK: same as the reference overlay\\n\");"]
    main += ["\treturn 0;", "}", ""]
    return "\n".join(hdr) + "\n" + _fmt_h_body() + "\n".join(main)


def guest_test_name(f: Finding) -> str:
    return f"fuzz_{f.id}"


def op_signature(f: Finding) -> str:
    """What makes two findings the same test: the first difference's kind and fields, and the
    sequence of operation kinds (arguments aside). Kept as a `fuzzsig:` tag in the guest test's spec."""
    kinds = " ".join(o.split()[0] for o in f.ops if o.split())
    return "fuzzsig:" + hashlib.sha256(f"{f.diff.key}|{kinds}".encode()).hexdigest()[:12]


def existing_test_with(tests_dir: Path, sig: str) -> str | None:
    for spec in sorted(tests_dir.glob("*.toml")):
        try:
            text = spec.read_text()
        except OSError:
            continue
        if f'"{sig}"' in text:
            return spec.stem
    return None


def guest_test_c(f: Finding) -> str:
    hdr = [f"/* kproto fuzz finding {f.id} as a regression test: {f.diff.kind} differs "
           f"(reference: {f.diff.reference!s}; target: {f.diff.target!s}).",
           " * Generated by rig/fuzz.py: observations op01, op02, ... are the normalised result of each op",
           " * (format: guest_tests/fuzz/fmt.h). Fixture: the .toml beside this file. */",
           "#define KPROTO_FUZZ_KEYED 1"]
    main = ["", "int main(int argc, char **argv)", "{", "\tif (argc < 2) {",
            "\t\tfprintf(stderr, \"usage: %s MERGED_DIR\\n\", argv[0]);", "\t\treturn 2;", "\t}",
            "\tif (chdir(argv[1]) < 0) {", "\t\tprintf(\"fatal=chdir: %s\\n\", ename(errno));", "\t\treturn 1;", "\t}",
            "\tfault_guard_init();", *_main_body(f.ops, None), "\treturn 0;", "}", ""]
    return "\n".join(hdr) + "\n" + _fmt_h_body() + "\n".join(main)


def _toml_str(s: str) -> str:
    return json.dumps(s)


def guest_test_toml(f: Finding) -> str:
    lines = [f"description = {_toml_str(f'kproto fuzz finding {f.id}: ' + '; '.join(f.ops))}",
             "timeout = 20", f"tags = [\"fuzz\", {_toml_str(f.diff.kind)}, {_toml_str(op_signature(f))}]",
             "mount_options = []", ""]
    for layer, title in (("L", "[[lower]]"), ("U", None)):
        if title:
            lines.append(title)
        for L, t, p, m, a in FIXTURE:
            if L != layer:
                continue
            lines.append("[[lower.entries]]" if layer == "L" else "[[upper.entries]]")
            lines += [f"path = {_toml_str(p)}", f"type = {_toml_str(t)}"]
            if t == "file":
                lines.append(f"content = {_toml_str(a or '')}")
            if t == "symlink":
                lines.append(f"target = {_toml_str(a or '')}")
            if t in ("file", "dir"):
                lines.append(f"mode = 0o{m:o}")
            if t != "whiteout":
                lines.append(f"mtime = {OLD_TIME}")
            xs = {n: v for L2, p2, n, v in FIXTURE_XATTRS if L2 == layer and p2 == p}
            if xs:
                lines.append("xattrs = { " + ", ".join(f"{_toml_str(n)} = {_toml_str(v)}" for n, v in xs.items()) + " }")
            lines.append("")
    return "\n".join(lines)


def emit_finding(f: Finding, findings_dir: Path, tests_dir: Path | None, target_desc: str, command: str = "") -> None:
    """Write the finding's files: DIR/<id>/{ops.txt, result.json, repro.c}, and the guest test
    TESTS_DIR/fuzz_<id>.c + .toml (skipped when tests_dir is None)."""
    d = findings_dir / f.id
    d.mkdir(parents=True, exist_ok=True)
    (d / "ops.txt").write_text("".join(o + "\n" for o in f.ops))
    f.reproducer = d / "repro.c"
    f.reproducer.write_text(reproducer_c(f, target_desc, command))
    if tests_dir is not None:
        tests_dir.mkdir(parents=True, exist_ok=True)
        dup = existing_test_with(tests_dir, op_signature(f))
        if dup is not None:
            f.duplicate_of = dup           # the same first difference after the same kinds of operations
        else:
            name = guest_test_name(f)
            (tests_dir / f"{name}.c").write_text(guest_test_c(f))
            (tests_dir / f"{name}.toml").write_text(guest_test_toml(f))
            f.guest_test = tests_dir / f"{name}.c"
    (d / "result.json").write_text(json.dumps({**f.as_json(), "reference_lines": f.reference_lines,
                                               "target_lines": f.target_lines}, indent=1) + "\n")


def parse_budget(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise BadInput(f"bad --budget {text!r} (examples: 90s, 10m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
