"""rig/machine/control.py: the control channel's framing (HELLO, ACK, length-prefixed frames), against a fake relay on a unix
socket. The real relay (rig/machine/init/init.c) is exercised by every VM test."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rig.machine import control
from rig.machine.control import ACK, HELLO, ControlError, ControlStream, frame

REPO = Path(__file__).resolve().parents[2]


def _drain(stream: ControlStream) -> bytes:
    out = b""
    while chunk := stream.recv(7):                 # small reads, as paramiko's packetizer does
        out += chunk
    return out


WIRE_PARTS = [b"SSH-2.0-dropbear\r\n", bytes(range(256)), b"\x00\x00\x00"]   # the last looks like a header


@pytest.mark.parametrize("split", list(range(0, 12)) + [20, 22, 23, 24, 25, 26, 280, 283, 284, 285, 288])
def test_frames_are_taken_apart_wherever_the_reads_split_them(split):
    a, b = socket.socketpair()
    wire = b"".join(frame(p) for p in WIRE_PARTS) + frame(b"") + frame(b"after the end frame: not read")
    b.sendall(wire[:split])
    b.sendall(wire[split:])
    b.close()
    stream = ControlStream(a)
    assert _drain(stream) == b"".join(WIRE_PARTS)
    assert stream.ended and stream.recv(10) == b""
    a.close()


@pytest.mark.parametrize("tail", [b"\x00", b"\x00\x00\x00", b"kproto-ssh", ACK[:5], HELLO[:-1]])
def test_a_frame_is_returned_as_soon_as_it_is_read_whatever_it_ends_with(tail):
    # An end *word* made the host hold back any tail that could be its start, until more data came:
    # an SSH packet ending so stalled the channel (about 1 in 200 round trips). A frame never waits.
    a, b = socket.socketpair()
    b.sendall(frame(b"packet" + tail))              # the writer stays open and sends nothing more
    stream = ControlStream(a)
    a.settimeout(2)
    got = b""
    while len(got) < len(b"packet" + tail):
        got += stream.recv(7)                       # socket.timeout here is the stall
    assert got == b"packet" + tail and not stream.ended
    b.close()
    a.close()


def test_a_socket_closed_mid_frame_is_end_of_file_after_the_bytes_that_came():
    a, b = socket.socketpair()
    b.sendall(frame(b"0123456789")[:-4] + b"")      # 6 of 10 bytes, then QEMU went away
    b.close()
    stream = ControlStream(a)
    assert _drain(stream) == b"012345" and stream.ended
    a.close()


class FakeRelay:
    """A unix socket server that answers one connection like the guest's relay: waits for HELLO, then
    sends STALE + ACK + REPLY (framed), echoes what it receives in frames, and sends the end frame when told
    to end."""

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
            conn.sendall(self.stale + ACK + frame(self.reply))
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                self.got += data
                echo = data.split(b"end\n")[0]
                if echo:
                    conn.sendall(frame(echo))
                if b"end\n" in data:
                    conn.sendall(frame(b""))
                    break

    def close(self) -> None:
        self.srv.close()
        self.thread.join(timeout=5)


def test_connect_says_hello_drops_what_came_before_ack_and_reads_to_the_end_frame(tmp_path):
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


def test_the_proxy_command_passes_both_ways_and_exits_at_the_end_frame(tmp_path):
    relay = FakeRelay(tmp_path / "ssh.sock")
    p = subprocess.Popen([sys.executable, "-P", "-m", "rig.machine.control", str(tmp_path / "ssh.sock")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    watchdog = threading.Timer(30, p.kill)                 # a hang fails the test instead of the suite
    watchdog.start()
    assert p.stdout.readline() == b"SSH-2.0-fake\r\n"
    p.stdin.write(b"ping\n")
    p.stdin.flush()
    assert p.stdout.readline() == b"ping\n"
    p.stdin.write(b"end\n")                            # the fake relay's server exits: the end frame
    p.stdin.flush()
    assert p.wait(timeout=30) == 0, p.stderr.read()
    assert p.stdout.read() == b""
    watchdog.cancel()
    relay.close()
    p = subprocess.run([sys.executable, "-P", "-m", "rig.machine.control", str(tmp_path / "gone.sock")],
                       capture_output=True, timeout=30, cwd=REPO)
    assert p.returncode == 1 and p.stderr.decode().startswith("kproto: cannot connect to the control socket")
