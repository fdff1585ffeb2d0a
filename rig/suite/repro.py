"""Reproducer bundles (docs/design.md §5): every finding of `kproto test` as a directory a reviewer can run.

write_bundle() writes DEST/<test>/ from a finished run: the kernel's .config and the --config fragments,
the series (patches + manifest.json: base, order, sha256), the exact QEMU command line and the guest boot
files of the boot that showed the finding, the guest test program and its spec, expected.json (the
harness status, observations, splats), README.txt, reproduce.sh, and bundle.json (what it is, and the
sha256 of every input file). write_findings() picks the findings of a run and writes one bundle each.

reproduce() is `kproto reproduce BUNDLE`: it checks the bundle (a missing or changed file is BadInput
naming it), gets the kernel through rig/kernel/prepare.py (same base + patches + fragments: a cache hit),
boots it and runs that one test through the runner (rig/suite/runner.py: the per-test barrier and the
splat scan apply), and compares what it saw with expected.json.

BootRecorder is the machine factory that remembers, per boot, what VM.command() returned and the guest
boot files the VM rendered into its run directory (the run directory is removed after the run: they are
kept in memory until the bundle is written).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from rig.analysis import splats as splatmod
from rig.analysis.compare import comparable
from rig.core import templates
from rig.core.errors import EXIT_CLEAN, EXIT_REGRESSED, BadInput, BootError
from rig.core.paths import REPO
from rig.guest import spec as specmod
from rig.kernel import kconfig
from rig.kernel import patches as patchmod
from rig.kernel.build import Kernel
from rig.kernel.patches import Patch
from rig.kernel.prepare import KernelSpec
from rig.kernel.tree import SourceTree
from rig.machine.qemu import VM
from rig.suite.machine import Machine, MachineFactory, QemuMachine
from rig.suite.results import KernelRun
from rig.suite.timing import Timing

FORMAT = 1
BUNDLE_JSON = "bundle.json"
# the guest boot files a VM renders into its run directory (rig/machine/qemu.py: the boot plan the guest's
# PID 1 carries out); kept under guest/ in the bundle
GUEST_BOOT_FILES = ("boot.plan",)
# the harness result fields that say what a test did (the rest is timing and plumbing)
RESULT_KEYS = ("status", "observations", "exit_code", "signal", "error", "upper", "lower_modified")
FINDING_STATUSES = ("regressed", "flaky", "error")

Progress = Callable[[str], None]


def _say_stderr(msg: str) -> None:
    print(f"kproto: {msg}", file=sys.stderr)


# ================================================================== templates

def render(name: str, **context: object) -> str:
    """Template NAME (rig/suite/templates/) through rig.core.templates, with a shell-quoting filter."""
    return templates.render(name, filters={"shquote": shlex.quote}, **context)


# ================================================================== what a boot was

@dataclass(frozen=True)
class BootRecord:
    """One boot as it ran: the machine's name (e.g. patched-1), what VM.command() returned, the guest
    boot files rendered into the run directory (name -> text), that directory, the accelerator."""
    name: str
    argv: tuple[str, ...]
    guest_files: Mapping[str, str]
    run_dir: str
    accel: str

    @classmethod
    def from_vm(cls, vm: VM, name: str | None = None) -> "BootRecord":
        """VM (rig.machine.qemu.VM) after start(): its command line and its run directory's boot files."""
        files = {}
        for rel in GUEST_BOOT_FILES:
            p = Path(vm.run_dir) / rel
            if p.is_file():
                files[rel] = p.read_text(errors="replace")
        return cls(name=name or vm.name, argv=tuple(vm.command()), guest_files=files, run_dir=str(vm.run_dir),
                   accel=vm.accel or "tcg")

    def cmdline(self) -> str:
        return shlex.join(self.argv)

    def as_json(self) -> dict:
        return {"name": self.name, "argv": list(self.argv), "run_dir": self.run_dir, "accel": self.accel}


