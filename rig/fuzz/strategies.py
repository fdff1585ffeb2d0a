"""Hypothesis strategies that draw op sequences from the operation table (rig/fuzz/ops.py).

Every choice is an index into a fixed list (the weighted rows, an argument's values), so hypothesis
shrinks towards the first row / value of each list. hypothesis is imported lazily: it is an optional
dependency (kproto[test]) that only `kproto fuzz` needs.
"""
from __future__ import annotations

from typing import Any

from rig.fuzz.ops import NFD, NMAP, OPS, PATH_CHOICES, ArgKind, SlotState


def sequence_strategy(max_len: int = 10) -> Any:
    """A sequence of ops (hypothesis strategy). Slot arguments prefer the slots earlier ops opened or
    mapped (two times in three), so generated sequences mostly do something meaningful."""
    from hypothesis import strategies as st

    weighted = [name for name, o in OPS.items() for _ in range(o.weight)]
    pick_kind = st.integers(0, len(weighted) - 1)
    idx = {n: st.integers(0, n - 1) for n in range(1, 64)}
    more = st.integers(0, 7)
    slots = {ArgKind.USED_FD: NFD, ArgKind.ANY_FD: NFD, ArgKind.USED_MAP: NMAP, ArgKind.ANY_MAP: NMAP}

    def slot(draw: Any, used: set[int], n: int) -> int:
        if used and draw(idx[3]) < 2:
            u = sorted(used)
            return u[draw(idx[len(u)])]
        return int(draw(idx[n]))

    @st.composite
    def seq(draw: Any) -> list[str]:
        state = SlotState.empty()
        ops: list[str] = []
        # like st.lists: a "go on" choice before each op, so the shrinker can delete any op as a
        # block (the choice + the op's own choices); stops with probability 1/8, at MAX_LEN at the latest
        while len(ops) < max_len and draw(more) != 0:
            kind = weighted[draw(pick_kind)]
            parts = [kind]
            for a in OPS[kind].args:
                v: object
                if a.kind in (ArgKind.USED_FD, ArgKind.USED_MAP):
                    v = slot(draw, state.used(a.kind), slots[a.kind])
                elif a.kind in (ArgKind.ANY_FD, ArgKind.ANY_MAP):
                    v = draw(idx[slots[a.kind]])
                elif a.kind is ArgKind.PATH:
                    v = PATH_CHOICES[draw(idx[len(PATH_CHOICES)])]
                else:
                    v = a.choices[draw(idx[len(a.choices)])]
                parts.append(str(v))
            op = " ".join(parts)
            state.track(op)
            ops.append(op)
        return ops
    return seq().filter(bool)


def batch_strategy(batch: int, max_len: int = 10) -> Any:
    """Up to BATCH sequences: one example of the search runs them as one batch on each target."""
    from hypothesis import strategies as st
    return st.lists(sequence_strategy(max_len), min_size=1, max_size=batch)
