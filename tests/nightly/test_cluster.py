"""`kproto nightly` on Dask distributed (rig/nightly/engine.py, matrix.py, graph.py, stages.py, cluster.py,
children.py, placement.py; rig/kernel/artifacts.py).

Real processes on the loopback only: a `dask scheduler` on 127.0.0.1 and two `dask worker` processes, one
declaring kvm=1, one without, each with its own KPROTO_CACHE (as if on two machines). The kernels are the
fake kernel tree (tests/data/fakekernel: real, seconds-long builds of a pretend bzImage); kproto test is the
stand-in tests/data/nightly/fakes/nightly_fakes.py (on the workers' PYTHONPATH), which boots nothing: it
checks the kernels are in its worker's cache and starts a `sleep` standing in for QEMU, reaped like QEMU.

KVM is modelled, not used: the "kvm" worker declares the resource and has KPROTO_ACCEL=kvm (so kproto's
accel probe says kvm there); this machine has no usable KVM and no guest is booted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kproto_helpers import FAKE_KERNEL
from rig.kernel import artifacts
from rig.cli.main import main
from rig.core.errors import BadInput
from rig.nightly.config import load_config
from rig.nightly.history import history_text
from rig.nightly.run import NightlyResult
from rig.nightly.run import run as nightly_run
from rig.nightly.store import Store

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
NDATA = DATA / "nightly"
FAKES = NDATA / "fakes"
SERIES = NDATA / "fakekernel-series"
VENV_BIN = Path(sys.executable).parent
DASK = str(VENV_BIN / "dask") if (VENV_BIN / "dask").exists() else shutil.which("dask")
TEST_FN = "nightly_fakes:fake_test"
# name, kvm-only
MATRIX = [("s1", False), ("s2", False), ("s3", True), ("s4", False), ("noapply", False), ("buildbreak", False)]

pytestmark = pytest.mark.skipif(DASK is None, reason="dask distributed is not installed (pip install 'dask[distributed]')")


# ================================================================ fixtures and helpers

def make_fake_source(d: Path) -> Path:
    """The fake kernel tree as a source tarball, with stand-ins for scripts/checkpatch.pl and
    get_maintainer.pl (kproto test's pre-build pass runs them)."""
    src = d / "linux-fake"
    shutil.copytree(FAKE_KERNEL, src)
    for f in (NDATA / "fakekernel-scripts").iterdir():
        shutil.copy2(f, src / "scripts" / f.name)
    tb = d / "linux-fake.tar.gz"
    with tarfile.open(tb, "w:gz") as tf:
        tf.add(src, arcname="linux-fake")
    shutil.rmtree(src)
    return tb


@pytest.fixture(scope="module")
def fake_source(tmp_path_factory) -> Path:
    return make_fake_source(tmp_path_factory.mktemp("src"))


def write_config(d: Path, source: Path, kernels: int = 2, matrix=MATRIX, extra: str = "") -> Path:
    """Two kernels from the same fake source with different configs (two baselines), six series each."""
    (d / "nr8.config").write_text("CONFIG_NR_CPUS=8\n")
    lines = [f'output = "{d / "out"}"', 'tests = "rfc_read"', extra, "",
             "[[kernel]]", 'name = "fake-a"', f'source = "{source}"', ""]
    if kernels > 1:
        lines += ["[[kernel]]", 'name = "fake-b"', f'source = "{source}"', f'config = ["{d / "nr8.config"}"]', ""]
    for name, kvm in matrix:
        lines += ["[[series]]", f'name = "{name}"', f'paths = ["{SERIES / (name + ".patch")}"]']
        lines += ["kvm = true"] if kvm else []
        lines.append("")
    p = d / "nightly.toml"
    p.write_text("\n".join(lines))
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalDask:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1 (stopped by pid)."""

    def __init__(self, d: Path, workers: list[tuple[str, dict, list[str]]]):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.markers = d / "markers"
        self.procs: dict[str, subprocess.Popen] = {}
        self.caches: dict[str, Path] = {}
        sf = d / "scheduler.json"
        env = self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)]),
                          "KPROTO_FAKE_MARKERS": str(self.markers)}
        self.procs["scheduler"] = subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0",
             "--scheduler-file", str(sf)], env=env, stdout=open(d / "scheduler.log", "w"), stderr=subprocess.STDOUT)
        t = time.monotonic()
        while not sf.is_file() and time.monotonic() - t < 60:
            time.sleep(0.1)
        assert sf.is_file(), (d / "scheduler.log").read_text()
        time.sleep(0.2)
        self.address = json.loads(sf.read_text())["address"]
        try:
            for name, wenv, extra in workers:
                self.add_worker(name, wenv, extra)
            self.wait_workers(len(workers))
        except BaseException:
            self.stop()                 # the caller never gets the object: stop what was started here
            raise

    def add_worker(self, name: str, wenv: dict, extra: list[str]) -> None:
        cache = self.caches[name] = self.d / f"cache-{name}"
        self.procs[name] = subprocess.Popen(
            [DASK, "worker", self.address, "--name", name, "--host", "127.0.0.1", "--no-nanny", "--nthreads", "2",
             "--no-dashboard", "--death-timeout", "60", *extra],
            env={**self.env, "KPROTO_CACHE": str(cache), **wenv},
            stdout=open(self.d / f"{name}.log", "a"), stderr=subprocess.STDOUT)

    def wait_workers(self, n: int) -> None:
        from distributed import Client
        with Client(self.address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n, timeout=90)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop(self) -> None:
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def markers_of(self, name: str) -> list[dict]:
        cache = str(self.caches[name])
        return [m for m in read_markers(self.markers) if m["cache"] == cache]


def read_markers(d: Path) -> list[dict]:
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(f.read_text()))
        except ValueError:
            pass
    return out


KVM_WORKER = ("kvm-worker", {"KPROTO_ACCEL": "kvm"}, ["--resources", "kvm=1"])
PLAIN_WORKER = ("plain-worker", {"KPROTO_ACCEL": "tcg"}, [])


@pytest.fixture
def fakes_importable(monkeypatch):
    """The stand-in for kproto test importable here and in stage processes started from here."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(FAKES), str(REPO)]))


def embedded_run(d: Path, source: Path, monkeypatch, accel: str = "kvm", **kw) -> NightlyResult:
    """The matrix on the embedded cluster of this process (KPROTO_ACCEL=kvm: this "machine" offers kvm)."""
    d.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("KPROTO_CACHE", str(d / "cache"))
    monkeypatch.setenv("KPROTO_ACCEL", accel)
    monkeypatch.setenv("KPROTO_FAKE_MARKERS", str(d / "markers"))
    cfg = load_config(write_config(d, source, **kw))
    return nightly_run(cfg, say=lambda m: None, test_fn=TEST_FN)


def cluster_run(d: Path, source: Path, address: str, log: list[str] | None = None) -> NightlyResult:
    d.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(d, source))
    return nightly_run(cfg, say=(log.append if log is not None else (lambda m: None)), test_fn=TEST_FN,
                       scheduler=address)


