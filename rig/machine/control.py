"""The guest's SSH control channel: a virtio-serial port, not a network.

The guest kernel has no TCP/IP stack (rig/kernel/templates/kproto.config.j2: CONFIG_INET is off, which
keeps ~50 objects of net/ipv4 and the virtio NIC out of every build) and no network device. QEMU connects
the virtio-serial port named PORT_NAME to a unix socket in the run directory (0700), and the guest's
init relays that port to one SSH server process per host connection (the `relay` step of
rig/machine/init/init.c, where the framing is described):

    host -> guest  HELLO   starts a connection: the guest kills any older server and starts a new one
    guest -> host  ACK     what came before it belonged to an older connection and is dropped here
    guest -> host  frames  after ACK: a 4-byte big-endian length, then that many bytes of the server's
                           output; a frame of length 0 says the server exited, and ControlStream.recv()
                           returns b"" from there, as a closed TCP connection would

The server's output is framed rather than ended by a marker word: a host that scanned for an end word
would have to hold back any tail that might be its start, and an SSH packet ending in such bytes
(about 1 in 200 round trips) then waited for the next data that never came while the guest waited for
the host's next request (bench/bench_ssh_roundtrip.py counted 9-14 such 15 s stalls in 3,000 round
trips). A frame's bytes are handed on as they arrive; only its 4-byte header is ever waited for, and
the relay writes header and bytes in one piece.

connect() does the HELLO/ACK exchange and returns a ControlStream, the socket paramiko's Transport talks
through; `python -m rig.machine.control SOCKET` is the same for OpenSSH's ssh (ProxyCommand), used by
`kproto shell`.
"""
from __future__ import annotations

import os
import select
import socket
import sys
import time
from pathlib import Path

from rig.core.errors import GuestError

PORT_NAME = "kproto.ssh"
#: the framing words (ASCII, no blanks: they are boot-plan words); the random parts make them unlikely
#: in the plaintext SSH banner and key exchange, and SSH ciphertext carries everything after that
HELLO = b"kproto-ssh-hello-5f0c9a2e71d84b36"
ACK = b"kproto-ssh-ack-c41e07b9a3d2f568"
#: a guest -> host frame's header: the length of the bytes that follow (0: the server exited)
FRAME_HEADER = 4
#: the name paramiko and ssh look up in known_hosts: there is no address to pin a key to
HOST_ALIAS = "kproto-guest"


class ControlError(GuestError):
    """The control socket did not answer (no QEMU listening, or no relay in the guest yet)."""


def frame(data: bytes) -> bytes:
    """DATA as the relay frames it towards the host (b"" gives the end frame); for tests and fakes."""
    return len(data).to_bytes(FRAME_HEADER, "big") + data


class ControlStream:
    """A connected control socket with the relay's frames taken apart and its end frame turned into
    end-of-file: the socket-like object paramiko's Transport reads and writes (recv, send, sendall,
    settimeout, close)."""

    def __init__(self, sock: socket.socket, first: bytes = b"") -> None:
        self._sock = sock
        self._pending = b""        # bytes recv() may return
        self._header = b""         # the part of a frame header read so far
        self._left = 0             # bytes of the current frame not read yet
        self._ended = False
        self._take(first)

    def _take(self, data: bytes) -> None:
        while data and not self._ended:
            if self._left:
                part, data = data[:self._left], data[self._left:]
                self._pending += part
                self._left -= len(part)
                continue
            need = FRAME_HEADER - len(self._header)
            self._header += data[:need]
            data = data[need:]
            if len(self._header) == FRAME_HEADER:
                self._left = int.from_bytes(self._header, "big")
                self._header = b""
                self._ended = self._left == 0      # the end frame: whatever follows is not read

    def recv(self, n: int) -> bytes:
        while not self._pending and not self._ended:
            data = self._sock.recv(65536)          # socket.timeout passes through, nothing consumed
            if not data:
                self._ended = True                 # the socket closed (QEMU exited) mid-frame or not
                break
            self._take(data)
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    def drain(self) -> bytes:
        """What recv() would return now without reading the socket."""
        out, self._pending = self._pending, b""
        return out

    @property
    def ended(self) -> bool:
        """The relay said the server exited (or the socket closed), and everything before was read."""
        return self._ended and not self._pending

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def fileno(self) -> int:
        return self._sock.fileno()

    def getpeername(self) -> tuple[str, int]:
        return (HOST_ALIAS, 22)

    def close(self) -> None:
        self._sock.close()

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    _closed = closed        # paramiko's Transport.close() asks a socket's _closed, as its own ProxyCommand answers


def connect(path: Path, timeout: float) -> ControlStream:
    """Connect to the guest's control socket PATH and start a new SSH server there; ControlError when
    nothing answers within TIMEOUT seconds."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(HELLO)
        seen = b""
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise ControlError(f"control socket {path} closed before the guest answered")
            seen += data
            i = seen.find(ACK)
            if i >= 0:
                return ControlStream(sock, seen[i + len(ACK):])
            seen = seen[-(len(ACK) - 1):]          # an older connection's tail: dropped
    except socket.timeout:
        sock.close()
        raise ControlError(f"the guest's relay did not answer on {path} within {timeout:.0f} s")
    except ControlError:
        sock.close()
        raise
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot connect to the control socket {path}: {e.strerror or e}")


def proxy(path: Path, timeout: float = 10.0) -> int:
    """stdin -> the guest's SSH server -> stdout until either side ends (OpenSSH's ProxyCommand)."""
    try:
        stream = connect(path, timeout)
    except ControlError as e:
        print(f"kproto: {e}", file=sys.stderr)
        return 1
    stream.settimeout(None)
    inp, out = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    try:
        data = stream.drain()                      # what came with the ACK (the server's banner)
        while data:
            data = data[os.write(out, data):]
        while True:
            ready, _, _ = select.select([inp, stream.fileno()], [], [])
            if inp in ready:
                data = os.read(inp, 65536)
                if not data:
                    break
                stream.sendall(data)
            if stream.fileno() in ready:
                data = stream.recv(65536)
                if not data:
                    break
                data += stream.drain()
                while data:
                    data = data[os.write(out, data):]
    finally:
        stream.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rig.machine.control CONTROL_SOCKET")
    sys.exit(proxy(Path(sys.argv[1])))
