"""`kproto nightly`'s matrix as a Dask task graph (the Dask plumbing is rig/cluster.py, kernel artifacts
between workers rig/artifacts.py; the run bookkeeping, diff and reports stay in rig/nightly.py).

Per (source, config) one baseline; per (kernel x series) cell a chain:

  baseline  [cpus=build_cpus]            open the source, build the baseline kernel (rig.nightly.prepare_kernel)
     |                                   and declare the resource objtree-<run>-<id> on that worker
  patched   [cpus=build_cpus, objtree=1] kproto test's apply/checkpatch pass, then the incremental build in the
     |                                   baseline's object tree: only the worker holding it can run it
  test      [cpus=test_cpus (+kvm=1)]    fetch the two kernels if built elsewhere, then kproto test (the
     |                                   injectable test_fn) with the patched kernel a cache hit
  extra     [cpus=build_cpus (+kvm=1)]   kproto bench / kproto fuzz when configured

Tasks take and return plain data: specs (patch and config-fragment contents, not driver paths), manifests
(content hashes) and result dicts. The heavy work of a task runs in a child process of its worker
(cluster.run_child) that dies with the worker; stand-ins given as Python objects (tests) run in the thread
of an embedded in-process cluster instead. The driver (rig/nightly.py) waits for the cells in matrix order
and is the only writer of the history database.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import json
import os
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from . import artifacts, cluster
from .cluster import RES_CPUS, RES_KVM
from .errors import KprotoError
from .paths import cache_dir
from .store import SeriesRecord, now_iso

# stand-ins passed as Python objects, by token; only reachable from this process's embedded cluster
_LOCAL: dict[str, object] = {}

PRIO_BASELINE, PRIO_BUILD, PRIO_TEST = 3_000_000, 2_000_000, 1_000_000
POLL_S = 2.0


# the modules that define what the driver and its tasks exchange (specs, manifests, result dicts)
_PROTOCOL = ("nightly_graph.py", "cluster.py", "cluster_worker.py", "artifacts.py", "nightly.py", "store.py")


def _code_fingerprint() -> str:
    """The graph's protocol code this process loaded, as of import: a worker whose copy differs from the
    driver's (an older checkout) must not run this run's tasks. It does not prove the whole checkout is the
    same: deploying one kproto version everywhere (setup.sh) is the operator's part."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in _PROTOCOL:
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return h.hexdigest()


CODE = _code_fingerprint()


class StageFailed(KprotoError):
    """A stage failed on a worker; MESSAGE is the one-line error it reported there."""


# ================================================================ plain-data specs (driver side)

def _files(paths) -> list[tuple[str, bytes]]:
    return [(Path(p).name, Path(p).read_bytes()) for p in paths]


def _kernel_groups(cfg, real: bool) -> dict[str, list]:
    """Kernels that share a baseline: same source and same config fragments (real builds only; a stand-in
    kernel_fn is called per kernel, as before)."""
    groups: dict[str, list] = {}
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


def _kspec(gid: str, ks: list) -> dict:
    k = ks[0]
    return {"gid": gid, "names": [x.name for x in ks], "label": "+".join(x.name for x in ks), "name": k.name,
            "source": k.source, "config_paths": [str(f) for f in k.config], "config": _files(k.config)}


def _cspec(index: int, k, s, kspec: dict, cfg, multi_kernel: bool) -> dict:
    from . import patches as patchmod
    plist = patchmod.expand(s.paths)
    return {"index": index, "kernel": k.name, "series": s.name,
            "label": f"{s.name} on {k.name}" if multi_kernel else s.name,
            "paths": [str(p) for p in s.paths], "patches": _files([p.path for p in plist]),
            "tests": s.tests, "timeout": cfg.timeout, "kvm": bool(getattr(s, "kvm", False)),
            "bench": bool(cfg.bench), "fuzz_budget_s": float(cfg.fuzz_budget_s),
            "kspec": {**kspec, "name": k.name}}


# ================================================================ worker side: inputs, stages

def _materialize(files: list[tuple[str, bytes]], what: str) -> list[Path]:
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


def _kernel_cfg(kspec: dict, inproc: bool):
    from .nightly import KernelCfg
    frags = [Path(p) for p in kspec["config_paths"]] if inproc else _materialize(kspec["config"], "config")
    return KernelCfg(name=kspec["name"] if "name" in kspec else kspec["label"], source=kspec["source"],
                     config=tuple(frags))


