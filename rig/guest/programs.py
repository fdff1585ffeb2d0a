"""THE static-program cache, and the guest test programs built and staged on top of it.

compile_dir() compiles C programs as static binaries into a content-addressed cache: the key hashes the
compiler, its flags, its version line and every source and header, so an unchanged set is never rebuilt
and a changed header rebuilds everything. The build goes to a temporary dir next to the final one and is
renamed into place, so a crash never leaves a half cache. Users: the guest tests (build(), cache
guest_bins), the benchmarks (bench_bins) and the fuzz interpreter (fuzz).

stage() lays out RUN_DIR/guest/ for the VM: bins/, tests/ (specs, fixtures) and py/, a package tree
(py/rig/__init__.py, py/rig/guest/*.py) holding the stdlib-only harness modules, run in the guest as
`PYTHONPATH=guest/py python3 -S -m rig.guest.harness`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rig.core import paths
from rig.core.errors import BuildError, MissingTool

CC = "gcc"
CFLAGS = ["-static", "-O2", "-Wall"]
GUEST_PKG = Path(__file__).resolve().parent               # rig/guest
# The modules the harness needs in the guest (all stdlib-only); staged as py/rig/guest/<name>.
HARNESS_MODULES = ("__init__.py", "harness.py", "spec.py", "layers.py", "mount.py", "observe.py", "run.py")
HARNESS = GUEST_PKG / "harness.py"


def _missing_cc(cc: str) -> MissingTool:
    return MissingTool(f"{cc} not found: install gcc (apt-get install gcc libc6-dev)")


def _cc_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, PermissionError):
        raise _missing_cc(cc) from None
    return out.stdout.splitlines()[0] if out.stdout else cc


def _check_static_libc(cc: str, tmp: Path) -> None:
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    try:
        p = subprocess.run([cc, *CFLAGS, "-o", str(tmp / "probe"), str(probe)], capture_output=True, text=True)
    finally:
        probe.unlink(missing_ok=True)
    (tmp / "probe").unlink(missing_ok=True)
    if p.returncode != 0:
        raise MissingTool("cannot link a static program (static libc missing): apt-get install libc6-dev",
                          p.stderr.strip()[-1000:])


def _select(src_dir: Path, sources: Sequence[Path] | None) -> list[Path]:
    if sources is None:
        return sorted(src_dir.glob("*.c"))
    out = []
    for s in sources:
        p = Path(s)
        p = p if p.is_absolute() else src_dir / p
        if p.resolve().parent != src_dir.resolve():
            raise BuildError(f"{p} is not in {src_dir}")
        if not p.is_file():
            raise BuildError(f"no such source: {p}")
        out.append(src_dir / p.name)
    return sorted(out)


def _hash(src_dir: Path, progs: Sequence[Path], cc: str) -> str:
    h = hashlib.sha256()
    h.update(" ".join([cc, *CFLAGS, _cc_version(cc)]).encode())
    for p in sorted(set(progs) | set(src_dir.glob("*.h"))):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _compile(cc: str, src: Path, out: Path) -> tuple[Path, str | None]:
    p = subprocess.run([cc, *CFLAGS, "-o", str(out), str(src)], capture_output=True, text=True,
                       cwd=src.parent)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if "error" in ln or ln.startswith(" ")]
        return src, "\n".join(lines or p.stderr.splitlines())[-3000:]
    return src, None


def compile_dir(src_dir: Path, *, cache_name: str, what: str, cache: Path | None = None, cc: str = CC,
                sources: Sequence[Path] | None = None) -> Path:
    """Compile every *.c of SRC_DIR (or just SOURCES, which live in SRC_DIR) statically, in parallel.

    Returns (cache or cache_dir())/CACHE_NAME/<16-hex key>, holding one binary per source stem.
    Raises MissingTool when CC or a static libc is missing, BuildError("WHAT x.c does not compile", lines)."""
    src_dir = Path(src_dir).resolve()                    # compiled with cwd=src_dir
    if shutil.which(cc) is None:
        raise _missing_cc(cc)
    progs = _select(src_dir, sources)
    if not progs:
        raise BuildError(f"no {what} sources (*.c) in {src_dir}")
    root = (Path(cache) if cache else paths.cache_dir()) / cache_name
    final = root / _hash(src_dir, progs, cc)
    if final.is_dir() and all((final / p.stem).is_file() for p in progs):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _check_static_libc(cc, tmp)
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
            results = list(ex.map(lambda p: _compile(cc, p, tmp / p.stem), progs))
        failed = [(src, err) for src, err in results if err is not None]
        if failed:
            src, err = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise BuildError(f"{what} {src.name} does not compile{more}", err or "")
        tmp.chmod(0o755)                                 # mkdtemp made it 0700
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():      # another build won the race: theirs is as good as ours
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build(src_dir: Path | None = None, cache: Path | None = None, cc: str = CC) -> Path:
    """Build every guest_tests/*.c; returns the dir holding one binary per test name."""
    src_dir = Path(src_dir).resolve() if src_dir else paths.GUEST_TESTS
    if shutil.which(cc) is None:
        raise _missing_cc(cc)
    if not any(src_dir.glob("*.c")):
        raise BuildError(f"no test programs (*.c) in {src_dir}")
    return compile_dir(src_dir, cache_name="guest_bins", what="guest test", cache=cache, cc=cc)


def stage_harness(py_dir: Path) -> Path:
    """Write the harness package tree under PY_DIR (py/rig/__init__.py, py/rig/guest/*.py); the
    harness then runs as `PYTHONPATH=PY_DIR python3 -S -m rig.guest.harness`. Returns PY_DIR."""
    py_dir = Path(py_dir)
    if py_dir.exists():
        shutil.rmtree(py_dir)
    pkg = py_dir / "rig" / "guest"
    pkg.mkdir(parents=True)
    shutil.copy2(GUEST_PKG.parent / "__init__.py", py_dir / "rig" / "__init__.py")
    for name in HARNESS_MODULES:
        shutil.copy2(GUEST_PKG / name, pkg / name)
    return py_dir


def stage(run_dir: Path, src_dir: Path | None = None, bins: Path | None = None) -> Path:
    """Copy the bins, the specs (+ fixtures/, known_divergences.toml, README) and the harness package
    (py/) into RUN_DIR/guest/ (the guest sees the run dir over 9p, nothing under /root). Returns RUN_DIR/guest."""
    src_dir = Path(src_dir) if src_dir else paths.GUEST_TESTS
    bins = Path(bins) if bins else build(src_dir)
    guest = Path(run_dir) / "guest"
    guest.mkdir(parents=True, exist_ok=True)
    for sub in ("bins", "tests"):
        if (guest / sub).exists():
            shutil.rmtree(guest / sub)
    (guest / "harness.py").unlink(missing_ok=True)          # the single-file layout of older runs
    shutil.copytree(bins, guest / "bins")
    tests = guest / "tests"
    tests.mkdir()
    for p in src_dir.iterdir():
        if p.suffix in (".toml", ".md") and p.is_file():
            shutil.copy2(p, tests / p.name)
    if (src_dir / "fixtures").is_dir():
        shutil.copytree(src_dir / "fixtures", tests / "fixtures")
    stage_harness(guest / "py")
    for p in [guest, *guest.rglob("*")]:          # the guest may run the harness as another uid
        p.chmod(0o755 if p.is_dir() or p.parent.name == "bins" else 0o644)
    return guest
