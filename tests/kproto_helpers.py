"""Helpers shared by the rig's tests (a plain module: tests/overlay_ref has its own conftest)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
FAKE_KERNEL = DATA / "fakekernel"


def make_patch(tree: Path, edit, subject: str, out: Path) -> Path:
    """Write a git format-patch of EDIT(tree) against a throwaway copy of TREE."""
    import shutil
    work = out.parent / f".mk-{out.stem}"
    shutil.copytree(tree, work)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    run = lambda *a: subprocess.run(["git", "-C", str(work), *a], check=True, capture_output=True, env=env)
    run("init", "-q"); run("add", "-f", "-A"); run("commit", "-q", "-m", "base")
    edit(work)
    run("add", "-f", "-A"); run("commit", "-q", "-m", subject)
    out.write_bytes(subprocess.run(["git", "-C", str(work), "format-patch", "-1", "--stdout"], check=True,
                                   capture_output=True, env=env).stdout)
    shutil.rmtree(work)
    return out
