"""Real QEMU guests on the real baseline kernel (slow: the first run builds the kernel)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from rig.kernel import build
from rig.kernel import tree
from rig.machine import qemu as vmmod
from rig.core.errors import BootError

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
        # no RTC class in the kernel config: the wall clock still comes from the CMOS (or kvmclock) at boot
        rc, out, _ = vm.ssh.run("date +%s", timeout=30)
        assert rc == 0 and abs(int(out) - time.time()) < 120, f"guest clock {out.strip()} vs host {time.time():.0f}"
        # host root is read-only, /root is a guest tmpfs, the run directory is the only writable share
        rc, _, err = vm.ssh.run("touch /usr/kproto-should-fail", timeout=30)
        assert rc != 0 and "Read-only" in err
        # read-only on the host too, whatever the kernel under test does: remounted writable in the guest,
        # /usr and / still refuse every write (virtiofsd runs on a read-only bind mount)
        rc, out, err = vm.ssh.run("mount -o remount,rw /usr && mount -o remount,rw / && echo remounted; "
                                  "touch /usr/kproto-should-fail; mkdir /kproto-should-fail; "
                                  "grep -c virtiofs /proc/mounts", timeout=30)
        assert "remounted" in out and err.count("Read-only") == 2, (out, err)
        assert int(out.split()[-1]) == 3, "/, /usr and the run share are virtio-fs"
        assert not Path("/usr/kproto-should-fail").exists()
        assert not (vm.guest_root / "kproto-should-fail").exists()
        rc, _, _ = vm.ssh.run(f"echo from-guest > {vmmod.SCRATCH_MNT}/hello", timeout=30)
        assert rc == 0 and (run_dir / "hello").read_text() == "from-guest\n"
        rc, out, _ = vm.ssh.run("grep ' /root ' /proc/mounts", timeout=30)
        assert out.split()[2] == "tmpfs"
        # no network at all: no sockets of any family in the kernel, no interface; the only way in is the
        # control socket, a unix socket inside the 0700 run directory
        rc, out, _ = vm.ssh.run("ls /sys/class/net /proc/net 2>&1; python3 -c 'import socket\n"
                                "try: socket.socketpair()\nexcept OSError as e: print(e.errno)'", timeout=30)
        assert rc == 0 and out.count("No such file") == 2 and out.split()[-1] == "38", out    # ENOSYS
        assert vm.control_sock.parent == run_dir and vm.control_sock.is_socket()
        assert not any("-netdev" in a or "virtio-net" in a for a in vm.command())
        # sysrq through the monitor's PS/2 keyboard alone (no SSH), as a hung guest gets it
        offset = len(vm.console_text())
        vm.sysrq("w")
        deadline = time.monotonic() + 20
        while "Show Blocked State" not in vm.console_since(offset) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "sysrq: Show Blocked State" in vm.console_since(offset), vm.console_tail()
        pid = vm.proc.pid
    assert vm.proc.poll() is not None, "QEMU must be reaped when the context exits"
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "Linux version" in vm.console_text()
    keys = run_dir / "ssh"
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    assert oct((keys / "client_ed25519").stat().st_mode & 0o777) == "0o600"


def test_guest_cannot_read_a_planted_host_secret(baseline_kernel, run_dir):
    """The kernel under test and every guest program see the curated root and /usr, not the host's /:
    secrets planted in /root, /etc, /home and /var/tmp, the host's /etc/shadow and ssh host keys stay out."""
    import secrets
    token = f"kproto-planted-{secrets.token_hex(8)}"
    planted = [Path("/root") / f".{token}", Path("/etc") / token, Path("/home") / token / "token",
               Path("/var/tmp") / token]
    try:
        for p in planted:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(token + "\n")
        with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="secret") as vm:
            vm.wait_ready(120)
            for p in planted:
                rc, out, _ = vm.ssh.run(f"cat {p}", timeout=30)
                assert rc != 0 and token not in out, f"the guest read {p}"
            rc, out, _ = vm.ssh.run("ls -A / /etc /root /home; cat /etc/passwd", timeout=30)
            assert rc == 0 and token not in out
            assert "shadow" not in out.split() and "ssh" not in out.split()
            assert sorted(out.split("\n\n")[0].split("\n")[1:]) == \
                ["bin", "dev", "etc", "home", "init", "kproto", "lib", "lib64", "mnt", "proc", "root", "run", "sbin", "sys",
                 "tmp", "usr", "var"]
            # what the guest does need still works: the host's programs through /usr, names, the loader
            rc, out, _ = vm.ssh.run("python3 -c 'import pwd; print(pwd.getpwuid(0).pw_name)' && awk 'BEGIN{print 6*7}'",
                                    timeout=60)
            assert rc == 0 and out.split() == ["root", "42"]
    finally:
        for p in planted:
            p.unlink(missing_ok=True)
        (Path("/home") / token).rmdir() if (Path("/home") / token).is_dir() else None


