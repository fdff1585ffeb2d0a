"""The driver's side of the nightly task graph (rig/nightly/graph.py): submit one run's matrix to the Dask
cluster, then hand the run (rig/nightly/run.py) its kernels and cells in matrix order, keeping an eye on the
workers while it waits. This process alone writes the history; it only reads task results."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rig.nightly import placement
from rig.nightly.cluster import RES_CPUS, RES_KVM
from rig.nightly.config import KernelCfg, NightlyConfig, SeriesCfg
from rig.nightly.graph import CODE, StageFailed, t_baseline, t_extra, t_patched, t_test
from rig.nightly.record import SeriesRecord, now_iso
from rig.nightly.reports import file_stem
from rig.nightly.specs import cspec, kernel_groups, kspec, verdicts_from_dicts
from rig.nightly.stages import blank_record

if TYPE_CHECKING:
    from rig.nightly.engine import Engine

PRIO_BASELINE, PRIO_BUILD, PRIO_TEST = 3_000_000, 2_000_000, 1_000_000
POLL_S = 2.0
_RECORD_FIELDS = ("outcome", "verdict", "error", "kernel_version", "tests", "splats", "timings", "notes",
                  "started", "finished", "bench", "findings", "bisect")


@dataclass
class Cell:
    spec: dict
    kernel: KernelCfg
    series: SeriesCfg
    future: Any = None               # the last task of the chain
    resources: dict = field(default_factory=dict)
    unplaceable: str | None = None   # why no worker can run it (no task submitted)
    took: float = 0.0                # seconds its test (+ bench/fuzz) tasks ran


class Matrix:
    """The submitted graph of one run; the driver asks for kernels and cells in matrix order."""

    def __init__(self, eng: Engine, cfg: NightlyConfig, report_dir: Path, say: Callable[[str], None]):
        self.eng, self.cfg, self.report_dir, self.say = eng, cfg, report_dir, say
        sess = eng.sess
        self.client: Any = sess.client
        token = uuid.uuid4().hex[:12]
        self.real = eng.kernel_fn is None
        groups = kernel_groups(cfg, self.real)
        self.ctx: dict[str, Any] = {
            "token": token, "topic": f"kproto-nightly-{token}", "inproc": eng.inproc, "code": CODE,
            "test_fn": eng.test_ref, "kernel_fn": eng.kernel_ref, "real": self.real,
            # a regressed series of several patches is bisected with real kernels and kproto test, or with
            # the run's stand-in bisect_fn; never with stand-in kernels or tests (they would build real ones)
            "bisect_fn": eng.bisect_ref,
            "bisect": eng.bisect_ref is not None or (self.real and eng.test_ref is None),
            "shared": str(eng.ccfg.artifacts) if eng.ccfg.artifacts else None,
            "objtree": {gid: f"objtree-{token}-{gid}" for gid in groups}}
        self.placements: list[dict] = []
        self._placements_taken = 0              # how many of them the driver has stored (new_placements)
        self._kinfo: dict[str, dict] = {}
        self.live: dict[str, Any] = {}          # futures this driver still holds (cancelled on interrupt)
        self.client.subscribe_topic(self.ctx["topic"], self._on_event)
        for line in sess.describe():
            say(line)
        if self.ctx["shared"]:
            say(f"kernel artifacts also go through the shared directory {self.ctx['shared']}")
        self.base_futs: dict[str, Any] = {}
        self.group_of: dict[str, str] = {}
        kspecs = {}
        for gid, ks in groups.items():
            kspecs[gid] = kspec(gid, ks)
            for k in ks:
                self.group_of[k.name] = gid
            self.base_futs[gid] = self.client.submit(
                t_baseline, kspecs[gid], self.ctx, resources={RES_CPUS: sess.build_cpus}, priority=PRIO_BASELINE,
                pure=False, key=f"kproto-baseline-{kspecs[gid]['label']}-{token}")
            self.live[self.base_futs[gid].key] = self.base_futs[gid]
        self.cells: dict[tuple[str, str], Cell] = {}
        workers = sess.workers()
        i = 0
        for k in cfg.kernels:
            for s in cfg.series:
                if k.name in s.kernels:
                    gid = self.group_of[k.name]
                    cell = Cell(spec=cspec(i, k, s, kspecs[gid], cfg, len(cfg.kernels) > 1), kernel=k, series=s)
                    self.cells[(k.name, s.name)] = cell
                    self._submit_cell(cell, i, gid, workers)
                    i += 1
        say(f"submitted {len(self.base_futs)} baseline(s) and {sum(c.future is not None for c in self.cells.values())} "
            f"cell(s) to {'the embedded cluster' if sess.embedded else sess.address}")

    def _submit_cell(self, cell: Cell, i: int, gid: str, workers: dict) -> None:
        """The chain of cell I: patched build (real kernels), test, bench/fuzz (when configured)."""
        sess, spec, submit = self.eng.sess, cell.spec, self.client.submit
        test_res = {RES_CPUS: sess.test_cpus}
        extra_res = {RES_CPUS: sess.build_cpus}
        if spec["kvm"]:
            test_res[RES_KVM] = 1
            extra_res[RES_KVM] = 1
        cell.resources = test_res
        if not sess.can_run(test_res, workers):
            cell.unplaceable = (f"no Dask worker offers {placement.res_text(test_res)}"
                                + (" (the series is KVM-only: kvm = true)" if spec["kvm"] else ""))
            return
        name = f"{cell.series.name}-{cell.kernel.name}-{self.ctx['token']}"
        up = self.base_futs[gid]
        if self.real:
            up = submit(t_patched, spec, up, self.ctx, pure=False, priority=PRIO_BUILD - i,
                        resources={RES_CPUS: sess.build_cpus, self.ctx["objtree"][gid]: 1},
                        key=f"kproto-patched-{name}")
        fut = submit(t_test, spec, up, self.ctx, pure=False, priority=PRIO_TEST - i, resources=test_res,
                     key=f"kproto-test-{name}")
        if self.cfg.bench or self.cfg.fuzz_budget_s:
            fut = submit(t_extra, spec, fut, self.ctx, pure=False, priority=PRIO_TEST - i,
                         resources=extra_res, key=f"kproto-extra-{name}")
        cell.future = fut
        self.live[fut.key] = fut

    def _release(self, fut: Any) -> None:
        self.live.pop(fut.key, None)
        fut.release()

    # ---- progress
    def _on_event(self, event: Any) -> None:
        try:
            msg = event[1] if isinstance(event, (tuple, list)) else event
            line = msg.get("line") if isinstance(msg, dict) else str(msg)
            if line is not None:
                self.say(line)
        except Exception:
            pass

    # ---- waiting, with an eye on the workers
    def _wait(self, fut: Any, needs: dict, what: str) -> dict:
        from distributed.client import FutureCancelledError
        sess = self.eng.sess
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
            if needs and not sess.can_run(needs):
                starved_since = starved_since or time.monotonic()
                if time.monotonic() - starved_since > sess.no_worker_timeout_s:
                    fut.cancel()
                    return {"error": f"{what}: no live Dask worker offers {placement.res_text(needs)} any more "
                                     f"(waited {sess.no_worker_timeout_s:.0f} s)"}
            else:
                starved_since = None

    # ---- what the run asks for, in matrix order
    def kernel(self, k: KernelCfg) -> dict:
        """The kernel's {source, version, commit_id} once its baseline is done; raises as kernel_fn did."""
        gid = self.group_of[k.name]
        if gid not in self._kinfo:
            res = self._wait(self.base_futs[gid], {RES_CPUS: self.eng.sess.build_cpus}, f"kernel {k.name}")
            self._kinfo[gid] = res
            self._release(self.base_futs[gid])
            if res.get("where"):
                self.placements.append({"kernel": "+".join(x.name for x in self.cfg.kernels
                                                            if self.group_of[x.name] == gid),
                                        "series": None, **placement.place(res)})
        res = self._kinfo[gid]
        if res.get("interrupted"):
            raise KeyboardInterrupt
        if res.get("error") is not None:
            raise StageFailed(res["error"])
        return dict(res["info"])

    def series(self, k: KernelCfg, s: SeriesCfg) -> SeriesRecord:
        """The cell's SeriesRecord (bench / fuzz merged), as run_series and the bench/fuzz steps made it."""
        cell = self.cells[(k.name, s.name)]
        rec = blank_record(k.name, s)
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
            for f in _RECORD_FIELDS:
                if f in r and r[f] is not None:
                    setattr(rec, f, r[f])
            rec.verdicts = verdicts_from_dicts(r.get("verdicts") or [])
            up = test.get("up") or {}
            if up.get("stage") == "patched" and up.get("build_s") and "build_patched_s" in rec.timings:
                # kproto test found the patched kernel built by the graph's build task: that build's time
                rec.timings["build_patched_s"] = up["build_s"]
                rec.timings["build_s"] = round(rec.timings.get("build_baseline_s", 0.0) + up["build_s"], 1)
        else:
            rec.error = test.get("error") or "the cell produced no result"
            rec.finished = now_iso()
            self.say(f"[{cell.spec['label']}] error: {rec.error}")
        rec.reproducers = self._reproducers(k, s, test)
        if extra is not None and not extra.get("skipped"):
            if extra.get("error"):
                rec.notes.append(f"bench/fuzz: {extra['error']}")
            else:
                rec.bench = list(extra.get("bench") or [])
                rec.findings = self._findings(k, s, extra)
                rec.notes.extend(extra.get("notes") or [])
        cell.took = float(test.get("took") or 0) + float((extra or {}).get("took") or 0)
        self.placements.extend({"kernel": k.name, "series": s.name, **placement.place(r)}
                               for r in placement.cell_chain(test, extra))
        line = placement.cell_line(test, extra)
        if line:
            self.say(f"[{cell.spec['label']}] {line}")
        return rec

    def took(self, k: KernelCfg, s: SeriesCfg) -> float:
        return self.cells[(k.name, s.name)].took

    def new_placements(self) -> list[dict]:
        """The placement records (report.json's cluster.placement entries) added since the last call: the
        driver stores them in the history with the kernel or the cell it just recorded."""
        out = self.placements[self._placements_taken:]
        self._placements_taken = len(self.placements)
        return out

    def _reproducers(self, k: KernelCfg, s: SeriesCfg, test: dict) -> list[str]:
        """A regressed series' reproducer bundles (kproto test --repro, returned by the test stage as file
        contents) into REPORT_DIR/repro/<kernel>--<series>/<test>/, each reproduce.sh executable; their
        directories."""
        files = test.get("repro_files") or {}
        if not files:
            return []
        dest = self.report_dir / "repro" / file_stem(k.name, s.name)
        bundles: list[str] = []
        for rel, data in sorted(files.items()):
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or len(parts) < 2:
                continue                       # only DIR/<test>/... of the stage's own --repro directory
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            if p.name == "reproduce.sh":
                p.chmod(0o755)
            bundle = str(dest / parts[0])
            if bundle not in bundles:
                bundles.append(bundle)
        return bundles

    def _findings(self, k: KernelCfg, s: SeriesCfg, extra: dict) -> list[dict]:
        """The cell's fuzz reproducers into the report directory, the findings' paths pointing there."""
        findings = list(extra.get("findings") or [])
        files = extra.get("files") or {}
        src = extra.get("findings_dir")
        dest = self.report_dir / "fuzz" / file_stem(k.name, s.name)
        for rel, data in files.items():
            p = dest / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        if src:
            def fix(v: Any) -> Any:
                if isinstance(v, str) and v.startswith(src):
                    return str(dest) + v[len(src):]
                if isinstance(v, dict):
                    return {a: fix(b) for a, b in v.items()}
                if isinstance(v, list):
                    return [fix(x) for x in v]
                return v
            findings = [fix(f) for f in findings]
        return findings

    # ---- the report
    def cluster_json(self) -> dict:
        return placement.cluster_json(self.eng.sess, self.ctx["shared"], self.placements)

    def amend_reports(self, report_dir: Path) -> None:
        """report.json's "cluster" key and report.html's "Where it ran" section (rig/nightly/placement.py)."""
        placement.amend_reports(report_dir, self.cluster_json())