def _series_cfg(cspec: dict, inproc: bool):
    from .nightly import SeriesCfg
    paths = [Path(p) for p in cspec["paths"]] if inproc else _materialize(cspec["patches"], "patches")
    return SeriesCfg(name=cspec["series"], paths=paths, kernels=[cspec["kernel"]], tests=cspec["tests"])


def _fn(ref, default=None):
    if ref is None:
        return default
    if isinstance(ref, str) and ref.startswith("local:"):
        return _LOCAL[ref]
    return cluster._resolve(ref)


def _one_line(e: BaseException) -> str:
    from .nightly import _one_line as one
    return one(e)


def s_baseline(p: dict, say) -> dict:
    """Open the source and build (or find cached) the baseline kernel; or the stand-in kernel_fn."""
    inproc = p["inproc"]
    kspec = dict(p["kspec"], name=p["kspec"]["label"])
    k = _kernel_cfg(kspec, inproc)
    try:
        if p["kernel_fn"] is not None:
            return {"info": dict(_fn(p["kernel_fn"])(k, say))}
        from . import build as buildmod, kconfig, nightly, tree as treemod
        tree = treemod.open_source(k.source)
        want = kconfig.requested(k.config)
        key = buildmod.cache_key(tree, [], want)
        had = buildmod.lookup(key) is not None
        info = nightly.prepare_kernel(k, say)
        if not had:
            objdir = buildmod.objdir_for(tree, want)
            artifacts.keep_log(key, objdir.parent / f"{objdir.name}.log")
        man = artifacts.snapshot(key, p["where"])
        if p.get("shared"):
            artifacts.publish(man, Path(p["shared"]))
        return {"info": info, "manifest": man, "cached": had}
    except KeyboardInterrupt:
        raise
    except Exception as e:
        return {"error": _one_line(e)}


def s_patched(p: dict, say) -> dict:
    """kproto test's own pre-build pass (apply + checkpatch, cached) and the incremental patched build, on
    the worker that holds the baseline's object tree. The outcome and message are kproto test's."""
    from . import build as buildmod, kconfig, patches as patchmod, testrun, tree as treemod
    from .errors import BuildError, PatchError
    inproc = p["inproc"]
    k = _kernel_cfg(p["cspec"]["kspec"], inproc)
    s = _series_cfg(p["cspec"], inproc)
    t0 = time.monotonic()
    try:
        series = patchmod.expand(s.paths)
        tree = treemod.open_source(k.source)
        want = kconfig.requested(k.config)
        key = buildmod.cache_key(tree, series, want)
        shared = Path(p["shared"]) if p.get("shared") else None
        if buildmod.lookup(key) is None and shared is not None:
            got = artifacts.install_from_shared(shared, key, say)
            if got:
                return {"outcome": "built", "manifest": artifacts.snapshot(key, p["where"]), "cached": True,
                        "fetched": got, "build_s": 0.0}
        testrun.run_checks_cached(tree, series)
        kern = buildmod.build(tree, series, k.config, progress=say)
        if not kern.cached:
            objdir = buildmod.objdir_for(tree, want)
            artifacts.keep_log(key, objdir.parent / f"{objdir.name}.log")
        say("patched kernel: " + ("cached" if kern.cached else f"built in {kern.build_s:.0f} s (incremental)"))
        man = artifacts.snapshot(key, p["where"])
        if shared is not None:
            artifacts.publish(man, shared)
        return {"outcome": "built", "manifest": man, "cached": kern.cached,
                "build_s": round(time.monotonic() - t0, 1) if not kern.cached else 0.0}
    except KeyboardInterrupt:
        raise
    except PatchError as e:
        return {"outcome": "apply-failed", "error": _one_line(e)}
    except BuildError as e:
        return {"outcome": "build-failed", "error": _one_line(e)}
    except Exception as e:
        if not isinstance(e, KprotoError):
            say("internal error:\n" + traceback.format_exc())
        return {"outcome": "error", "error": _one_line(e)}


class _Opts:
    def __init__(self, timeout):
        self.timeout = timeout


def record_to_dict(rec: SeriesRecord) -> dict:
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name != "verdicts"}
    vs = []
    for v in rec.verdicts or []:
        if dataclasses.is_dataclass(v):
            vs.append(dataclasses.asdict(v))
    d["verdicts"] = vs
    return d


