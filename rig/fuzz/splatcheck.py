"""The check of a splat finding's C reproducer (rig/fuzz/emit.py): built statically, run on a fresh boot of
the patched kernel (it must show the splat: same signature) and on a fresh boot of the baseline kernel
(it must not; when it does, the finding says so: `splat.baseline`, not a regression of the patch).
Both runs go through KernelTarget.run_program (fixture slot 0 on a fresh overlay, the console scanned
between the run's kmsg markers)."""
from __future__ import annotations

from typing import Callable

from rig.fuzz import emit
from rig.fuzz.findings import Finding
from rig.fuzz.targets import KernelTarget


def check(f: Finding, patched: KernelTarget, baseline: Callable[[], KernelTarget] | None,
          progress: Callable[[str], None] = lambda m: None) -> None:
    """Set f.splat.reproduced and f.splat.baseline from runs of f's reproducer (emit_finding wrote it).
    BASELINE gives the baseline kernel's target (built and booted only when called); None: not checked."""
    sp = f.splat
    assert sp is not None and f.reproducer is not None
    binary = emit.compile_reproducer(f)
    progress(f"finding {f.id}: checking the reproducer on a fresh boot of the patched kernel")
    try:
        rc, out, w = patched.run_program(binary, f.reproducer)
    finally:
        patched.shutdown()
    sp.reproduced = sp.signature in w.signatures
    others = [s.title for s in w.splats if s.signature != sp.signature]
    progress(f"finding {f.id}: the reproducer {'shows' if sp.reproduced else 'does NOT show'} {sp.title} on the "
             f"patched kernel (exit {rc})" + (f"; other splats: {'; '.join(others)}" if others else ""))
    if baseline is None:
        return
    progress(f"finding {f.id}: checking on the baseline (a fresh boot of the unpatched kernel)")
    base = baseline()
    try:
        rc, out, w = base.run_program(binary, f.reproducer)
    finally:
        base.shutdown()
    sp.baseline = sp.signature in w.signatures
    progress(f"finding {f.id}: " + (f"the baseline kernel shows {sp.title} too: not a regression of the patch"
                                     if sp.baseline else f"the baseline kernel shows no {sp.title}"))