class _RecordingMachine(QemuMachine):
    """QemuMachine that reports its boot to a BootRecorder once QEMU started (also when the boot fails)."""

    def __init__(self, kernel: Kernel, run_dir: Path, name: str, recorder: "BootRecorder") -> None:
        super().__init__(kernel, run_dir, name)
        self._recorder = recorder

    def boot(self, timeout: float, on_init: Callable[[float], None] | None = None) -> float:
        try:
            return super().boot(timeout, on_init)
        finally:
            if self.vm.proc is not None:
                self._recorder.boots[self.name] = BootRecord.from_vm(self.vm, self.name)


class BootRecorder:
    """A machine factory for rig.suite.runner.run_kernel_suite (the real QemuMachine, as the runner's
    default) that keeps a BootRecord per boot, by machine name: `boots["patched-1"]`."""

    def __init__(self) -> None:
        self.boots: dict[str, BootRecord] = {}

    def factory(self, kernel: Kernel, run_dir: Path) -> MachineFactory:
        def make(name: str) -> Machine:
            return _RecordingMachine(kernel, run_dir, name, self)
        return make


# ================================================================== what the run saw

@dataclass
class Finding:
    """One test's finding on one kernel: the report's status and reason, the harness result of the boot
    that showed it, the splats during the test in that boot and which of them must show again."""
    test: str
    status: str                       # the report's status: regressed, flaky, error, ... (or the harness's)
    reason: str
    result: dict                      # the harness result (RESULT_KEYS + "boot")
    splats: list[splatmod.Splat] = field(default_factory=list)
    required: frozenset[str] | None = None   # signatures that must show again; None: all of splats
    earlier_in_boot: list[str] = field(default_factory=list)   # tests that ran before it in that boot

    @property
    def boot(self) -> str:
        return str(self.result.get("boot") or "")

    def required_signatures(self) -> set[str]:
        sigs = {s.signature for s in self.splats}
        return sigs if self.required is None else sigs & set(self.required)

    def headline(self) -> str:
        need = self.required_signatures()
        shown = [s.title for s in self.splats if s.signature in need]
        if shown:
            return "; ".join(shown)
        return f"{self.test}: {self.status}" + (f" ({self.reason})" if self.reason else "")

    @classmethod
    def from_run(cls, run: KernelRun, test: str, status: str | None = None, reason: str = "",
                 required: Iterable[str] | None = None) -> "Finding":
        """The finding of TEST in RUN (its result must be there). REQUIRED: the signatures that make it
        a finding (the new ones); None: every splat during the test."""
        res = run.results[test]
        boot = res.get("boot")
        names = list(run.results)
        earlier = [n for n in names[:names.index(test)] if boot and run.results[n].get("boot") == boot]
        return cls(test=test, status=status or str(res.get("status")), reason=reason,
                   result={k: res.get(k) for k in (*RESULT_KEYS, "boot")},
                   splats=list(run.test_splats.get(test, [])),
                   required=None if required is None else frozenset(required), earlier_in_boot=earlier)


# ================================================================== writing a bundle

def default_kproto() -> Path | None:
    """The kproto a bundle's reproduce.sh calls: this checkout's .venv/bin/kproto, else the one beside
    the running Python (an installed kproto), else None (reproduce.sh then looks on PATH)."""
    for p in (REPO / ".venv" / "bin" / "kproto", Path(sys.executable).parent / "kproto"):
        if p.is_file() and os.access(p, os.X_OK):
            return p.absolute()
    return None


def _kproto_version() -> str:
    try:
        from importlib.metadata import version
        return version("kproto")
    except Exception:
        return "unknown"


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _test_files(suite: Path, test: str) -> list[tuple[Path, str]]:
    """(file, path in test/) of the test's program, spec, the fixture the spec names and the suite's headers."""
    suite = Path(suite)
    prog, spec_file = suite / f"{test}.c", suite / f"{test}.toml"
    for p in (prog, spec_file):
        if not p.is_file():
            raise BadInput(f"no guest test {test!r} in {suite} ({p.name} is missing)")
    out = [(prog, prog.name), (spec_file, spec_file.name)]
    out += [(h, h.name) for h in sorted(suite.glob("*.h"))]
    try:
        fx = tomllib.loads(spec_file.read_text()).get("fixture")
    except (OSError, ValueError) as e:
        raise BadInput(f"guest test spec {spec_file} does not load: {e}") from None
    if isinstance(fx, str) and (suite / "fixtures" / f"{fx}.toml").is_file():
        out.append((suite / "fixtures" / f"{fx}.toml", f"fixtures/{fx}.toml"))
    return out


