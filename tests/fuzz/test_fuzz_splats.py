"""kproto fuzz --target kernel watches the guest console (issue 19 section 2): a splat printed during a batch
is attributed to the sequence that triggered it, shrunk to 1-minimal on fresh boots, and its C reproducer
checked on the patched and the baseline kernel.

Fast tests: the fake guest of tests/fuzz/fake_guest.py (its kernel WARNs, once per boot, on a write through
an fd that opened kproto-warn for writing); the reference is a pure-Python target that answers "ok" as the
fake does, so every finding here is splat-only. Slow: the real thing with warn-copyup.patch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
import pytest

from fake_guest import WARN_SIG, booter, open_then_write
from fuzz_helpers import needs_ref, needs_root
from rig.fuzz import emit, search, splatcheck
from rig.fuzz.interp import SeqResult
from rig.fuzz.targets import KernelTarget, Target

REPO = Path(__file__).resolve().parents[2]
PADDED = ["stat a", "open 1 kproto-warn WRONLY", "stat b", "open 0 a RDONLY", "write 1 bar", "stat u", "readdir ."]
MINIMAL = ["open 1 kproto-warn WRONLY", "write 1 bar"]


class OkTarget(Target):
    """The reference: "ok" to every op (as the fake guest answers)."""

    name = "ok"

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"), Path("/nonexistent"))

    def _mount(self) -> None:
        pass

    def _unmount(self) -> None:
        pass

    def _run(self, seqs: list[tuple[str, ...]], first: int) -> list[SeqResult]:
        return [SeqResult(["ok"] * len(s), "exit=0") for s in seqs]


def _kernel(interp, tmp_path, name: str, **kw) -> KernelTarget:
    return KernelTarget(interp, tmp_path / "run", None, boot=booter(tmp_path / "run", name=name, **kw))


def test_fake_rule():
    assert open_then_write(PADDED) and open_then_write(MINIMAL)
    assert not open_then_write(["open 1 kproto-warn WRONLY", "open 1 a RDONLY", "write 1 bar"])
    assert not open_then_write(["open 1 kproto-warn RDONLY", "write 1 bar"])


def test_a_splat_during_a_batch_is_an_event_one_before_it_is_not(interp, tmp_path):
    """The console between the batch's two kmsg markers is scanned: a WARNING printed during boot (before
    the batch) is not the batch's; one printed by a sequence of the batch is, with the batch's sequences."""
    kt = _kernel(interp, tmp_path, "boot-warn", warn_at_boot=True, trigger=None)
    try:
        kt.run([["stat a"], MINIMAL])
        assert "WARNING: CPU" in kt.vm.console_text() and kt.take_events() == []
    finally:
        kt.close()
    kt = _kernel(interp, tmp_path, "fuzz")
    try:
        batch = [["stat a"], ["open 0 a RDONLY"], PADDED, ["stat b"]]
        kt.run([["stat u"]])
        assert kt.take_events() == []
        kt.run(batch)
        (ev,) = kt.take_events()
        assert ev.seqs == batch and [s.signature for s in ev.splats] == [WARN_SIG]
        assert ev.splats[0].title == "WARNING in ovl_copy_up_one" and ev.new_taint == 512 and ev.dirty
        assert kt.dirty
        kt.run([["stat d"]])                    # same boot: nothing new (and WARN_ON_ONCE is spent)
        assert kt.take_events() == []
    finally:
        kt.close()


def test_the_splat_is_attributed_to_the_right_sequence_and_shrunk(interp, tmp_path):
    main, prober = _kernel(interp, tmp_path, "fuzz"), _kernel(interp, tmp_path, "probe")
    logs: list[str] = []
    try:
        batch = [["stat a"], ["open 0 a RDONLY", "write 0 x"], PADDED, ["stat b"]]
        main.run(batch)
        (ev,) = main.take_events()
        hunter = search.SplatHunter(prober, OkTarget(), logs.append, budget_s=60)
        f = hunter.hunt(ev, ev.splats[0])
    finally:
        main.close()
        prober.close()
    assert isinstance(f, search.Finding), (f, logs)
    assert f.ops == MINIMAL and f.minimal and f.diff is None
    assert f.splat is not None and f.splat.signature == WARN_SIG and f.splat.kind == "warning"
    assert any("batch 1: splat WARNING in ovl_copy_up_one, attributing" in m for m in logs), logs
    assert any("sequence 3 of 4 shows it" in m for m in logs), logs
    assert any(m.startswith("splat WARNING in ovl_copy_up_one: shrinking") for m in logs), logs
    # attribution replayed sequences 1, 2, 3 one by one on one clean boot, then every shrink candidate
    # ran alone on a fresh boot
    from fake_guest import FakeVM
    probes = [vm for vm in FakeVM.instances if vm.name.startswith("probe")]
    assert probes[0].executed == batch[:3]
    assert all(len(vm.executed) == 1 for vm in probes[1:])
    # 1-minimal: without either op, a fresh kernel does not WARN
    assert not open_then_write(MINIMAL[:1]) and not open_then_write(MINIMAL[1:])


def test_a_splat_no_single_sequence_shows_is_not_a_finding(interp, tmp_path):
    """The fake WARNs on the *second* sequence that writes kproto-warn in a boot: no sequence alone shows it."""
    seen = {"n": 0}

    def twice(ops: list[str]) -> bool:
        if open_then_write(ops):
            seen["n"] += 1
        return seen["n"] >= 2 and open_then_write(ops)
    main, prober = _kernel(interp, tmp_path, "fuzz", trigger=twice), _kernel(interp, tmp_path, "probe",
                                                                             trigger=lambda ops: False)
    try:
        main.run([MINIMAL, PADDED])
        (ev,) = main.take_events()
        got = search.SplatHunter(prober, OkTarget(), lambda m: None, budget_s=60).hunt(ev, ev.splats[0])
    finally:
        main.close()
        prober.close()
    assert isinstance(got, tuple) and "no sequence of the batch shows it" in got[1]


def test_the_search_reports_a_splat_finding_with_its_splat_in_the_json(interp, tmp_path):
    """End to end on the fake guest: search.fuzz finds the WARN (results match the reference all along),
    shrinks it, and the reproducer check (as kproto fuzz does it) fills in the JSON's splat."""
    main, prober = _kernel(interp, tmp_path, "fuzz"), _kernel(interp, tmp_path, "probe")
    bases: list[KernelTarget] = []

    def baseline() -> KernelTarget:
        bases.append(_kernel(interp, tmp_path, "baseline", trigger=None))
        return bases[-1]
    logs: list[str] = []

    def on_finding(f):
        emit.emit_finding(f, tmp_path / "findings", None, "fake kernel")
        splatcheck.check(f, prober, baseline, logs.append)
        emit.emit_finding(f, tmp_path / "findings", None, "fake kernel")
    try:
        res = search.fuzz(main, OkTarget(), seed=5, max_sequences=4000, batch=32, progress=logs.append,
                          on_finding=on_finding, prober=prober, splat_budget_s=120)
    finally:
        for t in (main, prober, *bases):
            t.close()
    d = res.as_json()
    assert len(d["findings"]) == 1, (d, logs)
    f = d["findings"][0]
    assert f["first_difference"] is None
    assert f["splat"] == {"title": "WARNING in ovl_copy_up_one", "signature": WARN_SIG, "kind": "warning",
                          "baseline": False, "reproduced": True}
    assert len(f["ops"]) == 2 and open_then_write(f["ops"]), f["ops"]
    assert f["ops"][0].startswith("open ") and " kproto-warn " in f["ops"][0]
    assert d["unattributed_splats"] == []
    assert any("checking on the baseline" in m for m in logs), logs
    written = json.loads((tmp_path / "findings" / f["id"] / "result.json").read_text())
    assert written["splat"]["reproduced"] is True and written["splat"]["baseline"] is False
    src = (tmp_path / "findings" / f["id"] / "repro.c").read_text()
    assert "Kernel splat (warning): WARNING in ovl_copy_up_one" in src
    # the search ran on, on a fresh boot: the main target booted again after the splat
    assert main.boots >= 2


