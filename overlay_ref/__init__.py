"""kproto's reference overlay: a pyfuse3 overlay filesystem with ideal (POSIX) copy-up
semantics and overlayfs's on-disk format.  It imports nothing from ``rig``.

    pid = overlay_ref.mount(["/lower"], "/upper", "/work", "/mnt")
    ...
    overlay_ref.umount("/mnt")
"""

from __future__ import annotations

import os

from .config import OverlayConfig
from .errors import BadInput, OverlayRefError

__all__ = ["mount", "umount", "OverlayRefError", "BadInput", "OverlayConfig"]


def mount(lowers: list[str], upper: str, work: str, mountpoint: str,
          options: dict | None = None, foreground: bool = False) -> int:
    """Mount the reference overlay; layer order as overlayfs ``lowerdir=`` (first is top).

    Without *foreground*, returns the pid of the daemon once the mount is ready.  With it,
    serves in this process until the filesystem is unmounted and returns this process's pid.
    Raises OverlayRefError (BadInput for unusable arguments) with a one-line message."""
    from . import daemon

    cfg = OverlayConfig.build(lowers, upper, work, mountpoint, options)
    cfg.validate()
    if foreground:
        daemon.serve(cfg)
        return os.getpid()
    return daemon.spawn(cfg)


def umount(mountpoint: str) -> None:
    """Unmount a reference overlay (also when its daemon died) and wait for the daemon to exit."""
    from . import daemon

    daemon.umount(mountpoint)
