"""Build the guest test programs (guest_tests/*.c) as static binaries, cached by content.

The cache key is a hash of every source (*.c, *.h), the compiler flags and the compiler's version, so
an unchanged suite is never rebuilt and a changed header rebuilds everything. The build goes to a
temporary dir next to the final one and is renamed into place, so a crash never leaves a half cache.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import paths
from .errors import BuildError, MissingTool

CC = "gcc"
CFLAGS = ["-static", "-O2", "-Wall"]
HARNESS = Path(__file__).resolve().parent / "guest" / "harness.py"


def _sources(src_dir: Path) -> tuple[list[Path], list[Path]]:
    progs = sorted(src_dir.glob("*.c"))
    headers = sorted(src_dir.glob("*.h"))
    return progs, headers


def _cc_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise MissingTool(f"{cc} not found: install gcc (apt-get install gcc libc6-dev)") from None
    return out.stdout.splitlines()[0] if out.stdout else cc


def _check_static_libc(cc: str, tmp: Path) -> None:
    probe = tmp / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    p = subprocess.run([cc, *CFLAGS, "-o", str(tmp / "probe"), str(probe)], capture_output=True, text=True)
    if p.returncode != 0:
        raise MissingTool("cannot link a static program (static libc missing): apt-get install libc6-dev",
                          p.stderr.strip()[-1000:])


def source_hash(src_dir: Path, cc: str = CC) -> str:
    progs, headers = _sources(src_dir)
    h = hashlib.sha256()
    h.update(" ".join([cc, *CFLAGS, _cc_version(cc)]).encode())
    for p in progs + headers:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _compile(cc: str, src: Path, out: Path) -> tuple[Path, str | None]:
    p = subprocess.run([cc, *CFLAGS, "-o", str(out), str(src)], capture_output=True, text=True,
                       cwd=src.parent)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if "error" in ln or ln.startswith(" ")]
        return src, "\n".join(lines or p.stderr.splitlines())[-3000:]
    return src, None


def build(src_dir: Path | None = None, cache: Path | None = None, cc: str = CC) -> Path:
    """Build every guest_tests/*.c; returns the dir holding one binary per test name."""
    src_dir = Path(src_dir).resolve() if src_dir else paths.GUEST_TESTS   # compiled with cwd=src_dir
    if shutil.which(cc) is None:
        raise MissingTool(f"{cc} not found: install gcc (apt-get install gcc libc6-dev)")
    progs, _ = _sources(src_dir)
    if not progs:
        raise BuildError(f"no test programs (*.c) in {src_dir}")
    root = (Path(cache) if cache else paths.cache_dir()) / "guest_bins"
    final = root / source_hash(src_dir, cc)
    if final.is_dir() and all((final / p.stem).is_file() for p in progs):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _check_static_libc(cc, tmp)
        (tmp / "probe").unlink(missing_ok=True)
        (tmp / "probe.c").unlink(missing_ok=True)
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
            results = list(ex.map(lambda p: _compile(cc, p, tmp / p.stem), progs))
        failed = [(src, err) for src, err in results if err is not None]
        if failed:
            src, err = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise BuildError(f"guest test {src.name} does not compile{more}", err)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():      # another build won the race: theirs is as good as ours
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def stage(run_dir: Path, src_dir: Path | None = None, bins: Path | None = None) -> Path:
    """Copy the bins, the specs (+ fixtures/, known_divergences.toml, README) and harness.py into
    RUN_DIR/guest/ (the guest sees the run dir over 9p, nothing under /root). Returns RUN_DIR/guest."""
    src_dir = Path(src_dir) if src_dir else paths.GUEST_TESTS
    bins = Path(bins) if bins else build(src_dir)
    guest = Path(run_dir) / "guest"
    guest.mkdir(parents=True, exist_ok=True)
    for sub in ("bins", "tests"):
        if (guest / sub).exists():
            shutil.rmtree(guest / sub)
    shutil.copytree(bins, guest / "bins")
    tests = guest / "tests"
    tests.mkdir()
    for p in src_dir.iterdir():
        if p.suffix in (".toml", ".md") and p.is_file():
            shutil.copy2(p, tests / p.name)
    if (src_dir / "fixtures").is_dir():
        shutil.copytree(src_dir / "fixtures", tests / "fixtures")
    shutil.copy2(HARNESS, guest / "harness.py")
    for p in [guest, *guest.rglob("*")]:          # the guest may run the harness as another uid
        p.chmod(0o755 if p.is_dir() or p.parent.name == "bins" or p.name == "harness.py" else 0o644)
    return guest
