"""SSH into the guest with paramiko: per-run ed25519 keys, the guest host key pinned, bounded waits."""
from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import paramiko

from rig.core.errors import GuestError, MissingTool
from rig.machine import control


# paramiko's transport thread logs every refused early connection attempt with a traceback; the
# rig retries those itself and reports what matters as SSHError.
logging.getLogger("paramiko").setLevel(logging.CRITICAL + 1)


class SSHError(GuestError):
    """Connecting or running a command over SSH failed."""


class ChannelClosed(Exception):
    """The remote command of a StreamChannel ended (or the connection dropped)."""

    def __init__(self, rc: int | None, stderr: str, dropped: bool = False) -> None:
        super().__init__(f"remote command ended (status {rc})" if not dropped else "connection dropped")
        self.rc, self.stderr, self.dropped = rc, stderr, dropped


class StreamChannel:
    """A running remote command, line by line both ways: read_line() with a timeout, send_line()."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan
        self.chan.settimeout(0.0)
        self._buf = ""
        self._err: list[str] = []

    def _pump(self) -> bool:
        got = False
        while self.chan.recv_ready():
            data = self.chan.recv(65536)
            if not data:
                break
            self._buf += data.decode(errors="replace")
            got = True
        while self.chan.recv_stderr_ready():
            data = self.chan.recv_stderr(65536)
            if not data:
                break
            self._err.append(data.decode(errors="replace"))
            got = True
        return got

    def read_line(self, timeout: float) -> str | None:
        """The next stdout line (without newline); None when none arrived within TIMEOUT; ChannelClosed
        when the command has exited and everything it printed was read, or the connection dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._pump()
            except (OSError, EOFError, socket.timeout):
                pass
            if "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                return line
            transport = self.chan.get_transport()
            if self.chan.exit_status_ready() and not self.chan.recv_ready() and not self.chan.recv_stderr_ready():
                if self._buf:
                    line, self._buf = self._buf, ""
                    return line
                raise ChannelClosed(self.chan.recv_exit_status(), "".join(self._err))
            if transport is None or not transport.is_active() or self.chan.closed:
                raise ChannelClosed(None, "".join(self._err), dropped=True)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def send_line(self, line: str) -> None:
        try:
            self.chan.sendall((line + "\n").encode())
        except (OSError, EOFError, paramiko.SSHException):
            pass    # the reader sees the closed channel

    def close(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        self.chan.close()


def make_keys(sshdir: Path) -> None:
    """Host and client ed25519 keys, 0600 inside a 0700 directory."""
    sshdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(sshdir, 0o700)
    for name in ("host_ed25519", "client_ed25519"):
        key = sshdir / name
        if key.exists():
            continue
        try:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kproto-{name}", "-f", str(key)],
                           check=True, capture_output=True)
        except FileNotFoundError:
            raise MissingTool("ssh-keygen is missing (apt-get install openssh-client)")
        os.chmod(key, 0o600)
    (sshdir / "authorized_keys").write_text((sshdir / "client_ed25519.pub").read_text())
    os.chmod(sshdir / "authorized_keys", 0o600)


