"""The curated guest root (rig/machine/guestroot.py): what a guest's "/" holds, built from a fake host root."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rig.core.errors import BadInput
from rig.machine import guestroot


@pytest.fixture
def host(tmp_path) -> Path:
    """A host root with merged-/usr links, an /etc holding both what may be copied and planted secrets."""
    h = tmp_path / "host"
    (h / "usr" / "bin").mkdir(parents=True)
    for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
        os.symlink(target, h / name)
    (h / "lib32").mkdir()                                   # a real directory: not a merged-/usr link
    etc = h / "etc"
    (etc / "alternatives").mkdir(parents=True)
    os.symlink("/usr/bin/mawk", etc / "alternatives" / "awk")
    (etc / "ld.so.cache").write_bytes(b"ld.so-1.7.0 fake cache")
    os.symlink("../usr/lib/os-release", etc / "os-release")
    (etc / "shadow").write_text("root:$6$planted-hash:19000:0:99999:7:::\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n")
    (etc / "ssh").mkdir()
    (etc / "ssh" / "ssh_host_ed25519_key").write_text("PLANTED PRIVATE KEY\n")
    (h / "root" / ".ssh").mkdir(parents=True)
    (h / "root" / ".ssh" / "id_ed25519").write_text("PLANTED\n")
    (h / "home" / "alice").mkdir(parents=True)
    (h / "home" / "alice" / "token").write_text("PLANTED\n")
    return h


def _all(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes()[:200].decode(errors="replace"))
    return out


def test_the_root_holds_the_layout_and_nothing_secret_of_the_host(kcache, host):
    root = guestroot.ensure(kcache, host_root=host)
    tree = _all(root)
    assert tree["bin"] == "-> usr/bin" and tree["lib64"] == "-> usr/lib64" and tree["sbin"] == "-> usr/sbin"
    assert "lib32" not in tree and "libx32" not in tree       # only links into usr/ are recreated
    for d in ("usr", "dev", "proc", "sys", "run", "tmp", "root", "mnt", "var/tmp"):
        assert tree[d] == "dir", d
    assert tree["etc/alternatives/awk"] == "-> /usr/bin/mawk"
    assert tree["etc/ld.so.cache"] == "ld.so-1.7.0 fake cache"
    assert tree["etc/os-release"] == "-> ../usr/lib/os-release"
    assert tree["etc/mtab"] == "-> /proc/self/mounts"
    # generated, not copied: the host's other users and its shadow never appear
    assert tree["etc/passwd"].startswith("root:x:0:0:root:/root:/bin/bash\n") and "alice" not in tree["etc/passwd"]
    assert "etc/shadow" not in tree and "etc/ssh" not in tree
    assert not list(root.glob("root/*")) and not list(root.glob("home/*"))
    assert not [k for k, v in tree.items() if "PLANTED" in v or "planted" in v]
    assert oct((root / "root").stat().st_mode & 0o777) == "0o700"
    assert oct((root / "tmp").stat().st_mode & 0o7777) == "0o1777"


def test_the_init_is_a_static_executable(kcache, host):
    init = guestroot.ensure(kcache, host_root=host) / "init"
    assert os.access(init, os.X_OK)
    out = subprocess.run(["readelf", "-l", str(init)], capture_output=True, text=True).stdout
    assert "Elf file type" in out and "INTERP" not in out, "the stage-1 init runs before /usr (and the loader) exist"
    usage = subprocess.run([str(init)], capture_output=True, text=True)       # no arguments: says how to call it
    assert usage.returncode == 1 and "usage: init SHARE_TAG SHARE_MOUNTPOINT" in usage.stderr


def test_the_socket_shim_is_a_shared_library_that_defines_only_the_address_calls(kcache, host):
    shim = guestroot.ensure(kcache, host_root=host) / guestroot.SOCKSHIM.lstrip("/")
    out = subprocess.run(["readelf", "-h", "--dyn-syms", "-W", str(shim)], capture_output=True, text=True).stdout
    assert "DYN (Shared object file)" in out
    defined = {ln.split()[-1] for ln in out.splitlines() if " FUNC " in ln and " UND " not in ln and " GLOBAL " in ln}
    assert defined == {"getpeername", "getsockname", "setsockopt"}, defined


def test_one_tree_per_content_and_a_new_one_when_the_host_changes(kcache, host):
    first = guestroot.ensure(kcache, host_root=host)
    assert guestroot.ensure(kcache, host_root=host) == first
    os.symlink("/usr/bin/vim.tiny", host / "etc" / "alternatives" / "vi")      # apt installed an alternative
    second = guestroot.ensure(kcache, host_root=host)
    assert second != first and (second / "etc" / "alternatives" / "vi").is_symlink()
    assert not (first / "etc" / "alternatives" / "vi").is_symlink()           # published trees never change
    assert not [p for p in (kcache / "guestroot").iterdir() if p.name.startswith(".")], "no half-built tree left"


def test_a_layout_naming_a_missing_template_is_bad_input(tmp_path, monkeypatch):
    data = tmp_path / "guestroot.toml"
    data.write_text(guestroot.DATA.read_text().replace('generated = ["passwd"', 'generated = ["no-such-file", "passwd"'))
    with pytest.raises(BadInput, match="etc.generated names 'no-such-file'"):
        guestroot.load_layout(data)


def test_a_layout_escaping_the_root_is_bad_input(tmp_path):
    data = tmp_path / "guestroot.toml"
    data.write_text(guestroot.DATA.read_text().replace('copy = ["alternatives"', 'copy = ["../shadow", "alternatives"'))
    with pytest.raises(BadInput, match="must be a relative path inside the guest root"):
        guestroot.load_layout(data)