def test_a_splat_the_baseline_shows_too_says_so(interp, tmp_path):
    from rig.fuzz.findings import Finding, SplatInfo
    prober = _kernel(interp, tmp_path, "probe")
    base = _kernel(interp, tmp_path, "baseline")          # the baseline has the bug too
    f = Finding(ops=list(MINIMAL), diff=None, reference_lines=["ok", "ok"], target_lines=["ok", "ok"],
                splat=SplatInfo("WARNING in ovl_copy_up_one", WARN_SIG, "warning"))
    emit.emit_finding(f, tmp_path / "findings", None, "fake kernel")
    logs: list[str] = []
    try:
        splatcheck.check(f, prober, lambda: base, logs.append)
    finally:
        prober.close()
        base.close()
    assert f.splat is not None and f.splat.reproduced and f.splat.baseline
    assert f.as_json()["splat"]["baseline"] is True
    assert any("not a regression of the patch" in m for m in logs), logs


# ------------------------------------------------------------------ the CLI, fake guest
@needs_root
def test_cli_kernel_target_splat_finding(tmp_path, monkeypatch):
    """kproto fuzz --target kernel with the fake guest: the patched kernel WARNs, the baseline (from
    rig.kernel.prepare.baseline) does not; exit 1, the JSON's finding carries the splat."""
    from click.testing import CliRunner

    from fake_guest import FakeVM
    from rig.cli import cmd_fuzz
    from rig.kernel import prepare
    from rig.kernel.build import Kernel
    from rig.machine import qemu
    from rig.suite import testrun

    class VM(FakeVM):
        def __init__(self, bzimage, run_dir, name="guest"):
            super().__init__(bzimage, run_dir, name)
            if Path(bzimage).name == "baseline-bzImage":
                self.trigger = None

    def kernel(name):
        return Kernel(tmp_path / name, "6.12-fake", "k", build_s=0.0, cached=True, patches=[])
    called = []
    monkeypatch.setattr(prepare, "open_series", lambda ps: [])
    monkeypatch.setattr(prepare, "patched", lambda spec, series, progress: (None, kernel("bzImage")))
    monkeypatch.setattr(prepare, "baseline", lambda spec, progress, tree=None: called.append(1) or (None, kernel("baseline-bzImage")))
    monkeypatch.setattr(qemu, "VM", VM)
    monkeypatch.setattr(testrun, "new_run_dir", lambda keep: tmp_path / "run")
    r = CliRunner().invoke(cmd_fuzz.command, ["--target", "kernel", "--reference", "plain", "--seed", "5",
                                              "--max-sequences", "4000", "--findings", str(tmp_path / "f"),
                                              "--json", str(tmp_path / "out.json")])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output + repr(r.exception)
    d = json.loads((tmp_path / "out.json").read_text())
    splats = [f for f in d["findings"] if f["splat"]]
    assert splats and splats[0]["splat"]["signature"] == WARN_SIG and splats[0]["splat"]["baseline"] is False
    assert splats[0]["splat"]["reproduced"] is True and called == [1]
    assert "splat: WARNING in ovl_copy_up_one" in r.output