# ---- what must be the same between two runs of the same matrix, wherever they ran

_CACHE = re.compile(r"/\S*?/cache[^/\s]*/(build/[0-9a-f]+(?=\.log))?")


def _norm(v):
    """Paths into a worker's own cache (a build log in a BuildError) are the only per-worker text."""
    if isinstance(v, str):
        return _CACHE.sub(lambda m: "CACHE/" + ("build/OBJDIR" if m.group(1) else ""), v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def history_rows(db: Path) -> dict[str, list]:
    c = sqlite3.connect(db)
    q = lambda sql: [tuple(_norm(x) for x in r) for r in c.execute(sql).fetchall()]
    rows = {
        "runs": q("SELECT id, complete, state, exit_code, previous_run, error FROM runs ORDER BY id"),
        "kernels": q("SELECT run_id, name, source, version, commit_id, error FROM kernels ORDER BY id"),
        "series": q("SELECT run_id, kernel, name, patches, series_hash, outcome, applies, builds, boots, tested, "
                    "verdict, error, notes, kernel_version FROM series ORDER BY id"),
        "tests": q("SELECT s.kernel, s.name, t.name, t.status, t.known, t.observations FROM test_results t "
                   "JOIN series s ON s.id = t.series_id ORDER BY t.id"),
        "splats": q("SELECT s.kernel, s.name, p.side, p.kind, p.title, p.is_new, p.signature FROM splats p "
                    "JOIN series s ON s.id = p.series_id ORDER BY p.id"),
        "timings": q("SELECT s.kernel, s.name, t.key, t.seconds FROM timings t JOIN series s ON s.id = t.series_id "
                     "ORDER BY s.id, t.key"),
        "changes": q("SELECT kind, severity, kernel, series, subject, before, after, detail FROM changes ORDER BY id"),
    }
    c.close()
    return rows


def report_of(report_dir: Path) -> dict:
    j = json.loads((report_dir / "report.json").read_text())
    cluster = j.pop("cluster")
    j["run"] = {k: v for k, v in j["run"].items() if k not in ("started", "finished", "report_dir", "config_path",
                                                               "config_hash")}
    for s in j["series"]:
        s.pop("started"), s.pop("finished")
    summary = (report_dir / "summary.txt").read_text().splitlines()
    summary = [l for l in summary if not l.startswith(("started ", "report:", "json:", "junit:"))]
    junit = {f.name: f.read_text() for f in sorted((report_dir / "junit").iterdir())}
    return {"json": _norm(j), "summary": _norm(summary), "junit": _norm(junit), "cluster": cluster}


def placement(res: NightlyResult) -> list[dict]:
    return json.loads((res.report_dir / "report.json").read_text())["cluster"]["placement"]


def procs_with_cache(cache: Path) -> list[tuple[int, str]]:
    """Processes (other than the worker itself) whose environment has KPROTO_CACHE=CACHE: the stage
    processes of that worker and what they started (make, the stand-in QEMU)."""
    want = f"KPROTO_CACHE={cache}".encode()
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes().split(b"\0")
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if want in env and "dask worker" not in cmd and "bin/dask" not in cmd:
            out.append((int(p.name), cmd))
    return out


# ================================================================ tests

def test_unreachable_scheduler_is_one_line_exit_3_before_any_work(tmp_path, fake_source):
    cfg = write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False)])
    port = free_port()
    t = time.monotonic()
    res = CliRunner().invoke(main, ["nightly", str(cfg), "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert res.exit_code == 3, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert lines == [f"kproto: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}: connection "
                     "refused; start it with `dask scheduler` (docs/cluster.md) or fix --scheduler / [cluster] scheduler"]
    assert time.monotonic() - t < 20
    assert not (tmp_path / "out" / "history.sqlite").exists()          # no run row: nothing started
    # the same from the config's [cluster] table
    cfg2 = write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False)],
                        extra=f'[cluster]\nscheduler = "127.0.0.1:{port}"')
    res = CliRunner().invoke(main, ["nightly", str(cfg2)])
    assert res.exit_code == 3 and "cannot reach the Dask scheduler at tcp://127.0.0.1" in res.output