def _verdicts(vs: list[dict]) -> list:
    from . import compare
    out = []
    for v in vs:
        v = dict(v)
        v["diffs"] = [compare.ObsDiff(**x) for x in v.get("diffs") or []]
        out.append(compare.TestVerdict(**v))
    return out


def s_test(p: dict, say) -> dict:
    """kproto test for the cell (run_series: the outcome from the exception it raises)."""
    from . import nightly
    inproc = p["inproc"]
    k = _kernel_cfg(p["cspec"]["kspec"], inproc)
    s = _series_cfg(p["cspec"], inproc)
    rec = nightly.run_series(k, s, _Opts(p["cspec"]["timeout"]), say, _fn(p["test_fn"]))
    return {"record": record_to_dict(rec), "accel": cluster.accel_here()}


def s_extra(p: dict, say) -> dict:
    """kproto bench / kproto fuzz for a tested cell. Fuzz reproducers come back as file contents (the
    report directory is on the driver's machine)."""
    from . import nightly
    inproc = p["inproc"]
    cs = p["cspec"]
    k = _kernel_cfg(cs["kspec"], inproc)
    s = _series_cfg(cs, inproc)
    out: dict = {"bench": [], "findings": [], "notes": [], "files": {}, "findings_dir": None}
    if cs["bench"]:
        metrics, err = nightly.run_bench(k, s, say)
        out["bench"] = metrics
        if err:
            out["notes"].append(err)
    if cs["fuzz_budget_s"]:
        d = Path(tempfile.mkdtemp(prefix="kproto-nightly-findings-"))
        try:
            findings, err = nightly.run_fuzz(k, s, cs["fuzz_budget_s"], say, d)
            out["findings"] = findings
            out["findings_dir"] = str(d)
            if err:
                out["notes"].append(err)
            total = 0
            for f in sorted(d.rglob("*")):
                if f.is_file() and total < 64 << 20:
                    data = f.read_bytes()
                    total += len(data)
                    out["files"][str(f.relative_to(d))] = data
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


# ================================================================ worker side: the tasks

def _call(ctx: dict, target: str, payload: dict, say, where: dict) -> dict:
    payload = {**payload, "inproc": ctx["inproc"], "shared": ctx["shared"], "where": where}
    if ctx["inproc"]:
        return cluster._resolve(target)(payload, say)
    return cluster.run_child(target, payload, say, ctx["token"])


def _task(stage: str, label: str, ctx: dict, body: Callable[[Callable[[str], None], dict], dict]) -> dict:
    """Common frame of every task: who runs it, how long, its progress lines as Dask events, and any
    failure turned into data (a task result is never an exception, so a cell never takes others down)."""
    where = cluster.here()
    prefix = f"[{label}] " if label else ""

    def say(msg: str) -> None:
        for line in str(msg).splitlines() or [""]:
            cluster.emit(ctx["topic"], prefix + line)

    t0 = time.monotonic()
    what = {"baseline": "baseline build", "patched": "patched build", "test": "kproto test", "extra": "bench/fuzz"}
    say(f"{what.get(stage, stage)} on {where['worker']}"
        + (f" (accel {where['accel']})" if stage in ("test", "extra") else ""))
    try:
        if ctx.get("code") not in (None, CODE):
            raise StageFailed(f"worker {where['worker']} runs another kproto nightly protocol than the driver "
                              f"(code fingerprint {CODE[:12]} vs {ctx['code'][:12]}): install the same kproto "
                              "there (setup.sh) and restart the worker")
        out = body(say, where)
    except KeyboardInterrupt:
        out = {"interrupted": True}
    except Exception as e:
        if not isinstance(e, KprotoError):
            say("internal error:\n" + traceback.format_exc())
        out = {"error": _one_line(e), "crashed": True}
    out["stage"] = stage
    out["where"] = where
    out["took"] = round(time.monotonic() - t0, 1)
    return out


def t_baseline(kspec: dict, ctx: dict) -> dict:
    def body(say, where):
        out = _call(ctx, "rig.nightly_graph:s_baseline", {"kspec": kspec, "kernel_fn": ctx["kernel_fn"]}, say,
                    where)
        if out.get("manifest"):
            # this worker now holds the object tree the patched builds of this baseline need
            cluster.declare_resource(ctx["objtree"][kspec["gid"]], 1)
        return out
    return _task("baseline", "", ctx, body)


