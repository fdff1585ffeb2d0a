"""The plain data the nightly driver hands its Dask tasks, and what a worker makes of it.

Kernel specs (one per baseline: kernels with the same source and config fragments share it) and cell specs
(one per kernel x series) carry the contents of the patches and config fragments, not the driver's paths; a
worker materializes them as files of its own (content-addressed, original names). Task results carry a
cell's SeriesRecord as a dict (record_to_dict / record_fields)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Iterable

from rig.core.paths import cache_dir
from rig.kernel import prepare
from rig.nightly.config import KernelCfg, NightlyConfig, SeriesCfg
from rig.nightly.record import SeriesRecord


def _files(paths: Iterable[Path | str]) -> list[tuple[str, bytes]]:
    return [(Path(p).name, Path(p).read_bytes()) for p in paths]


# ================================================================ driver side

def kernel_groups(cfg: NightlyConfig, real: bool) -> dict[str, list[KernelCfg]]:
    """Kernels that share a baseline: same source and same config fragments (real builds only; a stand-in
    kernel_fn is called per kernel, as before)."""
    groups: dict[str, list[KernelCfg]] = {}
    for k in cfg.kernels:
        if real:
            h = hashlib.sha256(f"{k.source or 'default'}\0".encode())
            for f in k.config:
                h.update(hashlib.sha256(Path(f).read_bytes()).hexdigest().encode())
            gid = h.hexdigest()[:12]
        else:
            gid = hashlib.sha256(k.name.encode()).hexdigest()[:12]
        groups.setdefault(gid, []).append(k)
    return groups


def kspec(gid: str, ks: list[KernelCfg]) -> dict:
    """The baseline shared by the kernels KS."""
    k = ks[0]
    return {"gid": gid, "names": [x.name for x in ks], "label": "+".join(x.name for x in ks), "name": k.name,
            "source": k.source, "config_paths": [str(f) for f in k.config], "config": _files(k.config)}


def cspec(index: int, k: KernelCfg, s: SeriesCfg, kspec: dict, cfg: NightlyConfig, multi_kernel: bool) -> dict:
    """Cell INDEX of the matrix: series S on kernel K."""
    plist = prepare.open_series(s.paths)
    return {"index": index, "kernel": k.name, "series": s.name,
            "label": f"{s.name} on {k.name}" if multi_kernel else s.name,
            "paths": [str(p) for p in s.paths], "patches": _files([p.path for p in plist]),
            "tests": s.tests, "timeout": cfg.timeout, "kvm": bool(s.kvm),
            "bench": bool(cfg.bench), "fuzz_budget_s": float(cfg.fuzz_budget_s),
            "kspec": {**kspec, "name": k.name}}


# ================================================================ worker side

def materialize(files: list[tuple[str, bytes]], what: str) -> list[Path]:
    """Patch files / config fragments of a spec as files on this worker: content-addressed directories,
    original file names (so kproto's messages name them as the user does)."""
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    root = cache_dir() / "nightly" / "inputs" / f"{what}-{h.hexdigest()[:16]}"
    out = []
    for i, (name, data) in enumerate(files):
        p = root / f"{i:03d}" / name
        if not (p.is_file() and p.read_bytes() == data):
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{name}.tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, p)
        out.append(p)
    return out


def kernel_cfg(kspec: dict, inproc: bool) -> KernelCfg:
    """The KernelCfg of a spec: the driver's own fragment paths in-process, else materialized copies."""
    frags = [Path(p) for p in kspec["config_paths"]] if inproc else materialize(kspec["config"], "config")
    return KernelCfg(name=kspec["name"] if "name" in kspec else kspec["label"], source=kspec["source"],
                     config=tuple(frags))


def series_cfg(cspec: dict, inproc: bool) -> SeriesCfg:
    """The SeriesCfg of a cell spec: the driver's own patch paths in-process, else materialized copies."""
    paths = [Path(p) for p in cspec["paths"]] if inproc else materialize(cspec["patches"], "patches")
    return SeriesCfg(name=cspec["series"], paths=paths, kernels=[cspec["kernel"]], tests=cspec["tests"])


# ================================================================ results

def record_to_dict(rec: SeriesRecord) -> dict:
    """A cell's record as task-result data (its compare.TestVerdict objects as dicts: for JUnit)."""
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "verdicts"}
    d["verdicts"] = [dataclasses.asdict(v) for v in rec.verdicts or []
                     if dataclasses.is_dataclass(v) and not isinstance(v, type)]
    return d


def verdicts_from_dicts(vs: list[dict]) -> list:
    """compare.TestVerdict objects back from record_to_dict()."""
    from rig.analysis import compare
    out = []
    for v in vs:
        v = dict(v)
        v["diffs"] = [compare.ObsDiff(**x) for x in v.get("diffs") or []]
        out.append(compare.TestVerdict(**v))
    return out
