"""rig/machine/control.py: the control channel's framing (HELLO/ACK/BYE), against a fake relay on a unix
socket. The real relay (rig/machine/init/init.c) is exercised by every VM test."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rig.machine import control
from rig.machine.control import ACK, BYE, HELLO, ControlError, ControlStream

REPO = Path(__file__).resolve().parents[2]


def _drain(stream: ControlStream) -> bytes:
    out = b""
    while chunk := stream.recv(7):                 # small reads, as paramiko's packetizer does
        out += chunk
    return out


@pytest.mark.parametrize("split", range(0, len(BYE) + 3))
def test_bye_is_end_of_file_wherever_the_reads_split_it(split):
    a, b = socket.socketpair()
    payload = b"SSH-2.0-dropbear\r\n" + bytes(range(256)) + BYE[:-1]      # a near-BYE is data
    wire = payload + BYE + b"anything after BYE is not read"
    cut = len(payload) + split - 2
    b.sendall(wire[:cut])
    b.sendall(wire[cut:])
    b.close()
    stream = ControlStream(a)
    assert _drain(stream) == payload
    assert stream.ended and stream.recv(10) == b""
    a.close()


def test_a_tail_that_only_looks_like_the_start_of_bye_is_returned_at_end_of_file():
    a, b = socket.socketpair()
    b.sendall(b"data" + BYE[:5])
    b.close()
    assert _drain(ControlStream(a)) == b"data" + BYE[:5]
    a.close()


class FakeRelay:
    """A unix socket server that answers one connection like the guest's relay: waits for HELLO, then
    sends STALE + ACK + REPLY, echoes what it receives, and sends BYE when told to end."""

    def __init__(self, path: Path, stale: bytes = b"old session's tail", reply: bytes = b"SSH-2.0-fake\r\n",
                 ack: bool = True) -> None:
        self.path, self.stale, self.reply, self.ack = path, stale, reply, ack
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.got = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        with conn:
            while HELLO not in self.got:
                data = conn.recv(4096)
                if not data:
                    return
                self.got += data
            if not self.ack:
                conn.recv(4096)                      # says nothing until the client gives up
                return
            conn.sendall(self.stale + ACK + self.reply)
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                self.got += data
                conn.sendall(data.split(b"end\n")[0])
                if b"end\n" in data:
                    conn.sendall(BYE)
                    break

    def close(self) -> None:
        self.srv.close()
        self.thread.join(timeout=5)


def test_connect_says_hello_drops_what_came_before_ack_and_reads_to_bye(tmp_path):
    relay = FakeRelay(tmp_path / "ssh.sock")
    stream = control.connect(tmp_path / "ssh.sock", timeout=5)
    assert stream.recv(100) == b"SSH-2.0-fake\r\n"          # not the stale tail
    stream.sendall(b"ping\n")
    assert stream.recv(100) == b"ping\n"
    stream.sendall(b"end\n")
    assert stream.recv(100) == b"" and stream.ended
    stream.close()
    relay.close()
    assert relay.got.startswith(HELLO)


def test_connect_errors_name_the_socket(tmp_path):
    with pytest.raises(ControlError, match=r"cannot connect to the control socket .*nothing\.sock"):
        control.connect(tmp_path / "nothing.sock", timeout=1)
    relay = FakeRelay(tmp_path / "mute.sock", ack=False)
    with pytest.raises(ControlError, match=r"relay did not answer on .*mute\.sock within 1 s"):
        control.connect(tmp_path / "mute.sock", timeout=1)
    relay.close()


def test_the_proxy_command_passes_both_ways_and_exits_at_bye(tmp_path):
    relay = FakeRelay(tmp_path / "ssh.sock")
    p = subprocess.Popen([sys.executable, "-P", "-m", "rig.machine.control", str(tmp_path / "ssh.sock")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    watchdog = threading.Timer(30, p.kill)                 # a hang fails the test instead of the suite
    watchdog.start()
    assert p.stdout.readline() == b"SSH-2.0-fake\r\n"
    p.stdin.write(b"ping\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"ping\n"
    p.stdin.write(b"end\n")                            # the fake relay's server exits: BYE
    p.stdin.flush()
    assert p.wait(timeout=30) == 0, p.stderr.read()
    assert p.stdout.read() == b""
    watchdog.cancel()
    relay.close()
    p = subprocess.run([sys.executable, "-P", "-m", "rig.machine.control", str(tmp_path / "gone.sock")],
                       capture_output=True, timeout=30, cwd=REPO)
    assert p.returncode == 1 and p.stderr.decode().startswith("kproto: cannot connect to the control socket")
