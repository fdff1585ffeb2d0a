"""A guest's filesystems from the host: one virtiofsd per share, started before QEMU and reaped with it.

The guest kernel has no networking (no CONFIG_NET, so no 9p): its root, the host's /usr and the run's
writable share are virtio-fs (FUSE over a vhost-user device). Each share is one virtiofsd process, the
one that ships with QEMU in Debian 12 (qemu-system-common: /usr/lib/qemu/virtiofsd). kproto binds its
listening socket in the VM's 0700 run directory and hands it over (`--fd`), so QEMU can connect as soon
as it starts, without waiting for the daemon.

That virtiofsd has no read-only mode. A read-only share is therefore started through a tiny wrapper
(_RO_EXEC, run by this Python with -I -S) that enters a private mount namespace, bind-mounts the source
on itself read-only (not recursively: mounts below it are not exported) and execs virtiofsd, which
sandboxes itself inside that namespace (pivot_root into the source). The guest cannot write the host's
/usr or the curated root whatever its kernel does; tests/machine/test_virtiofs.py checks it on the host.

Every share is cache=always, the run share too. With cache=none (direct I/O) or cache=auto (the page
cache dropped at every open) a 6.12 guest corrupted the text of programs it was running from the share
when another process opened or mapped the same file: 31 and 7 of 180 runs of the guest test programs
(4 at a time, from the run share) died of SIGSEGV/SIGILL, against 0 of 180 with cache=always
(tests/machine/test_qemu.py runs them so). What that costs: the guest keeps what it has read of a file,
and the host must not rewrite a file in place while a guest may have read it; it writes a new name
instead (rig/suite/machine.py's names files). Files the host creates are seen at once (virtiofsd answers
a missing name with an error, which the guest does not cache), and what the guest writes reaches the
host at once (no writeback cache).

A daemon ends by itself when QEMU closes its vhost-user connection; stop() also terminates it, and
the PR_SET_PDEATHSIG rig/machine/qemu.py gives it (as to QEMU) takes it down with a SIGKILLed kproto.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rig.core.errors import BootError, MissingTool

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
PACKAGE = "qemu-system-common"

# Enter a private mount namespace, make argv[1] a read-only bind mount of itself (keeping its nosuid,
# nodev, noexec, noatime flags), exec argv[2:]. Stdlib only; -I -S: nothing of the environment is read.
_RO_EXEC = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p)
def check(rc, what):
    if rc != 0:
        sys.stderr.write("kproto virtiofs: %s %s: %s\n" % (what, sys.argv[1], os.strerror(ctypes.get_errno())))
        sys.exit(1)
src = os.fsencode(sys.argv[1])
keep = os.statvfs(src).f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME)
check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS) for")
check(libc.mount(b"none", b"/", None, (1 << 14) | (1 << 18), None), "making / private for")
check(libc.mount(src, src, None, 4096, None), "bind-mounting")
check(libc.mount(b"none", src, None, 32 | 4096 | 1 | keep, None), "remounting read-only")
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class Share:
    """One export: NAME names its socket, TAG is what the guest mounts, CACHE is virtiofsd's cache mode
    ("always" for every share kproto makes: see above)."""
    name: str
    tag: str
    source: Path
    readonly: bool
    cache: str


def check_installed() -> None:
    if not os.access(VIRTIOFSD, os.X_OK):
        raise MissingTool(f"{VIRTIOFSD} is missing: the guest's filesystems need it (apt-get install {PACKAGE})")


def argv(share: Share, fd: int) -> list[str]:
    """The command that serves SHARE on the listening socket FD."""
    cmd = [VIRTIOFSD, f"--fd={fd}", "-o", f"source={share.source}", "-o", f"cache={share.cache}",
           "-o", "log_level=warn"]
    if share.readonly:
        cmd = [sys.executable, "-I", "-S", "-c", _RO_EXEC, str(share.source), *cmd]
    return cmd


@dataclass
class Daemon:
    share: Share
    sock: Path
    proc: subprocess.Popen

    def stop(self, grace: float = 2.0) -> None:
        """End the daemon (it usually has, with QEMU) and remove its socket. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.sock.unlink(missing_ok=True)


def start(share: Share, sock: Path, log: Path, preexec_fn: Callable[[], None] | None = None) -> Daemon:
    """Bind SOCK (replacing a stale one) and start virtiofsd for SHARE on it, output to LOG. PREEXEC_FN
    runs in the child before the exec (the VM passes the PR_SET_PDEATHSIG it gives QEMU)."""
    check_installed()
    if not share.source.is_dir():
        raise BootError(f"virtio-fs share {share.name}: {share.source} is not a directory")
    sock.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(str(sock))
        except OSError as e:
            hint = (" (a unix socket path has at most 107 bytes: set KPROTO_CACHE to a shorter directory)"
                    if len(os.fsencode(sock)) > 107 else "")
            raise BootError(f"virtio-fs share {share.name}: cannot listen on {sock}: {e.strerror or e}{hint}")
        listener.listen(1)
        fd = listener.fileno()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv(share, fd), pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec_fn)
    except BaseException:
        sock.unlink(missing_ok=True)
        raise
    finally:
        listener.close()
    return Daemon(share=share, sock=sock, proc=proc)


def stop_all(daemons: list[Daemon]) -> None:
    """Stop DAEMONS together (terminate each, then wait, at most ~2 s in all before killing) and empty
    the list."""
    for d in daemons:
        if d.proc.poll() is None:
            d.proc.terminate()
    deadline = time.monotonic() + 2.0
    for d in daemons:
        d.stop(grace=max(0.05, deadline - time.monotonic()))
    daemons.clear()