def test_a_failing_boot_plan_step_is_named_on_the_console_and_the_boot_goes_on(baseline_kernel, run_dir, monkeypatch):
    render = vmmod.templates.render

    def with_bad_steps(name, **kw):
        text = render(name, **kw)
        if name == "boot.plan.j2":   # before the ready marker: one mount that fails, one unknown step
            text = text.replace("\nready ", "\nmount none /mnt/x nosuchfs -\nfrobnicate now\nready ")
        return text

    monkeypatch.setattr(vmmod.templates, "render", with_bad_steps)
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="plan") as vm:
        vm.wait_ready(120)
        assert vm.ssh.run("true", timeout=30)[0] == 0
        console = vm.console_text()
    lines = (run_dir / "boot.plan").read_text().splitlines()
    bad_mount = lines.index("mount none /mnt/x nosuchfs -") + 1
    assert f"kproto-init: boot.plan line {bad_mount} (mount): No such device" in console
    assert f"kproto-init: boot.plan line {bad_mount + 1} (frobnicate): unknown step" in console
    assert "kproto-init: 2 step(s) of /mnt/kproto/boot.plan failed" in console


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
    from rig.machine import ssh as sshmod
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="pin") as vm:
        vm.wait_ready(120)
        other = run_dir / "other"
        sshmod.make_keys(other)
        sshmod.write_known_hosts(other)                   # pins a key the guest does not have
        vm.ssh.close()                                    # one connection at a time on the control port
        bad = sshmod.GuestSSH(control_sock=vm.control_sock, key=run_dir / "ssh" / "client_ed25519",
                              known_hosts=other / "known_hosts")
        with pytest.raises(sshmod.SSHError, match="kproto-guest"):
            bad.connect(timeout=10)
        bad.close()
        # the guest's relay starts a fresh server for the next connection
        vm.ssh.connect(timeout=10)
        assert vm.ssh.run("echo again", timeout=30) == (0, "again\n", "")


def test_openssh_reaches_the_guest_through_the_control_socket(baseline_kernel, run_dir):
    """`kproto shell`'s way in: OpenSSH's ssh with `python -m rig.machine.control` as the ProxyCommand, the
    same pinned host key; paramiko connects again afterwards."""
    import shutil
    import subprocess
    from rig.machine import ssh as sshmod
    if shutil.which("ssh") is None:
        pytest.skip("no OpenSSH client")
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="openssh") as vm:
        vm.wait_ready(120)
        vm.ssh.close()
        argv = sshmod.openssh_command(vm.control_sock, run_dir / "ssh" / "client_ed25519", vm.known_hosts)
        p = subprocess.run([*argv, "uname -r; echo $((6*7))"], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        assert p.stdout.split() == [baseline_kernel.version, "42"]
        assert vm.ssh.run("echo paramiko", timeout=30) == (0, "paramiko\n", "")


def test_ssh_connection_dropping_mid_command_returns_instead_of_hanging(baseline_kernel, run_dir):
    import threading
    import time
    from rig.machine import ssh as sshmod
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="drop") as vm:
        vm.wait_ready(120)
        outcome = {}

        def long_command():
            t0 = time.monotonic()
            try:
                outcome["rc"] = vm.ssh.run("sleep 60; echo finished", timeout=120)[0]
            except sshmod.SSHError as e:
                outcome["error"] = str(e)
            outcome["took"] = time.monotonic() - t0

        th = threading.Thread(target=long_command)
        th.start()
        time.sleep(2)
        try:                                       # a second channel of the same connection
            vm.ssh.run("pkill -9 -f 'sleep 60'; pkill -9 dropbear", timeout=10)
        except sshmod.SSHError:
            pass                                   # its own channel dies too
        th.join(timeout=60)
        assert not th.is_alive(), "a dropped SSH connection must not hang the rig"
        assert outcome["took"] < 50
        assert "error" in outcome or outcome["rc"] != 0
        # the relay told the host the server ended (the end frame); the next command reconnects to a new server
        assert vm.ssh.run("echo back", timeout=30) == (0, "back\n", "")


