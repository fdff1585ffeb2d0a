"""Fixtures of the tests/fuzz/ tests: the interpreter, built once per session into a temporary cache,
and local targets closed after each test."""
from __future__ import annotations

from pathlib import Path

import pytest

from rig.fuzz import interp as interpmod
from rig.fuzz import targets


@pytest.fixture(scope="session")
def interp(tmp_path_factory) -> Path:
    return interpmod.build_interpreter(tmp_path_factory.mktemp("interp"))


@pytest.fixture
def target(interp, tmp_path):
    made: list[targets.Target] = []

    def make(kind: str):
        t = targets.make_local_target(kind, interp, tmp_path / f"{kind}{len(made)}")
        made.append(t)
        return t
    yield make
    for t in made:
        t.close()
