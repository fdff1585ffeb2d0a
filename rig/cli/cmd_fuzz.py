"""`kproto fuzz`: differential fuzzing of file-operation sequences, target overlay vs the reference.

Parses the options, builds the interpreter, makes the targets (for --target kernel: the patched kernel
through rig.kernel.prepare, booted in a VM whose console is watched for splats, plus a prober that boots
fresh VMs of it to attribute and shrink a splat), runs rig.fuzz.search.fuzz and emits each finding
(rig.fuzz.emit); a splat finding's reproducer is checked on fresh boots of the patched and the baseline
kernel (rig.fuzz.splatcheck; the baseline through rig.kernel.prepare.baseline, when first needed).
Exit 0 nothing found, 1 findings, 2 bad input, 3 infrastructure failure."""
from __future__ import annotations

import json
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from rig.core import progress
from rig.core.errors import EXIT_CLEAN, EXIT_REGRESSED, BadInput, MissingTool
from rig.core.paths import cache_dir

if TYPE_CHECKING:
    from rig.analysis.known import Known
    from rig.fuzz.findings import Finding, FuzzResult
    from rig.fuzz.targets import Target


def _tests_destination(d: Path | None) -> Path | None:
    """Where findings become guest tests: only where the user said, never into an installed package
    (a site-packages copy of kproto is not a suite anyone runs or reviews)."""
    if d is None:
        return None
    real = d.resolve()
    if any(part in ("site-packages", "dist-packages") for part in real.parts):
        raise BadInput(f"--add-tests {d}: that is inside an installed Python package; give a checkout's "
                       "guest_tests/ or a directory of your own")
    if real.exists() and not real.is_dir():
        raise BadInput(f"--add-tests {d}: not a directory")
    return d


_say = progress.for_stderr("kproto fuzz: ")   # one line per message; a live line on a terminal


@click.command("fuzz")
@click.argument("patches", nargs=-1, type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["host", "kernel", "ref", "plain"]), default="host", show_default=True,
              help="host: the host kernel's overlayfs (no VM); kernel: the guest kernel built with PATCH...; "
                   "ref/plain: self-checks (the reference overlay, a plain directory)")
@click.option("--reference", type=click.Choice(["ref", "plain"]), default="ref", show_default=True,
              help="what the target is compared with: the reference overlay, or a plain directory (ideal POSIX)")
@click.option("--budget", default="10m", show_default=True, help="time budget: 90s, 10m, 1h")
@click.option("--max-sequences", type=click.IntRange(min=1), help="stop after this many sequences (reproducible length)")
@click.option("--seed", type=int, help="random seed (default: a fresh one, printed); the same seed replays the same search")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the JSON result (docs/design.md §4)")
@click.option("--findings", "findings_dir", type=click.Path(path_type=Path),
              help="where seeds and findings go (default $KPROTO_CACHE/fuzz/findings/<time>-<target>-seed<N>)")
@click.option("--add-tests", "tests_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="also write each finding as a guest test fuzz_<id>.c/.toml into DIR (e.g. guest_tests/); "
                   "by default findings stay in the findings directory and no suite changes")
@click.option("--tests-dir", "tests_dir_old", type=click.Path(path_type=Path), default=None, hidden=True)
@click.option("--no-tests", is_flag=True, hidden=True, help="(the default now; kept for old scripts)")
@click.option("--include-known", is_flag=True, help="report known divergences (guest_tests/known_divergences.toml) too")
@click.option("--batch", type=click.IntRange(1, 64), default=None, help="sequences per run (default 8 local, 32 kernel)")
@click.option("--max-len", type=click.IntRange(1, 40), default=10, show_default=True, help="ops per sequence at most")
@click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (--target kernel)")
@click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
              help="extra Kconfig fragment (--target kernel)")
@click.option("--keep", is_flag=True, help="keep the VM run directory (--target kernel)")
@click.option("--splat-budget", default="10m", show_default=True,
              help="--target kernel: time to attribute and shrink each new splat (fresh boots), on top of --budget")