def dropbear_host_key(sshdir: Path) -> Path:
    """The per-run ed25519 host key in dropbear's format (the same key: known_hosts pins it either way)."""
    out = sshdir / "host_ed25519.dropbear"
    try:
        p = subprocess.run(["dropbearconvert", "openssh", "dropbear", str(sshdir / "host_ed25519"), str(out)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        raise MissingTool("dropbearconvert is missing (apt-get install dropbear-bin)")
    if p.returncode != 0:
        raise MissingTool(f"dropbearconvert failed: {(p.stderr or p.stdout).strip()[-300:]}")
    os.chmod(out, 0o600)
    return out


def write_known_hosts(sshdir: Path, name: str = "known_hosts") -> Path:
    """SSHDIR/NAME pinning the guests' host key under control.HOST_ALIAS (one file per machine: guests that
    run side by side share the run dir)."""
    kind, blob = (sshdir / "host_ed25519.pub").read_text().split()[:2]
    path = sshdir / name
    path.write_text(f"{control.HOST_ALIAS} {kind} {blob}\n")
    return path


def openssh_command(control_sock: Path, key: Path, known_hosts: Path, user: str = "root") -> list[str]:
    """OpenSSH's ssh into the guest through its control socket (`kproto shell`): the same pinned host key and
    client key as paramiko's connection, `python -m rig.machine.control` as the ProxyCommand."""
    proxy = f"{shlex.quote(sys.executable)} -P -m rig.machine.control {shlex.quote(str(control_sock))}"
    return ["ssh", "-q", "-o", f"ProxyCommand={proxy}", "-i", str(key), "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            f"{user}@{control.HOST_ALIAS}"]


class GuestSSH:
    """A persistent paramiko connection over the guest's control socket (rig/machine/control.py; no key
    exchange per command)."""

    def __init__(self, control_sock: Path, key: Path, known_hosts: Path, user: str = "root") -> None:
        self.control_sock, self.key, self.known_hosts, self.user = control_sock, key, known_hosts, user
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 10.0) -> None:
        self.close()
        try:
            stream = control.connect(self.control_sock, timeout)
        except control.ControlError as e:
            raise SSHError(f"ssh connect failed: {e}")
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(control.HOST_ALIAS, username=self.user, key_filename=str(self.key), sock=stream,  # type: ignore[arg-type]
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           allow_agent=False, look_for_keys=False)
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            stream.close()
            raise SSHError(f"ssh connect over {self.control_sock} failed: {e or type(e).__name__}")
        transport = client.get_transport()
        assert transport is not None          # connect() succeeded
        transport.set_keepalive(5)
        self.client = client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _channel(self, command: str) -> paramiko.Channel:
        transport = self.client.get_transport() if self.client is not None else None
        if transport is None or not transport.is_active():
            self.connect()
            assert self.client is not None
            transport = self.client.get_transport()
        try:
            if transport is None:
                raise paramiko.SSHException("no transport after connect")
            chan = transport.open_session(timeout=10)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(f"ssh exec failed: {e or type(e).__name__}")
        return chan

    def open_stream(self, command: str) -> StreamChannel:
        """Start COMMAND and return its line-by-line channel (stdin open for send_line)."""
        return StreamChannel(self._channel(command))

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run COMMAND; (exit status, stdout, stderr). SSHError on timeout or a dropped connection."""
        out: list[str] = []
        err: list[str] = []
        rc = self.stream(command, out.append, timeout=timeout, idle_timeout=timeout, stderr=err.append)
        return rc, "".join(out), "".join(err)

    def stream(self, command: str, on_line: Callable[[str], None], *, timeout: float, idle_timeout: float,
               stderr: Callable[[str], None] | None = None,
               on_idle: Callable[[float], bool] | None = None) -> int:
        """Run COMMAND, calling on_line per stdout line as it arrives. Gives up (SSHError) when the whole
        command exceeds TIMEOUT, or no output arrives for IDLE_TIMEOUT s and on_idle (if given) agrees."""
        chan = self._channel(command)
        chan.settimeout(0.2)
        start = last = time.monotonic()
        buf = ""
        try:
            while True:
                got = False
                if chan.recv_ready():
                    data = chan.recv(65536).decode(errors="replace")
                    got = bool(data)
                    buf += data
                    while "\n" in buf:
                        line, buf = buf.split("\n", 1)
                        on_line(line + "\n")
                if chan.recv_stderr_ready():
                    data = chan.recv_stderr(65536).decode(errors="replace")
                    got = got or bool(data)
                    if stderr:
                        stderr(data)
                now = time.monotonic()
                if got:
                    last = now
                elif chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                else:
                    if not chan.get_transport() or not chan.get_transport().is_active():
                        raise SSHError("ssh connection to the guest dropped")
                    if now - start > timeout:
                        raise SSHError(f"command timed out after {timeout:.0f} s: {command[:80]}")
                    if now - last > idle_timeout and (on_idle is None or on_idle(now - last)):
                        raise SSHError(f"no output for {idle_timeout:.0f} s: {command[:80]}")
                    time.sleep(0.02)
            if buf:
                on_line(buf)
            return chan.recv_exit_status()
        except socket.timeout:
            raise SSHError("ssh channel timed out")
        finally:
            chan.close()
