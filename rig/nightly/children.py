"""The child process each nightly stage runs in (`python -m rig.nightly.children child IN OUT`): its own
process group, SIGTERM'd by the kernel when the worker thread that started it dies (PR_SET_PDEATHSIG), so a
stage never outlives its Dask worker; and the client.run() target that stops a run's stage processes when
the driver is interrupted. See docs/cluster.md."""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable

_CHILDREN: dict[str, set[subprocess.Popen]] = {}
_CANCELLED: set[str] = set()            # runs whose stage processes this worker must not start any more
_CHILDREN_LOCK = threading.Lock()


def _child_preexec(parent: int) -> Callable[[], None]:
    def fn() -> None:
        try:
            import ctypes
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:          # the worker died between fork and prctl
            os._exit(1)
    return fn


def run_child(target: str, payload: dict, on_line: Callable[[str], None], token: str) -> dict:
    """Run TARGET ("module:function", called as fn(payload, say) -> dict) in a child process of this
    worker: its own process group, SIGTERM'd by the kernel when the worker thread that started it dies
    (a SIGKILLed worker), unwinding like Ctrl-C (VMs reaped, builds stopped, source trees restored).
    Lines it prints are progress. Returns its result dict; {"interrupted": True} if it was stopped."""
    # the job goes in on stdin and the result comes back on a pipe: no file of the stage's is left behind
    # by a worker that is SIGKILLed (it cannot clean up; the stage process unwinds and cleans its own)
    job = pickle.dumps({"target": target, "payload": payload})
    rfd, wfd = os.pipe()
    try:
        with _CHILDREN_LOCK:
            if token in _CANCELLED:
                os.close(rfd)
                return {"interrupted": True}
            proc = subprocess.Popen([sys.executable, "-m", "rig.nightly.children", "child", str(wfd)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    pass_fds=(wfd,), env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                    start_new_session=True, preexec_fn=_child_preexec(os.getpid()))
            _CHILDREN.setdefault(token, set()).add(proc)
    except BaseException:
        os.close(rfd)
        raise
    finally:
        os.close(wfd)                       # the child holds the write end; EOF when it is gone
    result: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(rfd, result), daemon=True)
    reader.start()
    tail: list[str] = []
    try:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(job)
            proc.stdin.close()
        except BrokenPipeError:             # it died before reading: its output says why
            pass
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail = (tail + [line])[-40:]
            on_line(line)
        rc = proc.wait()
    except BaseException:
        _stop(proc)
        raise
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.get(token, set()).discard(proc)
        reader.join(timeout=10)
    if result and result[0]:
        return pickle.loads(result[0])
    if rc < 0 and -rc in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        return {"interrupted": True}
    return {"error": f"stage process {target} died (exit {rc}) without a result: "
                     + (" | ".join(l for l in tail[-3:] if l.strip()) or "no output")}


def _read_all(fd: int, into: list[bytes]) -> None:
    """Read FD to its end into INTO[0], then close it."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
        into.append(b"".join(chunks))


def _stop(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGTERM the child's process group (it unwinds like Ctrl-C), SIGKILL it if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cancel_children(token: str, dask_worker=None) -> int:
    """client.run() target when the driver is interrupted: stop this run's stage processes on a worker, and
    start none for it any more."""
    with _CHILDREN_LOCK:
        _CANCELLED.add(token)
        procs = list(_CHILDREN.get(token, ()))
    threads = [threading.Thread(target=_stop, args=(p,), daemon=True) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    return len(procs)


def resolve(ref: str) -> Any:
    """The object named by "module:attr[.attr...]"."""
    import importlib
    mod, _, attr = ref.partition(":")
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _child_main(result_fd: int) -> int:
    """One stage: the job (pickled) on stdin, progress lines on stdout, the result (pickled) on
    RESULT_FD; its working directory a temporary one of its own, removed when it ends."""
    def term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    os.set_inheritable(result_fd, False)    # nothing the stage starts holds the result pipe open

    def say(msg: str) -> None:
        for line in str(msg).splitlines() or [""]:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    job = pickle.loads(sys.stdin.buffer.read())
    try:
        with tempfile.TemporaryDirectory(prefix="kproto-stage-", ignore_cleanup_errors=True) as d:
            os.chdir(d)
            try:
                result = resolve(job["target"])(job["payload"], say)
            except KeyboardInterrupt:
                result = {"interrupted": True}
            finally:
                os.chdir("/")
        with contextlib.suppress(BrokenPipeError):      # the worker is gone: nobody reads it
            with os.fdopen(result_fd, "wb") as f:
                f.write(pickle.dumps(result))
    finally:
        # nothing this stage started outlives it: whatever is left in its process group (a make, a shell
        # and its sleep) goes too; QEMU has its own session and PR_SET_PDEATHSIG (rig/machine/qemu.py)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgrp(), signal.SIGTERM)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "child" and sys.argv[2].isdigit():
        sys.exit(_child_main(int(sys.argv[2])))
    print("usage: python -m rig.nightly.children child RESULT_FD   (internal: one nightly stage; the job on stdin)",
          file=sys.stderr)
    sys.exit(2)