@pytest.mark.parametrize("body, msg", [
    ("[cluster]\nschedulr = \"x\"\n", "unknown key.*schedulr"),
    ("[cluster]\nbuild_cpus = 0\n", "build_cpus"),
    ("[cluster]\nscheduler = 5\n", "scheduler"),
])
def test_bad_cluster_table_is_exit_2(tmp_path, fake_source, body, msg):
    p = write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False)])
    p.write_text(p.read_text() + "\n" + body)
    with pytest.raises(BadInput, match=msg):
        load_config(p)
    assert CliRunner().invoke(main, ["nightly", str(p)]).exit_code == 2


def test_cluster_table_is_not_part_of_the_config_digest(tmp_path, fake_source):
    p = write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False)])
    a = load_config(p)
    p.write_text(p.read_text() + '\n[cluster]\nscheduler = "tcp://10.0.0.1:8786"\nbuild_cpus = 8\n')
    b = load_config(p)
    assert a.digest() == b.digest() and b.cluster.scheduler == "tcp://10.0.0.1:8786" and b.cluster.build_cpus == 8


def test_in_process_stand_ins_cannot_go_to_a_scheduler(tmp_path, fake_source):
    cfg = load_config(write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False)]))
    with pytest.raises(BadInput, match="module:function"):
        nightly_run(cfg, say=lambda m: None, test_fn=lambda opts: None, scheduler="tcp://127.0.0.1:1")


