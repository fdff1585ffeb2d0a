"""`kproto history`: past nightly runs from the history database as a text table (or JSON rows): the runs;
with a series, each run's outcome for it; with a test, each test's status per run."""
from __future__ import annotations

import json
from pathlib import Path

from rig.nightly.store import Store
from rig.nightly.summary import duration


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart."""
    w = [max(len(str(x)) for x in col) for col in zip(head, *rows)] if rows else [len(h) for h in head]
    fmt = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r)).rstrip()
    return "\n".join([fmt(head)] + [fmt(r) for r in rows]) + "\n"


def history_text(store: Store, series: str | None = None, test: str | None = None, limit: int = 10,
                 as_json: bool = False) -> str:
    """The last LIMIT runs; with TEST (a GLOB), each matching test's status per run; with SERIES (a GLOB)
    only, each run's outcome for the matching series."""
    runs = store.runs(limit=limit)
    if not runs:
        return "no nightly runs recorded yet\n"
    if test:
        return _by_test(store, runs, test, series, limit, as_json)
    if series:
        return _by_series(store, series, limit, as_json)
    return _by_run(store, runs, as_json)


def _by_test(store: Store, runs: list[dict], test: str, series: str | None, limit: int, as_json: bool) -> str:
    rows = [r for r in store.test_history(test=test, series=series, limit=limit) if r["test"]]
    if as_json:
        return json.dumps(rows, indent=1) + "\n"
    if not rows:
        return f"no results for tests matching {test!r} in the last {limit} runs\n"
    ids = [r["id"] for r in reversed(runs)]
    cells: dict[tuple[str, str, str], dict[int, str]] = {}
    for r in rows:
        cells.setdefault((r["kernel"], r["series"], r["test"]), {})[r["run_id"]] = r["status"] + (" (known)" if r["known"] else "")
    # a series that did not get to its tests shows its outcome in the test's column
    outcome = {(r["run_id"], r["kernel"], r["series"]): r["outcome"]
               for r in store.test_history(series=series, limit=limit)}
    state = {r["id"]: ("" if r["complete"] else "*") for r in runs}
    head = ["SERIES", "TEST"] + [f"#{i}{state[i]}" for i in ids]
    body = []
    for (kern, ser, name), per in sorted(cells.items()):
        body.append([ser, name] + [per.get(i) or (outcome.get((i, kern, ser)) or "") for i in ids])
    note = "\n(* incomplete run)\n" if any(state[i] for i in ids) else ""
    return _table(head, body) + note


def _by_series(store: Store, series: str, limit: int, as_json: bool) -> str:
    per: dict[tuple[int, str, str], dict] = {}
    for r in store.test_history(series=series, limit=limit):
        d = per.setdefault((r["run_id"], r["kernel"], r["series"]), {**r, "counts": {}})
        if r["test"]:
            d["counts"][r["status"]] = d["counts"].get(r["status"], 0) + 1
    rids = {k[0] for k in per}
    srows = {(r["run_id"], r["kernel"], r["name"]): r for rid in rids for r in store.series_rows(rid)}
    places: dict[int, list[dict]] = {}          # series id -> its tasks' placement rows (schema 4)
    for rid in rids:
        for p in store.placement(rid):
            if p["series_id"] is not None:
                places.setdefault(p["series_id"], []).append(p)
    out = []
    for key, d in sorted(per.items(), reverse=True):
        s = srows.get(key, {})
        where = places.get(s["id"], []) if s else []
        ran = _ran_on(where, d["outcome"])
        out.append({"run": key[0], "started": d["started"], "complete": bool(d["complete"]), "kernel": key[1],
                    "series": key[2], "outcome": d["outcome"], "verdict": s.get("verdict"),
                    "tests": d["counts"], "error": s.get("error"),
                    "patches": [Path(p["path"]).name for p in s.get("patches", [])],
                    "series_hash": (s.get("series_hash") or "")[:12],
                    "first_bad": _first_bad(s.get("bisect")),
                    "worker": ran.get("worker"), "accel": ran.get("accel"),
                    "placement": [{k: p[k] for k in _PLACEMENT_KEYS if p.get(k) not in (None, [])} for p in where],
                    "reproducers": s.get("reproducers") or []})
    if as_json:
        return json.dumps(out, indent=1) + "\n"
    if not out:
        return f"no series matching {series!r} in the last {limit} runs\n"
    body = [[f"#{o['run']}" + ("" if o["complete"] else "*"), o["started"], o["series"], o["outcome"],
             o["verdict"] or "", ", ".join(f"{n} {s}" for s, n in sorted(o["tests"].items())),
             o["series_hash"], o["first_bad"] or "", o["worker"] or "", o["accel"] or "",
             (o["error"] or "")[:70]] for o in out]
    return _table(["RUN", "STARTED", "SERIES", "OUTCOME", "VERDICT", "TESTS", "PATCHES", "FIRST BAD", "WORKER",
                   "ACCEL", "ERROR"], body)


_PLACEMENT_KEYS = ("stage", "worker", "host", "address", "accel", "took_s", "cached", "kernel_key", "digest", "fetched")


def _ran_on(places: list[dict], outcome: str | None) -> dict:
    """The placement row that says where a series ran: its patched build when it stopped there
    (apply-failed, build-failed), else its kproto test task, else its last task; {} for runs recorded
    before schema 4 (and cells that ran nowhere)."""
    pick = [p for p in places if p["stage"] == "patched"] if outcome in ("apply-failed", "build-failed") else []
    pick = pick or [p for p in places if p["stage"] == "test"]
    return (pick or places or [{}])[-1]


def _first_bad(b: dict | None) -> str | None:
    """The file name of a series' first bad patch (rig/nightly/bisecting.py), if one was named."""
    fb = (b or {}).get("first_bad")
    return Path(fb["path"]).name if fb else None


def _by_run(store: Store, runs: list[dict], as_json: bool) -> str:
    out = []
    for r in runs:
        ss = store.series_rows(r["id"])
        ch = store.changes(r["id"])
        ks = store.kernels(r["id"])
        out.append({"run": r["id"], "started": r["started"], "finished": r["finished"], "state": r["state"],
                    "complete": bool(r["complete"]), "exit_code": r["exit_code"], "error": r["error"],
                    "previous_run": r["previous_run"],
                    "series": len(ss), "tested": sum(s["outcome"] == "tested" for s in ss),
                    "regressions": sum(c["severity"] == "regression" for c in ch),
                    "improvements": sum(c["severity"] == "improvement" for c in ch),
                    "kernels": [f"{k['name']}={k['version'] or 'error'}" for k in ks], "report_dir": r["report_dir"]})
    if as_json:
        return json.dumps(out, indent=1) + "\n"
    body = [[f"#{o['run']}", o["started"], duration(o["started"], o["finished"]) if o["finished"] else "-", o["state"],
             "" if o["exit_code"] is None else str(o["exit_code"]), f"{o['tested']}/{o['series']}",
             str(o["regressions"]), str(o["improvements"]), " ".join(o["kernels"]),
             (o["error"] or "")[:60]] for o in out]
    return _table(["RUN", "STARTED", "TOOK", "STATE", "EXIT", "TESTED", "REGR", "IMPR", "KERNELS", "ERROR"], body)
