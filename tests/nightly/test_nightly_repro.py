"""`kproto nightly` keeps a reproducer bundle per finding of a regressed series (issue 19 §5, docs/nightly.md).

The whole nightly on the embedded cluster with the fake kernel tree (real, seconds-long builds of a pretend
bzImage) and the stand-in for kproto test of tests/data/nightly/fakes/nightly_fakes.py. The test stage runs
kproto test with --repro into a temp dir; the stand-in boots nothing and writes no bundle, so here it is
wrapped with what `kproto test --repro DIR` does for a finding: a real bundle (rig.suite.repro.write_bundle)
of the kernels it found in the cache. Fixture series: s1 is clean, s2 regresses (a regressed test and a new
WARNING)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from kproto_helpers import DATA, FAKE_KERNEL
from rig.kernel import prepare
from rig.nightly.config import load_config
from rig.nightly.history import history_text
from rig.nightly.run import run as nightly_run
from rig.nightly.store import Store
from rig.suite import repro
from rig.suite.results import KernelRun

REPO = Path(__file__).resolve().parents[2]
NDATA = DATA / "nightly"
FAKES = NDATA / "fakes"
SERIES = NDATA / "fakekernel-series"
TEST = "rfc_read_ro_fd_after_copyup"
BOOT = repro.BootRecord(name="patched-1", argv=("qemu-system-x86_64", "-kernel", "bzImage", "-accel", "tcg"),
                        guest_files={"boot.plan": "ready KPROTO-GUEST-READY\n"}, run_dir="/tmp/kproto-run", accel="tcg")


@pytest.fixture
def fake_source(tmp_path) -> Path:
    """The fake kernel tree as a source tarball, with the checkpatch / get_maintainer stand-ins the
    nightly's pre-build pass runs."""
    src = tmp_path / "src" / "linux-fake"
    shutil.copytree(FAKE_KERNEL, src)
    for f in (NDATA / "fakekernel-scripts").iterdir():
        shutil.copy2(f, src / "scripts" / f.name)
    tb = tmp_path / "src" / "linux-fake.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(src, arcname="linux-fake")
    return tb


