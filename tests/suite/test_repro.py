"""Reproducer bundles (rig/suite/repro.py) and `kproto reproduce`.

Fast: the bundle's layout and content from a fake finished run; a bundle with a missing or changed file is
refused (exit 2, one line naming it); reproduce.sh finds kproto (the one given at bundle time, $KPROTO,
PATH, or a one-line error); the whole round trip on the tiny fake kernel tree with replaying fake
machines (the kernel comes back from the cache, the test runs through the runner, the splat is compared).
Slow (real kernel and QEMU, not run here): `kproto test`'s finding on patches/ovl-copyup.patch, written as
a bundle, reproduced by its reproduce.sh with the same lockdep signature."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fake_machine import FAST, FakeKernel, FakeTest, log
from kproto_helpers import DATA, FAKE_KERNEL, seven_patch
from rig.analysis import splats as splatmod
from rig.cli.main import main as cli
from rig.kernel import prepare
from rig.kernel.build import Kernel
from rig.kernel.patches import load as load_patch
from rig.kernel.tree import SourceTree
from rig.core.errors import BadInput
from rig.suite import repro, runner
from rig.suite.results import KernelRun

REPO = Path(__file__).resolve().parents[2]
SUITE = DATA / "fake_suite"
LOCKDEP = log("lockdep-abba-6.12.log")
RUN_DIR = "/root/.cache/kproto/runs/20261202-010203-abcd"


def _boot(name: str = "patched-1", run_dir: str = RUN_DIR) -> repro.BootRecord:
    argv = ("qemu-system-x86_64", "-nodefaults", "-display", "none", "-kernel", "/cache/kernels/k1/bzImage",
            "-append", "root=/dev/root ro init=/init console=ttyS0 -- kproto /mnt/kproto",
            "-chardev", f"file,id=con,path={run_dir}/console-{name}.log",
            "-chardev", f"socket,id=fs-scratch,path={run_dir}/fs-{name}-scratch.sock",
            "-device", "vhost-user-fs-pci,chardev=fs-scratch,tag=kproto",
            "-chardev", f"socket,id=ctl,path={run_dir}/ssh-{name}.sock,server=on,wait=off", "-accel", "tcg", "-cpu", "max")
    return repro.BootRecord(name=name, argv=argv, run_dir=run_dir, accel="tcg",
                            guest_files={"boot.plan": f"# {run_dir}\nmount tmpfs /tmp tmpfs mode=1777\n"
                                                      f"relay kproto.ssh H A {run_dir}/sshd.log /usr/sbin/dropbear -i\n"})


def _lockdep_run(kernel: Kernel | None = None) -> KernelRun:
    """A finished patched run of the fake suite: a_read showed a lockdep cycle on boot patched-1 after b_read."""
    run = KernelRun(label="patched", kernel=kernel)
    for name in ("b_read", "a_read"):
        run.results[name] = {"name": name, "status": "ok", "observations": {"data": "x"}, "exit_code": 0,
                             "signal": None, "upper": {}, "stderr": "", "duration_s": 0.1, "error": None,
                             "lower_modified": False, "boot": "patched-1"}
    run.test_splats["a_read"] = splatmod.scan_text(LOCKDEP)
    return run


@pytest.fixture
def fake_finished(tmp_path):
    """A fake finished run's pieces, nothing built: tree, series, kernel (with its .config), boot, finding."""
    kdir = tmp_path / "kernels" / "k1"
    kdir.mkdir(parents=True)
    (kdir / "bzImage").write_bytes(b"fake")
    (kdir / "config").write_text("CONFIG_64BIT=y\nCONFIG_OVERLAY_FS=y\n# CONFIG_MODULES is not set\n")
    series = [load_patch(REPO / "patches" / "ovl-copyup.patch")]
    kernel = Kernel(bzimage=kdir / "bzImage", version="6.12.117", key="k1", build_s=1.0, cached=True, patches=series)
    frag = tmp_path / "extra.config"
    frag.write_text("CONFIG_KASAN=y\n")
    tree = SourceTree(path=tmp_path / "src", base="b" * 40, origin="/usr/src/linux-source-6.12.tar.xz")
    finding = repro.Finding.from_run(_lockdep_run(kernel), "a_read", status="regressed",
                                     reason="new lockdep report during the test")
    return dict(spec=prepare.KernelSpec(None, (frag,)), tree=tree, series=series, kernel=kernel, boot=_boot(),
                finding=finding, suite=SUITE, timeout=10.0)