def t_patched(cspec: dict, base: dict, ctx: dict) -> dict:
    def body(say, where):
        if base.get("error") or base.get("interrupted"):
            return {"outcome": "skipped"}
        return _call(ctx, "rig.nightly_graph:s_patched", {"cspec": cspec}, say, where)
    out = _task("patched", cspec["label"], ctx, body)
    out["base"] = _slim(base)
    return out


def _slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k in ("stage", "where", "took", "manifest", "info", "error", "interrupted",
                                                  "outcome", "cached", "build_s", "fetched", "base")}


def _ensure_kernels(base: dict, patched: dict | None, ctx: dict, say, who: str) -> list[dict]:
    """Both kernels of a cell in this worker's cache before kproto test / bench uses them (rig/artifacts.py)."""
    if patched is None:
        return []
    fetched = []
    shared = Path(ctx["shared"]) if ctx["shared"] else None
    for man in (base.get("manifest"), patched.get("manifest")):
        if not man:
            continue
        try:
            fetched.append(artifacts.ensure(man, shared, say))
        except artifacts.ArtifactUnavailable as e:
            say(f"{e.message}: {who} rebuilds it here")
            fetched.append({"key": man["key"], "how": "rebuilt", "from": man["built_by"].get("worker"),
                            "why": e.message})
    return fetched


def t_test(cspec: dict, up: dict, ctx: dict) -> dict:
    """UP: the patched build's result (real kernels) or the baseline's (stand-in kernel_fn)."""
    base = up.get("base", up) if up.get("stage") == "patched" else up
    patched = up if up.get("stage") == "patched" else None

    def body(say, where):
        if base.get("error") or base.get("interrupted"):
            return {"skipped": "kernel"}
        if patched is not None and patched.get("interrupted"):
            return {"interrupted": True}
        if patched is not None and patched.get("outcome") != "built":
            # the cell stopped at apply/build: recorded as kproto test would have (run_series)
            started = now_iso()
            say(f"{patched.get('outcome')}: {patched.get('error')}")
            return {"record": {"outcome": patched.get("outcome", "error"), "error": patched.get("error"),
                               "started": started, "finished": now_iso()}}
        fetched = _ensure_kernels(base, patched, ctx, say, "kproto test")
        out = _call(ctx, "rig.nightly_graph:s_test", {"cspec": cspec, "test_fn": ctx["test_fn"]}, say, where)
        out["fetched"] = fetched
        return out
    out = _task("test", cspec["label"], ctx, body)
    out["up"] = _slim(up)
    return out


def t_extra(cspec: dict, test: dict, ctx: dict) -> dict:
    def body(say, where):
        rec = test.get("record") or {}
        if test.get("interrupted") or test.get("skipped") or rec.get("outcome") != "tested":
            return {"skipped": True}
        up = test.get("up") or {}
        fetched = _ensure_kernels(up.get("base") or {}, up, ctx, say, "kproto bench") \
            if up.get("stage") == "patched" else []
        out = _call(ctx, "rig.nightly_graph:s_extra", {"cspec": cspec}, say, where)
        out["fetched"] = fetched
        return out
    out = _task("extra", cspec["label"], ctx, body)
    out["test"] = test
    return out


# ================================================================ driver side

@dataclass
class Cell:
    spec: dict
    kernel: object
    series: object
    future: object = None            # the last task of the chain
    resources: dict = field(default_factory=dict)
    unplaceable: str | None = None   # why no worker can run it (no task submitted)
    took: float = 0.0                # seconds its test (+ bench/fuzz) tasks ran


