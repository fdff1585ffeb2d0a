"""The benchmark programs (guest_tests/bench/*.c), compiled statically through THE static-program cache
(rig.guest.programs.compile_dir: keyed by the compiler, its flags and version, and every source and header)."""
from __future__ import annotations

from pathlib import Path

from rig.core import paths
from rig.guest import programs

BENCH_SRC = paths.GUEST_TESTS / "bench"
PROGRAM = "ovlbench"          # the program every repetition runs (`prepare LOWER`, then `run MNT`)


def build_bins(src_dir: Path | None = None, cache: Path | None = None, cc: str = programs.CC) -> Path:
    """Every benchmark program of SRC_DIR (default guest_tests/bench) as a static binary; returns the
    cached directory holding one binary per source stem. MissingTool / BuildError as compile_dir raises them."""
    return programs.compile_dir(Path(src_dir) if src_dir else BENCH_SRC, cache_name="bench_bins",
                                what="benchmark program", cache=cache, cc=cc)
