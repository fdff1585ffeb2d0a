"""`kproto nightly`'s matrix as a Dask task graph: the tasks and what they hand each other. The driver side
(submitting the graph, waiting for the cells in matrix order) is rig/nightly/matrix.py, the Dask plumbing
rig/nightly/cluster.py and rig/nightly/children.py, the stages the tasks run rig/nightly/stages.py, kernel
artifacts between workers rig/kernel/artifacts.py; the run bookkeeping, diff and reports are
rig/nightly/run.py, diff.py and reports.py.

Per (source, config) one baseline; per (kernel x series) cell a chain:

  baseline  [cpus=build_cpus]            open the source, build the baseline kernel (stages.s_baseline)
     |                                   and declare the resource objtree-<run>-<id> on that worker
  patched   [cpus=build_cpus, objtree=1] kproto test's apply/checkpatch pass, then the incremental build in the
     |                                   baseline's object tree: only the worker holding it can run it
  test      [cpus=test_cpus (+kvm=1)]    fetch the two kernels if built elsewhere, then kproto test (the
     |                                   injectable test_fn) with the patched kernel a cache hit; a regressed
     |                                   series: its first bad patch (kproto bisect, rig/nightly/bisecting.py)
  extra     [cpus=build_cpus (+kvm=1)]   kproto bench / kproto fuzz when configured

Tasks take and return plain data: specs (rig/nightly/specs.py: patch and config-fragment contents, not driver
paths), manifests (content hashes) and result dicts. The heavy work of a task runs in a child process of its
worker (children.run_child) that dies with the worker; stand-ins given as Python objects (tests) run in the
thread of an embedded in-process cluster instead. A task result is never an exception.
"""
from __future__ import annotations

import hashlib
import time
import traceback
from pathlib import Path
from typing import Callable

from rig.core.errors import KprotoError
from rig.kernel import artifacts
from rig.nightly import cluster
from rig.nightly.children import resolve, run_child
from rig.nightly.record import now_iso
from rig.nightly.stages import one_line

Say = Callable[[str], None]


# the modules that define what the driver and its tasks exchange (specs, manifests, result dicts)
_PROTOCOL = ("nightly", "kernel/artifacts.py")   # under rig/: every module of the nightly package, the artifact store
_RIG = Path(__file__).resolve().parent.parent


def protocol_files() -> list[Path]:
    """The files the code fingerprint covers: every *.py of rig/nightly/ (whatever its modules are called)
    and rig/kernel/artifacts.py."""
    out: list[Path] = []
    for name in _PROTOCOL:
        out += sorted((_RIG / name).rglob("*.py")) if (_RIG / name).is_dir() else [_RIG / name]
    return out


def _code_fingerprint() -> str:
    """The graph's protocol code this process loaded, as of import: a worker whose copy differs from the
    driver's (an older checkout) must not run this run's tasks. It does not prove the whole checkout is the
    same: deploying one kproto version everywhere (setup.sh) is the operator's part."""
    h = hashlib.sha256()
    for f in protocol_files():
        h.update(str(f.relative_to(_RIG)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


CODE = _code_fingerprint()


class StageFailed(KprotoError):
    """A stage failed on a worker; MESSAGE is the one-line error it reported there."""


def _call(ctx: dict, target: str, payload: dict, say: Say, where: dict) -> dict:
    """Run stage TARGET (rig/nightly/stages.py) in a stage process of this worker, or in this thread for
    in-process stand-ins."""
    payload = {**payload, "inproc": ctx["inproc"], "shared": ctx["shared"], "where": where}
    if ctx["inproc"]:
        return resolve(target)(payload, say)
    return run_child(target, payload, say, ctx["token"])


def _task(stage: str, label: str, ctx: dict, body: Callable[[Say, dict], dict]) -> dict:
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
        out = {"error": one_line(e), "crashed": True}
    out["stage"] = stage
    out["where"] = where
    out["took"] = round(time.monotonic() - t0, 1)
    return out


def t_baseline(kspec: dict, ctx: dict) -> dict:
    def body(say, where):
        out = _call(ctx, "rig.nightly.stages:s_baseline", {"kspec": kspec, "kernel_fn": ctx["kernel_fn"]}, say,
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
        return _call(ctx, "rig.nightly.stages:s_patched", {"cspec": cspec}, say, where)
    out = _task("patched", cspec["label"], ctx, body)
    out["base"] = _slim(base)
    return out


def _slim(r: dict) -> dict:
    return {k: v for k, v in r.items() if k in ("stage", "where", "took", "manifest", "info", "error", "interrupted",
                                                  "outcome", "cached", "build_s", "fetched", "base")}


def _ensure_kernels(base: dict, patched: dict | None, ctx: dict, say: Say, who: str) -> list[dict]:
    """Both kernels of a cell in this worker's cache before kproto test / bench uses them (rig/kernel/artifacts.py)."""
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
        out = _call(ctx, "rig.nightly.stages:s_test", {"cspec": cspec, "test_fn": ctx["test_fn"],
                                                        "bisect_fn": ctx.get("bisect_fn"),
                                                        "bisect": bool(ctx.get("bisect"))}, say, where)
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
        out = _call(ctx, "rig.nightly.stages:s_extra", {"cspec": cspec}, say, where)
        out["fetched"] = fetched
        return out
    out = _task("extra", cspec["label"], ctx, body)
    out["test"] = test
    return out
