"""Kernel builds: out-of-tree (O=) with ccache, cached by base + patches + config.

One object tree per (source tree, config); a patched build is an incremental build in the baseline's
object tree (~25 s), never a fresh full build. Finished kernels are copied into
$KPROTO_CACHE/kernels/<key>/ through a temp dir + rename, so the cache never holds half a kernel,
and a failed build writes nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rig.core import cache
from rig.kernel import kconfig
from rig.machine import arch
from rig.core.errors import BuildError, InfraError, MissingTool
from rig.core.locks import locked
from rig.kernel.patches import Patch
from rig.core.paths import cache_dir
from rig.kernel.tree import SourceTree

REQUIRED_TOOLS = {"gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}
_ERROR_LINE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")


@dataclass
class Kernel:
    bzimage: Path
    version: str
    key: str
    build_s: float
    cached: bool
    patches: list[Patch]

    @property
    def config(self) -> Path:
        return self.bzimage.parent / "config"


def cache_key(tree: SourceTree, patches: list[Patch], want: kconfig.Kconfig) -> str:
    h = hashlib.sha256()
    h.update(f"base={tree.base}\nbase_target={kconfig.BASE_TARGET}\nconfig={want.digest()}\n".encode())
    for p in patches:
        h.update(f"patch={p.sha256}\n".encode())
    return h.hexdigest()[:20]


def _check_tools() -> None:
    for tool, pkg in REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise MissingTool(f"{tool} is not installed (apt-get install {pkg})")
    if not Path("/usr/include/libelf.h").exists():
        raise MissingTool("libelf headers are missing (apt-get install libelf-dev)")


def _jobs() -> int:
    return (os.cpu_count() or 1) + 1


def _make(tree: SourceTree, objdir: Path, *targets: str, log: Path, timeout: float = 3600) -> None:
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    env = {**os.environ, "CCACHE_DIR": str(cache_dir() / "ccache"), "CCACHE_BASEDIR": str(tree.path),
           "KBUILD_BUILD_TIMESTAMP": "kproto", "KBUILD_BUILD_USER": "kproto", "KBUILD_BUILD_HOST": "kproto"}
    cmd = ["make", "-C", str(tree.path), f"O={objdir}", f"-j{_jobs()}", f"CC={cc}", "HOSTCC=gcc", *targets]
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise InfraError(f"kernel build timed out after {timeout:.0f} s (log: {log})")
    if proc.returncode != 0:
        text = log.read_text(errors="replace").splitlines()
        errors = [l for l in text if _ERROR_LINE.search(l)][:12] or text[-12:]
        raise BuildError(f"kernel build failed ({' '.join(targets)}); log: {log}", "\n".join(errors))


def _configure(tree: SourceTree, objdir: Path, want: kconfig.Kconfig, log: Path) -> None:
    """tinyconfig + fragment via merge_config.sh, then olddefconfig and the subset check."""
    objdir.mkdir(parents=True, exist_ok=True)
    frag = objdir / "kproto.fragment"
    frag.write_text(want.text())
    _make(tree, objdir, kconfig.BASE_TARGET, log=log)
    proc = subprocess.run(["scripts/kconfig/merge_config.sh", "-m", "-O", str(objdir), str(objdir / ".config"),
                           str(frag)], cwd=tree.path, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError("merge_config.sh failed", proc.stderr[-2000:])
    _make(tree, objdir, "olddefconfig", log=log)
    kconfig.check_landed(want, objdir / ".config")
    (objdir / "kproto.config-digest").write_text(want.digest())


def objdir_for(tree: SourceTree, want: kconfig.Kconfig) -> Path:
    key = hashlib.sha256(f"{tree.path}|{tree.base}|{want.digest()}".encode()).hexdigest()[:16]
    return cache_dir() / "build" / key


def lookup(key: str) -> Path | None:
    entry = cache_dir() / "kernels" / key
    return entry if (entry / "bzImage").is_file() and (entry / "meta.json").is_file() else None


def cached(tree: SourceTree, patches: list[Patch], user_fragments: tuple[Path, ...] = ()) -> bool:
    """Is the kernel for tree + patches + config already in the cache (so the patches are known to apply)?"""
    return lookup(cache_key(tree, patches, kconfig.requested(user_fragments))) is not None


def build(tree: SourceTree, patches: list[Patch], user_fragments: tuple[Path, ...] = (),
          progress=lambda msg: print(msg, file=sys.stderr)) -> Kernel:
    """Return the kernel for tree + patches + config, building it (incrementally) when not cached."""
    want = kconfig.requested(user_fragments)
    key = cache_key(tree, patches, want)
    hit = lookup(key)
    if hit:
        meta = json.loads((hit / "meta.json").read_text())
        return Kernel(hit / "bzImage", meta["version"], key, 0.0, True, patches)
    _check_tools()
    objdir = objdir_for(tree, want)
    log = objdir.parent / f"{objdir.name}.log"
    with locked(objdir.parent / f".{objdir.name}.lock", f"build dir {objdir}"):
        hit = lookup(key)  # another run may have built it while we waited
        if hit:
            meta = json.loads((hit / "meta.json").read_text())
            return Kernel(hit / "bzImage", meta["version"], key, 0.0, True, patches)
        t0 = time.monotonic()
        objdir.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        with tree.applied(patches):
            digest = objdir / "kproto.config-digest"
            if not (digest.is_file() and digest.read_text() == want.digest() and (objdir / ".config").is_file()):
                progress(f"configuring {kconfig.BASE_TARGET} + kproto fragment in {objdir}")
                _configure(tree, objdir, want, log)
            what = "patched" if patches else "baseline"
            machine = arch.load()
            progress(f"building {what} kernel (make -j{_jobs()} {machine.make_target}, log {log})")
            _make(tree, objdir, machine.make_target, log=log)
            release = (objdir / "include/config/kernel.release").read_text().strip()
            built = objdir / machine.kernel_image
            elapsed = time.monotonic() - t0
            _store(key, built, objdir / ".config", {
                "version": release, "base": tree.base, "source": tree.origin,
                "patches": [p.as_json() for p in patches], "config_digest": want.digest(),
                "build_s": round(elapsed, 1), "built_at": time.time()})
    return Kernel(cache_dir() / "kernels" / key / "bzImage", release, key, elapsed, False, patches)


def _store(key: str, bzimage: Path, config: Path, meta: dict) -> None:
    with cache.building(cache_dir() / "kernels" / key) as tmp:
        shutil.copy2(bzimage, tmp / "bzImage")
        shutil.copy2(config, tmp / "config")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