# ------------------------------------------------------------------------------ the bundle's content

def test_bundle_layout_and_content_from_a_finished_run(tmp_path, fake_finished):
    kproto = tmp_path / "venv" / "bin" / "kproto"
    d = repro.write_bundle(tmp_path / "repro", kproto=kproto, **fake_finished)
    assert d == tmp_path / "repro" / "a_read"
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert files == ["README.txt", "bundle.json", "config", "expected.json", "fragments/01-extra.config",
                     "guest/boot.plan", "qemu-cmdline.txt", "reproduce.sh",
                     "series/manifest.json", "series/ovl-copyup.patch", "test/a_read.c", "test/a_read.toml"]
    kernel, series = fake_finished["kernel"], fake_finished["series"]
    assert (d / "config").read_text() == kernel.config.read_text()
    assert (d / "series" / "ovl-copyup.patch").read_bytes() == series[0].path.read_bytes()
    assert (d / "test" / "a_read.c").read_bytes() == (SUITE / "a_read.c").read_bytes()
    assert (d / "test" / "a_read.toml").read_bytes() == (SUITE / "a_read.toml").read_bytes()
    man = json.loads((d / "series" / "manifest.json").read_text())
    assert man["base"] == "b" * 40 and man["source"] is None and man["origin"].endswith("linux-source-6.12.tar.xz")
    assert man["patches"] == [{"file": "ovl-copyup.patch", "path": str(series[0].path), "sha256": series[0].sha256,
                               "subject": series[0].subject, "mail": series[0].mail, "count": 1}]
    # the exact command line, the run's own paths as they were
    cmd = (d / "qemu-cmdline.txt").read_text().splitlines()
    assert cmd[0].startswith("# QEMU command line of boot patched-1 (tcg)") and RUN_DIR in cmd[1]
    assert tuple(shlex.split(cmd[-1])) == fake_finished["boot"].argv
    assert (d / "guest" / "boot.plan").read_text() == fake_finished["boot"].guest_files["boot.plan"]
    exp = json.loads((d / "expected.json").read_text())
    sig = splatmod.scan_text(LOCKDEP)[0]
    assert exp["test"] == "a_read" and exp["status"] == "regressed" and exp["boot"] == "patched-1"
    assert exp["earlier_in_boot"] == ["b_read"]
    assert exp["result"]["status"] == "ok" and exp["result"]["observations"] == {"data": "x"}
    assert [(s["title"], s["signature"], s["required"]) for s in exp["splats"]] == [(sig.title, sig.signature, True)]
    meta = json.loads((d / "bundle.json").read_text())
    assert meta["test"] == "a_read" and meta["timeout"] == 10.0 and meta["format"] == repro.FORMAT
    assert meta["kernel"] == {"source": None, "origin": "/usr/src/linux-source-6.12.tar.xz", "base": "b" * 40,
                              "version": "6.12.117", "key": "k1", "fragments": ["fragments/01-extra.config"]}
    assert meta["boot"]["argv"] == list(fake_finished["boot"].argv)
    assert set(meta["files"]) == set(files) - {"README.txt", "reproduce.sh", "bundle.json"}
    readme = (d / "README.txt").read_text()
    assert "a_read" in readme and sig.title in readme and "sh reproduce.sh" in readme and "b_read" in readme
    assert os.stat(d / "reproduce.sh").st_mode & stat.S_IXUSR
    assert shlex.quote(str(kproto)) in (d / "reproduce.sh").read_text()
    assert repro.load_bundle(d).test == "a_read"       # a fresh bundle passes its own check


def test_a_second_bundle_of_the_same_test_replaces_the_first_but_never_a_foreign_directory(tmp_path, fake_finished):
    d = repro.write_bundle(tmp_path / "repro", **fake_finished)
    (d / "stale").write_text("x")
    assert repro.write_bundle(tmp_path / "repro", **fake_finished) == d and not (d / "stale").exists()
    (tmp_path / "other" / "a_read").mkdir(parents=True)
    with pytest.raises(repro.BadInput, match="not a kproto reproducer bundle"):
        repro.write_bundle(tmp_path / "other", **fake_finished)
    assert [p.name for p in (tmp_path / "repro").iterdir()] == ["a_read"]      # no temp dir left


