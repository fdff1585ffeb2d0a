"""The result caches of `kproto test`: a baseline kernel's results and the reference overlay's results are
reused across runs, keyed by everything that shapes them (kernel key, suite, selection, timeouts, and the
code of the analysis), so a kproto upgrade or an edited guest test never compares against stale results."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from rig.core import cache
from rig.core.paths import RIG, cache_dir
from rig.kernel.build import Kernel
from rig.suite.results import KernelRun


# What shapes a kernel's results besides the kernel itself: the harness, the runner and its barrier,
# the splat analysis (titles, signatures), the guest boot (vm, ssh, templates) and the suite. A kproto
# upgrade that changes any of them never compares against stale cached results.
_ANALYSIS = ("suite", "analysis", "machine", "guest")     # packages of rig/, every file in them


def analysis_fingerprint(suite: Path) -> str:
    h = hashlib.sha256()
    files = [f for pkg in _ANALYSIS for f in sorted((RIG / pkg).rglob("*"))
             if f.is_file() and "__pycache__" not in f.parts] + \
        sorted(p for p in Path(suite).rglob("*") if p.is_file() and p.suffix in (".c", ".h", ".toml"))
    for f in files:
        h.update(str(f.relative_to(f.parent.parent)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def baseline_path(suite: Path, kernel: Kernel, bins: Path, names: list[str],
                         timeout: float | None, extra: str = "") -> Path:
    """Keyed by the kernel (base, config fragment, patches), the suite, the selection and the analysis code."""
    h = hashlib.sha256(f"{kernel.key}|{bins.name}|{','.join(names)}|{timeout}|{extra}".encode())
    h.update(analysis_fingerprint(suite).encode())
    return cache_dir() / "results" / f"baseline-{h.hexdigest()[:20]}.json"


def reference_path(suite: Path, bins: Path, names: list[str], timeout: float | None) -> Path:
    import overlay_ref
    h = hashlib.sha256(f"{bins.name}|{','.join(names)}|{timeout}".encode())
    for src in [*sorted((RIG / "guest").glob("*.py")), *sorted(Path(overlay_ref.__file__).parent.rglob("*.py"))]:
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    for spec in sorted(suite.rglob("*.toml")):
        h.update(spec.read_bytes())
    return cache_dir() / "results" / f"reference-{h.hexdigest()[:20]}.json"


def save_run(path: Path, run: KernelRun) -> None:
    cache.atomic_write(path, json.dumps(run.as_json()))


def load_run(path: Path, kernel: Kernel, label: str) -> KernelRun:
    return KernelRun.from_json(json.loads(path.read_text()), kernel, label)
