"""rig/machine/virtiofs.py on the host: the read-only wrapper, the daemons' lifecycle, bad input. A guest
reading and writing through these shares is in test_qemu.py (every VM test boots on them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rig.core.errors import BootError, MissingTool
from rig.machine import virtiofs


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_a_read_only_share_cannot_be_written_from_inside_and_the_host_is_untouched(tmp_path):
    """The wrapper execs its command in a private mount namespace where the source is read-only: a
    command (here a shell standing in for virtiofsd) cannot create, change or remove anything there,
    while the same directory stays writable for the host, and the host's mount table does not change."""
    src = tmp_path / "tree"
    src.mkdir()
    (src / "file").write_text("host\n")
    before = _mounts()
    share = virtiofs.Share("t", "t", src, readonly=True, cache="always")
    cmd = virtiofs.argv(share, 3)
    wrapper = cmd[:cmd.index(virtiofs.VIRTIOFSD)]
    script = f"cat {src}/file; echo x > {src}/file; touch {src}/new; rm -f {src}/file; grep ' {src} ' /proc/self/mountinfo"
    p = subprocess.run([*wrapper, "/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert p.stdout.splitlines()[0] == "host"
    assert p.stderr.count("Read-only file system") == 3, p.stderr
    assert " ro," in p.stdout or " ro " in p.stdout, p.stdout
    assert (src / "file").read_text() == "host\n" and not (src / "new").exists()
    assert _mounts() == before, "the bind mount must stay in the wrapper's namespace"
    (src / "new").write_text("the host still writes here\n")


def test_a_writable_share_runs_virtiofsd_directly(tmp_path):
    share = virtiofs.Share("scratch", "kproto", tmp_path, readonly=False, cache="none")
    cmd = virtiofs.argv(share, 7)
    assert cmd[0] == virtiofs.VIRTIOFSD and "--fd=7" in cmd and f"source={tmp_path}" in cmd
    assert "cache=none" in cmd


def test_a_daemon_listens_on_its_socket_and_stop_reaps_it_and_removes_the_socket(tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    sock, log = tmp_path / "fs.sock", tmp_path / "fs.log"
    sock.write_text("a stale file where the socket goes")
    d = virtiofs.start(virtiofs.Share("t", "t", src, readonly=True, cache="always"), sock, log)
    try:
        assert sock.is_socket()
        assert d.proc.poll() is None, log.read_text()
        pid = d.proc.pid
    finally:
        d.stop()
    assert d.proc.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
    assert not sock.exists()
    d.stop()                                   # idempotent


def test_a_missing_virtiofsd_or_source_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    share = virtiofs.Share("t", "t", tmp_path / "nope", readonly=True, cache="always")
    with pytest.raises(BootError, match=r"virtio-fs share t: .*/nope is not a directory"):
        virtiofs.start(share, tmp_path / "s.sock", tmp_path / "log")
    assert not (tmp_path / "s.sock").exists()
    monkeypatch.setattr(virtiofs, "VIRTIOFSD", "/nonexistent/virtiofsd")
    with pytest.raises(MissingTool, match=r"/nonexistent/virtiofsd is missing.*apt-get install qemu-system-common"):
        virtiofs.start(share, tmp_path / "s.sock", tmp_path / "log")


def test_dropbear_serves_a_connection_on_a_raw_pty_with_the_socket_shim(tmp_path):
    """What the guest's relay does, on the host: dropbear in inetd mode on a raw pseudo-terminal answers
    SSH with the socket shim preloaded, and exits without it (it asks the terminal for a peer address)."""
    import pty
    import select
    import socket
    import tty

    import paramiko

    from rig.machine import guestroot
    from rig.machine import ssh as sshmod

    if not Path("/usr/sbin/dropbear").exists():
        pytest.skip("dropbear-bin is not installed")
    shim = guestroot._sockshim(tmp_path / "cache")
    keys = tmp_path / "ssh"
    sshmod.make_keys(keys)
    hostkey = sshmod.dropbear_host_key(keys)

    def serve(preload: str) -> tuple[subprocess.Popen, int]:
        master, peer = pty.openpty()
        tty.setraw(peer)
        # root's authorized_keys on a private tmpfs over /root: the host's /root is left alone
        script = (f"mount -t tmpfs -o mode=700 none /root && mkdir -m 700 /root/.ssh && "
                  f"cp {keys}/authorized_keys /root/.ssh/ && exec env {preload} /usr/sbin/dropbear -i -r {hostkey} "
                  f"-s -g -j -k")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        p = subprocess.Popen(["unshare", "-m", "/bin/sh", "-c", script], stdin=peer, stdout=peer,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        os.close(peer)
        return p, master

    class PtySock:
        _closed = False
        timeout: float | None = None

        def __init__(self, fd: int) -> None:
            self.fd = fd

        def send(self, data: bytes) -> int:
            return os.write(self.fd, data)

        def recv(self, n: int) -> bytes:
            if not select.select([self.fd], [], [], self.timeout)[0]:
                raise socket.timeout()
            try:
                return os.read(self.fd, n)
            except OSError:
                return b""                     # EIO: the server closed its end

        def settimeout(self, t: float | None) -> None:
            self.timeout = t

        def close(self) -> None:
            pass

    p, master = serve(f"LD_PRELOAD={shim}")
    try:
        t = paramiko.Transport(PtySock(master))        # type: ignore[arg-type]
        t.start_client(timeout=20)
        assert t.get_remote_server_key().get_base64() == (keys / "host_ed25519.pub").read_text().split()[1]
        t.auth_publickey("root", paramiko.Ed25519Key.from_private_key_file(str(keys / "client_ed25519")))
        ch = t.open_session()
        ch.exec_command("echo $LD_PRELOAD; printf x; head -c 200000 /dev/zero | wc -c")
        out = b""
        while chunk := ch.recv(65536):
            out += chunk
        assert ch.recv_exit_status() == 0
        assert out.decode().split("\n") == ["", "x200000", ""], "the shim must not reach the commands"
        t.close()
    finally:
        p.kill()
        p.wait(10)
        os.close(master)
    p, master = serve("")
    try:
        assert p.wait(20) != 0, "without the shim dropbear must refuse the terminal"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        os.close(master)


def test_a_vm_exports_its_curated_root_and_usr_read_only_and_only_its_run_dir_writable(tmp_path):
    """The host's "/" is never exported: a guest gets the curated root and the host's /usr, read-only,
    and its own run directory, writable; all cached (cache=none/auto broke programs run from the share)."""
    from rig.machine import qemu
    vm = qemu.VM(bzimage=tmp_path / "bzImage", run_dir=tmp_path / "run", name="g")
    shares = {s.name: s for s in vm.shares()}
    assert {n: (str(s.source), s.tag, s.readonly, s.cache) for n, s in shares.items()} == {
        "root": (str(vm.guest_root), "/dev/root", True, "always"),
        "usr": ("/usr", "usr", True, "always"),
        "scratch": (str(tmp_path / "run"), "kproto", False, "always")}
    assert vm.guest_root != Path("/") and (vm.guest_root / "init").is_file()
    assert {vm.share_sock(s).parent for s in shares.values()} == {tmp_path / "run"}


def test_a_socket_path_too_long_for_a_unix_socket_names_the_fix(tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    with pytest.raises(BootError, match=r"cannot listen on .*set KPROTO_CACHE to a shorter directory"):
        virtiofs.start(virtiofs.Share("t", "t", src, readonly=True, cache="always"), deep / "fs.sock",
                       tmp_path / "log")
    # any other reason to fail is named as it is, without the path-length hint
    with pytest.raises(BootError, match=r"cannot listen on .*No such file or directory$"):
        virtiofs.start(virtiofs.Share("t", "t", src, readonly=True, cache="always"), tmp_path / "gone" / "fs.sock",
                       tmp_path / "log")
