"""The guest's root filesystem: a curated directory, not the host's /.

A guest gets two read-only virtio-fs shares (rig/machine/virtiofs.py): this root (tag /dev/root, the
kernel mounts it as "/") and the host's /usr (tag "usr"). The root holds the stage-1 init (init/init.c, a
static binary: it mounts /usr and the run's share, then carries out the rendered boot.plan), the socket
shim the SSH server runs with (sockshim/sockshim.c, a shared library at SOCKSHIM), mount points, the merged-/usr symlinks
(bin -> usr/bin ...) and a generated /etc: passwd/group/hosts... from templates/etc/ plus the few host
/etc entries guestroot.toml names (the loader's cache, Debian's alternatives, ...). Nothing else of the
host is visible: not /root, /home, /etc/shadow, ssh host keys, tokens, other checkouts.

The layout is built once per content key (the data file, the templates, the init binary, the host
entries copied) under <cache>/guestroot/<key>/ and published atomically (core.cache.building), so every
VM of a run shares one read-only tree and a changed host /etc (a new alternative) gets a new tree.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rig.core import paths
from rig.core.cache import building
from rig.core.datafile import load_toml
from rig.core.errors import BadInput

HERE = Path(__file__).resolve().parent
DATA = HERE / "guestroot.toml"
ETC_TEMPLATES = HERE / "templates" / "etc"
INIT_SRC = HERE / "init"
INIT = "/init"                 # the kernel's init= (the stage-1 binary's path in the guest)
SOCKSHIM_SRC = HERE / "sockshim"
SOCKSHIM = "/kproto/sockshim.so"   # LD_PRELOADed into the guest's SSH server (boot plan, relay step)
LAYOUT_VERSION = "2"           # bump when the code below lays the tree out differently


@dataclass(frozen=True)
class Layout:
    """guestroot.toml, checked."""
    dirs: tuple[str, ...]
    usr_links: tuple[str, ...]
    links: dict[str, str]
    etc_copy: tuple[str, ...]
    etc_generated: tuple[str, ...]


def _rel(name: object, where: str) -> str:
    p = str(name)
    if not p or p.startswith("/") or ".." in Path(p).parts:
        raise BadInput(f"{DATA}: {where}: {p!r} must be a relative path inside the guest root")
    return p


def load_layout(path: Path = DATA) -> Layout:
    raw = load_toml(path, "guest root layout")
    try:
        etc = raw["etc"]
        layout = Layout(dirs=tuple(_rel(d, "dirs") for d in raw["dirs"]),
                        usr_links=tuple(_rel(d, "usr_links") for d in raw["usr_links"]),
                        links={_rel(k, "links"): str(v) for k, v in raw.get("links", {}).items()},
                        etc_copy=tuple(_rel(n, "etc.copy") for n in etc["copy"]),
                        etc_generated=tuple(_rel(n, "etc.generated") for n in etc["generated"]))
    except KeyError as e:
        raise BadInput(f"{path}: missing key {e.args[0]!r} (see the comments in {DATA.name})") from None
    for name in layout.etc_generated:
        if not (ETC_TEMPLATES / name).is_file():
            raise BadInput(f"{path}: etc.generated names {name!r} but {ETC_TEMPLATES / name} does not exist")
    return layout


def _hash_host_entry(h: "hashlib._Hash", p: Path) -> None:
    """Feed P (a host path: symlink, file or directory tree) into H: what a copy of it would contain."""
    h.update(str(p).encode() + b"\0")
    if p.is_symlink():
        h.update(b"L" + os.readlink(p).encode() + b"\0")
    elif p.is_dir():
        h.update(b"D\0")
        for child in sorted(p.iterdir()):
            _hash_host_entry(h, child)
    elif p.is_file():
        h.update(b"F" + hashlib.sha256(p.read_bytes()).digest())
    else:
        h.update(b"-\0")


def _key(layout: Layout, init_bin: Path, shim: Path, host_root: Path) -> str:
    h = hashlib.sha256(LAYOUT_VERSION.encode())
    h.update(DATA.read_bytes())
    for name in layout.etc_generated:
        h.update(name.encode() + b"\0" + (ETC_TEMPLATES / name).read_bytes())
    h.update(init_bin.read_bytes())
    h.update(shim.read_bytes())
    for name in layout.usr_links:
        _hash_host_entry(h, host_root / name)
    for name in layout.etc_copy:
        _hash_host_entry(h, host_root / "etc" / name)
    return h.hexdigest()[:16]


def _init_binary(cache: Path) -> Path:
    from rig.guest.programs import compile_dir       # the static-program cache (imported late: layering)
    return compile_dir(INIT_SRC, cache_name="guestroot-init", what="guest init", cache=cache) / "init"


def _sockshim(cache: Path) -> Path:
    from rig.guest.programs import SHARED_CFLAGS, compile_dir
    return compile_dir(SOCKSHIM_SRC, cache_name="guestroot-sockshim", what="guest socket shim", cache=cache,
                       cflags=SHARED_CFLAGS) / "sockshim"


def _lay_out(dest: Path, layout: Layout, init_bin: Path, shim: Path, host_root: Path) -> None:
    os.chmod(dest, 0o755)
    for d in layout.dirs:
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "root", 0o700)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "var" / "tmp", 0o1777)
    for name in layout.usr_links:
        host = host_root / name
        if host.is_symlink() and os.readlink(host).lstrip("/").startswith("usr/"):
            os.symlink(os.readlink(host), dest / name)
    etc = dest / "etc"
    etc.mkdir(exist_ok=True)
    for name in layout.etc_copy:
        src = host_root / "etc" / name
        if src.is_symlink():
            os.symlink(os.readlink(src), etc / name)
        elif src.is_dir():
            shutil.copytree(src, etc / name, symlinks=True)
        elif src.is_file():
            shutil.copy2(src, etc / name)
    for name in layout.etc_generated:
        shutil.copyfile(ETC_TEMPLATES / name, etc / name)
        os.chmod(etc / name, 0o644)
    for rel, target in layout.links.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (dest / rel).is_symlink() and not (dest / rel).exists():
            os.symlink(target, dest / rel)
    shutil.copyfile(init_bin, dest / INIT.lstrip("/"))
    os.chmod(dest / INIT.lstrip("/"), 0o755)
    (dest / SOCKSHIM.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shim, dest / SOCKSHIM.lstrip("/"))
    os.chmod(dest / SOCKSHIM.lstrip("/"), 0o755)


def ensure(cache: Path | None = None, host_root: Path = Path("/")) -> Path:
    """The curated root for this host and this checkout, built if needed; returns its directory.
    HOST_ROOT is where the host's /etc and merged-/usr links are read from (tests point it elsewhere)."""
    cache = Path(cache) if cache else paths.cache_dir()
    layout = load_layout()
    init_bin = _init_binary(cache)
    shim = _sockshim(cache)
    final = cache / "guestroot" / _key(layout, init_bin, shim, host_root)
    if (final / INIT.lstrip("/")).is_file():
        return final
    with building(final) as tmp:
        _lay_out(tmp, layout, init_bin, shim, host_root)
    return final
