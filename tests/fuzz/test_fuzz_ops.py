"""kproto fuzz: THE operation table (rig/fuzz/ops.py) and the strategies drawing from it.

Adding an operation is adding one row (and its case in opinterp.c): test_every_row_* check, for each
row, that its grammar and C template agree, that generated ops parse back, and that the emitted C
compiles with the interpreter's header and prints what the interpreter prints."""
from __future__ import annotations

import random
import string
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rig.core.errors import BadInput
from rig.fuzz import emit
from rig.fuzz.fixture import spec_text
from rig.fuzz.interp import INTERP_SRC, parse_run_output
from rig.fuzz.ops import (C_FORMATS, KINDS, OPS, ArgKind, Effect, SlotState, c_statements, format_seqs, op_kind,
                          parse_ops, pseudo_key)
from rig.fuzz.strategies import batch_strategy


def _draw(seed: str, n: int = 20, batch: int = 4) -> list[list[str]]:
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    seen: list[list[str]] = []

    def collect(b: list[list[str]]) -> bool:
        seen.extend(b)
        return False
    try:
        find(batch_strategy(batch), collect,
             settings=settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
                               suppress_health_check=list(HealthCheck)), random=random.Random(seed))
    except NoSuchExample:
        pass
    return seen


# ------------------------------------------------------------------ sequence text
def test_parse_and_format_roundtrip():
    text = "open 0 a RDONLY\n# c\nmread 0 0 4\n---\nstat n\n"
    seqs = parse_ops(text)
    assert seqs == [["open 0 a RDONLY", "mread 0 0 4"], ["stat n"]]
    assert parse_ops(format_seqs(seqs)) == seqs
    with pytest.raises(BadInput):
        parse_ops("frobnicate a")


def test_strategy_is_deterministic_per_seed():
    a = _draw("7:0")
    assert a and a == _draw("7:0")
    assert all(op_kind(op) in OPS for s in a for op in s)


def test_c_emission_refuses_what_it_cannot_spell():
    with pytest.raises(BadInput):
        c_statements("frobnicate a")
    with pytest.raises(BadInput):
        c_statements("pwrite 0 3")                     # an argument short
    with pytest.raises(BadInput):
        c_statements("open 0 a RDONLY|BOGUS")


def test_slot_state_follows_the_effects():
    st = SlotState.empty()
    for op in ["open 2 a RDONLY", "open 1 b RDWR", "mmap 1 2 r shared", "close 2", "stat a", "munmap 0"]:
        st.track(op)
    assert st.fds == {1} and st.maps == {1}


def test_pseudo_keys():
    assert [pseudo_key(k) for k in ("mread", "mwrite", "msync", "munmap", "mmap")] == \
        ["map_read", "map_write", "map_msync", "map_munmap", "map_mmap"]
    assert pseudo_key("open") == "op_open" and pseudo_key("exit") == "op_exit"


# ------------------------------------------------------------------ every row
@pytest.mark.parametrize("name", KINDS)
def test_every_row_is_consistent(name):
    """Grammar and template agree: unique argument names, every argument spelled in the C (with a known
    C spelling), slot effects on a slot argument, a positive weight; the interpreter has its case."""
    o = OPS[name]
    assert o.name == name and o.weight >= 1 and o.c
    names = [a.name for a in o.args]
    assert len(set(names)) == len(names)
    used, specs = set(), set()
    for stmt in o.c:
        for _, field, spec, conv in string.Formatter().parse(stmt):
            if field is not None:
                used.add(field)
                specs.add(spec)
                assert conv is None
    assert used == set(names), f"{name}: template uses {sorted(used)}, grammar has {names}"
    assert specs <= set(C_FORMATS) | {""}
    for a in o.args:
        assert a.values(), (name, a)
        assert (a.kind is ArgKind.CHOICE) == bool(a.choices)
    if o.effect in (Effect.OPENS, Effect.CLOSES):
        assert o.args[0].kind in (ArgKind.ANY_FD, ArgKind.USED_FD)
    if o.effect in (Effect.MAPS, Effect.UNMAPS):
        assert o.args[0].kind in (ArgKind.ANY_MAP, ArgKind.USED_MAP)
    assert f'!strcmp(op, "{name}")' in INTERP_SRC.read_text()


