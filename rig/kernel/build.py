"""Kernel builds: out-of-tree (O=) with ccache, cached by base + patches + config.

One object tree per (source tree, config); a patched build is an incremental build in the baseline's
object tree (~25 s), never a fresh full build. Finished kernels are copied into
$KPROTO_CACHE/kernels/<key>/ through a temp dir + rename, so the cache never holds half a kernel,
and a failed build writes nothing.

Progress: make's output is read as it runs (and copied whole to the build log); every line of kbuild's
quiet output (`  CC      fs/overlayfs/file.o`, `  AS`, `  LD`, `  AR`, `  HOSTCC` ...) counts as one
object. The count and duration of each build are kept in the object tree (kproto.build-stats.json), and
those of full builds per config in $KPROTO_CACHE/build/kproto.build-stats.json, so the next full build
of the same config shows objects done / expected and an ETA (rig/core/progress.py renders them).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

from rig.core import cache
from rig.core import progress as progressmod
from rig.kernel import kconfig
from rig.machine import arch
from rig.core.errors import BuildError, InfraError, MissingTool
from rig.core.locks import locked
from rig.kernel.patches import Patch
from rig.core.paths import cache_dir
from rig.kernel.tree import SourceTree

REQUIRED_TOOLS = {"gcc": "gcc", "make": "make", "flex": "flex", "bison": "bison", "bc": "bc"}
_ERROR_LINE = re.compile(r"(error:|Error \d+|undefined reference|\*\*\*)")
# kbuild's quiet output: two spaces, an upper-case command tag (CC, AS, LD, AR, HOSTCC, CC [M], ...)
# padded to eight columns, the target
_KBUILD_LINE = re.compile(rb"^  ([A-Z][A-Z0-9_-]*(?: \[M\])?) +(\S+)\s*$")
STATS = "kproto.build-stats.json"
ESTIMATES = "build-estimates.json"
TICK_S = 1.0          # how often a running build refreshes its progress when make prints nothing


class ObjectCounter:
    """Counts the objects kbuild announces in make's output, fed in chunks as they come."""

    def __init__(self) -> None:
        self.objects = 0
        self.last = ""              # the last target announced
        self._rest = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._rest + chunk).split(b"\n")
        self._rest = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._rest:
            self._line(self._rest)
            self._rest = b""

    def _line(self, line: bytes) -> None:
        m = _KBUILD_LINE.match(line.rstrip(b"\r"))
        if m:
            self.objects += 1
            self.last = m.group(2).decode(errors="replace")


def count_objects(output: str | bytes) -> int:
    """The number of objects in a captured make output."""
    c = ObjectCounter()
    c.feed(output.encode() if isinstance(output, str) else output)
    c.close()
    return c.objects


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

    def outcome(self, incremental: bool = False) -> str:
        """How this run got the kernel, for progress lines: "cached", or "built in N s" (+ " (incremental)")."""
        if self.cached:
            return "cached"
        return f"built in {self.build_s:.0f} s" + (" (incremental)" if incremental else "")


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


def make_jobs() -> int:
    """make's -j for every kernel build: one job more than CPUs (bench/bench_build_profile.py uses it too)."""
    return (os.cpu_count() or 1) + 1


def ccache_dir() -> Path:
    """The ccache every kernel build of this $KPROTO_CACHE shares."""
    return cache_dir() / "ccache"


def ccache_stats(ccache: Path | None = None) -> dict[str, int]:
    """ccache's counters for CCACHE (default: ccache_dir()), e.g. direct_cache_miss, preprocessed_cache_miss."""
    out = subprocess.run(["ccache", "--print-stats"], capture_output=True, text=True, check=True,
                         env={**os.environ, "CCACHE_DIR": str(ccache or ccache_dir())}).stdout
    return {k: int(v) for k, v in (line.split("\t", 1) for line in out.splitlines() if "\t" in line)}


