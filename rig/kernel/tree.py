"""Kernel source trees as git repositories with a known base commit.

The default source is Debian's linux-source-6.12 tarball, unpacked once into $KPROTO_CACHE/src and
committed as `kproto-base`. Patches go in with `git am` (mail form) or `git apply --index` (plain diff),
and `restore()` returns the tree byte-for-byte to the base. A user's own git tree is never touched in
place: kproto works in a detached worktree of it.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rig.core.errors import BadInput, InfraError, MissingTool, PatchError
from rig.core.locks import locked
from rig.kernel.patches import Patch
from rig.core.paths import cache_dir

DEFAULT_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
BASE_TAG = "kproto-base"
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "kproto", "GIT_AUTHOR_EMAIL": "kproto@localhost",
    "GIT_COMMITTER_NAME": "kproto", "GIT_COMMITTER_EMAIL": "kproto@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
    # read-only commands (status) do not refresh the index under index.lock: a status run outside the tree
    # lock can then never make a locked reset or apply fail on "index.lock: File exists"
    "GIT_OPTIONAL_LOCKS": "0",
}


def git(repo: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise MissingTool("git is not installed (apt-get install git)")
    env = {**os.environ, **_GIT_ENV}
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise InfraError(f"git {' '.join(args[:2])} failed in {repo}: {proc.stderr.strip().splitlines()[-1:] }")
    return proc


@dataclass
class SourceTree:
    path: Path
    base: str           # commit id of the base
    origin: str         # what the user named: tarball path or git tree

    @property
    def lock_path(self) -> Path:
        return self.path.parent / f".{self.path.name}.lock"

    def version(self) -> str:
        """VERSION.PATCHLEVEL.SUBLEVEL from the top Makefile."""
        head = (self.path / "Makefile").read_text(errors="replace")[:2000]
        vals = {k: re.search(rf"^{k} = (\S*)", head, re.M) for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL")}
        return ".".join(m.group(1) for m in vals.values() if m and m.group(1))

    def is_at_base(self) -> bool:
        head = git(self.path, "rev-parse", "HEAD").stdout.strip()
        dirty = git(self.path, "status", "--porcelain", "--ignored", "--untracked-files=all").stdout.strip()
        return head == self.base and not dirty

    def restore(self) -> None:
        """Back to the base commit, byte-identical: abort a failed am, reset, remove untracked files."""
        git(self.path, "am", "--abort", check=False)
        git(self.path, "reset", "-q", "--hard", self.base)
        git(self.path, "clean", "-qfdx")

    def _apply_one(self, patch: Patch) -> None:
        if patch.mail:
            proc = git(self.path, "am", "--keep-cr", str(patch.path), check=False)
        else:
            proc = git(self.path, "apply", "--index", "--verbose", str(patch.path), check=False)
            if proc.returncode == 0:
                git(self.path, "commit", "-q", "-m", f"kproto: {patch.path.name}")
        if proc.returncode != 0:
            raise PatchError(_apply_failure(patch, proc.stdout + proc.stderr))

    @contextlib.contextmanager
    def applied(self, patches: list[Patch]) -> Iterator["SourceTree"]:
        """Hold the tree lock with PATCHES applied on the base; always restore the base afterwards."""
        with locked(self.lock_path, f"source tree {self.path}"):
            self.restore()
            try:
                for p in patches:
                    self._apply_one(p)
                yield self
            finally:
                self.restore()

    def check_applies(self, patches: list[Patch]) -> None:
        """Apply and restore at once: raises PatchError naming the first patch/hunk that fails."""
        with self.applied(patches):
            pass


def _apply_failure(patch: Patch, output: str) -> str:
    hunk = re.search(r"error: patch failed: (\S+:\d+)", output)
    nofile = re.search(r"error: (\S+): (does not exist in index|No such file or directory)", output)
    corrupt = re.search(r"(corrupt patch at line \d+|patch fragment without header at line \d+.*|"
                        r"Patch format detection failed\.|No valid patches in input.*)", output)
    which = re.search(r"Patch failed at (\d+) (.*)", output)
    where = f" (patch {which.group(1)} '{which.group(2).strip()}')" if which else ""
    if hunk:
        return (f"{patch.path.name}{where} does not apply to the base: hunk at {hunk.group(1)} failed; "
                "rebase the patch onto the kernel named by --kernel-src")
    if nofile:
        return f"{patch.path.name}{where} does not apply: {nofile.group(1)} is not in the base tree"
    if corrupt:
        return f"{patch.path.name} is malformed: {corrupt.group(1)} (regenerate it with git format-patch)"
    last = [l for l in output.strip().splitlines() if l.strip()][-1:] or ["unknown error"]
    return f"{patch.path.name}{where} does not apply: {last[0]}"


def _commit_base(path: Path) -> str:
    git(path, "init", "-q")
    git(path, "add", "-f", "-A")
    git(path, "commit", "-q", "--no-verify", "-m", "kproto base")
    git(path, "tag", "-f", BASE_TAG)
    git(path, "clean", "-qfdx")   # empty directories are not part of a git base
    return git(path, "rev-parse", "HEAD").stdout.strip()


def _unpack_tarball(tarball: Path, dest: Path) -> SourceTree:
    """Unpack TARBALL once into DEST (atomically, via a temp dir + rename) and commit it as the base."""
    with locked(dest.parent / f".{dest.name}.unpack.lock", f"unpacking {tarball}"):
        if not (dest / ".git").is_dir():
            tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                proc = subprocess.run(["tar", "-xf", str(tarball), "-C", str(tmp), "--strip-components=1"],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    if "No space left" in proc.stderr:
                        raise InfraError(f"disk full unpacking {tarball} into {dest.parent} "
                                         "(free space there, or point KPROTO_CACHE at a bigger disk)")
                    raise BadInput(f"cannot unpack {tarball}: {proc.stderr.strip()[:200]}")
                if not (tmp / "Makefile").is_file() or not (tmp / "fs").is_dir():
                    raise BadInput(f"{tarball} does not hold a kernel source tree (no top Makefile and fs/)")
                _commit_base(tmp)
                os.rename(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    base = git(dest, "rev-parse", f"{BASE_TAG}^{{commit}}").stdout.strip()
    return SourceTree(path=dest, base=base, origin=str(tarball))


def default_source() -> SourceTree:
    if not DEFAULT_TARBALL.is_file():
        raise MissingTool(f"{DEFAULT_TARBALL} is missing (apt-get install linux-source-6.12) "
                          "or pass --kernel-src PATH")
    return _unpack_tarball(DEFAULT_TARBALL, cache_dir() / "src" / "linux-6.12")


def open_source(spec: str | None) -> SourceTree:
    """--kernel-src: None for the default, a tarball, or a kernel git tree (used via a detached worktree)."""
    if not spec:
        return default_source()
    p = Path(spec).expanduser().resolve()
    if not p.exists():
        raise BadInput(f"--kernel-src {spec}: no such file or directory")
    key = hashlib.sha256(str(p).encode()).hexdigest()[:12]
    if p.is_file():
        if not tarfile.is_tarfile(p):
            raise BadInput(f"--kernel-src {spec}: not a tarball or a git tree")
        return _unpack_tarball(p, cache_dir() / "src" / f"tar-{p.name.split('.')[0]}-{key}")
    if not (p / "Makefile").is_file():
        raise BadInput(f"--kernel-src {spec}: not a kernel tree (no top-level Makefile)")
    top = subprocess.run(["git", "-C", str(p), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise BadInput(f"--kernel-src {spec}: a directory that is not a git tree; pass a git tree or a tarball")
    head = git(p, "rev-parse", "HEAD").stdout.strip()
    wt = cache_dir() / "src" / f"wt-{p.name}-{key}"
    with locked(wt.parent / f".{wt.name}.lock", f"worktree {wt}"):
        if not (wt / ".git").exists():
            git(p, "worktree", "prune")
            git(p, "worktree", "add", "-q", "--detach", str(wt), head)
        else:
            git(wt, "checkout", "-q", "--detach", head)
    return SourceTree(path=wt, base=head, origin=str(p))