@pytest.fixture
def fake_test(monkeypatch, kcache):
    """nightly_fakes.fake_test (the stand-in for kproto test), importable here; no KVM."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("KPROTO_ACCEL", "tcg")
    import nightly_fakes
    return nightly_fakes.fake_test


class Bundling:
    """The stand-in for kproto test plus what --repro DIR does: a reproducer bundle of every test it
    reports (kproto test writes one per finding; a clean series' flaky test would get one too, which the
    nightly must not keep), in the --repro directory the nightly gave it."""

    def __init__(self, fake_test) -> None:
        self.fake_test = fake_test
        self.repro_dirs: dict[str, Path | None] = {}           # first patch file name -> opts.repro

    def __call__(self, opts):
        self.repro_dirs[Path(opts.patches[0]).name] = opts.repro
        rep = self.fake_test(opts)
        if opts.repro is None:
            return rep
        spec = prepare.KernelSpec(opts.kernel_src, tuple(opts.config))
        prep = prepare.prepare(spec, opts.patches, lambda m: None)       # cache hits: the run's kernels
        for t in rep.tests:
            run = KernelRun(label="patched", kernel=prep.patched)
            run.results[t["name"]] = {"name": t["name"], "status": "ok", "exit_code": 0, "signal": None,
                                      "error": None, "upper": {}, "lower_modified": False, "boot": "patched-1",
                                      "observations": t["patched"]["observations"]}
            finding = repro.Finding.from_run(run, t["name"], status=t["status"], reason="read_data differs")
            repro.write_bundle(opts.repro, spec=spec, tree=prep.tree, series=prep.series, kernel=prep.patched,
                               boot=BOOT, finding=finding, suite=REPO / "guest_tests", timeout=10.0)
        return rep


def write_config(d: Path, source: Path, series: list[str]) -> Path:
    lines = [f'output = "{d / "out"}"', 'tests = "rfc_read"', "", "[[kernel]]", 'name = "fake-a"',
             f'source = "{source}"', ""]
    for name in series:
        lines += ["[[series]]", f'name = "{name}"', f'paths = ["{SERIES / (name + ".patch")}"]', ""]
    p = d / "nightly.toml"
    p.write_text("\n".join(lines))
    return p


def test_a_regressed_series_gets_its_reproducers_and_a_clean_one_none(tmp_path, fake_source, fake_test):
    stand = Bundling(fake_test)
    res = nightly_run(load_config(write_config(tmp_path, fake_source, ["s1", "s2"])), say=lambda m: None,
                      test_fn=stand)
    by = {s.name: s for s in res.series}
    assert (by["s1"].verdict, by["s2"].verdict) == ("clean", "regressed")
    bundle = res.report_dir / "repro" / "fake-a--s2" / TEST
    assert by["s2"].reproducers == [str(bundle)] and by["s1"].reproducers == []

    # kproto test got a --repro directory for both series; the nightly removed them after reading them
    assert set(stand.repro_dirs) == {"s1.patch", "s2.patch"}
    assert all(d is not None and not d.exists() for d in stand.repro_dirs.values())

    # the bundle on disk, under the report directory: every file as kproto test wrote it (its sha256s
    # check out), reproduce.sh executable; nothing of the clean series
    assert sorted(p.name for p in (res.report_dir / "repro").iterdir()) == ["fake-a--s2"]
    assert [p.name for p in bundle.parent.iterdir()] == [TEST]
    b = repro.load_bundle(bundle)
    assert b.test == TEST
    assert stat.S_IMODE((bundle / "reproduce.sh").stat().st_mode) == 0o755
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert {"bundle.json", "config", "expected.json", "README.txt", "reproduce.sh", "series/manifest.json",
            "series/s2.patch", f"test/{TEST}.c", f"test/{TEST}.toml"} <= set(files)
    assert (bundle / "series" / "s2.patch").read_bytes() == (SERIES / "s2.patch").read_bytes()
    assert json.loads((bundle / "expected.json").read_text())["status"] == "regressed"

    # report.json: series[].reproducers
    j = {s["name"]: s for s in json.loads((res.report_dir / "report.json").read_text())["series"]}
    assert j["s2"]["reproducers"] == [str(bundle)] and j["s1"]["reproducers"] == []

    # summary.txt (and stdout): "reproducer: PATH" under the regressed series only
    lines = (res.report_dir / "summary.txt").read_text().splitlines()
    i = next(n for n, l in enumerate(lines) if l.strip().startswith("s2 "))
    under = lines[i + 1:next(n for n in range(i + 1, len(lines)) if not lines[n].startswith("     "))]
    assert f"reproducer: {bundle}" in [l.strip() for l in under]
    assert sum("reproducer:" in l for l in lines) == 1 and res.summary == "\n".join(lines) + "\n"

    # report.html: a link to the bundle's README, relative to the report
    html = (res.report_dir / "report.html").read_text()
    assert f'href="repro/fake-a--s2/{TEST}/README.txt"' in html and html.count('class="reproducer"') == 1

    # the history keeps the paths
    db = tmp_path / "out" / "history.sqlite"
    with Store.open(db) as st:
        back = {s.name: s for s in st.load_series(res.run_id)}
        assert back["s2"].reproducers == [str(bundle)] and back["s1"].reproducers == []
        rows = {r["series"]: r for r in json.loads(history_text(st, series="s*", as_json=True))}
        assert rows["s2"]["reproducers"] == [str(bundle)] and rows["s1"]["reproducers"] == []
        assert (rows["s2"]["worker"], rows["s2"]["accel"]) == ("embedded", "tcg")
    c = sqlite3.connect(db)
    assert c.execute("SELECT name, reproducers FROM series ORDER BY id").fetchall() == [
        ("s1", "[]"), ("s2", json.dumps([str(bundle)]))]
    c.close()


def test_a_test_function_that_writes_no_bundles_gives_no_reproducers(tmp_path, fake_source, fake_test):
    """The stand-in as it is (it ignores --repro): the regressed series has no reproducers, and the report
    directory no repro/."""
    res = nightly_run(load_config(write_config(tmp_path, fake_source, ["s1", "s2"])), say=lambda m: None,
                      test_fn=fake_test)
    by = {s.name: s for s in res.series}
    assert by["s2"].verdict == "regressed" and res.exit_code == 0
    assert by["s2"].reproducers == [] and by["s1"].reproducers == []
    assert not (res.report_dir / "repro").exists()
    assert "reproducer:" not in res.summary
    j = json.loads((res.report_dir / "report.json").read_text())
    assert [s["reproducers"] for s in j["series"]] == [[], []]
