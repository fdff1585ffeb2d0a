"""mount(8) helper: ``mount -t fuse.kproto-ovl kproto-ovl MNT -o lowerdir=..,upperdir=..,workdir=..``.

mount(8) runs ``/sbin/mount.fuse.kproto-ovl SOURCE MOUNTPOINT [-n] [-s] [-f] [-v] -o OPTIONS``.
The shell script ``overlay_ref/mount.fuse.kproto-ovl`` finds a Python that can import
overlay_ref and runs this module with the same arguments.  It daemonises once the mount is
ready (``allow_other`` is on by default for root)."""

from __future__ import annotations

import os
import shlex
import sys

from .config import OverlayConfig, parse_option_string
from .errors import BadInput, OverlayRefError

HELPER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mount.fuse.kproto-ovl")


def parse_args(argv: list[str]) -> tuple[str, str, dict, bool]:
    pos: list[str] = []
    opts: dict = {}
    foreground = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-o":
            if i + 1 >= len(argv):
                raise BadInput("-o needs an argument")
            opts.update(parse_option_string(argv[i + 1]))
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            opts.update(parse_option_string(a[2:]))
        elif a in ("-f", "--foreground"):
            foreground = True
        elif a in ("-n", "-s", "-v", "-i", "-r", "-w"):
            if a == "-r":
                opts["ro"] = True
        elif a.startswith("-"):
            raise BadInput(f"unknown argument {a}")
        else:
            pos.append(a)
        i += 1
    if len(pos) != 2:
        raise BadInput("usage: mount.fuse.kproto-ovl SOURCE MOUNTPOINT -o lowerdir=L[:L2],"
                       "upperdir=U,workdir=W[,redirect_dir,userxattr,...]")
    return pos[0], pos[1], opts, foreground


def config_from_argv(argv: list[str]) -> tuple[OverlayConfig, bool]:
    """mount(8)'s arguments as a validated configuration (relative paths are the current
    directory's), and whether -f (foreground) was given.  Raises BadInput."""
    _source, mnt, opts, foreground = parse_args(argv)
    try:
        lower = opts.pop("lowerdir")
        upper = opts.pop("upperdir")
        work = opts.pop("workdir")
    except KeyError as e:
        raise BadInput(f"missing option {e.args[0]}=") from None
    cfg = OverlayConfig.build(str(lower), str(upper), str(work), mnt, opts)
    cfg.validate()
    return cfg, foreground


def exit_code(e: OverlayRefError) -> int:
    """mount(8)'s convention: 1 = bad usage, 32 = mount failure."""
    return 1 if e.exit_code == 2 else 32


def main(argv: list[str] | None = None) -> int:
    from . import zygote
    argv = sys.argv[1:] if argv is None else argv
    try:
        _source, mnt, _opts, foreground = parse_args(argv)
        # a template process (zygote.py) already running forks the daemon: no interpreter start, no
        # imports; None when none answered (none running, stale, or turned off)
        if not foreground and os.path.isabs(mnt):
            answered = zygote.mount(argv)
            if answered is not None:
                return answered
        cfg, foreground = config_from_argv(argv)
        from . import daemon
        if foreground:
            daemon.serve(cfg)
        else:
            # the daemon is a fork of this process (one interpreter start per mount, not two); umount
            # knows it by the mount point on its command line, so that must be absolute (mount(8)
            # passes it so)
            daemon.spawn(cfg, fork=os.path.isabs(mnt))
            if os.path.isabs(mnt):
                zygote.start()              # for the next mount (none when turned off or running)
    except OverlayRefError as e:
        print(f"mount.fuse.kproto-ovl: {e}", file=sys.stderr)
        return exit_code(e)
    return 0


MAX_BAKED = 8


def baked_pythons(text: str) -> list[str]:
    """The interpreters an installed helper names, newest first (also the single BAKED_PYTHON= of
    helpers installed before the list)."""
    for line in text.splitlines():
        for key in ("BAKED_PYTHONS=", "BAKED_PYTHON="):
            if line.startswith(key):
                words = shlex.split(line[len(key):]) or [""]
                return [p for p in words[0].split(":") if p]
    return []


def render_helper(python: str, previous: list[str] | None = None) -> str:
    """The helper script naming ``python`` first, then those of PREVIOUS that still exist (other
    checkouts that installed it), at most MAX_BAKED."""
    with open(HELPER_SCRIPT) as f:
        text = f.read()
    pys = [python] + [p for p in (previous or []) if p != python and os.access(p, os.X_OK)]
    if any(":" in p for p in pys):
        raise OverlayRefError(f"cannot name {python!r} in the helper: a ':' in the path")
    return text.replace('BAKED_PYTHONS=""', f"BAKED_PYTHONS={shlex.quote(':'.join(pys[:MAX_BAKED]))}", 1)


def install(dest: str, python: str | None = None) -> None:
    """Write the helper to ``dest`` (mode 755) naming this interpreter first and keeping the ones the
    helper already there names, when they still exist."""
    try:
        with open(dest) as f:
            previous = baked_pythons(f.read())
    except OSError:
        previous = []
    text = render_helper(python or sys.executable, previous)
    tmp = dest + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except OSError as e:
        raise OverlayRefError(f"cannot install {dest}: {e.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
