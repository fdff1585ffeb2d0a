"""kproto fuzz: the interpreter on real targets (host overlayfs, plain directory, guest kernel: slow)."""
from __future__ import annotations

import pytest

from fuzz_helpers import MMAP_SEQ, SEED, needs_root
from rig.core.errors import BadInput
from rig.fuzz import search, targets
from rig.fuzz.findings import first_difference
from rig.fuzz.interp import parse_run_output


def test_parse_run_output_pads_lost_sequences():
    out = "=== seq 0\n1: ok\n2: ENOENT\n=== end 0 exit=0\n=== seq 1\n1: ok\n"
    got = parse_run_output(out, 3)
    assert [(r.lines, r.end) for r in got] == [(["ok", "ENOENT"], "exit=0"), (["ok"], "lost"), ([], "lost")]


def test_unknown_local_target(interp, tmp_path):
    with pytest.raises(BadInput):
        targets.make_local_target("kernel", interp, tmp_path)


@needs_root
def test_interpreter_on_host_overlay_and_plain(target):
    host, plain = target("host"), target("plain")
    seqs = [MMAP_SEQ, ["stat a", "stat u", "stat w", "readdir .", "getxattr a user.k", "listxattr a", "readlink s"]]
    h, p = host.run(seqs), plain.run(seqs)
    assert h[1].lines == p[1].lines == [
        "ok type=reg mode=0644 size=15 nlink=1 ino=i1 mtime=first",
        "ok type=reg mode=0644 size=11 nlink=1 ino=i2 mtime=first",
        "ENOENT", "ok a,b,d,kproto-warn,s,u", "ok n=2 data=v1", "ok user.k", "ok n=1 data=a"]
    # docs/design.md §2 case 3: the mapping keeps showing lower data on overlayfs
    assert p[0].lines[-1] == "ok data=bar" and h[0].lines[-1] == "ok data=foo"
    d = first_difference(MMAP_SEQ, p[0], h[0])
    assert d is not None and d.op_index == 4 and d.kind == "mread"
    # each sequence gets a fresh slot: running it again gives the same answer
    assert host.run([MMAP_SEQ + ["stat a"]])[0].lines[:5] == h[0].lines


@needs_root
def test_host_target_remounts_and_unmounts_cleanly(target):
    from rig.guest.mount import is_mounted
    host = target("host")
    host.slots_per_mount = 2
    host.run([["stat a"], ["stat b"], ["stat u"]])        # three sequences: a second mount
    assert host.generation == 2 and is_mounted(host.base())
    merged = host.base()
    host.close()
    assert not is_mounted(merged) and not is_mounted(host.workdir)


def _cached_kernel():
    """The cached baseline kernel, else any cached kernel (this test is about the plumbing); no build."""
    from types import SimpleNamespace
    from rig.core import paths
    from rig.kernel import build, kconfig, tree
    try:
        t = tree.open_source(None)
        if build.lookup(build.cache_key(t, [], kconfig.requested(()))):
            return build.build(t, [])
    except Exception:
        pass
    kernels = sorted((paths.cache_dir() / "kernels").glob("*/bzImage"), key=lambda p: p.stat().st_mtime)
    return SimpleNamespace(bzimage=kernels[-1]) if kernels else None


@pytest.mark.slow
@needs_root
def test_kernel_target_runs_batches_in_the_guest(interp, target, tmp_path):
    """--target kernel plumbing: sequences staged in the VM run dir, a batch per SSH command; the 6.12
    guest shows the mmap divergence of docs/design.md §2 case 3 against the ideal (plain) answer."""
    kernel = _cached_kernel()
    if kernel is None:
        pytest.skip("no cached baseline kernel (kproto build)")
    from rig.machine.qemu import VM
    seqs = [MMAP_SEQ, ["stat a", "readdir .", "open 0 a RDONLY", "unlink a", "fstat 0"]] + \
        [["open 0 a RDWR", f"pwrite 0 0 x{i}", "pread 0 4 0"] for i in range(40)]
    plain = target("plain")
    expect = plain.run(seqs)
    with VM(bzimage=kernel.bzimage, run_dir=tmp_path / "run", name="fuzz") as vm:
        vm.wait_ready()
        kt = targets.KernelTarget(interp, tmp_path / "run", vm)
        try:
            got = kt.run(seqs)
            assert kt.take_events() == []          # no splat on the baseline
            res = search.fuzz(kt, plain, seed=SEED, max_sequences=64, batch=32, include_known=True)
        finally:
            kt.close()
    assert kt.executed >= len(seqs) and res.sequences_run >= 64
    assert got[0].lines[-1] == "ok data=foo" and expect[0].lines[-1] == "ok data=bar"
    assert all(g.lines == e.lines for g, e in zip(got[2:], expect[2:]))
    assert all(g.end == "exit=0" for g in got)


def test_kernel_target_mounts_with_the_first_batch_through_the_mounter(interp, tmp_path):
    """No VM: the commands the kernel target sends (mount in the first batch's SSH command, THE mounter's
    command lines, the batch between two /dev/kmsg markers and the kernel's state before and after), and
    the staged interpreter and spec."""
    from fake_guest import FakeVM
    from rig.guest.mount import mount_commands
    vm = FakeVM(tmp_path / "bz", tmp_path / "run", "fuzz", trigger=lambda ops: False).start()
    kt = targets.KernelTarget(interp, tmp_path / "run", vm)
    assert (vm.run_dir / "fuzz" / "opinterp").is_file() and (vm.run_dir / "fuzz" / "spec").is_file()
    got = kt.run([["stat a"]])
    kt.run([["stat b"]])
    kt.close()
    w = kt.GUEST_WORK
    mount_sh, umount_sh = mount_commands("overlay", [f"{w}/lower"], f"{w}/upper", f"{w}/work", f"{w}/merged")
    first, second, last = vm.ssh.cmds
    k = targets.KSTATE_SH
    assert first.startswith(f"{k}; echo '<5>kproto: fuzz-batch 1 start' > /dev/kmsg; {umount_sh} 2>/dev/null; "
                            f"rm -rf {w} && ") and f"&& {mount_sh} && " in first
    assert f"opinterp setup {kt.gstage}/spec {w}/lower {w}/upper 400" in first
    assert first.endswith(f"opinterp run {w}/merged 0 {kt.gstage}/batch-1.txt; rc=$?; "
                          f"echo '<5>kproto: fuzz-batch 1 end' > /dev/kmsg; {k}; exit $rc")
    assert second == (f"{k}; echo '<5>kproto: fuzz-batch 2 start' > /dev/kmsg; {kt.gstage}/opinterp run "
                      f"{w}/merged 1 {kt.gstage}/batch-2.txt; rc=$?; echo '<5>kproto: fuzz-batch 2 end' > /dev/kmsg; "
                      f"{k}; exit $rc")
    assert last == f"{umount_sh}; rm -rf {w}"
    assert got[0].lines == ["ok"] and not list((vm.run_dir / "fuzz").glob("batch-*"))
    assert "kproto: fuzz-batch 2 end" in vm.console_text() and kt.take_events() == []