def command(patches, target, reference, budget, max_sequences, seed, json_out, findings_dir, tests_dir, tests_dir_old,
            no_tests, include_known, batch, max_len, kernel_src, config, keep, splat_budget):
    """Search for operation sequences on which an overlay differs from the reference overlay; shrink
    each to a C reproducer and a guest test.

    Exit: 0 nothing found, 1 findings, 2 bad input, 3 infrastructure failure."""
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        raise MissingTool("kproto fuzz needs hypothesis (pip install 'kproto[test]' or pip install hypothesis)")
    from rig.analysis.known import load_known
    from rig.fuzz import emit, interp as interpmod, search, targets

    if patches and target != "kernel":
        raise BadInput("PATCH... only makes sense with --target kernel")
    budget_s = search.parse_budget(budget)
    splat_budget_s = search.parse_budget(splat_budget)
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    findings_dir = findings_dir or cache_dir() / "fuzz" / "findings" / f"{stamp}-{target}-seed{seed}"
    findings_dir.mkdir(parents=True, exist_ok=True)
    tests_out = None if no_tests else _tests_destination(tests_dir or tests_dir_old)
    argv = ["kproto", "fuzz", "--target", target, *map(str, patches), "--seed", str(seed)]
    if reference != "ref":
        argv += ["--reference", reference]
    argv += ["--max-sequences", str(max_sequences)] if max_sequences else ["--budget", budget]
    cmdline = " ".join(shlex.quote(a) for a in argv)
    (findings_dir / "run.json").write_text(json.dumps(
        {"seed": seed, "target": target, "reference": reference, "budget_s": budget_s,
         "max_sequences": max_sequences, "patches": [str(p) for p in patches], "command": cmdline,
         "started": stamp}, indent=1) + "\n")
    _say(f"seed {seed}; target {target} vs {reference}; budget {budget_s:.0f} s; findings in {findings_dir}")

    interp = interpmod.build_interpreter()
    known = load_known()
    target_desc = {"host": "host kernel overlayfs", "kernel": "kernel overlayfs (guest)",
                   "ref": "reference overlay (second mount)", "plain": "plain directory"}[target]
    if target == "kernel" and patches:
        target_desc += " with " + ", ".join(p.name for p in patches)

    checker: list[Callable[[Finding], None]] = []      # --target kernel: the splat reproducer check

    def on_finding(f: Finding) -> None:
        if f.splat is not None and checker:
            emit.emit_finding(f, findings_dir, None, target_desc, cmdline)    # repro.c, to check it
            checker[0](f)
        emit.emit_finding(f, findings_dir, tests_out, target_desc, cmdline)
        _say(f"finding {f.id} -> {f.reproducer}" + (f" and {f.guest_test}" if f.guest_test else "")
             + (f" (guest test not added: same first difference and operations as {f.duplicate_of})"
                if f.duplicate_of else ""))

    work = Path(tempfile.mkdtemp(prefix="kproto-fuzz-", dir="/tmp"))
    try:
        ref_t = targets.make_local_target(reference, interp, work / "reference")
        with ref_t:
            if target == "kernel":
                result = _fuzz_kernel(patches, kernel_src, config, keep, interp, ref_t, seed, budget_s,
                                      max_sequences, batch or 32, max_len, known, include_known, on_finding,
                                      splat_budget_s, checker)
            else:
                with targets.make_local_target(target, interp, work / "target") as tgt:
                    result = search.fuzz(tgt, ref_t, seed=seed, budget_s=budget_s, max_sequences=max_sequences,
                                         batch=batch or 8, max_len=max_len, known=known,
                                         include_known=include_known, progress=_say, on_finding=on_finding)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for f in result.known:
        emit.emit_finding(f, findings_dir / "known", None, target_desc, cmdline)
    out = result.as_json()
    (findings_dir / "result.json").write_text(json.dumps(out, indent=1) + "\n")
    if json_out:
        json_out.write_text(json.dumps(out, indent=1) + "\n")
    click.echo(f"{result.sequences_run} sequences in {result.elapsed_s:.0f} s (seed {seed}): "
               f"{len(result.findings)} finding(s), {len(result.known)} known divergence(s) filtered")
    for f in result.findings:
        d = f.diff
        if d is not None:
            click.echo(f"  {f.id}  {len(f.ops)} ops, op {d.op_index + 1} ({d.kind}): reference {d.reference!r}, "
                       f"{target} {d.target!r}")
        if f.splat is not None:
            sp = f.splat
            click.echo(f"  {f.id}  {len(f.ops)} ops, splat: {sp.title} ({sp.kind}, {sp.signature})"
                       + ("; the baseline kernel shows it too: not a regression of the patch" if sp.baseline else "")
                       + ("; the reproducer did NOT show it" if sp.reproduced is False else "")
                       + ("" if f.minimal else "; not 1-minimal (splat budget)"))
        for i, op in enumerate(f.ops, 1):
            click.echo(f"      {i}. {op}")
        click.echo(f"      reproducer: {f.reproducer}")
    for sp, why in result.unattributed:
        click.echo(f"  splat in batch {sp.batch}, not a finding: {sp.title} ({why})")
    click.echo(f"replay: {cmdline}")
    sys.exit(EXIT_REGRESSED if result.findings else EXIT_CLEAN)