def test_findings_of_a_report_and_the_run_that_showed_the_splat(tmp_path, fake_finished):
    sig = splatmod.scan_text(LOCKDEP)[0].signature
    tests = [{"name": "a_read", "status": "match", "splat_signatures": {"patched": [sig]}},
             {"name": "b_read", "status": "match", "splat_signatures": {"patched": []}},
             {"name": "c_gone", "status": "error", "reason": "not run: the patched kernel did not boot"}]
    assert repro.findings_of(tests, {sig}) == ["a_read", "c_gone"]
    # the main run did not show it; the confirmation run (boot patched-2) did
    main = _lockdep_run(fake_finished["kernel"])
    main.test_splats = {}
    confirm = _lockdep_run(fake_finished["kernel"])
    for r in confirm.results.values():
        r["boot"] = "patched-2"
    said: list[str] = []
    out = repro.write_findings(tmp_path / "repro", spec=fake_finished["spec"], tree=fake_finished["tree"],
                               series=fake_finished["series"], kernel=fake_finished["kernel"], runs=[main, confirm],
                               tests=tests, new_signatures={sig}, boots={"patched-2": _boot("patched-2")},
                               suite=SUITE, timeouts={"a_read": 10.0, "b_read": 10.0}, progress=said.append)
    assert out == [tmp_path / "repro" / "a_read"]
    assert json.loads((out[0] / "expected.json").read_text())["boot"] == "patched-2"
    assert "reproducer: c_gone: not run on this kernel, no bundle" in said


def test_the_boot_is_compared_with_the_bundles_paths_aside(tmp_path, fake_finished):
    d = repro.write_bundle(tmp_path / "repro", **fake_finished)
    b = repro.load_bundle(d)
    kernel = fake_finished["kernel"]
    old = fake_finished["boot"]
    new_dir = "/home/rev/.cache/kproto/runs/20261203-111111-wxyz"

    def now(argv_edit=lambda a: a, files=None) -> repro.BootRecord:
        argv = [argv_edit(a.replace(RUN_DIR, new_dir)
                          .replace("/cache/kernels/k1/bzImage", str(kernel.bzimage))) for a in old.argv]
        return repro.BootRecord(name="repro-1", argv=tuple(argv), run_dir=new_dir, accel="tcg",
                                guest_files=files or {k: v.replace(RUN_DIR, new_dir) for k, v in old.guest_files.items()})
    assert repro._boot_notes(b, now(), kernel) == [
        "boot: the same QEMU command line as the bundle's (run directory and cache paths aside)"]
    notes = repro._boot_notes(b, now(lambda a: "kvm" if a == "tcg" else a, files={"boot.plan": "other\n"}), kernel)
    assert notes[0].startswith("boot: the QEMU command line differs from the bundle's: bundle had 'tcg'; now 'kvm'")
    assert notes[1:] == ["boot: the guest's boot.plan differs from the bundle's guest/boot.plan"]


def test_a_rebuilt_kernel_whose_config_differs_is_said(tmp_path, fake_finished):
    b = repro.load_bundle(repro.write_bundle(tmp_path / "repro", **fake_finished))
    kernel = fake_finished["kernel"]
    assert repro._config_note(b, kernel) == "config: identical to the bundle's"
    kernel.config.write_text("CONFIG_64BIT=y\nCONFIG_OVERLAY_FS=m\n")
    assert repro._config_note(b, kernel) == \
        "config: 1 option(s) differ from the bundle's: CONFIG_OVERLAY_FS=m (bundle: y)"