# ------------------------------------------------------------------ the real thing (slow)
@pytest.mark.slow
@needs_ref
def test_kproto_fuzz_finds_the_warn_of_warn_copyup_patch(tmp_path):
    """Real kernels and QEMU: warn-copyup.patch WARNs on copy-up of kproto-warn*, which the fixture has."""
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    r = subprocess.run([str(REPO / ".venv" / "bin" / "kproto") if (REPO / ".venv" / "bin" / "kproto").exists()
                        else "kproto", "fuzz", "--target", "kernel", str(REPO / "tests/data/patches/warn-copyup.patch"),
                        "--seed", "7", "--budget", "30s", "--json", str(out), "--findings", str(tmp_path / "f")],
                       capture_output=True, text=True, cwd=REPO, timeout=1800)
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]      # docs/design.md: 1 = findings
    d = json.loads(out.read_text())
    warn = [f for f in d["findings"] if f["splat"] and f["splat"]["title"].startswith("WARNING in ")]
    assert warn, r.stdout[-3000:] + r.stderr[-5000:]
    f = warn[0]
    sys.stderr.write(f"\nwarn-copyup finding ({wall:.0f} s): {json.dumps(f, indent=1)}\n")
    assert f["splat"]["title"] == "WARNING in ovl_copy_up_one" and f["splat"]["kind"] == "warning"
    assert f["splat"]["baseline"] is False and f["splat"]["reproduced"] is True
    # a few ops, one of which copies up kproto-warn
    assert 1 <= len(f["ops"]) <= 4 and any("kproto-warn" in op for op in f["ops"]), f["ops"]
    copy_up = ("open", "truncate", "chmod", "setxattr", "utimens", "link", "rename")
    assert any(op.split()[0] in copy_up and "kproto-warn" in op for op in f["ops"]), f["ops"]
    assert Path(f["reproducer"]).is_file()