def test_kvm_only_cell_without_a_kvm_worker_is_an_error_not_a_hang(tmp_path, fake_source, fakes_importable,
                                                                      monkeypatch):
    res = embedded_run(tmp_path, fake_source, monkeypatch, accel="tcg", kernels=1,
                       matrix=[("s1", False), ("s3", True)])
    got = {s.name: (s.outcome, s.error) for s in res.series}
    assert got["s1"] == ("tested", None)
    assert got["s3"][0] == "error" and "no Dask worker offers cpus=" in got["s3"][1] and "kvm=1" in got["s3"][1]
    assert res.exit_code == 3


def test_shared_artifact_directory_moves_a_kernel_by_content_hash(tmp_path, fake_source, monkeypatch):
    """[cluster] artifacts = DIR: the builder publishes blobs by sha256, another machine installs them."""
    from rig.kernel import build
    from rig.kernel import tree
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "cache-a"))
    src = tree.open_source(str(fake_source))
    k = build.build(src, [], progress=lambda m: None)
    objdir = build.objdir_for(src, __import__("rig.kernel.kconfig").kernel.kconfig.requested())
    artifacts.keep_log(k.key, objdir.parent / f"{objdir.name}.log")
    man = artifacts.snapshot(k.key, {"worker": "a", "address": None, "host": "h"})
    assert set(man["files"]) == {"bzImage", "config", "meta.json", "build.log"}
    shared = tmp_path / "shared"
    artifacts.publish(man, shared)
    assert (shared / "blobs" / man["files"]["bzImage"]["sha256"]).read_bytes() == k.bzimage.read_bytes()
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "cache-b"))
    assert not artifacts.present(k.key)
    got = artifacts.ensure(man, shared)
    assert got["how"] == "shared" and got["from"] == "a" and artifacts.present(k.key)
    assert (tmp_path / "cache-b" / "kernels" / k.key / "bzImage").read_bytes() == k.bzimage.read_bytes()
    assert artifacts.log_path(k.key).read_text() == artifacts.file_path(k.key, "build.log").read_text()
    again = build.build(tree.open_source(str(fake_source)), [], progress=lambda m: None)
    assert again.cached and again.key == k.key                       # kproto finds it: nothing rebuilt
    # a corrupted blob is refused, and nothing half-installed stays behind
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "cache-c"))
    (shared / "blobs" / man["files"]["config"]["sha256"]).write_text("garbage")
    with pytest.raises(artifacts.ArtifactUnavailable, match="sha256"):
        artifacts.ensure(man, shared)
    assert not artifacts.present(k.key)
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "cache-c" / "kernels").iterdir())


