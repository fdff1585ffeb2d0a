"""THE static-program cache, and the guest test programs built and staged on top of it.

compile_dir() compiles C programs as static binaries into a content-addressed cache: the key hashes the
compiler, its flags, its version line and every source and header, so an unchanged set is never rebuilt
and a changed header rebuilds everything. The build goes to a temporary dir next to the final one and is
renamed into place, so a crash never leaves a half cache. Users: the guest tests (build(), cache
guest_bins), the benchmarks (bench_bins) and the fuzz interpreter (fuzz).

stage() lays out RUN_DIR/guest/ for the VM: bins/, tests/ (specs, fixtures, and specs.json: the same
specs parsed, rig/guest/spec.py) and harness.zip, the stdlib-only harness modules as a package
(rig/__init__.py, rig/guest/*.py, each beside its byte code), run in the guest as
`PYTHONPATH=guest/harness.zip python3 -S -m rig.guest.harness`. One zip and one JSON file, because the
run share was an uncached 9p mount when this was measured: under TCG every stat or open on it was a
round trip of about 1 ms, and compiling the modules in the guest took another 0.4 s (issue #17). It is a
cached virtio-fs mount now (rig/machine/virtiofs.py); the guest still reads two files instead of dozens.
"""
from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rig.core import paths
from rig.core.errors import BuildError, MissingTool
from rig.guest.spec import write_bundle

CC = "gcc"
CFLAGS = ["-static", "-O2", "-Wall"]
SHARED_CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall"]      # a shared library (the guest's socket shim)
GUEST_PKG = Path(__file__).resolve().parent               # rig/guest
# The modules the harness needs in the guest (all stdlib-only); staged as rig/guest/<name> in harness.zip.
HARNESS_MODULES = ("__init__.py", "harness.py", "spec.py", "layers.py", "mount.py", "observe.py", "run.py")
HARNESS = GUEST_PKG / "harness.py"
HARNESS_ZIP = "harness.zip"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)          # fixed: the same modules give the same zip


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


def _hash(src_dir: Path, progs: Sequence[Path], cc: str, cflags: Sequence[str] = CFLAGS) -> str:
    h = hashlib.sha256()
    h.update(" ".join([cc, *cflags, _cc_version(cc)]).encode())
    for p in sorted(set(progs) | set(src_dir.glob("*.h"))):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _compile(cc: str, src: Path, out: Path, cflags: Sequence[str] = CFLAGS) -> tuple[Path, str | None]:
    p = subprocess.run([cc, *cflags, "-o", str(out), str(src)], capture_output=True, text=True,
                       cwd=src.parent)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if "error" in ln or ln.startswith(" ")]
        return src, "\n".join(lines or p.stderr.splitlines())[-3000:]
    return src, None


def compile_dir(src_dir: Path, *, cache_name: str, what: str, cache: Path | None = None, cc: str = CC,
                sources: Sequence[Path] | None = None, cflags: Sequence[str] = CFLAGS) -> Path:
    """Compile every *.c of SRC_DIR (or just SOURCES, which live in SRC_DIR) with CFLAGS (default: static
    programs; SHARED_CFLAGS makes shared libraries), in parallel.

    Returns (cache or cache_dir())/CACHE_NAME/<16-hex key>, holding one binary per source stem.
    Raises MissingTool when CC or a static libc is missing, BuildError("WHAT x.c does not compile", lines)."""
    src_dir = Path(src_dir).resolve()                    # compiled with cwd=src_dir
    if shutil.which(cc) is None:
        raise _missing_cc(cc)
    progs = _select(src_dir, sources)
    if not progs:
        raise BuildError(f"no {what} sources (*.c) in {src_dir}")
    root = (Path(cache) if cache else paths.cache_dir()) / cache_name
    final = root / _hash(src_dir, progs, cc, cflags)
    if final.is_dir() and all((final / p.stem).is_file() for p in progs):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        _check_static_libc(cc, tmp)
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
            results = list(ex.map(lambda p: _compile(cc, p, tmp / p.stem, cflags), progs))
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


def _pyc(source: bytes, filename: str) -> bytes:
    """SOURCE compiled to an unchecked hash-based .pyc (PEP 552): zipimport loads it without comparing
    it with the source. Python of another version rejects the magic number and compiles the .py beside it."""
    code = compile(source, filename, "exec", dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source) + \
        marshal.dumps(code)


def stage_harness(zip_path: Path) -> Path:
    """Write the harness package to ZIP_PATH (rig/__init__.py, rig/guest/<module>.py, each with its
    .pyc beside it, the layout zipimport reads); the harness then runs as
    `PYTHONPATH=ZIP_PATH python3 -S -m rig.guest.harness`. Returns ZIP_PATH."""
    zip_path = Path(zip_path)
    files = [("rig/__init__.py", GUEST_PKG.parent / "__init__.py")] + \
        [(f"rig/guest/{name}", GUEST_PKG / name) for name in HARNESS_MODULES]
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for arc, src in files:
            source = src.read_bytes()
            for name, data in ((arc, source), (arc + "c", _pyc(source, arc))):
                info = zipfile.ZipInfo(name, _ZIP_TIME)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    os.replace(tmp, zip_path)
    return zip_path


def stage(run_dir: Path, src_dir: Path | None = None, bins: Path | None = None) -> Path:
    """Copy the bins, the specs (+ fixtures/, known_divergences.toml, README, and specs.json: all of them
    parsed) and the harness package (harness.zip) into RUN_DIR/guest/ (the guest sees the run dir over virtio-fs,
    nothing under /root). Returns RUN_DIR/guest."""
    src_dir = Path(src_dir) if src_dir else paths.GUEST_TESTS
    bins = Path(bins) if bins else build(src_dir)
    guest = Path(run_dir) / "guest"
    guest.mkdir(parents=True, exist_ok=True)
    for sub in ("bins", "tests"):
        if (guest / sub).exists():
            shutil.rmtree(guest / sub)
    (guest / "harness.py").unlink(missing_ok=True)          # the layouts of older runs
    if (guest / "py").exists():
        shutil.rmtree(guest / "py")
    shutil.copytree(bins, guest / "bins")
    tests = guest / "tests"
    tests.mkdir()
    for p in src_dir.iterdir():
        if p.suffix in (".toml", ".md") and p.is_file():
            shutil.copy2(p, tests / p.name)
    if (src_dir / "fixtures").is_dir():
        shutil.copytree(src_dir / "fixtures", tests / "fixtures")
    write_bundle(tests)
    stage_harness(guest / HARNESS_ZIP)
    for p in [guest, *guest.rglob("*")]:          # the guest may run the harness as another uid
        p.chmod(0o755 if p.is_dir() or p.parent.name == "bins" else 0o644)
    return guest
