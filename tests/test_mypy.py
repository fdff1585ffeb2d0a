"""Type checks are part of the suite (the way kunit_tool's run_checks.py runs mypy): the configuration
is pyproject.toml's [tool.mypy], over rig/, overlay_ref/ and the benchmarks (bench/)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_mypy_is_clean_over_rig_overlay_ref_and_bench(tmp_path):
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("mypy is not installed in this environment: run ./setup.sh (it installs '.[test]')")
    p = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache"),
                        "--no-error-summary", "rig", "overlay_ref", "bench"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"mypy found type errors:\n{p.stdout[-6000:]}{p.stderr[-2000:]}"


def test_mypy_config_checks_bodies_of_untyped_functions():
    """The config is not a no-op: untyped function bodies are checked and both packages and the
    benchmarks are covered."""
    import tomllib
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert cfg["check_untyped_defs"] is True
    assert set(cfg["files"]) == {"rig", "overlay_ref", "bench"}
