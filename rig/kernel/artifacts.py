"""Kernel artifacts between nightly workers, by content hash.

A kernel build leaves $KPROTO_CACHE/kernels/<key>/{bzImage,config,meta.json} (rig/kernel/build.py; the key hashes
base commit, config and patches). The worker that built it snapshots a *manifest*: the sha256 and size of
each file, plus the build log (kept as $KPROTO_CACHE/artifacts/logs/<key>.log, since the object tree's log
is overwritten by the next build), and where it was built. Manifests are plain data and travel through the
Dask graph; the bytes travel only when another worker needs them:

1. already in this worker's cache under that key: nothing moves;
2. `[cluster] artifacts = DIR` (a directory every worker mounts): blobs DIR/blobs/<sha256>, published by
   the builder, copied by the others;
3. otherwise through Dask: read tasks pinned to the worker that built it, whose results Dask hands over
   worker to worker.

Every file is checked against its sha256 and the cache entry appears atomically (temp dir + rename), so a
worker never uses half a kernel. If the builder is gone and no shared directory has it, `ensure` says so
and the caller's own build rebuilds it (the only case in which a second worker builds the same kernel).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from rig.core import cache
from rig.core.errors import InfraError
from rig.core.paths import cache_dir

CHUNK = 32 << 20
FETCH_TIMEOUT_S = 600.0
ENTRY_FILES = ("bzImage", "config", "meta.json")
LOG = "build.log"


class ArtifactUnavailable(InfraError):
    """No copy of a kernel artifact can be reached (its builder is gone and no shared directory has it)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _art_dir() -> Path:
    return cache_dir() / "artifacts"


def log_path(key: str) -> Path:
    return _art_dir() / "logs" / f"{key}.log"


def file_path(key: str, name: str) -> Path:
    return log_path(key) if name == LOG else cache_dir() / "kernels" / key / name


def present(key: str) -> bool:
    from rig.kernel.build import lookup
    return lookup(key) is not None


def keep_log(key: str, build_log: Path | None) -> None:
    """Right after a fresh build: keep its log under the kernel's key."""
    if build_log is None or not build_log.is_file():
        return
    cache.atomic_copy(build_log, log_path(key))


def snapshot(key: str, built_by: dict) -> dict:
    """The manifest of the kernel KEY in this worker's cache: {key, files: {name: {sha256, size}}, digest,
    built_by}. The digest (sha256 over the file hashes) names the artifact as a whole."""
    if not present(key):
        raise InfraError(f"kernel {key} is not in the cache of {built_by.get('worker')}")
    files = {}
    for name in ENTRY_FILES + (LOG,):
        p = file_path(key, name)
        if p.is_file():
            files[name] = {"sha256": _sha256(p), "size": p.stat().st_size}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    man = {"key": key, "files": files, "digest": digest,
           "built_by": {k: built_by.get(k) for k in ("worker", "address", "host")}}
    d = _art_dir() / "manifests"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{key}.json").write_text(json.dumps(man, indent=1))
    return man


def publish(man: dict, shared: Path) -> None:
    """Copy the artifact's files into the shared directory as content-addressed blobs (idempotent)."""
    blobs = shared / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for name, f in man["files"].items():
        dest = blobs / f["sha256"]
        if dest.is_file() and dest.stat().st_size == f["size"]:
            continue
        cache.atomic_copy(file_path(man["key"], name), dest)
    cache.atomic_write(shared / "manifests" / f"{man['key']}.json", json.dumps(man, indent=1))


def shared_manifest(shared: Path | None, key: str) -> dict | None:
    if shared is None:
        return None
    p = shared / "manifests" / f"{key}.json"
    try:
        man = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    blobs = shared / "blobs"
    ok = all((blobs / f["sha256"]).is_file() for f in man.get("files", {}).values())
    return man if ok and "bzImage" in man.get("files", {}) else None


def read_chunk(key: str, name: str, offset: int, size: int) -> bytes:
    """Runs on the worker that built KEY (a Dask task pinned there): SIZE bytes of one of its files."""
    with open(file_path(key, name), "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def _fetch_dask(man: dict, name: str, dest: Path) -> None:
    from distributed import get_client
    src = man["built_by"].get("address")
    client = get_client()
    if not src or src not in client.scheduler_info(n_workers=-1)["workers"]:
        raise ArtifactUnavailable(f"kernel {man['key'][:12]}: {man['built_by'].get('worker')} (which built it) "
                                  "is gone")
    size = man["files"][name]["size"]
    futs = [client.submit(read_chunk, man["key"], name, off, min(CHUNK, size - off), workers=[src],
                          allow_other_workers=False, pure=False, priority=10**9,
                          key=f"kproto-fetch-{man['key'][:12]}-{name}-{off}-{time.monotonic_ns()}")
            for off in range(0, max(size, 1), CHUNK)]
    try:
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        with open(dest, "wb") as fh:
            for f in futs:
                fh.write(f.result(timeout=max(1.0, deadline - time.monotonic())))
    except TimeoutError:
        raise ArtifactUnavailable(f"kernel {man['key'][:12]}: fetching {name} from "
                                  f"{man['built_by'].get('worker')} timed out") from None
    except Exception as e:
        raise ArtifactUnavailable(f"kernel {man['key'][:12]}: fetching {name} from "
                                  f"{man['built_by'].get('worker')} failed: {type(e).__name__}: {e}") from None
    finally:
        for f in futs:
            f.release()


def ensure(man: dict, shared: Path | None = None, say: Callable[[str], None] = lambda m: None) -> dict:
    """Make the kernel of manifest MAN present in this worker's cache. Returns {key, digest, how: local |
    shared | dask, from, bytes}; raises ArtifactUnavailable when no copy can be reached."""
    key = man["key"]
    out = {"key": key, "digest": man.get("digest"), "from": man["built_by"].get("worker"), "bytes": 0}
    if present(key):              # built (or fetched) here before under the same key: the same inputs
        return {**out, "how": "local"}
    how = "shared" if shared_manifest(shared, key) else "dask"
    with cache.building(cache_dir() / "kernels" / key) as tmp:
        for name, f in man["files"].items():
            dest = tmp / name
            if shared is not None and how == "shared":
                shutil.copyfile(shared / "blobs" / f["sha256"], dest)
            else:
                _fetch_dask(man, name, dest)
            got = _sha256(dest)
            if got != f["sha256"]:
                raise ArtifactUnavailable(f"kernel {key[:12]}: {name} arrived with sha256 {got[:12]}, "
                                          f"expected {f['sha256'][:12]}")
            out["bytes"] += f["size"]
        if (tmp / LOG).is_file():
            log_path(key).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / LOG, log_path(key))
    say(f"kernel {key[:12]} fetched from {out['from']} ({'shared directory' if how == 'shared' else 'via Dask'}, "
        f"{out['bytes'] / 1e6:.1f} MB, sha256 checked)")
    return {**out, "how": how}


def install_from_shared(shared: Path | None, key: str, say: Callable[[str], None] = lambda m: None) -> dict | None:
    """A kernel some worker built and published (tonight or before): fetch it instead of building it."""
    man = shared_manifest(shared, key)
    if man is None:
        return None
    return ensure(man, shared, say)
