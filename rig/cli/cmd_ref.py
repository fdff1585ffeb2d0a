"""`kproto ref mount|umount`: the reference overlay (overlay_ref) from the kproto CLI."""
from __future__ import annotations

import click

from rig.core.errors import BadInput, InfraError


@click.group("ref")
def ref() -> None:
    """Mount and unmount the reference overlay (pyfuse3, ideal copy-up semantics)."""


@ref.command("mount")
@click.argument("lowers", metavar="LOWER[:LOWER2...]")
@click.argument("upper")
@click.argument("work")
@click.argument("mountpoint")
@click.option("-o", "options", default="", help="comma-separated options: redirect_dir, userxattr, ...")
@click.option("--foreground", is_flag=True, help="stay in the foreground (Ctrl-C unmounts)")
def mount_cmd(lowers: str, upper: str, work: str, mountpoint: str, options: str, foreground: bool) -> None:
    """Mount the reference overlay at MOUNTPOINT; layer order as in overlayfs lowerdir= (first is top)."""
    import overlay_ref
    opts = {}
    for o in filter(None, options.split(",")):
        k, _, v = o.partition("=")
        opts[k] = v or True
    try:
        pid = overlay_ref.mount(lowers.split(":"), upper, work, mountpoint, options=opts, foreground=foreground)
    except overlay_ref.OverlayRefError as e:
        raise BadInput(str(e)) if getattr(e, "bad_input", False) else InfraError(str(e))
    if not foreground:
        click.echo(f"kproto: reference overlay mounted at {mountpoint} (daemon pid {pid})", err=True)


@ref.command("umount")
@click.argument("mountpoint")
def umount_cmd(mountpoint: str) -> None:
    """Unmount the reference overlay (also when its daemon died)."""
    import overlay_ref
    try:
        overlay_ref.umount(mountpoint)
    except overlay_ref.OverlayRefError as e:
        raise InfraError(str(e))


