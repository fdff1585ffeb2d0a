"""kproto fuzz: the command (rig/cli/cmd_fuzz.py)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fake_guest import FakeVM
from fuzz_helpers import needs_root

REPO = Path(__file__).resolve().parents[2]


@needs_root
def test_cli_plain_vs_plain_json(tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, "-m", "rig.cli.main", "fuzz", "--target", "plain", "--reference", "plain",
                        "--seed", "3", "--max-sequences", "200", "--json", str(out), "--findings",
                        str(tmp_path / "f"), "--add-tests", str(tmp_path / "t")],
                       capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0 and "No module named rig.cli.main.__main__" in r.stderr:
        pytest.skip("rig.cli.main is not runnable with -m")
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(out.read_text())
    assert {"target", "seed", "sequences_run", "findings"} <= set(d)
    assert d["target"] == "plain" and d["seed"] == 3 and d["sequences_run"] >= 200 and d["findings"] == []
    assert json.loads((tmp_path / "f" / "run.json").read_text())["seed"] == 3
    assert "replay: kproto fuzz --target plain --seed 3" in r.stdout


def test_add_tests_refuses_an_installed_package_directory(tmp_path):
    bad = tmp_path / "lib" / "python3.11" / "site-packages" / "guest_tests"
    r = subprocess.run([sys.executable, "-m", "rig.cli.main", "fuzz", "--target", "plain", "--reference", "plain",
                        "--max-sequences", "1", "--add-tests", str(bad), "--findings", str(tmp_path / "f")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "inside an installed Python package" in r.stderr and not bad.exists()


class _FakeVM(FakeVM):
    """A guest kernel without the fake WARN: every op answers "ok"."""
    trigger = None


@needs_root
def test_kernel_target_prepares_the_patched_kernel_and_fuzzes_in_the_vm(tmp_path, monkeypatch):
    """--target kernel without a build or a boot: the kernel comes from rig.kernel.prepare (spec from
    --kernel-src/--config, series from PATCH...), sequences run in the (fake) VM, findings are emitted."""
    from rig.kernel.build import Kernel

    from click.testing import CliRunner

    from rig.cli import cmd_fuzz
    from rig.kernel import prepare
    from rig.machine import qemu
    from rig.suite import testrun

    calls = {}
    patch = tmp_path / "0001-x.patch"
    patch.write_text("")
    frag = tmp_path / "frag.config"
    frag.write_text("")

    def patched(spec, series, progress):
        calls["patched"] = (spec, series)
        return None, Kernel(tmp_path / "bzImage", "6.12-fake", "k", build_s=0.0, cached=True, patches=[])
    monkeypatch.setattr(prepare, "open_series", lambda ps: [("series", tuple(ps))])
    monkeypatch.setattr(prepare, "patched", patched)
    monkeypatch.setattr(qemu, "VM", _FakeVM)
    monkeypatch.setattr(testrun, "new_run_dir", lambda keep: Path(tempfile.mkdtemp(dir=tmp_path)))
    r = CliRunner().invoke(cmd_fuzz.command, ["--target", "kernel", str(patch), "--reference", "plain", "--seed", "2",
                                              "--max-sequences", "30", "--kernel-src", "/src/linux", "--config",
                                              str(frag), "--findings", str(tmp_path / "f"),
                                              "--json", str(tmp_path / "out.json")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), \
        r.output + repr(r.exception)                              # "ok" everywhere differs from the plain answer
    assert calls["patched"] == (prepare.KernelSpec("/src/linux", (frag,)), [("series", (patch,))])
    d = json.loads((tmp_path / "out.json").read_text())
    assert d["target"] == "kernel" and d["findings"] and d["sequences_run"] >= 30
    assert all(Path(f["reproducer"]).is_file() for f in d["findings"])
    vm = _FakeVM.instances[-1]
    assert "mount -t overlay overlay -o lowerdir=/tmp/kproto-fuzz/lower" in vm.ssh.cmds[0]
    assert vm.ssh.cmds[-1].startswith("umount /tmp/kproto-fuzz/merged")
    assert not vm.run_dir.exists()                               # not --keep