def test_cluster_run_matches_embedded_run_placement_and_artifacts(tmp_path, fake_source, fakes_importable,
                                                                   monkeypatch):
    """The same matrix on the embedded cluster and on a scheduler with two workers: the same history rows and
    the same report; the KVM-only cells ran on the kvm worker; a kernel built on one worker was fetched
    through Dask, not rebuilt, by the other."""
    emb = embedded_run(tmp_path / "embedded", fake_source, monkeypatch)
    assert emb.exit_code == 0
    assert {(s.kernel, s.name): s.outcome for s in emb.series} == {
        (k, n): {"noapply": "apply-failed", "buildbreak": "build-failed"}.get(n, "tested")
        for k in ("fake-a", "fake-b") for n, _ in MATRIX}
    assert {p["worker"] for p in placement(emb)} == {"embedded"}

    monkeypatch.delenv("KPROTO_ACCEL")
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "driver-cache"))
    dask = LocalDask(tmp_path / "dask", [KVM_WORKER, PLAIN_WORKER])
    try:
        log: list[str] = []
        res = cluster_run(tmp_path / "cluster", fake_source, dask.address, log)
    finally:
        dask.stop()
    assert res.exit_code == emb.exit_code
    assert history_rows(res.report_dir.parent.parent / "history.sqlite") == \
        history_rows(emb.report_dir.parent.parent / "history.sqlite")
    a, b = report_of(emb.report_dir), report_of(res.report_dir)
    assert a["json"] == b["json"] and a["summary"] == b["summary"] and a["junit"] == b["junit"]

    # the run said where it ran: the scheduler, the dashboard, the workers, then who ran what
    assert f"Dask scheduler {dask.address}; dashboard http://127.0.0.1:" in log[1]
    assert any(l.startswith("worker kvm-worker (") and "kvm=1" in l for l in log)
    assert any(re.match(r"\[s3 on fake-a\] .*tested on kvm-worker \(.*accel kvm\)", l) for l in log), log
    places = placement(res)
    assert b["cluster"]["scheduler"] == dask.address and not b["cluster"]["embedded"]
    assert {w["name"] for w in b["cluster"]["workers"]} == {"kvm-worker", "plain-worker"}
    tests = {(p["kernel"], p["series"]): p for p in places if p["stage"] == "test"}
    for k in ("fake-a", "fake-b"):
        assert tests[(k, "s3")]["worker"] == "kvm-worker" and tests[(k, "s3")]["accel"] == "kvm"
    assert all(p["worker"] == "kvm-worker" for (k, n), p in tests.items() if dict(MATRIX)[n])
    assert {p["accel"] for p in tests.values() if p["worker"] == "plain-worker"} <= {"tcg"}
    # the history keeps who ran what (written by the driver, in report.json's order), and `kproto history
    # --series` shows the worker and accel of each cell's kproto test as report.json does
    db = res.report_dir.parent.parent / "history.sqlite"
    c = sqlite3.connect(db)
    stored = c.execute("SELECT p.kernel, p.series, p.stage, p.worker, p.accel, s.name FROM placement p"
                       " LEFT JOIN series s ON s.id = p.series_id WHERE p.run_id = ? ORDER BY p.id",
                       (res.run_id,)).fetchall()
    c.close()
    assert [r[:5] for r in stored] == [(p["kernel"], p["series"], p["stage"], p["worker"], p["accel"])
                                       for p in places]
    assert all(r[5] == r[1] for r in stored)          # a cell's rows point at its series row, a baseline's at none
    with Store.open(db) as st:
        rows = json.loads(history_text(st, series="*", as_json=True))
    assert len(rows) == len(tests) == 2 * len(MATRIX)
    built_on = {(p["kernel"], p["series"]): p["worker"] for p in places if p["stage"] == "patched"}
    assert {(r["kernel"], r["series"]): (r["worker"], r["accel"]) for r in rows} == {
        key: (built_on[key], None) if key[1] in ("noapply", "buildbreak") else (p["worker"], p["accel"])
        for key, p in tests.items()}        # a cell that stopped at its patched build: where that ran
    assert {(r["worker"], r["accel"]) for r in rows if r["series"] == "s3"} == {("kvm-worker", "kvm")}
    with Store.open(emb.report_dir.parent.parent / "history.sqlite") as st:
        assert {r["worker"] for r in json.loads(history_text(st, series="*", as_json=True))} == {"embedded"}
    # both workers built (one baseline each), and kernels built on one were fetched by the other
    builders = {p["kernel"]: p["worker"] for p in places if p["stage"] == "baseline"}
    assert set(builders.values()) == {"kvm-worker", "plain-worker"}, builders
    patched = {(p["kernel"], p["series"]): p for p in places if p["stage"] == "patched"}
    assert all(p["worker"] == builders[k] for (k, n), p in patched.items()), (builders, patched)
    moved = [(key, f) for key, p in tests.items() for f in p.get("fetched", []) if f["how"] != "local"]
    assert moved, tests
    for (k, n), f in moved:
        assert f["how"] == "dask" and f["from"] == builders[k] != tests[(k, n)]["worker"]
        assert f["bytes"] > 0 and len(f["digest"]) == 64
    # ... and the stand-in for kproto test found every kernel in its worker's cache: nothing was rebuilt
    calls = read_markers(dask.markers)
    assert len(calls) == 8 and all(m["base_cached"] and m["patched_cached"] for m in calls), calls
    for (k, n), f in moved:
        cache = dask.caches[tests[(k, n)]["worker"]]
        assert (cache / "kernels" / f["key"] / "bzImage").is_file()
        assert (cache / "artifacts" / "logs" / f"{f['key']}.log").is_file()         # the build log came along
    # the HTML report says it too
    html = (res.report_dir / "report.html").read_text()
    assert '<section id="cluster">' in html and 'data-worker="kvm-worker"' in html