def _series_files(series: Sequence[Patch]) -> list[str]:
    """The file names of the series in the bundle: the patch files' own names (an index in front when two
    share a name)."""
    names = [p.path.name for p in series]
    if len(set(names)) == len(names):
        return names
    return [f"{i:04d}-{n}" for i, n in enumerate(names, 1)]


def check_destination(dest: Path) -> None:
    """Before a run: DEST must be a directory kproto can write bundles into (BadInput otherwise), so a bad
    --repro fails in a second, not after the run."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"--repro {dest} is not a directory (pick a directory for the reproducer bundles)")
    probe = dest if dest.exists() else next((p for p in dest.parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInput(f"--repro {dest}: {probe} is not writable (pick a directory you can write)")


def write_bundle(dest: Path, *, spec: KernelSpec, tree: SourceTree, series: Sequence[Patch], kernel: Kernel,
                 boot: BootRecord, finding: Finding, suite: Path, timeout: float,
                 kproto: Path | None = None, created_by: str = "kproto test") -> Path:
    """Write the reproducer of FINDING to DEST/<test>/ and return that directory (an earlier bundle of
    the same test there is replaced; anything else there is BadInput).

    SPEC/TREE: the kernel source and --config fragments, the base commit; SERIES: the patches applied
    (empty: the base kernel); KERNEL: the built kernel (.config, version, key); BOOT: the boot that showed
    it (BootRecorder.boots[finding.boot]); SUITE: the guest-test directory holding the test; TIMEOUT: the
    test's timeout in that run; KPROTO: the kproto reproduce.sh calls (default: default_kproto())."""
    test = finding.test
    final = Path(dest) / test
    if final.exists() and not (final / BUNDLE_JSON).is_file():
        raise BadInput(f"{final} exists and is not a kproto reproducer bundle (move it away or pick another --repro DIR)")
    if kproto is None:
        kproto = default_kproto()
    Path(dest).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{test}-", dir=dest))
    try:
        _fill(tmp, spec=spec, tree=tree, series=series, kernel=kernel, boot=boot, finding=finding, suite=suite,
              timeout=timeout, kproto=kproto, created_by=created_by)
        os.chmod(tmp, 0o755)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _fill(d: Path, *, spec: KernelSpec, tree: SourceTree, series: Sequence[Patch], kernel: Kernel,
          boot: BootRecord, finding: Finding, suite: Path, timeout: float, kproto: Path | None,
          created_by: str) -> None:
    test = finding.test
    if not kernel.config.is_file():
        raise BadInput(f"the kernel's .config is missing: {kernel.config}")
    shutil.copyfile(kernel.config, d / "config")
    fragments = []
    if spec.fragments:
        (d / "fragments").mkdir()
        for i, frag in enumerate(spec.fragments, 1):
            rel = f"fragments/{i:02d}-{Path(frag).name}"
            shutil.copyfile(frag, d / rel)
            fragments.append(rel)
    (d / "series").mkdir()
    patches = []
    for p, name in zip(series, _series_files(series)):
        shutil.copyfile(p.path, d / "series" / name)
        if _sha256(d / "series" / name) != p.sha256:
            raise BadInput(f"{p.path} changed since the run read it (sha256 differs); rerun kproto test")
        patches.append({"file": name, "path": str(p.path), "sha256": p.sha256, "subject": p.subject,
                        "mail": p.mail, "count": p.count})
    manifest = {"base": tree.base, "source": spec.source, "origin": tree.origin,
                "series_digest": patchmod.series_digest(list(series)), "patches": patches}
    (d / "series" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (d / "qemu-cmdline.txt").write_text(
        f"# QEMU command line of boot {boot.name} ({boot.accel}), exactly as it ran; the run directory\n"
        f"# {boot.run_dir} and the sockets in it were that run's (the directory is gone); each fs-*.sock was\n"
        f"# a virtiofsd serving one share (rig/machine/virtiofs.py): the curated root and /usr read-only, the run\n"
        f"# directory writable\n" + boot.cmdline() + "\n")
    (d / "guest").mkdir()
    guest_files = []
    for rel, text in sorted(boot.guest_files.items()):
        name = Path(rel).name
        (d / "guest" / name).write_text(text)
        guest_files.append(name)
    (d / "test").mkdir()
    for src, rel in _test_files(suite, test):
        (d / "test" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, d / "test" / rel)
    need = finding.required_signatures()
    expected = {"test": test, "status": finding.status, "reason": finding.reason, "boot": finding.boot,
                "earlier_in_boot": finding.earlier_in_boot,
                "result": {k: finding.result.get(k) for k in RESULT_KEYS},
                "splats": [{"kind": s.kind, "title": s.title, "where": s.where, "signature": s.signature,
                            "required": s.signature in need} for s in finding.splats]}
    (d / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    files = {str(p.relative_to(d)): _sha256(p) for p in sorted(d.rglob("*")) if p.is_file()}
    meta = {"format": FORMAT, "kind": "kproto-reproducer", "test": test, "created": created,
            "created_by": created_by, "kproto_version": _kproto_version(),
            "kernel": {"source": spec.source, "origin": tree.origin, "base": tree.base, "version": kernel.version,
                       "key": kernel.key, "fragments": fragments},
            "timeout": float(timeout), "boot": boot.as_json(), "headline": finding.headline(), "files": files}
    (d / BUNDLE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    (d / "reproduce.sh").write_text(render("reproduce.sh.j2", test=test, headline=finding.headline(),
                                           version=kernel.version, kproto=str(kproto or "")))
    os.chmod(d / "reproduce.sh", 0o755)
    (d / "README.txt").write_text(render(
        "README.txt.j2", test=test, headline=finding.headline(), reason=finding.reason, created_by=created_by,
        created=created, kproto_version=meta["kproto_version"], version=kernel.version, origin=tree.origin,
        base=tree.base, fragments=fragments, patches=patches, earlier=finding.earlier_in_boot,
        guest_files=guest_files or ["none recorded"]))


def findings_of(tests: Sequence[Mapping], new_signatures: Iterable[str], side: str = "patched") -> list[str]:
    """The tests of a `kproto test` report (its "tests" list) that need a reproducer: status regressed,
    flaky or error, or a new splat (NEW_SIGNATURES) attributed to them on SIDE."""
    new = set(new_signatures)
    out = []
    for t in tests:
        sigs = set((t.get("splat_signatures") or {}).get(side) or [])
        if t.get("status") in FINDING_STATUSES or sigs & new:
            out.append(str(t["name"]))
    return out


def write_findings(dest: Path, *, spec: KernelSpec, tree: SourceTree, series: Sequence[Patch], kernel: Kernel,
                   runs: Sequence[KernelRun], tests: Sequence[Mapping], new_signatures: Iterable[str],
                   boots: Mapping[str, BootRecord], suite: Path, timeouts: Mapping[str, float],
                   kproto: Path | None = None, created_by: str = "kproto test",
                   progress: Progress = _say_stderr) -> list[Path]:
    """One bundle per finding (findings_of) under DEST/<test>/. RUNS: every run of the kernel (the main
    run first, then the confirmation runs); for each test the bundle takes the first run in which a new
    splat showed during it, else the first run that has its result. A test without a result (not run) or
    whose boot was not recorded gets no bundle (said through PROGRESS)."""
    new = set(new_signatures)
    by_name = {str(t["name"]): t for t in tests}
    out = []
    for name in findings_of(tests, new):
        t = by_name[name]
        have = [r for r in runs if name in r.results and r.results[name].get("boot")]
        showed = [r for r in have if {s.signature for s in r.test_splats.get(name, [])} & new]
        if not have:
            progress(f"reproducer: {name}: not run on this kernel, no bundle")
            continue
        run = (showed or have)[0]
        sigs = {s.signature for s in run.test_splats.get(name, [])}
        finding = Finding.from_run(run, name, status=str(t.get("status") or ""), reason=str(t.get("reason") or ""),
                                   required=(sigs & new) or None)
        boot = boots.get(finding.boot)
        if boot is None:
            progress(f"reproducer: {name}: boot {finding.boot} was not recorded, no bundle")
            continue
        out.append(write_bundle(dest, spec=spec, tree=tree, series=series, kernel=kernel, boot=boot,
                                finding=finding, suite=suite, timeout=float(timeouts[name]), kproto=kproto,
                                created_by=created_by))
        progress(f"reproducer: {out[-1]}")
    return out


# ================================================================== reading a bundle

@dataclass
class Bundle:
    path: Path
    meta: dict
    manifest: dict
    expected: dict
    series: list[Patch]

    @property
    def test(self) -> str:
        return str(self.meta["test"])

    @property
    def suite(self) -> Path:
        return self.path / "test"

    @property
    def fragments(self) -> tuple[Path, ...]:
        return tuple(self.path / f for f in self.meta["kernel"].get("fragments") or [])

    def required_signatures(self) -> set[str]:
        return {s["signature"] for s in self.expected.get("splats") or [] if s.get("required", True)}

    def boot_argv(self) -> list[str]:
        return list((self.meta.get("boot") or {}).get("argv") or [])


def _json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"reproducer bundle: {path} is corrupt: not JSON ({what}): {e}") from None
    if not isinstance(data, dict):
        raise BadInput(f"reproducer bundle: {path} is corrupt: not a JSON object ({what})")
    return data


def locate(path: Path) -> Path:
    """The bundle directory PATH names: a bundle, or a --repro directory holding exactly one."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"reproducer bundle not found: {path}")
    if not path.is_dir():
        raise BadInput(f"{path} is not a directory (pass the bundle directory, DIR/<test>/)")
    if (path / BUNDLE_JSON).exists():
        return path
    inner = sorted(p for p in path.iterdir() if (p / BUNDLE_JSON).is_file())
    if len(inner) == 1:
        return inner[0]
    if inner:
        raise BadInput(f"{path} holds {len(inner)} bundles ({', '.join(p.name for p in inner)}); pass one of them")
    raise BadInput(f"reproducer bundle: {path / BUNDLE_JSON} is missing (not a kproto reproducer bundle)")


def load_bundle(path: Path) -> Bundle:
    """Read and check a bundle: every file bundle.json lists is there with its sha256, the JSON files
    parse, the spec loads, the patches are patches. BadInput (exit 2) naming the first bad file."""
    d = locate(path)
    meta = _json(d / BUNDLE_JSON, "the bundle's description")
    if meta.get("kind") != "kproto-reproducer" or not isinstance(meta.get("files"), dict):
        raise BadInput(f"reproducer bundle: {d / BUNDLE_JSON} is corrupt: not a kproto reproducer description")
    if meta.get("format") != FORMAT:
        raise BadInput(f"reproducer bundle: {d / BUNDLE_JSON} has format {meta.get('format')!r}; this kproto reads "
                       f"format {FORMAT} (use the kproto version that wrote it: {meta.get('kproto_version')})")
    try:
        test = str(meta["test"])
        kernel = meta["kernel"]
        base = str(kernel["base"])
        float(meta["timeout"])
    except (KeyError, TypeError, ValueError) as e:
        raise BadInput(f"reproducer bundle: {d / BUNDLE_JSON} is corrupt: missing or bad {e}") from None
    required = ["config", "series/manifest.json", "expected.json", f"test/{test}.c", f"test/{test}.toml"]
    for rel in [*required, *meta["files"]]:
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BadInput(f"reproducer bundle: {d / BUNDLE_JSON} is corrupt: bad file name {rel!r}")
        if not (d / rel).is_file():
            raise BadInput(f"reproducer bundle: {d / rel} is missing")
    for rel in required:
        if rel not in meta["files"]:
            raise BadInput(f"reproducer bundle: {d / BUNDLE_JSON} is corrupt: it does not list {rel}")
    for rel, digest in sorted(meta["files"].items()):
        if _sha256(d / rel) != digest:
            raise BadInput(f"reproducer bundle: {d / rel} is corrupt: its sha256 differs from {BUNDLE_JSON}'s")
    manifest = _json(d / "series" / "manifest.json", "the series manifest")
    expected = _json(d / "expected.json", "the expected outcome")
    if manifest.get("base") != base:
        raise BadInput(f"reproducer bundle: {d / 'series' / 'manifest.json'} is corrupt: its base differs from {BUNDLE_JSON}'s")
    series = []
    for ent in manifest.get("patches") or []:
        f = d / "series" / str(ent.get("file"))
        if not f.is_file():
            raise BadInput(f"reproducer bundle: {f} is missing")
        p = patchmod.load(f)
        if p.sha256 != ent.get("sha256"):
            raise BadInput(f"reproducer bundle: {f} is corrupt: its sha256 differs from the series manifest's")
        series.append(p)
    try:
        specmod.load_spec(d / "test" / f"{test}.toml")
    except specmod.SpecError as e:
        raise BadInput(f"reproducer bundle: {d / 'test' / f'{test}.toml'} is corrupt: {e}") from None
    kconfig.parse((d / "config").read_text(errors="replace"), str(d / "config"))
    return Bundle(path=d, meta=meta, manifest=manifest, expected=expected, series=series)


# ================================================================== kproto reproduce

@dataclass
class ReproOptions:
    bundle: Path
    runs: int = 1                      # fresh boots, one run of the test each
    kernel_src: str | None = None      # instead of the bundle's source (must be at the bundle's base)
    keep: bool = False                 # keep the run directory (console logs)
    progress: Progress = _say_stderr
    machine_factory: MachineFactory | None = None   # tests: a fake machine; default QemuMachine (recorded)
    timing: Timing | None = None                    # tests: the fake machine's short waits


@dataclass
class RunOutcome:
    boot: str
    result: dict
    splats: list[splatmod.Splat]
    reproduced: bool
    differences: list[str]             # what differs from expected.json


@dataclass
class ReproResult:
    bundle: Bundle
    kernel: Kernel
    runs: list[RunOutcome]
    notes: list[str]

    @property
    def reproduced(self) -> int:
        return sum(1 for r in self.runs if r.reproduced)

    @property
    def exit_code(self) -> int:
        return EXIT_CLEAN if self.reproduced else EXIT_REGRESSED


def _open_tree(b: Bundle, kernel_src: str | None, say: Progress) -> tuple[KernelSpec, SourceTree]:
    from rig.kernel import prepare
    k = b.meta["kernel"]
    source = kernel_src or k.get("source")
    if source and not kernel_src and not Path(source).expanduser().exists():
        raise BadInput(f"the bundle's kernel source {source} does not exist here (pass --kernel-src PATH: "
                       f"a tarball or git tree at base {k['base'][:12]})")
    spec = KernelSpec(source, b.fragments)
    tree = prepare.open_tree(spec)
    if tree.base != k["base"]:
        raise BadInput(f"the kernel source {tree.origin} is at {tree.base[:12]}, the bundle was made at "
                       f"{k['base'][:12]} (pass --kernel-src PATH with the bundle's source: {k.get('origin')})")
    return spec, tree


def _config_note(b: Bundle, kernel: Kernel) -> str:
    want = kconfig.parse((b.path / "config").read_text(errors="replace"), "bundle config").entries
    try:
        got = kconfig.parse(kernel.config.read_text(errors="replace"), str(kernel.config)).entries
    except OSError:
        return f"config: the kernel's .config is missing ({kernel.config})"
    diff = sorted(n for n in set(want) | set(got) if want.get(n, "n") != got.get(n, "n"))
    if not diff:
        return "config: identical to the bundle's"
    shown = ", ".join(f"{n}={got.get(n, 'n')} (bundle: {want.get(n, 'n')})" for n in diff[:4])
    return f"config: {len(diff)} option(s) differ from the bundle's: {shown}" + (" ..." if len(diff) > 4 else "")


def _normalise(argv: Sequence[str], run_dir: str, bzimage: str) -> list[str]:
    """A command line with this run's own paths (and an older bundle's hostfwd port) replaced by placeholders."""
    out = []
    for a in argv:
        a = a.replace(run_dir, "<RUN_DIR>") if run_dir else a
        a = a.replace(bzimage, "<BZIMAGE>") if bzimage else a
        a = re.sub(r"127\.0\.0\.1:\d+-", "127.0.0.1:<PORT>-", a)
        a = re.sub(r"path=[^,]*/guestroot/[0-9a-f]+", "path=<GUEST_ROOT>", a)
        out.append(a)
    return out


def _boot_notes(b: Bundle, boot: BootRecord, kernel: Kernel) -> list[str]:
    """How this boot's command line and guest boot files compare with the bundle's (paths of each run aside)."""
    old_argv = b.boot_argv()
    if not old_argv:
        return []
    old_run = str((b.meta.get("boot") or {}).get("run_dir") or "")
    old_bz = next((old_argv[i + 1] for i, a in enumerate(old_argv[:-1]) if a == "-kernel"), "")
    old = _normalise(old_argv, old_run, old_bz)
    new = _normalise(boot.argv, boot.run_dir, str(kernel.bzimage))
    notes = []
    if old == new:
        notes.append("boot: the same QEMU command line as the bundle's (run directory and cache paths aside)")
    else:
        gone = [a for a in old if a not in new]
        added = [a for a in new if a not in old]
        notes.append("boot: the QEMU command line differs from the bundle's: " +
                     "; ".join([*(f"bundle had {a!r}" for a in gone[:3]), *(f"now {a!r}" for a in added[:3])]))
    for rel, text in sorted(boot.guest_files.items()):
        f = b.path / "guest" / Path(rel).name
        if f.is_file() and f.read_text(errors="replace").replace(old_run, "<RUN_DIR>") != \
                text.replace(boot.run_dir, "<RUN_DIR>"):
            notes.append(f"boot: the guest's {f.name} differs from the bundle's guest/{f.name}")
    return notes


def _judge(b: Bundle, res: dict, splats: list[splatmod.Splat]) -> tuple[bool, list[str]]:
    """Did this run show the finding? With required splats: every one of them showed during the test (the
    observations are compared and shown, not required). Without: the harness status and, for a program
    that ran, every observation (exit code, signal, upper layer) are the expected ones."""
    exp = b.expected.get("result") or {}
    diffs = []
    need = b.required_signatures()
    seen = {s.signature for s in splats}
    for s in b.expected.get("splats") or []:
        if s["signature"] in need and s["signature"] not in seen:
            diffs.append(f"splat {s['title']!r} [{s['signature']}] did not show")
    if res.get("status") != exp.get("status"):
        diffs.append(f"status {res.get('status')} (expected {exp.get('status')})")
    elif res.get("status") == "ok":
        want, got = comparable(exp), comparable(res)
        for k in sorted(set(want) | set(got)):
            if want.get(k) != got.get(k):
                diffs.append(f"{k}={got.get(k)} (expected {want.get(k)})")
    if need:
        return all(s in seen for s in need), diffs
    return not diffs, diffs


def reproduce(opts: ReproOptions) -> ReproResult:
    """`kproto reproduce`: check the bundle, get the kernel, run the one test on opts.runs fresh boots."""
    from rig.guest import programs as guest_build
    from rig.kernel import prepare
    from rig.suite import runner
    from rig.suite.testrun import new_run_dir
    say = opts.progress
    b = load_bundle(opts.bundle)
    k = b.meta["kernel"]
    say(f"bundle {b.path}: {b.test} on linux {k.get('version')} (base {k['base'][:12]}, "
        f"{len(b.series)} patch{'' if len(b.series) == 1 else 'es'}): {b.meta.get('headline', '')}")
    spec, tree = _open_tree(b, opts.kernel_src, say)
    kernel = prepare.patched(spec, b.series, say, tree)[1]
    if kernel.cached:
        say(f"kernel {kernel.version}: " + kernel.outcome())
    notes = [_config_note(b, kernel)]
    if kernel.key != k.get("key"):
        notes.append(f"kernel: cache key {kernel.key} (the bundle's run had {k.get('key')}): the kproto fragment "
                     "or the build differs from that run's")
    bins = guest_build.build(b.suite)
    run_dir = new_run_dir(opts.keep)
    recorder = BootRecorder()
    factory = opts.machine_factory or recorder.factory(kernel, run_dir)
    timing = opts.timing or runner.TIMING
    outcomes: list[RunOutcome] = []
    boots = 0
    try:
        guest_build.stage(run_dir, b.suite, bins)
        for i in range(1, opts.runs + 1):
            say(f"run {i}/{opts.runs}: {b.test} on a fresh boot")
            try:
                run = runner.run_kernel_suite(kernel, "repro", run_dir, [b.test], {b.test: float(b.meta["timeout"])},
                                              say, machine_factory=factory, first_boot=boots + 1, timing=timing)
            except BootError as e:
                if i == 1:
                    raise                  # the kernel does not boot at all here: infrastructure (exit 3)
                boots += 1
                outcomes.append(RunOutcome(boot=f"repro-{boots}", result={"status": "error", "error":
                                           f"did not boot: {str(e).splitlines()[0]}"}, splats=[], reproduced=False,
                                           differences=["the kernel did not boot"]))
                continue
            boots += run.boots
            res = run.results.get(b.test) or {"status": "error", "error": "no result"}
            splats = list(run.test_splats.get(b.test, []))
            ok, diffs = _judge(b, res, splats)
            outcomes.append(RunOutcome(boot=str(res.get("boot") or f"repro-{boots}"), result=res, splats=splats,
                                       reproduced=ok, differences=diffs))
            notes.extend(run.events)
        first = next(iter(recorder.boots.values()), None)
        if first is not None:
            notes.extend(_boot_notes(b, first, kernel))
    finally:
        if opts.keep:
            say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return ReproResult(bundle=b, kernel=kernel, runs=outcomes, notes=notes)


def _obs_text(res: dict) -> list[str]:
    obs = res.get("observations") or {}
    lines = [f"    {k} = {v}" for k, v in obs.items()]
    if res.get("exit_code") not in (None, 0) or res.get("signal"):
        lines.append(f"    exit_code = {res.get('exit_code')}, signal = {res.get('signal')}")
    if res.get("error"):
        lines.append(f"    error: {res['error']}")
    return lines


def render_result(r: ReproResult) -> str:
    """The report of `kproto reproduce`: per run the status, observations and splats; then the verdict line."""
    b = r.bundle
    out = [f"{b.test} on linux {r.kernel.version}" + (f" + {len(b.series)} patch{'' if len(b.series) == 1 else 'es'}"
                                                       if b.series else " (base)")]
    out += r.notes
    for i, run in enumerate(r.runs, 1):
        out.append(f"run {i}/{len(r.runs)} (boot {run.boot}): {run.result.get('status')}"
                   + (" -- reproduced" if run.reproduced else " -- did not reproduce"))
        out += _obs_text(run.result)
        for s in run.splats:
            out.append(f"    splat: {s.title}  [{s.signature}]")
        if not run.splats:
            out.append("    no splat during the test")
        for d in run.differences:
            out.append(f"    differs: {d}")
    need = b.required_signatures()
    what = "; ".join(f"{s['title']} [{s['signature']}]" for s in b.expected.get("splats") or []
                     if s["signature"] in need) or f"status {(b.expected.get('result') or {}).get('status')} " \
                                                           "with the expected observations"
    n = r.reproduced
    if n:
        out.append(f"reproduced: {what} (in {n}/{len(r.runs)} run{'s' if len(r.runs) != 1 else ''})")
    else:
        hint = ""
        if b.expected.get("earlier_in_boot"):
            hint = (f"; in the bundle's run it followed {', '.join(b.expected['earlier_in_boot'])} in the same boot"
                    " (try --runs N for an outcome that varies)")
        out.append(f"did not reproduce: {what} (0/{len(r.runs)} runs){hint}")
    return "\n".join(out)

