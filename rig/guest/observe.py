"""What the harness records besides the layers: the program's key=value observations and the running
kernel's health (lockdep, taint), and the kernel-log markers the host uses as barriers. STDLIB ONLY.
"""
from __future__ import annotations

import os
import re

KEY_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def parse_observations(stdout: str) -> tuple[dict[str, str], list[str]]:
    """key=value lines -> (observations, diagnostics). See guest_tests/README.md."""
    obs: dict[str, str] = {}
    diags: list[str] = []
    counts: dict[str, int] = {}
    stray = 0
    for line in stdout.split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        if line.startswith("#"):
            diags.append(line[1:].strip())
            continue
        key, sep, value = line.partition("=")
        if not sep or not KEY_RE.match(key):
            stray += 1
            obs[f"_stray.{stray}"] = line
            continue
        counts[key] = counts.get(key, 0) + 1
        obs[key] = value
    for key, n in counts.items():
        if n > 1:
            obs[f"_dup.{key}"] = str(n)
    return obs, diags


def kernel_state() -> dict:
    """The running kernel's own health, read after each test: `debug_locks` from /proc/lockdep_stats
    (0: lockdep turned itself off after a report) and the taint mask. None where the kernel has no such
    file (no lockdep, or not Linux)."""
    state: dict = {"debug_locks": None, "tainted": None}
    try:
        with open("/proc/lockdep_stats") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k.strip() == "debug_locks":
                    state["debug_locks"] = int(v.strip())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/sys/kernel/tainted") as fh:
            state["tainted"] = int(fh.read().strip())
    except (OSError, ValueError):
        pass
    return state


def kmsg(text: str) -> bool:
    """Write one line to the kernel log (/dev/kmsg): it reaches the console in order with the kernel's
    own messages, so once the host sees it, everything printed before it is on the console too."""
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, f"<5>kproto: {text}\n".encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