@pytest.mark.parametrize("when", ["build", "boot"])
def test_worker_killed_mid_task_the_run_completes_with_the_same_results(tmp_path, fake_source, fakes_importable,
                                                                         monkeypatch, when):
    """SIGKILL the worker without KVM in the middle of a kernel build (its fake build sleeps) or of a "boot"
    (the stand-in QEMU runs): Dask retries its tasks on the other worker, nothing it started outlives it (no
    process, no file), and the run completes with the embedded run's results."""
    emb = embedded_run(tmp_path / "embedded", fake_source, monkeypatch)
    monkeypatch.delenv("KPROTO_ACCEL")
    monkeypatch.setenv("KPROTO_CACHE", str(tmp_path / "driver-cache"))
    slow = {"FAKE_BUILD_SLEEP": "3"} if when == "build" else {"KPROTO_FAKE_BOOT_S": "4"}
    victim_tmp = tmp_path / "victim-tmp"               # its TMPDIR: where its stage processes work
    victim_tmp.mkdir()
    victim = ("plain-worker", {**PLAIN_WORKER[1], **slow, "TMPDIR": str(victim_tmp)}, [])
    dask = LocalDask(tmp_path / "dask", [KVM_WORKER, victim])
    out: dict = {}

    def night():
        try:
            out["res"] = cluster_run(tmp_path / "cluster", fake_source, dask.address)
        except BaseException as e:       # pragma: no cover - shown below
            out["exc"] = e
    t = threading.Thread(target=night)
    try:
        t.start()
        cache = dask.caches["plain-worker"]
        deadline = time.monotonic() + 120
        seen: list[tuple[int, str]] = []
        while time.monotonic() < deadline and t.is_alive():
            procs = procs_with_cache(cache)
            if when == "build":
                seen = [p for p in procs if re.match(r"(sleep 3|make .*bzImage)", p[1])]
            else:
                seen = [p for p in procs if p[1] == "sleep 600"]
            if seen:
                break
            time.sleep(0.05)
        assert seen, f"the plain worker never got to a {when} (the run ended first)"
        time.sleep(0.3)
        dask.kill("plain-worker")
        # what the worker had started dies with it: stage process, make and its shell, the stand-in QEMU
        deadline = time.monotonic() + 30
        while procs_with_cache(cache) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert procs_with_cache(cache) == []
        # nor any file of the stage's: its job and result went through pipes, its directory went with it
        assert not any(victim_tmp.glob("kproto-stage-*")), sorted(p.name for p in victim_tmp.iterdir())
        t.join(timeout=300)
        assert not t.is_alive()
    finally:
        dask.stop()
        t.join(timeout=60)
    assert "exc" not in out, out.get("exc")
    res = out["res"]
    assert res.exit_code == emb.exit_code == 0
    assert history_rows(res.report_dir.parent.parent / "history.sqlite") == \
        history_rows(emb.report_dir.parent.parent / "history.sqlite")
    a, b = report_of(emb.report_dir), report_of(res.report_dir)
    assert a["json"] == b["json"] and a["summary"] == b["summary"]
    # the dead worker's work was redone by the survivor
    last = {}
    for p in placement(res):
        last[(p["kernel"], p["series"], p["stage"])] = p["worker"]
    assert "kvm-worker" in last.values()


