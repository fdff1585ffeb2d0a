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


def seven_patch(out: Path) -> Path:
    """The fake kernel tree's one-line patch 'ovl: seven' (fs/overlayfs/file.c returns 7), written to OUT."""
    def edit(work: Path):
        f = work / "fs/overlayfs/file.c"
        f.write_text(f.read_text().replace("return 0;", "return 7;"))
    return make_patch(FAKE_KERNEL, edit, "ovl: seven", out)


def res(status="ok", exit_code=0, signal=None, upper=None, lower_modified=False, **obs) -> dict:
    """One harness result, as the guest harness reports it, with observations OBS."""
    return {"status": status, "observations": {k: str(v) for k, v in obs.items()}, "exit_code": exit_code,
            "signal": signal, "upper": upper or {}, "stderr": "", "duration_s": 0.1,
            "error": None if status == "ok" else f"{status}!", "lower_modified": lower_modified}


def five_verdicts(known):
    """reference / baseline / patched results giving one test of each status: match, fixed, regressed,
    a known divergence (mmap_known) and an error (e_error)."""
    from rig.analysis import compare
    good, bad, timeout = res(data="NEW"), res(data="old"), res(status="timeout")
    return compare.compare_run(
        {"a_match": good, "b_fixed": good, "c_regressed": good, "mmap_known": res(map_a="NEW"), "e_error": good},
        {"a_match": good, "b_fixed": bad, "c_regressed": good, "mmap_known": res(map_a="old"), "e_error": good},
        {"a_match": good, "b_fixed": good, "c_regressed": bad, "mmap_known": res(map_a="old"), "e_error": timeout},
        known)
