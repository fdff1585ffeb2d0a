"""Real QEMU guests on the real baseline kernel (slow: the first run builds the kernel)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from rig import build, tree, vm as vmmod
from rig.errors import BootError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def baseline_kernel():
    return build.build(tree.default_source(), [], progress=lambda m: print(m))


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_kvm_probe_follows_cpu_flags_and_override(monkeypatch):
    has_virt = bool(re.search(r"\b(vmx|svm)\b", Path("/proc/cpuinfo").read_text()))
    monkeypatch.delenv("KPROTO_ACCEL", raising=False)
    if not has_virt:
        assert vmmod.kvm_works() is False
    monkeypatch.setenv("KPROTO_ACCEL", "tcg")
    assert vmmod.kvm_works() is False
    monkeypatch.setenv("KPROTO_ACCEL", "kvm")
    assert vmmod.kvm_works() is True


def test_boot_ssh_and_isolation(baseline_kernel, run_dir):
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="t") as vm:
        boot_s = vm.wait_ready(120)
        assert boot_s > 0
        rc, out, _ = vm.ssh.run("uname -r", timeout=30)
        assert rc == 0 and out.strip() == baseline_kernel.version
        # host root is read-only, /root is a guest tmpfs, the run directory is the only writable share
        rc, _, err = vm.ssh.run("touch /usr/kproto-should-fail", timeout=30)
        assert rc != 0 and "Read-only" in err
        rc, _, _ = vm.ssh.run(f"echo from-guest > {vmmod.SCRATCH_MNT}/hello", timeout=30)
        assert rc == 0 and (run_dir / "hello").read_text() == "from-guest\n"
        rc, out, _ = vm.ssh.run("grep ' /root ' /proc/mounts", timeout=30)
        assert out.split()[2] == "tmpfs"
        # the only way in is hostfwd bound to loopback
        assert f"hostfwd=tcp:127.0.0.1:{vm.port}-:22" in " ".join(vm.command())
        assert "restrict=on" in " ".join(vm.command())
        pid = vm.proc.pid
    assert vm.proc.poll() is not None, "QEMU must be reaped when the context exits"
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "Linux version" in vm.console_text()
    keys = run_dir / "ssh"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert oct((keys / "client_ed25519").stat().st_mode & 0o777) == "0o600"


def test_kernel_that_never_reaches_init_is_a_boot_error_with_console_tail(baseline_kernel, run_dir):
    guest = vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="noinit",
                     extra_cmdline="init=/nonexistent/init")
    with guest:
        with pytest.raises(BootError) as e:
            guest.wait_ready(120)
    assert "Kernel panic" in e.value.message or "No working init" in e.value.message
    assert e.value.exit_code == 3
    assert guest.proc.poll() is not None


def test_boot_wait_is_bounded_and_reaps_the_vm(baseline_kernel, run_dir):
    guest = vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="slow")
    with guest:
        with pytest.raises(BootError, match="did not reach init within 1 s"):
            guest.wait_ready(1)
        assert guest.proc.poll() is not None


def test_ssh_rejects_a_guest_with_another_host_key(baseline_kernel, run_dir):
    from rig import ssh as sshmod
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="pin") as vm:
        vm.wait_ready(120)
        other = run_dir / "other"
        sshmod.make_keys(other)
        sshmod.write_known_hosts(other, vm.port)          # pins a key the guest does not have
        bad = sshmod.GuestSSH(port=vm.port, key=run_dir / "ssh" / "client_ed25519", known_hosts=other / "known_hosts")
        with pytest.raises(sshmod.SSHError):
            bad.connect(timeout=10)