DRIVER = """
import signal, sys
from rig.nightly.config import load_config
from rig.nightly.run import run
def term(signum, frame):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, term)        # as `kproto` does: SIGTERM unwinds like Ctrl-C
try:
    run(load_config(sys.argv[1]), say=lambda m: print(m, flush=True), test_fn="nightly_fakes:fake_test")
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(3)
"""


def test_sigterm_stops_the_stage_processes_and_records_the_run_interrupted(tmp_path, fake_source):
    """systemd stops a nightly with SIGTERM in the middle of a "boot" on the embedded cluster: the stage
    process and its stand-in QEMU are stopped (they run in threads of the driver that Dask cannot interrupt),
    the run is recorded as interrupted, and nothing is left running."""
    cfg = write_config(tmp_path, fake_source, kernels=1, matrix=[("s1", False), ("s4", False)])
    cache = tmp_path / "cache"
    env = {**os.environ, "KPROTO_CACHE": str(cache), "KPROTO_FAKE_BOOT_S": "60",
           "PYTHONPATH": os.pathsep.join([str(FAKES), str(REPO)])}
    p = subprocess.Popen([sys.executable, "-c", DRIVER, str(cfg)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if any(cmd == "sleep 600" for _, cmd in procs_with_cache(cache)):
                break
            time.sleep(0.1)
        assert p.poll() is None, p.stdout.read()
        t = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3 and "INTERRUPTED" in out, out
    assert time.monotonic() - t < 60
    assert procs_with_cache(cache) == [], out
    c = sqlite3.connect(tmp_path / "out" / "history.sqlite")
    assert c.execute("SELECT complete, state FROM runs").fetchall() == [(0, "interrupted")]


def test_a_worker_with_another_protocol_version_refuses_the_task():
    """A worker that imported another copy of the nightly's protocol modules (an older checkout) does not
    run this run's tasks: the cell gets an error saying why."""
    from rig.nightly import graph as nightly_graph
    ctx = {"code": "0" * 64, "topic": None, "inproc": True, "shared": None, "token": "t", "test_fn": None}
    out = nightly_graph.t_test({"label": "s1"}, {"stage": "baseline", "info": {}}, ctx)
    assert out["stage"] == "test" and "another kproto nightly protocol" in out["error"]
    assert "record" not in out


def test_the_protocol_fingerprint_covers_every_nightly_module():
    """Workers refuse tasks when their nightly code differs from the driver's: the fingerprint must cover
    every module of rig/nightly/ (however the package is split) and the artifact store."""
    from rig.nightly import graph as nightly_graph
    covered = set(nightly_graph.protocol_files())
    modules = set((REPO / "rig" / "nightly").rglob("*.py"))
    assert len(modules) > 10 and modules <= covered
    assert REPO / "rig" / "kernel" / "artifacts.py" in covered