class Matrix:
    """The submitted graph of one run; the driver asks for kernels and cells in matrix order."""

    def __init__(self, eng: "Engine", cfg, report_dir: Path, say: Callable[[str], None]):
        self.eng, self.cfg, self.report_dir, self.say = eng, cfg, report_dir, say
        sess = eng.sess
        self.client = sess.client
        token = uuid.uuid4().hex[:12]
        self.real = eng.kernel_fn is None
        groups = _kernel_groups(cfg, self.real)
        self.ctx = {"token": token, "topic": f"kproto-nightly-{token}", "inproc": eng.inproc, "code": CODE,
                    "test_fn": eng.test_ref, "kernel_fn": eng.kernel_ref, "real": self.real,
                    "shared": str(eng.ccfg.artifacts) if eng.ccfg.artifacts else None,
                    "objtree": {gid: f"objtree-{token}-{gid}" for gid in groups}}
        self.placements: list[dict] = []
        self._kinfo: dict[str, dict] = {}
        self.live: dict[str, object] = {}          # futures this driver still holds (cancelled on interrupt)
        self.client.subscribe_topic(self.ctx["topic"], self._on_event)
        for line in sess.describe():
            say(line)
        if self.ctx["shared"]:
            say(f"kernel artifacts also go through the shared directory {self.ctx['shared']}")

        submit = self.client.submit
        self.base_futs: dict[str, object] = {}
        self.group_of: dict[str, str] = {}
        kspecs = {}
        for gid, ks in groups.items():
            kspecs[gid] = _kspec(gid, ks)
            for k in ks:
                self.group_of[k.name] = gid
            self.base_futs[gid] = submit(t_baseline, kspecs[gid], self.ctx, resources={RES_CPUS: sess.build_cpus},
                                         priority=PRIO_BASELINE, pure=False,
                                         key=f"kproto-baseline-{kspecs[gid]['label']}-{token}")
            self.live[self.base_futs[gid].key] = self.base_futs[gid]
        self.cells: dict[tuple[str, str], Cell] = {}
        multi = len(cfg.kernels) > 1
        workers = sess.workers()
        i = 0
        for k in cfg.kernels:
            for s in cfg.series:
                if k.name not in s.kernels:
                    continue
                gid = self.group_of[k.name]
                spec = _cspec(i, k, s, kspecs[gid], cfg, multi)
                cell = Cell(spec=spec, kernel=k, series=s)
                self.cells[(k.name, s.name)] = cell
                test_res = {RES_CPUS: sess.test_cpus}
                extra_res = {RES_CPUS: sess.build_cpus}
                if spec["kvm"]:
                    test_res[RES_KVM] = 1
                    extra_res[RES_KVM] = 1
                cell.resources = test_res
                if not sess.can_run(test_res, workers):
                    cell.unplaceable = (f"no Dask worker offers {_res_text(test_res)}"
                                        + (" (the series is KVM-only: kvm = true)" if spec["kvm"] else ""))
                    i += 1
                    continue
                name = f"{s.name}-{k.name}-{token}"
                up = self.base_futs[gid]
                if self.real:
                    up = submit(t_patched, spec, up, self.ctx, pure=False, priority=PRIO_BUILD - i,
                                resources={RES_CPUS: sess.build_cpus, self.ctx["objtree"][gid]: 1},
                                key=f"kproto-patched-{name}")
                fut = submit(t_test, spec, up, self.ctx, pure=False, priority=PRIO_TEST - i, resources=test_res,
                             key=f"kproto-test-{name}")
                if cfg.bench or cfg.fuzz_budget_s:
                    fut = submit(t_extra, spec, fut, self.ctx, pure=False, priority=PRIO_TEST - i,
                                 resources=extra_res, key=f"kproto-extra-{name}")
                cell.future = fut
                self.live[fut.key] = fut
                i += 1
        say(f"submitted {len(self.base_futs)} baseline(s) and {sum(c.future is not None for c in self.cells.values())} "
            f"cell(s) to {'the embedded cluster' if sess.embedded else sess.address}")

    def _release(self, fut) -> None:
        self.live.pop(fut.key, None)
        fut.release()

    # ---- progress
    def _on_event(self, event) -> None:
        try:
            msg = event[1] if isinstance(event, (tuple, list)) else event
            line = msg.get("line") if isinstance(msg, dict) else str(msg)
            if line is not None:
                self.say(line)
        except Exception:
            pass

    # ---- waiting, with an eye on the workers
    def _wait(self, fut, needs: dict, what: str) -> dict:
        from distributed.client import FutureCancelledError
        starved_since = None
        while True:
            try:
                return fut.result(timeout=POLL_S)
            except TimeoutError:
                pass
            except FutureCancelledError:
                return {"error": f"{what}: its task was cancelled"}
            except Exception as e:
                name = type(e).__name__
                if name == "KilledWorker":
                    return {"error": f"{what}: the Dask workers running it died repeatedly (KilledWorker)"}
                return {"error": f"{what}: {name}: {' '.join(str(e).split())[:300]}"}
            if needs and not self.eng.sess.can_run(needs):
                starved_since = starved_since or time.monotonic()
                if time.monotonic() - starved_since > self.eng.sess.no_worker_timeout_s:
                    fut.cancel()
                    return {"error": f"{what}: no live Dask worker offers {_res_text(needs)} any more "
                                     f"(waited {self.eng.sess.no_worker_timeout_s:.0f} s)"}
            else:
                starved_since = None

    def kernel(self, k) -> dict:
        """The kernel's {source, version, commit_id} once its baseline is done; raises as kernel_fn did."""
        gid = self.group_of[k.name]
        if gid not in self._kinfo:
            res = self._wait(self.base_futs[gid], {RES_CPUS: self.eng.sess.build_cpus}, f"kernel {k.name}")
            self._kinfo[gid] = res
            self._release(self.base_futs[gid])
            if res.get("where"):
                self.placements.append({"kernel": "+".join(x.name for x in self.cfg.kernels
                                                            if self.group_of[x.name] == gid),
                                        "series": None, **_place(res)})
        res = self._kinfo[gid]
        if res.get("interrupted"):
            raise KeyboardInterrupt
        if res.get("error") is not None:
            raise StageFailed(res["error"])
        return dict(res["info"])

    def series(self, k, s) -> SeriesRecord:
        """The cell's SeriesRecord (bench / fuzz merged), as run_series and the bench/fuzz steps made it."""
        from . import patches as patchmod
        cell = self.cells[(k.name, s.name)]
        plist = patchmod.expand(s.paths)
        rec = SeriesRecord(kernel=k.name, name=s.name, outcome="error", started=now_iso(),
                           patches=[{"path": str(p.path), "sha256": p.sha256, "subject": p.subject} for p in plist],
                           series_hash=patchmod.series_digest(plist))
        cell.took = 0.0
        if cell.unplaceable:
            rec.error = cell.unplaceable
            rec.finished = now_iso()
            self.say(f"[{cell.spec['label']}] error: {rec.error}")
            return rec
        res = self._wait(cell.future, cell.resources, f"series {s.name} on {k.name}")
        self._release(cell.future)
        test, extra = (res.get("test"), res) if res.get("stage") == "extra" else (res, None)
        if test is None:                 # the extra task itself failed to run
            test, extra = res, None
        if test.get("interrupted") or (extra or {}).get("interrupted"):
            raise KeyboardInterrupt
        r = test.get("record")
        if r:
            for f in ("outcome", "verdict", "error", "kernel_version", "tests", "splats", "timings", "notes",
                      "started", "finished", "bench", "findings"):
                if f in r and r[f] is not None:
                    setattr(rec, f, r[f])
            rec.verdicts = _verdicts(r.get("verdicts") or [])
            up = test.get("up") or {}
            if up.get("stage") == "patched" and up.get("build_s") and "build_patched_s" in rec.timings:
                # kproto test found the patched kernel built by the graph's build task: that build's time
                rec.timings["build_patched_s"] = up["build_s"]
                rec.timings["build_s"] = round(rec.timings.get("build_baseline_s", 0.0) + up["build_s"], 1)
        else:
            rec.error = test.get("error") or "the cell produced no result"
            rec.finished = now_iso()
            self.say(f"[{cell.spec['label']}] error: {rec.error}")
        if extra is not None and not extra.get("skipped"):
            if extra.get("error"):
                rec.notes.append(f"bench/fuzz: {extra['error']}")
            else:
                rec.bench = list(extra.get("bench") or [])
                rec.findings = self._findings(k, s, extra)
                rec.notes.extend(extra.get("notes") or [])
        cell.took = float(test.get("took") or 0) + float((extra or {}).get("took") or 0)
        self._record_places(k, s, test, extra)
        return rec

    def took(self, k, s) -> float:
        return getattr(self.cells[(k.name, s.name)], "took", 0.0)

    def _findings(self, k, s, extra: dict) -> list[dict]:
        from .nightly import _SAFE
        findings = list(extra.get("findings") or [])
        files = extra.get("files") or {}
        src = extra.get("findings_dir")
        dest = self.report_dir / "fuzz" / f"{_SAFE.sub('_', k.name)}--{_SAFE.sub('_', s.name)}"
        if files:
            for rel, data in files.items():
                p = dest / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        if src:
            def fix(v):
                if isinstance(v, str) and v.startswith(src):
                    return str(dest) + v[len(src):]
                if isinstance(v, dict):
                    return {a: fix(b) for a, b in v.items()}
                if isinstance(v, list):
                    return [fix(x) for x in v]
                return v
            findings = [fix(f) for f in findings]
        return findings

    def _record_places(self, k, s, test: dict, extra: dict | None) -> None:
        chain = []
        up = test.get("up") or {}
        if up.get("stage") == "patched":
            chain.append(up)
        chain.append(test)
        if extra is not None and not extra.get("skipped"):
            chain.append(extra)
        for r in chain:
            if r.get("where"):
                p = {"kernel": k.name, "series": s.name, **_place(r)}
                self.placements.append(p)
        parts = []
        stopped = up.get("stage") == "patched" and up.get("outcome") != "built"
        if up.get("stage") == "patched" and up.get("where"):
            parts.append(f"{up.get('outcome')} on {up['where']['worker']}" if stopped else
                         f"built on {up['where']['worker']}" + (" (cached)" if up.get("cached") else ""))
        if test.get("where") and not stopped and not test.get("skipped"):
            w = test["where"]
            parts.append(f"tested on {w['worker']} ({w['host']}, accel {test.get('accel') or w['accel']})")
        moved = [f for f in test.get("fetched") or [] if f.get("how") != "local"]
        if moved:
            parts.append("kernels " + ", ".join(
                f"{f['key'][:12]} fetched from {f['from']} via {'Dask' if f['how'] == 'dask' else 'the shared directory'}"
                if f["how"] in ("dask", "shared") else f"{f['key'][:12]} rebuilt here ({f['from']}, which built it, is gone)"
                for f in moved))
        if extra is not None and not extra.get("skipped") and extra.get("where"):
            parts.append(f"bench/fuzz on {extra['where']['worker']}")
        if parts:
            self.say(f"[{self.cells[(k.name, s.name)].spec['label']}] " + "; ".join(parts))

    # ---- the report
    def cluster_json(self) -> dict:
        sess = self.eng.sess
        try:
            workers = [{"address": a, **w} for a, w in sorted(sess.workers().items())]
        except Exception:
            workers = []
        for w in workers:
            w["resources"] = {r: q for r, q in w["resources"].items() if not r.startswith("objtree-")}
        return {"embedded": sess.embedded, "scheduler": sess.address, "dashboard": sess.dashboard,
                "build_cpus": sess.build_cpus, "test_cpus": sess.test_cpus, "shared_artifacts": self.ctx["shared"],
                "workers": workers, "placement": self.placements}

    def amend_reports(self, report_dir: Path) -> None:
        """Which worker ran what, with which accel: report.json gets a "cluster" key and report.html a
        section (the log got a line per cell as it finished; summary.txt, the email body, stays as it was)."""
        cj = self.cluster_json()
        rj = report_dir / "report.json"
        if rj.is_file():
            j = json.loads(rj.read_text())
            j["cluster"] = cj
            rj.write_text(json.dumps(j, indent=1) + "\n")
        rh = report_dir / "report.html"
        if rh.is_file():
            text = rh.read_text()
            sec = _html_section(cj)
            i = text.rfind("</body>")
            rh.write_text(text[:i] + sec + text[i:] if i >= 0 else text + sec)