def test_the_recorder_keeps_each_boots_command_line_and_guest_files(tmp_path, monkeypatch, fake_finished):
    """BootRecorder's machines are the runner's QemuMachine; each boot (a failed one too) leaves what
    VM.command() returned and the boot files of the run directory, read at boot time."""
    from rig.core.errors import BootError
    from rig.machine.qemu import VM

    def start(vm):
        vm.proc, vm.accel, vm.guest_root = object(), "tcg", tmp_path / "root"
        (vm.run_dir / "boot.plan").write_text(f"ready {vm.name}\n")
        return vm

    def wait_ready(vm, timeout=120.0, on_init=None):
        if vm.name.endswith("-2"):
            raise BootError("no init")
        return 1.5
    monkeypatch.setattr(VM, "start", start)
    monkeypatch.setattr(VM, "wait_ready", wait_ready)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rec = repro.BootRecorder()
    make = rec.factory(fake_finished["kernel"], run_dir)
    assert make("patched-1").boot(10) == 1.5
    with pytest.raises(BootError):
        make("patched-2").boot(10)
    assert sorted(rec.boots) == ["patched-1", "patched-2"]
    one = rec.boots["patched-1"]
    assert one.guest_files == {"boot.plan": "ready patched-1\n"} and one.run_dir == str(run_dir)
    vm = VM(bzimage=fake_finished["kernel"].bzimage, run_dir=run_dir, name="patched-1", accel="tcg",
            guest_root=tmp_path / "root")
    assert one.argv == tuple(vm.command())
    assert f"path={run_dir}/ssh-patched-1.sock" in " ".join(one.argv)


# ------------------------------------------------------------------------------ a bad bundle

@pytest.mark.parametrize("victim", ["config", "series/ovl-copyup.patch", "series/manifest.json", "test/a_read.c",
                                    "test/a_read.toml", "expected.json", "guest/boot.plan", "bundle.json"])
