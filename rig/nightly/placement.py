"""Where each task of a nightly matrix ran: placement records (worker, host, accel, seconds, kernels moved),
the line the log gets per cell, and the report's "cluster" part (report.json's "cluster" key and the
"Where it ran" section of report.html, templates/nightly_cluster.html.j2)."""
from __future__ import annotations

import json
from pathlib import Path

from rig.core import templates
from rig.nightly.cluster import Session


def place(r: dict) -> dict:
    """The placement record of task result R."""
    w = r.get("where") or {}
    stage = r.get("stage")
    out = {"stage": "bench/fuzz" if stage == "extra" else stage, "worker": w.get("worker"),
           "host": w.get("host"), "address": w.get("address"), "took_s": r.get("took"),
           "accel": r.get("accel") or w.get("accel") if stage in ("test", "extra") else None}
    if r.get("fetched"):
        out["fetched"] = [{k: f.get(k) for k in ("key", "digest", "how", "from", "bytes", "why") if f.get(k) is not None}
                          for f in (r["fetched"] if isinstance(r["fetched"], list) else [r["fetched"]])]
    if stage in ("baseline", "patched"):
        out["cached"] = r.get("cached")
        if r.get("manifest"):
            out["kernel_key"] = r["manifest"]["key"]
            out["digest"] = r["manifest"]["digest"]
    return out


def res_text(res: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in res.items())


def cell_chain(test: dict, extra: dict | None) -> list[dict]:
    """The task results of a cell that ran somewhere: patched build, test, bench/fuzz."""
    up = test.get("up") or {}
    chain = [up] if up.get("stage") == "patched" else []
    chain.append(test)
    if extra is not None and not extra.get("skipped"):
        chain.append(extra)
    return [r for r in chain if r.get("where")]


def cell_line(test: dict, extra: dict | None) -> str:
    """Where a cell's tasks ran, in one log line ("" when nothing ran)."""
    parts = []
    up = test.get("up") or {}
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
    return "; ".join(parts)


def cluster_json(sess: Session, shared: str | None, placements: list[dict]) -> dict:
    """report.json's "cluster": the scheduler, its workers, and who ran what."""
    try:
        workers = [{"address": a, **w} for a, w in sorted(sess.workers().items())]
    except Exception:
        workers = []
    for w in workers:
        w["resources"] = {r: q for r, q in w["resources"].items() if not r.startswith("objtree-")}
    return {"embedded": sess.embedded, "scheduler": sess.address, "dashboard": sess.dashboard,
            "build_cpus": sess.build_cpus, "test_cpus": sess.test_cpus, "shared_artifacts": shared,
            "workers": workers, "placement": placements}


def html_section(cj: dict) -> str:
    rows = [{**p, "moved": "; ".join(f"{f.get('key', '')[:12]} {f.get('how')} from {f.get('from')}"
                                     for f in p.get("fetched", []))} for p in cj["placement"]]
    return "\n" + templates.render("nightly_cluster.html.j2", cj=cj, rows=rows)


def amend_reports(report_dir: Path, cj: dict) -> None:
    """Which worker ran what, with which accel: report.json gets a "cluster" key and report.html a
    section (the log got a line per cell as it finished; summary.txt, the email body, stays as it was)."""
    rj = report_dir / "report.json"
    if rj.is_file():
        j = json.loads(rj.read_text())
        j["cluster"] = cj
        rj.write_text(json.dumps(j, indent=1) + "\n")
    rh = report_dir / "report.html"
    if rh.is_file():
        text = rh.read_text()
        sec = html_section(cj)
        i = text.rfind("</body>")
        rh.write_text(text[:i] + sec + text[i:] if i >= 0 else text + sec)