def test_generated_ops_parse_back_within_the_grammar():
    """Generated -> formatted -> parsed is the identity, every row gets generated, and every generated
    argument is one its row can draw."""
    seqs = [s for i in range(6) for s in _draw(f"rows:{i}", n=60, batch=8)]
    assert parse_ops(format_seqs(seqs)) == seqs
    seen = {op_kind(op) for s in seqs for op in s}
    assert seen == set(KINDS), f"never generated: {sorted(set(KINDS) - seen)}"
    for s in seqs:
        for op in s:
            o = OPS[op_kind(op)]
            for a, v in zip(o.args, o.bind(op).values()):
                assert v in a.values(), (op, a.name)
            assert len(op.split(" ")) == 1 + len(o.args)


# each row exercised with every value of each argument (cycled), after ops that fill fd and map slots
_PRELUDE = ["open 0 a RDWR", "open 1 d/f RDONLY", "open 2 b RDWR", "mmap 0 0 rw shared", "mmap 1 1 r private"]


def _row_sequence(name: str) -> list[str]:
    o = OPS[name]
    vals = [a.values() for a in o.args]
    n = max((len(v) for v in vals), default=1)
    return _PRELUDE + [" ".join([name, *(v[i % len(v)] for v in vals)]) for i in range(n)]


@pytest.fixture(scope="module")
def slots(interp, tmp_path_factory) -> Path:
    """The fixture as a plain directory (lower and upper in one), a slot per test below."""
    base = tmp_path_factory.mktemp("slots")
    (base / "spec").write_text(spec_text())
    subprocess.run([str(interp), "setup", str(base / "spec"), str(base / "plain"), str(base / "plain"),
                    str(2 * len(KINDS))], check=True, capture_output=True)
    return base / "plain"


@pytest.fixture(scope="module")
def row_programs(tmp_path_factory) -> dict[str, Path | str]:
    """Each row's sequence as an emitted C program, compiled (-Wall -Werror) in parallel: the binary,
    or the compiler's complaint."""
    d = tmp_path_factory.mktemp("rows")

    def build(name: str) -> tuple[str, Path | str]:
        src = d / f"{name}.c"
        src.write_text(emit.program_c(_row_sequence(name)))
        r = subprocess.run(["gcc", "-O0", "-Wall", "-Werror", "-o", str(d / name), str(src)],
                           capture_output=True, text=True)
        return name, (d / name) if r.returncode == 0 else r.stderr[-3000:]
    with ThreadPoolExecutor(max_workers=4) as ex:
        return dict(ex.map(build, KINDS))


@pytest.mark.parametrize("name", KINDS)
def test_every_row_emits_c_that_prints_what_the_interpreter_prints(name, interp, slots, row_programs):
    seq = _row_sequence(name)
    assert parse_ops(format_seqs([seq])) == [seq]
    exe = row_programs[name]
    assert isinstance(exe, Path), f"emitted C for {name} does not compile:\n{exe}"
    i = KINDS.index(name)
    r = subprocess.run([str(interp), "run", str(slots), str(2 * i)], input=format_seqs([seq]),
                       capture_output=True, text=True, timeout=60)
    want = parse_run_output(r.stdout, 1)[0]
    assert want.end == "exit=0" and len(want.lines) == len(seq) and "badop" not in want.lines, want
    c = subprocess.run([str(exe)], cwd=slots / f"s{2 * i + 1:04d}", capture_output=True, text=True, timeout=60)
    got = [ln.split(": ", 1)[1] for ln in c.stdout.splitlines() if ": " in ln and ln.split(":")[0].isdigit()]
    assert got == want.lines
