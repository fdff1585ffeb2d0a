"""kproto bench and kproto fuzz for a tested nightly cell, run as `kproto` child processes through their
--json contracts (docs/design.md §4). kproto_args() is the one place their command lines are built (from the
kernel's rig.kernel.prepare.KernelSpec and the series' patch paths).

They stay child processes rather than in-process calls of rig.bench / rig.fuzz: their orchestration (kernel
preparation, VMs, the JSON document) lives in their click commands, not behind a Python API, and a child
process unwinds on SIGTERM like Ctrl-C, reaping its VMs, without taking the nightly's stage with it."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from rig.kernel.prepare import KernelSpec
from rig.nightly.config import KernelCfg, SeriesCfg

BENCH_TIMEOUT_S = 3 * 3600
FUZZ_EXTRA_S = 3600                  # on top of the fuzz budget: kernel builds, boot, shrinking
FUZZ_SEED = 1                        # fixed: the same search every night, so a new finding is the patches'


def kproto_args(command: str, spec: KernelSpec, patches: Sequence[Path], *options: str) -> list[str]:
    """`kproto COMMAND OPTIONS... [--kernel-src SRC] [--config FRAGMENT]... PATCH...` as an argument list."""
    args = [command, *options]
    if spec.source:
        args += ["--kernel-src", spec.source]
    for f in spec.fragments:
        args += ["--config", str(f)]
    return args + [str(p) for p in patches]


def run_kproto(args: list[str], say: Callable[[str], None], timeout: float) -> tuple[int, str]:
    """Run `kproto ARGS` in a child process (the JSON contracts of docs/design.md §4)."""
    cmd = [sys.executable, "-c", "from rig.cli.main import main; main()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except BaseException as e:
        # SIGTERM first: the child unwinds like Ctrl-C and reaps its own VMs; SIGKILL only if it hangs
        proc.terminate()
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if isinstance(e, subprocess.TimeoutExpired):
            return 124, f"kproto {args[0]} timed out after {timeout:.0f} s"
        raise
    if proc.returncode != 0:
        say(f"kproto {args[0]} exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return proc.returncode, err


def _json_of(out: Path, command: str, rc: int, err: str) -> tuple[object, str | None]:
    """The JSON document kproto COMMAND wrote to OUT (it may exit non-zero and still write it), or why there
    is none; (None, None) when it is not JSON."""
    if not out.is_file():
        last = [line for line in err.strip().splitlines() if line.strip()][-1:] or [f"exit {rc}"]
        return None, f"kproto {command} produced no JSON (exit {rc}): {last[0][:300]}"
    try:
        return json.loads(out.read_text()), None
    except ValueError:
        return None, None          # the caller says what it expected


def run_bench(kernel: KernelCfg, s: SeriesCfg, say: Callable[[str], None]) -> tuple[list[dict], str | None]:
    """`kproto bench --json` for the series; (metrics, error)."""
    with tempfile.TemporaryDirectory(prefix="kproto-nightly-bench-") as d:
        out = Path(d) / "bench.json"
        rc, err = run_kproto(kproto_args("bench", kernel.spec, s.paths, "--json", str(out)), say,
                             timeout=BENCH_TIMEOUT_S)
        doc, why = _json_of(out, "bench", rc, err)
        if why:
            return [], why
        metrics = doc.get("metrics") if isinstance(doc, dict) else None
        if not isinstance(metrics, list):
            return [], "kproto bench --json output lacks a metrics list"
        return metrics, None


def run_fuzz(kernel: KernelCfg, s: SeriesCfg, budget_s: float, say: Callable[[str], None],
             findings_dir: Path) -> tuple[list[dict], str | None]:
    """A fixed-budget, fixed-seed `kproto fuzz --target kernel --json` on the series' patched kernel;
    reproducers land in FINDINGS_DIR (no guest tests are written). Returns (findings, error)."""
    with tempfile.TemporaryDirectory(prefix="kproto-nightly-fuzz-") as d:
        out = Path(d) / "fuzz.json"
        args = kproto_args("fuzz", kernel.spec, s.paths, "--target", "kernel", "--json", str(out),
                           "--budget", f"{int(budget_s)}s", "--seed", str(FUZZ_SEED),
                           "--findings", str(findings_dir), "--no-tests")
        rc, err = run_kproto(args, say, timeout=budget_s + FUZZ_EXTRA_S)
        doc, why = _json_of(out, "fuzz", rc, err)
        if why:
            return [], why
        if not isinstance(doc, dict):
            return [], "kproto fuzz --json output is not a JSON object"
        return list(doc.get("findings", [])), None