def _fuzz_kernel(patches: tuple[Path, ...], kernel_src: str | None, config: tuple[Path, ...], keep: bool,
                 interp: Path, ref_t: Target, seed: int, budget_s: float, max_sequences: int | None, batch: int,
                 max_len: int, known: Known, include_known: bool, on_finding: Callable[[Finding], None],
                 splat_budget_s: float = 600.0, checker: list[Callable[[Finding], None]] | None = None) -> FuzzResult:
    from rig.fuzz import search, splatcheck
    from rig.fuzz.targets import KernelTarget
    from rig.kernel import prepare
    from rig.machine import qemu
    from rig.suite.testrun import new_run_dir

    spec = prepare.KernelSpec(kernel_src, tuple(config))
    tree, kernel = prepare.patched(spec, prepare.open_series(patches), _say)
    _say(f"kernel {kernel.version}: " + kernel.outcome())
    run_dir = new_run_dir(keep)
    boots = [0]

    def booter(k: Any, label: str, say: bool) -> Callable[[], Any]:
        def boot() -> Any:
            boots[0] += 1
            vm = qemu.VM(bzimage=k.bzimage, run_dir=run_dir, name=f"{label}{boots[0]}")
            vm.start()
            try:
                s = vm.wait_ready()
            except BaseException:
                vm.stop()
                raise
            if say:
                _say(f"guest ready after {s:.1f} s ({vm.accel}); {batch} sequences per SSH command")
            return vm
        return boot

    tgt = KernelTarget(interp, run_dir, None, boot=booter(kernel, "fuzz", True))
    prober = KernelTarget(interp, run_dir, None, boot=booter(kernel, "probe", False))
    prober.slots_per_mount = 16
    base: list[KernelTarget] = []

    def baseline() -> KernelTarget:
        if not base:
            _, bk = prepare.baseline(spec, _say, tree)
            _say(f"baseline kernel {bk.version}: " + bk.outcome())
            base.append(KernelTarget(interp, run_dir, None, boot=booter(bk, "baseline", False)))
        return base[0]

    if checker is not None:
        checker.append(lambda f: splatcheck.check(f, prober, baseline, _say))
    try:
        tgt.reboot()
        return search.fuzz(tgt, ref_t, seed=seed, budget_s=budget_s, max_sequences=max_sequences,
                           batch=batch, max_len=max_len, known=known, include_known=include_known,
                           progress=_say, on_finding=on_finding, prober=prober, splat_budget_s=splat_budget_s)
    finally:
        for t in (tgt, prober, *base):
            t.close()
        if keep:
            _say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