def _place(r: dict) -> dict:
    w = r.get("where") or {}
    out = {"stage": {"extra": "bench/fuzz"}.get(r.get("stage"), r.get("stage")), "worker": w.get("worker"),
           "host": w.get("host"), "address": w.get("address"), "took_s": r.get("took"),
           "accel": r.get("accel") or w.get("accel") if r.get("stage") in ("test", "extra") else None}
    if r.get("fetched"):
        out["fetched"] = [{k: f.get(k) for k in ("key", "digest", "how", "from", "bytes", "why") if f.get(k) is not None}
                          for f in (r["fetched"] if isinstance(r["fetched"], list) else [r["fetched"]])]
    if r.get("stage") in ("baseline", "patched"):
        out["cached"] = r.get("cached")
        if r.get("manifest"):
            out["kernel_key"] = r["manifest"]["key"]
            out["digest"] = r["manifest"]["digest"]
    return out


def _res_text(res: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in res.items())


def _html_section(cj: dict) -> str:
    e = html.escape
    rows = []
    for p in cj["placement"]:
        fetched = "; ".join(f"{f.get('key', '')[:12]} {f.get('how')} from {f.get('from')}" for f in p.get("fetched", []))
        rows.append(f"<tr class=\"placement\" data-series=\"{e(str(p.get('series') or ''))}\" data-stage=\"{e(str(p['stage']))}\" "
                    f"data-worker=\"{e(str(p['worker']))}\"><td>{e(str(p.get('kernel') or ''))}</td>"
                    f"<td>{e(str(p.get('series') or '(baseline)'))}</td><td>{e(str(p['stage']))}</td>"
                    f"<td>{e(str(p['worker']))}</td><td>{e(str(p.get('host') or ''))}</td>"
                    f"<td>{e(str(p.get('accel') or ''))}</td><td>{e(str(p.get('took_s')))}</td><td>{e(fetched)}</td></tr>")
    where = "embedded cluster (one machine)" if cj["embedded"] else f"Dask scheduler {cj['scheduler']}"
    dash = f' &middot; <a href="{e(cj["dashboard"])}">dashboard</a>' if cj.get("dashboard") else ""
    return ("\n<section id=\"cluster\"><h2>Where it ran</h2>\n"
            f"<p>{e(where)}{dash}; builds cpus={cj['build_cpus']}, tests cpus={cj['test_cpus']}</p>\n"
            "<table id=\"placement\"><thead><tr><th>kernel</th><th>series</th><th>stage</th><th>worker</th>"
            "<th>host</th><th>accel</th><th>s</th><th>kernels moved</th></tr></thead><tbody>\n"
            + "\n".join(rows) + "\n</tbody></table></section>\n")


