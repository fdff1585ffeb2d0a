"""`kproto test`, `kproto build`, `kproto shell`."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click

from rig.core import progress
from rig.kernel import prepare
from rig.report import html as report_html, terminal as report_terminal
from rig.core.errors import EXIT_CLEAN, EXIT_INFRA, EXIT_REGRESSED, MissingTool

_patch_arg = click.argument("patches", nargs=-1, type=click.Path(path_type=Path))
_src_opt = click.option("--kernel-src", metavar="PATH", help="kernel git tree or tarball (default: Debian linux-source-6.12)")
_cfg_opt = click.option("--config", "config", multiple=True, type=click.Path(path_type=Path), metavar="FRAGMENT",
                        help="extra Kconfig fragment (repeatable), checked after olddefconfig")


_say = progress.for_stderr("kproto: ")   # one line per message; a live line on a terminal


@click.command("test")
@click.argument("patches", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="write the JSON report (docs/design.md §4)")
@click.option("--junit", "junit_out", type=click.Path(path_type=Path), help="write JUnit XML")
@click.option("--html", "html_out", type=click.Path(path_type=Path), help="write an HTML report")
@click.option("-k", "pattern", help="run only guest tests whose name matches (substring or glob)")
@_src_opt
@_cfg_opt
@click.option("--timeout", type=click.FloatRange(min=1), help="per-test timeout in seconds (default: each test's own)")
@click.option("--keep", is_flag=True, help="keep the run directory (console logs, keys)")
@click.option("--suite", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="directory of guest tests to run instead of guest_tests/")
@click.option("--no-checks", is_flag=True, help="skip checkpatch/get_maintainer (kproto check) before building")
@click.option("--rerun-baseline", is_flag=True, help="re-run the baseline kernel even if its results are cached")
@click.option("--confirm", type=click.IntRange(min=0, max=20), default=2, show_default=True, metavar="N",
              help="extra fresh boots of each kernel for tests whose outcome can vary (splat, hang, error, "
                   "concurrent) and differs between the kernels")
@click.option("--allow-flaky", is_flag=True, help="a test whose outcome varies across boots does not make the verdict exit 1")
@click.option("-j", "--jobs", type=click.IntRange(min=1, max=16), default=None, metavar="N",
              help="guests running side by side (default: one per host CPU, at most 2); the answer does not "
                   "depend on it")
@click.option("--repro", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="write a reproducer bundle per finding under DIR/<test>/ (run it with its reproduce.sh or "
                   "kproto reproduce DIR/<test>)")
@click.option("-v", "--verbose", is_flag=True,
              help="list every test and splat in the report (default: the tests that do not match the reference, "
                   "a count of those that do, and the new splats)")
def test_cmd(patches, json_out, junit_out, html_out, pattern, kernel_src, config, timeout, keep, suite, no_checks,
             rerun_baseline, confirm, allow_flaky, jobs, repro, verbose):
    """Build PATCH... on the base kernel, boot baseline and patched kernels, run the guest tests,
    compare with the reference overlay, and report what the patch fixed, broke, and which splats it brought.

    Exit: 0 clean, 1 regressed or flaky, 2 bad input, 3 infrastructure failure."""
    from rig.report import junit
    from rig.suite import testrun
    opts = testrun.TestOptions(patches=list(patches), kernel_src=kernel_src, config=tuple(config),
                               pattern=pattern, timeout=timeout, keep=keep, rerun_baseline=rerun_baseline, checks=not no_checks,
                               confirm=confirm, allow_flaky=allow_flaky, jobs=jobs, repro=repro,
                               progress=_say, **({"suite": suite} if suite else {}))
    try:
        rep = testrun.run(opts)
    except testrun.Interrupted as e:
        if json_out:
            e.report.write_json(json_out)
            _say(f"partial results written to {json_out}")
        raise
    click.echo(report_terminal.render(rep, verbose=verbose))
    if json_out:
        rep.write_json(json_out)
    if junit_out:
        junit_out.write_text(junit.to_junit(rep.verdicts, "kproto-test"))
    if html_out:
        html_out.write_text(report_html.render(rep))
    sys.exit(EXIT_CLEAN if rep.verdict == "clean" else
             EXIT_REGRESSED if rep.verdict in ("regressed", "flaky") else EXIT_INFRA)


@click.command("build")
@_patch_arg
@_src_opt
@_cfg_opt
def build_cmd(patches, kernel_src, config):
    """Build the base kernel with PATCH... applied (cached) and print the bzImage path."""
    k = prepare.patched(prepare.KernelSpec(kernel_src, tuple(config)), prepare.open_series(patches), _say)[1]
    if k.cached:            # a build has said "built ... kernel: N objects in T" itself: one line per kernel
        _say(f"linux {k.version}: " + k.outcome())
    click.echo(str(k.bzimage))


@click.command("shell")
@_patch_arg
@_src_opt
@_cfg_opt
@click.option("--command", "-c", "command", help="run this command instead of an interactive shell")
def shell_cmd(patches, kernel_src, config, command):
    """Boot the kernel with PATCH... and open an SSH session into it; the VM is reaped on exit."""
    from rig.suite.testrun import new_run_dir
    from rig.machine.qemu import VM
    from rig.machine.ssh import openssh_command
    if shutil.which("ssh") is None:
        raise MissingTool("ssh is missing (apt-get install openssh-client)")
    k = prepare.patched(prepare.KernelSpec(kernel_src, tuple(config)), prepare.open_series(patches), _say)[1]
    run_dir = new_run_dir(keep=False)
    try:
        with VM(bzimage=k.bzimage, run_dir=run_dir, name="shell") as vm:
            boot = vm.wait_ready()
            _say(f"linux {k.version} up, SSH after {boot:.1f} s ({vm.accel}); console log {vm.console_log}")
            if vm.ssh is not None:      # the control port takes one connection at a time: ssh's
                vm.ssh.close()
            ssh = openssh_command(vm.control_sock, run_dir / "ssh" / "client_ed25519", vm.known_hosts)
            if command:
                ssh.append(command)
            elif sys.stdin.isatty():
                ssh.insert(1, "-t")
            rc = subprocess.call(ssh)
        sys.exit(rc)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


