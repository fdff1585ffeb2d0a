"""rig/machine/arch.py: the QEMU machine as data (arch/<name>.toml), and its one-line errors."""
from __future__ import annotations

import shutil

import pytest

from rig.core.errors import BadInput
from rig.machine import arch


@pytest.fixture
def arch_dir(tmp_path, monkeypatch):
    """A copy of the arch data directory the loader reads (and a fresh loader cache)."""
    d = tmp_path / "arch"
    shutil.copytree(arch.ARCH_DIR, d)
    monkeypatch.setattr(arch, "ARCH_DIR", d)
    arch.load.cache_clear()
    yield d
    arch.load.cache_clear()


def test_x86_64_is_the_default_and_fills_in_the_boot_values(monkeypatch):
    monkeypatch.delenv("KPROTO_ARCH", raising=False)
    a = arch.load()
    assert (a.name, a.qemu, a.make_target, a.kernel_image, a.srcarch) == \
        ("x86_64", "qemu-system-x86_64", "bzImage", "arch/x86/boot/bzImage", "x86")
    fill = dict(init="/init", memory_mb=512, console_log="/r/c.log", monitor_sock="/r/m.sock",
                control_sock="/r/ssh.sock", control_port="kproto.ssh",
                **{f"fs_{n}_sock": f"/r/fs-{n}.sock" for n in ("root", "usr", "scratch")},
                **{f"fs_{n}_tag": t for n, t in (("root", "/dev/root"), ("usr", "usr"), ("scratch", "kproto"))})
    args = a.qemu_args("tcg", **fill)
    assert args[:4] == ["-accel", "tcg", "-cpu", "max"]
    assert "file,id=con,path=/r/c.log" in args
    # no network device: SSH goes through a virtio-serial port on a unix socket in the run dir
    assert "socket,id=ctl,path=/r/ssh.sock,server=on,wait=off" in args
    assert "virtserialport,bus=ser0.0,chardev=ctl,name=kproto.ssh" in args
    assert not any(x.startswith(("-netdev", "-nic")) or "virtio-net" in x for x in args)
    assert "{" not in " ".join(args)
    # the three shares are virtio-fs devices on the daemons' sockets, and the guest's RAM is shareable
    for n, tag in (("root", "/dev/root"), ("usr", "usr"), ("scratch", "kproto")):
        assert f"socket,id=fs-{n},path=/r/fs-{n}.sock" in args
        assert f"vhost-user-fs-pci,chardev=fs-{n},tag={tag}" in args
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in args
    assert not any(x.startswith("local,") or "9p" in x for x in args)
    line = a.boot_cmdline(**fill)
    assert "root=/dev/root rootfstype=virtiofs ro" in line and "init=/init" in line and "console=ttyS0" in line


def test_an_unknown_accelerator_names_the_file_and_what_it_has():
    with pytest.raises(BadInput, match=r"no accelerator 'hvf'.*x86_64\.toml.*kvm, tcg"):
        arch.load("x86_64").qemu_args("hvf")


def test_an_unknown_architecture_names_the_ones_there_are(arch_dir):
    with pytest.raises(BadInput, match=r"no machine data for architecture 'riscv64' \(have: x86_64; add .*riscv64\.toml"):
        arch.load("riscv64")


def test_a_row_missing_a_key_or_bad_toml_is_one_line_naming_the_file(arch_dir):
    (arch_dir / "broken.toml").write_text((arch_dir / "x86_64.toml").read_text().replace('qemu = "', 'qemux = "'))
    with pytest.raises(BadInput, match=r"broken\.toml: bad machine data \(KeyError: 'qemu'\)"):
        arch.load("broken")
    (arch_dir / "garbled.toml").write_text("qemu = [\n")
    with pytest.raises(BadInput, match=r"garbled\.toml: not valid TOML"):
        arch.load("garbled")
    (arch_dir / "devs.toml").write_text((arch_dir / "x86_64.toml").read_text().replace(
        "devices = [", "devices = [1, "))
    with pytest.raises(BadInput, match=r"devs\.toml: boot\.devices: expected a list of strings"):
        arch.load("devs")