# ================================================================ the engine: a cluster for one nightly

class Engine:
    def __init__(self, sess: cluster.Session, ccfg: cluster.ClusterCfg, test_fn, kernel_fn, inproc: bool,
                 refs: dict):
        self.sess, self.ccfg = sess, ccfg
        self.test_fn, self.kernel_fn = test_fn, kernel_fn
        self.inproc = inproc
        self.test_ref, self.kernel_ref = refs.get("test_fn"), refs.get("kernel_fn")
        self.matrix: Matrix | None = None

    def start(self, cfg, report_dir: Path, say: Callable[[str], None]) -> Matrix:
        self.matrix = Matrix(self, cfg, report_dir, say)
        return self.matrix

    def stop(self, interrupted: bool) -> None:
        m = self.matrix
        if m is None:
            return
        client = self.sess.client
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(m.ctx["topic"])
        futs = list(m.live.values())
        if futs:
            with contextlib.suppress(Exception):
                client.cancel(futs)
        if interrupted:
            # running tasks are not interruptible in Dask: stop this run's stage processes on every worker
            with contextlib.suppress(Exception):
                client.run(cluster.cancel_children, m.ctx["token"], wait=True)
        prefix = f"objtree-{m.ctx['token']}-"
        with contextlib.suppress(Exception):
            client.run(cluster.drop_resources, prefix)


