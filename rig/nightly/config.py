"""The nightly CONFIG.toml: its schema (KernelCfg, SeriesCfg, NightlyConfig) and its validation
(load_config / parse_config: BadInput, exit 2, naming the file and the offending key). The optional
[cluster] table is parsed by rig/nightly/cluster.py and left out of the config digest."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from rig.core.datafile import load_toml
from rig.core.errors import BadInput
from rig.kernel import prepare
from rig.nightly.cluster import ClusterCfg, parse_cluster

DEFAULT_HISTORY = 14
DEFAULT_NOISE_PCT = 5.0


@dataclass
class KernelCfg:
    name: str
    source: str | None              # None: the default Debian linux-source-6.12
    config: tuple[Path, ...] = ()

    @property
    def spec(self) -> prepare.KernelSpec:
        """Which kernel, for rig.kernel.prepare."""
        return prepare.KernelSpec(source=self.source, fragments=tuple(self.config))


@dataclass
class SeriesCfg:
    name: str
    paths: list[Path]
    kernels: list[str]
    tests: str | None = None
    kvm: bool = False                 # KVM-only: its cells run only on workers offering the `kvm` resource


@dataclass
class NightlyConfig:
    path: Path | None
    output: Path
    db: Path
    kernels: list[KernelCfg]
    series: list[SeriesCfg]
    tests: str | None = None
    timeout: float | None = None
    bench: bool = False
    fuzz_budget_s: float = 0.0
    history: int = DEFAULT_HISTORY
    bench_noise_pct: float = DEFAULT_NOISE_PCT
    raw: dict = field(default_factory=dict)
    cluster: ClusterCfg = field(default_factory=ClusterCfg)   # where the matrix runs (not part of the digest)

    @property
    def lock_path(self) -> Path:
        return self.db.with_name(self.db.name + ".lock")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()


_TOP_KEYS = {"output", "db", "tests", "timeout", "bench", "fuzz_budget_s", "history", "bench_noise_pct",
             "kernel", "series", "cluster"}
_KERNEL_KEYS = {"name", "source", "config"}
_SERIES_KEYS = {"name", "paths", "kernel", "kernels", "tests", "kvm"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def _want(cond: object, where: str, msg: str) -> None:
    if not cond:
        raise BadInput(f"{where}: {msg}")


def _tables(raw: object, where: str, need: str, keys: set[str] | frozenset[str]) -> Iterator[tuple[str, Any]]:
    """The tables of an array of tables (`[[kernel]]`, `[[series]]`), each with its place for messages
    ("WHERE N"), checked to be a table with only KEYS."""
    _want(isinstance(raw, list) and bool(raw), where.rsplit(":", 1)[0], need)
    assert isinstance(raw, list)
    for i, t in enumerate(raw):
        tw = f"{where} {i + 1}"
        _want(isinstance(t, dict), tw, "must be a table")
        unknown = set(t) - keys
        _want(not unknown, tw, f"unknown key(s) {', '.join(sorted(unknown))}")
        yield tw, t


def load_config(path: Path | str) -> NightlyConfig:
    """Parse and validate CONFIG.toml; relative paths are relative to the config file. BadInput (exit 2)
    names the file and the offending key."""
    path = Path(path)
    return parse_config(load_toml(path, "nightly config"), path)


def parse_config(raw: dict, path: Path | None = None) -> NightlyConfig:
    where = str(path) if path else "config"
    here = path.resolve().parent if path else Path.cwd()

    def rel(p: str) -> Path:
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else (here / q)

    unknown = set(raw) - _TOP_KEYS
    _want(not unknown, where, f"unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TOP_KEYS))})")
    _want(isinstance(raw.get("output"), str) and raw["output"], where, "`output` (report directory) is required")
    output = rel(raw["output"])
    db = rel(raw["db"]) if raw.get("db") else output / "history.sqlite"
    _want(isinstance(raw.get("db", ""), str), where, "`db` must be a path string")
    tests = raw.get("tests")
    _want(tests is None or (isinstance(tests, str) and tests.strip()), where, "`tests` must be a -k pattern string")
    timeout = raw.get("timeout")
    _want(timeout is None or (isinstance(timeout, (int, float)) and timeout > 0), where, "`timeout` must be seconds > 0")
    bench = raw.get("bench", False)
    _want(isinstance(bench, bool), where, "`bench` must be true or false")
    fuzz = raw.get("fuzz_budget_s", 0)
    _want(isinstance(fuzz, (int, float)) and fuzz >= 0, where, "`fuzz_budget_s` must be seconds >= 0")
    hist = raw.get("history", DEFAULT_HISTORY)
    _want(isinstance(hist, int) and 1 <= hist <= 365, where, "`history` must be a number of runs, 1..365")
    noise = raw.get("bench_noise_pct", DEFAULT_NOISE_PCT)
    _want(isinstance(noise, (int, float)) and noise >= 0, where, "`bench_noise_pct` must be >= 0")

    kernels = _kernels(raw, where, rel)
    series = _series(raw, where, rel, tests, [k.name for k in kernels])

    from rig.core.paths import GUEST_TESTS
    from rig.guest import harness
    specs = harness.load_specs(GUEST_TESTS)
    for pat in {s.tests for s in series}:
        if not harness.select(specs, pat):
            raise BadInput(f"{where}: tests = {pat!r} selects no guest test (see guest_tests/*.toml for names)")

    # where the matrix runs (rig/nightly/cluster.py), which never changes what it computes
    ccfg = parse_cluster(raw.get("cluster"), where, rel)

    canon = dict(raw)
    canon.pop("cluster", None)
    canon["_resolved"] = {"kernels": [(k.name, k.source, [str(f) for f in k.config]) for k in kernels],
                          "series": [(s.name, [str(p) for p in s.paths], s.kernels, s.tests) for s in series]}
    return NightlyConfig(path=path.resolve() if path else None, output=output, db=db, kernels=kernels, series=series,
                         tests=tests, timeout=float(timeout) if timeout else None, bench=bench,
                         fuzz_budget_s=float(fuzz), history=hist, bench_noise_pct=float(noise), raw=canon,
                         cluster=ccfg)


def _kernels(raw: dict, where: str, rel: Callable[[str], Path]) -> list[KernelCfg]:
    kernels: list[KernelCfg] = []
    kraw = raw.get("kernel", [{"name": "default"}])
    for kw, k in _tables(kraw, f"{where}: kernel", "`[[kernel]]` must be a non-empty array of tables", _KERNEL_KEYS):
        name = k.get("name", "default" if len(kraw) == 1 else None)
        _want(isinstance(name, str) and bool(_NAME.match(name)), kw, "needs a `name` (letters, digits, . _ + -)")
        src = k.get("source")
        _want(src is None or isinstance(src, str), kw, "`source` must be a path string")
        if src in (None, "", "default"):
            source = None
        else:
            sp = rel(src)
            _want(sp.exists(), kw, f"source {src!r} does not exist (a kernel git tree or a source tarball)")
            source = str(sp)
        frags = k.get("config", [])
        _want(isinstance(frags, list) and all(isinstance(f, str) for f in frags), kw, "`config` must be a list of fragment paths")
        fpaths = tuple(rel(f) for f in frags)
        for f in fpaths:
            _want(f.is_file(), kw, f"config fragment {f} not found")
        _want(name not in {x.name for x in kernels}, kw, f"duplicate kernel name {name!r}")
        kernels.append(KernelCfg(name=name, source=source, config=fpaths))
    return kernels


def _series(raw: dict, where: str, rel: Callable[[str], Path], tests: str | None,
            knames: list[str]) -> list[SeriesCfg]:
    series: list[SeriesCfg] = []
    sraw: Any = raw.get("series")
    for sw, s in _tables(sraw, f"{where}: series", "at least one `[[series]]` table (name + paths) is required",
                         _SERIES_KEYS):
        name = s.get("name")
        _want(isinstance(name, str) and bool(_NAME.match(name)), sw, "needs a `name` (letters, digits, . _ + -)")
        sw = f"{where}: series {name!r}"
        _want(name not in {x.name for x in series}, sw, "duplicate series name")
        paths = s.get("paths")
        if isinstance(paths, str):
            paths = [paths]
        _want(isinstance(paths, list) and paths and all(isinstance(p, str) for p in paths), sw,
              "`paths` must list patch files, directories of git format-patch output or mboxes")
        ppaths = [rel(p) for p in paths]
        for p in ppaths:
            _want(p.exists(), sw, f"{p} does not exist")
        try:
            prepare.open_series(ppaths)
        except BadInput as e:
            raise BadInput(f"{sw}: {e.message}") from None
        ks = s.get("kernels", s.get("kernel", knames))
        if isinstance(ks, str):
            ks = [ks]
        _want(isinstance(ks, list) and ks and all(k in knames for k in ks), sw,
              f"`kernels` must name configured kernels ({', '.join(knames)})")
        st = s.get("tests", tests)
        _want(st is None or (isinstance(st, str) and st.strip()), sw, "`tests` must be a -k pattern string")
        kvm = s.get("kvm", False)
        _want(isinstance(kvm, bool), sw, "`kvm` must be true or false")
        series.append(SeriesCfg(name=name, paths=ppaths, kernels=list(ks), tests=st, kvm=kvm))
    return series
