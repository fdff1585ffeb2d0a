"""CLI: python -m overlay_ref {mount,umount,install-helper}.  Exit codes: 0 ok, 2 bad input,
3 failure."""

from __future__ import annotations

import argparse
import os
import sys

from .config import OverlayConfig, parse_option_string
from .errors import OverlayRefError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # bad usage is bad input: exit 2 with one line
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m overlay_ref", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mount", help="mount LOWER[:LOWER2...] UPPER WORK MOUNTPOINT")
    m.add_argument("lowers")
    m.add_argument("upper")
    m.add_argument("work")
    m.add_argument("mountpoint")
    m.add_argument("-o", dest="options", action="append", default=[])
    m.add_argument("--foreground", "-f", action="store_true")
    s = sub.add_parser("_serve")            # internal: the daemon body
    for a in ("lowers", "upper", "work", "mountpoint"):
        s.add_argument(a)
    s.add_argument("-o", dest="options", action="append", default=[])
    s.add_argument("--ready-fd", type=int)
    s.add_argument("--run-dir")             # the runtime directory spawn() chose (re-verified)
    z = sub.add_parser("_zygote")           # internal: the mount(8) helper's template process (zygote.py)
    z.add_argument("--run-dir")
    u = sub.add_parser("umount", help="umount MOUNTPOINT")
    u.add_argument("mountpoint")
    ih = sub.add_parser("install-helper",
                        help="install the mount(8) helper with this interpreter baked in")
    ih.add_argument("dest", nargs="?", default="/sbin/mount.fuse.kproto-ovl")
    args = p.parse_args(argv)

    try:
        if args.cmd in ("mount", "_serve"):
            opts: dict = {}
            for o in args.options:
                opts.update(parse_option_string(o))
            cfg = OverlayConfig.build(args.lowers, args.upper, args.work, args.mountpoint, opts)
            from . import daemon
            if args.cmd == "_serve":
                daemon.serve(cfg, ready_fd=args.ready_fd, run_dir=args.run_dir)
            elif args.foreground:
                cfg.validate()
                daemon.serve(cfg)
            else:                           # a fork of this process when the mount point is absolute
                daemon.spawn(cfg, fork=os.path.isabs(args.mountpoint))
        elif args.cmd == "_zygote":
            from . import zygote
            return zygote.serve(args.run_dir)
        elif args.cmd == "umount":
            from . import daemon
            daemon.umount(args.mountpoint)
        elif args.cmd == "install-helper":
            from .mount_helper import install
            install(args.dest)
    except OverlayRefError as e:
        print(f"overlay_ref: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 3
    except Exception as e:  # noqa: BLE001 - the CLI promises one line
        print(f"overlay_ref: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