def _ref(fn, what: str, registry: dict) -> str | None:
    if fn is None:
        return None
    if isinstance(fn, str):
        if ":" not in fn:
            raise KprotoError(f"{what} {fn!r}: give it as 'module:function'")
        return fn
    token = f"local:{what}:{uuid.uuid4().hex}"
    registry[token] = fn
    return token


@contextlib.contextmanager
def engine(cfg, say: Callable[[str], None], scheduler: str | None = None, test_fn=None,
           kernel_fn=None) -> Iterator[Engine]:
    """Connect to (or embed) the Dask cluster before any work starts. TEST_FN / KERNEL_FN: None (kproto
    test / the real baseline build), 'module:function' (importable by the workers), or a Python object
    (in-process stand-ins for tests: run in the thread of the embedded cluster, one at a time)."""
    from . import nightly
    if kernel_fn is nightly.prepare_kernel:
        kernel_fn = None
    inproc = any(f is not None and not isinstance(f, str) for f in (test_fn, kernel_fn))
    refs: dict[str, str | None] = {}
    tokens: list[str] = []
    try:
        refs["test_fn"] = _ref(test_fn, "test_fn", _LOCAL)
        refs["kernel_fn"] = _ref(kernel_fn, "kernel_fn", _LOCAL)
        tokens = [r for r in refs.values() if r and r.startswith("local:")]
        ok = False
        eng = None
        try:
            with cluster.session(getattr(cfg, "cluster", None), scheduler=scheduler, inproc=inproc) as sess:
                eng = Engine(sess, getattr(cfg, "cluster", None) or cluster.ClusterCfg(), test_fn, kernel_fn, inproc,
                             refs)
                try:
                    yield eng
                    ok = True
                finally:
                    eng.stop(interrupted=not ok)
        finally:
            if not ok and eng is not None and eng.sess.embedded and eng.matrix is not None:
                # the embedded worker is gone, so nothing new starts: stop what its threads had started
                cluster.cancel_children(eng.matrix.ctx["token"])
    finally:
        for t in tokens:
            _LOCAL.pop(t, None)