def test_reproduce_rejects_a_bundle_with_a_missing_file_naming_it(tmp_path, kcache, fake_finished, victim):
    d = repro.write_bundle(tmp_path / "repro", **fake_finished)
    (d / victim).unlink()
    res = CliRunner().invoke(cli, ["reproduce", str(d)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kproto: error: ") and victim in lines[0], res.output
    assert "missing" in lines[0]


@pytest.mark.parametrize("victim,words", [("series/ovl-copyup.patch", "corrupt"), ("expected.json", "corrupt"),
                                          ("bundle.json", "not JSON")])
def test_reproduce_rejects_a_changed_or_corrupt_file_naming_it(tmp_path, kcache, fake_finished, victim, words):
    d = repro.write_bundle(tmp_path / "repro", **fake_finished)
    with open(d / victim, "a") as fh:
        fh.write("\n}garbage")
    res = CliRunner().invoke(cli, ["reproduce", str(d)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and victim in lines[0] and words in lines[0], res.output


def test_reproduce_of_nothing_or_a_directory_of_several_bundles_is_bad_input(tmp_path, kcache, fake_finished):
    res = CliRunner().invoke(cli, ["reproduce", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "reproducer bundle not found" in res.output
    repro.write_bundle(tmp_path / "repro", **fake_finished)
    assert repro.locate(tmp_path / "repro") == tmp_path / "repro" / "a_read"      # DIR of one bundle
    shutil.copytree(tmp_path / "repro" / "a_read", tmp_path / "repro" / "b_read")
    res = CliRunner().invoke(cli, ["reproduce", str(tmp_path / "repro")])
    assert res.exit_code == 2 and "holds 2 bundles (a_read, b_read)" in res.output, res.output


# ------------------------------------------------------------------------------ reproduce.sh

def _fake_kproto(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"{path.name} called: $*\"\nexit 0\n")
    path.chmod(0o755)
    return path


def _sh(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["sh", str(script), *args], capture_output=True, text=True, env={**base, **(env or {})},
                          timeout=30)


def test_reproduce_sh_runs_the_kproto_given_at_bundle_time(tmp_path, fake_finished):
    kp = _fake_kproto(tmp_path / "checkout" / ".venv" / "bin" / "kproto")
    d = repro.write_bundle(tmp_path / "my repro", kproto=kp, **fake_finished)      # a space in the path
    p = _sh(d / "reproduce.sh", "--runs", "2")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"kproto called: reproduce {d} --runs 2"
    other = _fake_kproto(tmp_path / "elsewhere" / "my-kproto")
    assert _sh(d / "reproduce.sh", env={"KPROTO": str(other)}).stdout.startswith("my-kproto called: reproduce ")


def test_reproduce_sh_falls_back_to_path_then_says_what_is_missing(tmp_path, fake_finished):
    gone = tmp_path / "gone" / ".venv" / "bin" / "kproto"
    d = repro.write_bundle(tmp_path / "repro", kproto=gone, **fake_finished)
    onpath = _fake_kproto(tmp_path / "bin" / "kproto")
    p = _sh(d / "reproduce.sh", env={"PATH": f"{onpath.parent}:/usr/bin:/bin"})
    assert p.returncode == 0 and p.stdout.strip() == f"kproto called: reproduce {d}", p.stderr
    p = _sh(d / "reproduce.sh")
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce.sh: error: kproto not found") and str(gone) in lines[0]


def test_default_kproto_is_this_checkouts_venv(tmp_path):
    venv = REPO / ".venv" / "bin" / "kproto"
    if venv.is_file():
        assert repro.default_kproto() == venv.absolute()


# ------------------------------------------------------------------------------ round trip on fakes

@pytest.fixture
def seven(tmp_path) -> Path:
    return seven_patch(tmp_path / "seven.patch")


def _lockdep_kernel(splat: bool = True) -> FakeKernel:
    return FakeKernel(lambda name, boot, m: FakeTest(console=LOCKDEP, lockdep_off=True)
                      if name == "a_read" and splat else FakeTest())


def _fake_run_bundle(tmp_path, fake_tarball, seven) -> tuple[Path, Kernel]:
    """`kproto test`'s pieces on the fake tree: build the patched kernel, run the suite on a fake machine
    (a_read shows a lockdep cycle), write the findings as bundles."""
    spec = prepare.KernelSpec(str(fake_tarball), ())
    series = prepare.open_series([seven])
    tree, kernel = prepare.patched(spec, series, lambda m: None)
    run_dir = tmp_path / "run"
    run = runner.run_kernel_suite(kernel, "patched", run_dir, ["a_read", "b_read"], {"a_read": 10.0, "b_read": 10.0},
                                  lambda m: None, machine_factory=_lockdep_kernel().factory(tmp_path), timing=FAST)
    sig = run.test_splats["a_read"][0].signature
    tests = [{"name": "a_read", "status": "regressed", "reason": "new lockdep report",
              "splat_signatures": {"patched": [sig]}},
             {"name": "b_read", "status": "match", "splat_signatures": {"patched": []}}]
    out = repro.write_findings(tmp_path / "repro", spec=spec, tree=tree, series=series, kernel=kernel, runs=[run],
                               tests=tests, new_signatures={sig}, boots={"patched-1": _boot("patched-1", str(run_dir))},
                               suite=SUITE, timeouts={"a_read": 10.0, "b_read": 10.0}, progress=lambda m: None)
    assert out == [tmp_path / "repro" / "a_read"]
    return out[0], kernel


def test_reproduce_reuses_the_cached_kernel_and_reproduces_the_splat(tmp_path, kcache, fake_tarball, seven):
    bundle, kernel = _fake_run_bundle(tmp_path, fake_tarball, seven)
    said: list[str] = []
    machine = _lockdep_kernel()
    res = repro.reproduce(repro.ReproOptions(bundle=bundle, runs=2, progress=said.append, timing=FAST,
                                             machine_factory=machine.factory(tmp_path / "again")))
    assert res.kernel.key == kernel.key and res.kernel.cached
    assert "kernel 6.12.0-fake: cached" in said, said
    assert not any(l.startswith("built ") for l in said), said
    # only the bundle's test ran, once per fresh boot
    assert machine.ran == [("repro-1", "a_read"), ("repro-2", "a_read")]
    assert res.reproduced == 2 and res.exit_code == 0
    text = repro.render_result(res)
    sig = splatmod.scan_text(LOCKDEP)[0]
    assert "config: identical to the bundle's" in text
    assert "    data = x" in text and f"splat: {sig.title}  [{sig.signature}]" in text
    assert text.splitlines()[-1] == f"reproduced: {sig.title} [{sig.signature}] (in 2/2 runs)"


def test_reproduce_says_did_not_reproduce_when_the_splat_stays_away(tmp_path, kcache, fake_tarball, seven):
    bundle, _ = _fake_run_bundle(tmp_path, fake_tarball, seven)
    res = repro.reproduce(repro.ReproOptions(bundle=bundle, progress=lambda m: None, timing=FAST,
                                             machine_factory=_lockdep_kernel(splat=False).factory(tmp_path / "again")))
    assert res.reproduced == 0 and res.exit_code == 1
    text = repro.render_result(res)
    assert "no splat during the test" in text and "did not show" in text
    assert text.splitlines()[-1].startswith("did not reproduce: ")


def test_a_later_run_that_does_not_boot_counts_as_not_reproduced(tmp_path, kcache, fake_tarball, seven):
    bundle, _ = _fake_run_bundle(tmp_path, fake_tarball, seven)
    good, bad = _lockdep_kernel(), FakeKernel(boot_fails=True)
    machines = iter([good.factory(tmp_path / "a"), bad.factory(tmp_path / "b")])
    res = repro.reproduce(repro.ReproOptions(bundle=bundle, runs=2, progress=lambda m: None, timing=FAST,
                                             machine_factory=lambda name: next(machines)(name)))
    assert [r.reproduced for r in res.runs] == [True, False] and res.exit_code == 0
    assert res.runs[1].result["error"].startswith("did not boot: ")
    assert repro.render_result(res).splitlines()[-1].endswith("(in 1/2 runs)")


def test_reproduce_refuses_a_kernel_source_at_another_base(tmp_path, kcache, fake_tarball, seven):
    bundle, _ = _fake_run_bundle(tmp_path, fake_tarball, seven)
    other = tmp_path / "other-src"
    shutil.copytree(FAKE_KERNEL, other)
    (other / "fs/overlayfs/copy_up.c").write_text((other / "fs/overlayfs/copy_up.c").read_text() + "\n/* newer */\n")
    tb = tmp_path / "linux-other.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(other, arcname="linux-other")
    with pytest.raises(repro.BadInput, match="the bundle was made at"):
        repro.reproduce(repro.ReproOptions(bundle=bundle, kernel_src=str(tb), progress=lambda m: None, timing=FAST,
                                           machine_factory=_lockdep_kernel().factory(tmp_path / "again")))


# ------------------------------------------------------------------------------ the real thing (slow)

@pytest.mark.slow
def test_the_ovl_copyup_lockdep_finding_reproduces_from_its_bundle(tmp_path):
    """`kproto test patches/ovl-copyup.patch -k lock_order_copyup_scenario --repro DIR` reports the new
    lockdep splat (possible deadlock in ovl_copy_up_start) and writes its bundle from the boot that showed
    it; the bundle's reproduce.sh, in a new process, shows the same lockdep signature: exit 0."""
    name = "lock_order_copyup_scenario"
    kproto = REPO / ".venv" / "bin" / "kproto"
    cmd = [str(kproto)] if kproto.exists() else [sys.executable, "-m", "rig.cli.main"]
    out = tmp_path / "report.json"
    t = subprocess.run([*cmd, "test", "patches/ovl-copyup.patch", "-k", name, "--repro", str(tmp_path / "repro"),
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    assert t.returncode == 1, t.stderr[-3000:]
    rep = json.loads(out.read_text())
    sigs = {s["signature"] for s in rep["splats"]["new"]}
    assert any(s.startswith("lockdep-cycle:") for s in sigs), rep["splats"]
    bundle = tmp_path / "repro" / name
    assert any(n == f"reproducers: {bundle}" for n in rep["notes"]), rep["notes"]
    assert "qemu-system" in (bundle / "qemu-cmdline.txt").read_text()
    assert "-- kproto /mnt/kproto" in (bundle / "qemu-cmdline.txt").read_text()
    assert (bundle / "guest" / "boot.plan").is_file() and (bundle / "test" / f"{name}.c").is_file()
    p = subprocess.run(["sh", str(bundle / "reproduce.sh")], capture_output=True, text=True, timeout=1800,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("reproduced: ") and all(s in last for s in sigs), p.stdout
    assert "possible deadlock in" in last


def test_a_repro_destination_that_is_a_file_is_refused_before_the_run(tmp_path):
    f = tmp_path / "bundles"
    f.write_text("not a directory\n")
    with pytest.raises(BadInput, match="is not a directory"):
        repro.check_destination(f)
    repro.check_destination(tmp_path / "new" / "dir")      # created later, by write_bundle
    assert not (tmp_path / "new").exists()