def test_two_vms_at_once_get_distinct_control_sockets_and_both_work(baseline_kernel, tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=a_dir, name="a") as a, \
         vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=b_dir, name="b") as b:
        assert a.control_sock != b.control_sock
        a.wait_ready(180)
        b.wait_ready(180)
        assert a.ssh.run(f"echo a > {vmmod.SCRATCH_MNT}/who", timeout=30)[0] == 0
        assert b.ssh.run(f"echo b > {vmmod.SCRATCH_MNT}/who", timeout=30)[0] == 0
    assert (a_dir / "who").read_text() == "a\n" and (b_dir / "who").read_text() == "b\n"
    assert a.proc.poll() is not None and b.proc.poll() is not None


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    """/proc/PID/cmdline, or "" when the process has exited meanwhile (kproto's short-lived children,
    e.g. git, come and go between the listing and the read)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_sigterm_while_the_guest_runs_reaps_qemu_and_cleans_up(baseline_kernel):
    import signal
    import subprocess
    import sys
    import time
    from rig.core.paths import cache_dir
    runs = cache_dir() / "runs"
    repo = Path(__file__).resolve().parents[2]
    partial = Path(f"/tmp/kproto-sigterm-{os.getpid()}.json")
    partial.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "rig.cli.main", "test", "patches/ovl-copyup.patch", "-k",
                             "rfc_read", "--rerun-baseline", "--no-checks", "--json", str(partial)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    qemu: set[int] = set()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not qemu and proc.poll() is None:
        qemu = {p for p in _children(proc.pid) if "qemu-system" in _cmdline(p)}
        time.sleep(0.2)
    assert qemu, "kproto test never started a VM"
    import re
    cmdline = Path(f"/proc/{next(iter(qemu))}/cmdline").read_bytes().decode(errors="replace")
    our_run_dir = Path(re.search(r"path=([^,\x00]+)/console-", cmdline).group(1))
    assert our_run_dir.is_dir()
    time.sleep(3)                                   # mid-boot
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "interrupted" in err
    import json
    rep = json.loads(partial.read_text())            # partial results kept
    partial.unlink()
    assert rep["verdict"] == "error" and "interrupted during the baseline" in rep["reasons"][0]
    time.sleep(1)
    for p in qemu:
        assert not Path(f"/proc/{p}").exists(), f"QEMU {p} survived SIGTERM of kproto"
    assert not our_run_dir.exists(), "the run directory must be removed"
    assert tree.default_source().is_at_base()
    with open("/proc/mounts") as fh:
        assert not [l for l in fh if str(runs) in l.split()[1]], "reference FUSE mounts must be unmounted"


def test_the_guest_ssh_server_is_dropbear_and_its_absence_names_the_package(monkeypatch):
    from rig.machine import qemu as vmmod
    from rig.core.errors import MissingTool
    monkeypatch.setattr(vmmod, "DROPBEAR", "/nonexistent/dropbear")
    with pytest.raises(MissingTool, match=r"/nonexistent/dropbear is missing.*apt-get install dropbear-bin"):
        vmmod.check_ssh_server()
    monkeypatch.setattr(vmmod, "DROPBEAR", "/bin/true")
    vmmod.check_ssh_server()


def test_the_run_share_runs_programs_side_by_side_and_sees_new_host_files_at_once(baseline_kernel, run_dir):
    """The run share is cached in the guest (rig/machine/virtiofs.py): the guest test programs, run 4 at a
    time from it, never die of a signal (with cache=none 31 of 180 did, with cache=auto 7 of 180); a file
    the host creates after the guest looked for it is seen at once, and what the guest writes reaches the
    host at once."""
    import shutil
    from rig.guest import programs
    bins = programs.build()
    (run_dir / "bins").mkdir()
    for b in sorted(bins.iterdir()):
        shutil.copy2(b, run_dir / "bins" / b.name)
    with vmmod.VM(bzimage=baseline_kernel.bzimage, run_dir=run_dir, name="share") as vm:
        vm.wait_ready(120)
        m = vmmod.SCRATCH_MNT
        script = (f"n=0; for r in 1 2 3; do for b in {m}/bins/*; do "
                  "( timeout 20 $b >/dev/null 2>&1; rc=$?; [ $rc -ge 124 ] && echo \"rc $rc $b\" ) & "
                  "n=$((n+1)); [ $((n % 4)) = 0 ] && wait; done; done; wait; echo ran $n")
        rc, out, _ = vm.ssh.run(script, timeout=300)
        runs = 3 * len(list(bins.iterdir()))
        assert rc == 0 and out.splitlines() == [f"ran {runs}"], out      # each program exits 2 (usage)
        assert vm.ssh.run(f"cat {m}/later 2>/dev/null || echo missing", timeout=30)[1] == "missing\n"
        (run_dir / "later").write_text("from the host\n")
        assert vm.ssh.run(f"cat {m}/later", timeout=30)[1] == "from the host\n"
        vm.ssh.run(f"echo from the guest > {m}/written", timeout=30)
        assert (run_dir / "written").read_text() == "from the guest\n"