def _make(tree: SourceTree, objdir: Path, *targets: str, log: Path, timeout: float = 3600,
          counter: ObjectCounter | None = None, tick: Callable[[], None] | None = None,
          extra_env: dict[str, str] | None = None) -> None:
    cc = "ccache gcc" if shutil.which("ccache") else "gcc"
    extra_env = extra_env or {}
    # CCACHE_DEPEND: ccache's depend mode keys a result on the source and the headers listed in the .d file
    # kbuild already asks gcc for (-Wp,-MMD,...), so a miss compiles once; the default preprocessor mode
    # runs cpp first to compute the key and then compiles, preprocessing every missed file twice.
    env = {**os.environ, "CCACHE_DIR": str(ccache_dir()), "CCACHE_BASEDIR": str(tree.path),
           "CCACHE_DEPEND": "1",
           "KBUILD_BUILD_TIMESTAMP": "kproto", "KBUILD_BUILD_USER": "kproto", "KBUILD_BUILD_HOST": "kproto",
           **extra_env}
    cmd = ["make", "-C", str(tree.path), f"O={objdir}", f"-j{make_jobs()}", f"CC={cc}", "HOSTCC=gcc", *targets]
    with open(log, "ab") as fh:
        fh.write(f"\n$ {''.join(f'{k}={v} ' for k, v in extra_env.items())}{' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            timed_out = _pump(proc, fh, counter or ObjectCounter(), tick, time.monotonic() + timeout)
        except BaseException:          # interrupted: no make left behind
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
    if timed_out:
        raise InfraError(f"kernel build timed out after {timeout:.0f} s (log: {log})")
    if proc.returncode != 0:
        text = log.read_text(errors="replace").splitlines()
        errors = [l for l in text if _ERROR_LINE.search(l)][:12] or text[-12:]
        raise BuildError(f"kernel build failed ({' '.join(targets)}); log: {log}", "\n".join(errors))


def _pump(proc: subprocess.Popen, log: IO[bytes], counter: ObjectCounter, tick: Callable[[], None] | None,
          deadline: float) -> bool:
    """Copy make's output to the log as it comes, counting objects, calling TICK at least every TICK_S;
    True (make killed) when the deadline passed first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                return True
            if sel.select(min(left, TICK_S)):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                counter.feed(chunk)
            if tick is not None:
                tick()
    counter.close()
    proc.wait()
    return False


def _configure(tree: SourceTree, objdir: Path, want: kconfig.Kconfig, log: Path, *,
               use_recipe: bool = True) -> None:
    """The base config (kconfig.BASE_TARGET) + the fragment, then olddefconfig and the subset check.

    `make tinyconfig` is allnoconfig, a merge of tiny.config and an olddefconfig; kproto's fragment then
    needs another merge and olddefconfig. Each Kconfig run probes the toolchain (~90 gcc runs here), so
    where the tree's tinyconfig recipe is the one kproto knows, kproto runs its steps itself and merges
    tiny.config and its fragment in one go: two Kconfig runs instead of three, the same .config for
    6.12 (tests/test_e2e.py checks it), 6.9 s instead of 11.0 here (bench/bench_configure.py).
    USE_RECIPE=False always runs `make tinyconfig` (what that test and that bench compare with)."""
    objdir.mkdir(parents=True, exist_ok=True)
    frag = objdir / "kproto.fragment"
    frag.write_text(want.text())
    recipe = kconfig.tinyconfig_recipe(tree.path, arch.load().srcarch) \
        if use_recipe and kconfig.BASE_TARGET == "tinyconfig" else None
    if recipe is None:
        _make(tree, objdir, kconfig.BASE_TARGET, log=log)
        fragments: tuple[Path, ...] = (frag,)
    else:
        _make(tree, objdir, "allnoconfig", log=log, extra_env={"KCONFIG_ALLCONFIG": str(recipe.allconfig)})
        fragments = (*recipe.fragments, frag)
    proc = subprocess.run(["scripts/kconfig/merge_config.sh", "-m", "-O", str(objdir), str(objdir / ".config"),
                           *map(str, fragments)], cwd=tree.path, capture_output=True, text=True)
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
          progress: progressmod.ProgressFn = lambda msg: print(msg, file=sys.stderr)) -> Kernel:
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
        machine = arch.load()
        with tree.applied(patches):
            digest = objdir / "kproto.config-digest"
            kind = "incremental" if (objdir / machine.kernel_image).is_file() else "resumed"
            if not (digest.is_file() and digest.read_text() == want.digest() and (objdir / ".config").is_file()):
                progress(f"configuring {kconfig.BASE_TARGET} + kproto fragment in {objdir}")
                _configure(tree, objdir, want, log)
                kind = "full"
            what = "patched" if patches else "baseline"
            objects = _make_image(tree, objdir, machine.make_target, log, what, kind,
                                  _stats_key(want, machine.make_target), progressmod.reporter_for(progress))
            release = (objdir / "include/config/kernel.release").read_text().strip()
            built = objdir / machine.kernel_image
            elapsed = time.monotonic() - t0
            _store(key, built, objdir / ".config", {
                "version": release, "base": tree.base, "source": tree.origin,
                "patches": [p.as_json() for p in patches], "config_digest": want.digest(),
                "build_s": round(elapsed, 1), "built_at": time.time(), "objects": objects,
                "build_kind": kind})
    return Kernel(cache_dir() / "kernels" / key / "bzImage", release, key, elapsed, False, patches)


# ---------------------------------------------------------------- the image build, with progress

def _make_image(tree: SourceTree, objdir: Path, target: str, log: Path, what: str, kind: str,
                stats_key: str, rep: progressmod.Reporter) -> int:
    """make TARGET with objects done / expected and an ETA; records the count and duration; returns the count.
    KIND: full (a freshly configured object tree), incremental (the tree holds a built image), resumed
    (an earlier build of the tree did not finish)."""
    expected, expected_s, measured = _expected(objdir, stats_key, kind, tree.version())
    cmd = f"make -j{make_jobs()} {target}"
    if kind == "incremental":
        note = f"{cmd}, incremental in the existing object tree" + \
            (f", last one took {progressmod.fmt_duration(expected_s)}" if expected_s else "")
    elif kind == "resumed":
        note = f"{cmd}, finishing an earlier build of this object tree that did not complete"
    elif expected and measured:
        note = f"{cmd}, full build of ~{progressmod.plural(expected, 'objects')}" + \
            (f", about {progressmod.fmt_duration(expected_s)} here (kproto's measurement of this config on "
             f"{measured})"
             if expected_s else "")
    elif expected:
        note = f"{cmd}, full build of ~{progressmod.plural(expected, 'objects')}" + \
            (f", last one took {progressmod.fmt_duration(expected_s)}" if expected_s else "")
    else:
        note = f"{cmd}, full build, the first of this config: no object count to expect yet"
    counter = ObjectCounter()
    rep.stage(f"building {what} kernel", expected, unit="objects", expected_s=expected_s, note=f"{note}; log {log}")
    t0 = time.monotonic()
    try:
        _make(tree, objdir, target, log=log, counter=counter, tick=lambda: rep.update(counter.objects))
    except BaseException:
        rep.done("")
        raise
    seconds = time.monotonic() - t0
    rep.done(f"built {what} kernel: {progressmod.plural(counter.objects, 'objects')} in {progressmod.fmt_duration(seconds)}"
             + ("" if kind == "full" else f" ({kind})"))
    if kind != "resumed":       # a resumed build's count says nothing about the next one
        _record(objdir, stats_key, kind, counter.objects, seconds)
    return counter.objects


def _stats_key(want: kconfig.Kconfig, target: str) -> str:
    return f"{want.digest()} {target}"


def _global_stats() -> Path:
    return cache_dir() / "build" / STATS


def _read_stats(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def shipped_estimates() -> dict:
    """build-estimates.json beside this module: the full builds kproto measured of its default config
    (objects, seconds, the CPUs of that machine, the kernel version), keyed like the stats. A first
    build on a new machine shows done/expected from it; its seconds are scaled to this machine's CPUs."""
    return _read_stats(Path(__file__).with_name(ESTIMATES))


def default_stats_key() -> str:
    """The stats key of a build with the default config (no user fragment): what build-estimates.json
    must name (tests/kernel/test_build_progress.py checks it)."""
    return _stats_key(kconfig.requested(()), arch.load().make_target)


def same_series(a: str, b: str) -> bool:
    """Whether kernel versions A and B are releases of one stable series (6.12.117 and 6.12.118 are;
    6.12.117 and 6.13 are not)."""
    def series(v: str) -> list[str]:
        return re.split(r"[.-]", v)[:2]
    return len(series(a)) == 2 and series(a) == series(b)


def _expected(objdir: Path, stats_key: str, kind: str,
              version: str = "") -> tuple[int | None, float | None, str]:
    """(objects, seconds, measured) of the last build of this kind in this object tree; for a full build
    with none, the last full build of the same config elsewhere, else kproto's own measurement of that
    config on the same stable series as VERSION (build-estimates.json, scaled to this machine's CPUs; a
    stable point release such as Debian's 6.12.117 -> 6.12.118 changes a few files, not the object count),
    and then MEASURED is the kernel version it was measured on ("" otherwise). Incremental builds have no
    expected count (it depends on what the patch touches), only the last one's duration; resumed builds
    neither."""
    last = _read_stats(objdir / STATS).get(kind)
    if kind == "full" and not isinstance(last, dict):
        last = _read_stats(_global_stats()).get(stats_key)
    measured = ""
    if kind == "full" and not isinstance(last, dict):
        shipped = shipped_estimates().get(stats_key)
        if isinstance(shipped, dict) and same_series(str(shipped.get("kernel")), version) and \
                isinstance(shipped.get("seconds"), (int, float)):
            cpus = shipped.get("cpus")
            scale = cpus / max(1, os.cpu_count() or 1) if isinstance(cpus, int) and cpus > 0 else 1.0
            last, measured = {**shipped, "seconds": shipped["seconds"] * scale}, str(shipped["kernel"])
    if not isinstance(last, dict):
        return None, None, ""
    objects, seconds = last.get("objects"), last.get("seconds")
    return (objects if kind == "full" and isinstance(objects, int) and objects > 0 else None,
            float(seconds) if isinstance(seconds, (int, float)) and seconds > 0 else None, measured)


def _record(objdir: Path, stats_key: str, kind: str, objects: int, seconds: float) -> None:
    entry = {"objects": objects, "seconds": round(seconds, 1), "at": time.time()}
    local = _read_stats(objdir / STATS)
    local[kind] = entry
    cache.atomic_write(objdir / STATS, json.dumps(local, indent=1))
    if kind == "full":
        glob = _read_stats(_global_stats())
        glob[stats_key] = entry
        cache.atomic_write(_global_stats(), json.dumps(glob, indent=1))


def _store(key: str, bzimage: Path, config: Path, meta: dict) -> None:
    with cache.building(cache_dir() / "kernels" / key) as tmp:
        shutil.copy2(bzimage, tmp / "bzImage")
        shutil.copy2(config, tmp / "config")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
