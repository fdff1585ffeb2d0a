"""Nightly history in SQLite: runs, per-series outcomes, per-test results, splats, timings, bench figures,
fuzz findings, where each task of the matrix ran (placement) and the changes found against the previous
complete run. The schema is rig/nightly/schema.py, the records it keeps rig/nightly/record.py.

A run row is written (and committed) before anything else happens and marked complete only at the very
end, so a run that dies halfway stays in the database as incomplete with its error. Series rows are
committed as each series finishes, so what a dead run did get done is kept too.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from rig.core.errors import BadInput, InfraError
from rig.nightly.record import SeriesRecord, finding_key, now_iso, splat_key
from rig.nightly.schema import SCHEMA, SCHEMA_VERSION, migrate


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """The history database. Open with Store.open(path); use as a context manager to close it."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path

    # ------------------------------------------------------------ open / schema

    @classmethod
    def open(cls, path: Path | str, create: bool = True) -> "Store":
        path = Path(path)
        if not create and not path.is_file():
            raise BadInput(f"no nightly history database at {path} (pass --db PATH, or run kproto nightly first)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
            if ver > SCHEMA_VERSION:
                raise InfraError(f"{path}: history schema version {ver} is newer than this kproto ({SCHEMA_VERSION})")
            conn.executescript(SCHEMA)
            migrate(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.commit()
        except sqlite3.DatabaseError as e:
            raise InfraError(f"cannot open the history database {path}: {e}") from None
        return cls(conn, path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writing a run

    def begin_run(self, config_hash: str, config_path: str | None = None, host: str | None = None,
                  pid: int | None = None, started: str | None = None) -> int:
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO runs(started, state, config_hash, config_path, host, pid) VALUES (?, 'running', ?, ?, ?, ?)",
                (started or now_iso(), config_hash, config_path, host, pid))
        return int(cur.lastrowid or 0)

    def mark_abandoned(self, except_run: int | None = None) -> list[int]:
        """Runs still marked running whose process is gone (killed, machine rebooted): call with the nightly
        lock held, so no live run can be among them."""
        rows = self.conn.execute("SELECT id, pid FROM runs WHERE state = 'running'").fetchall()
        gone = [r["id"] for r in rows if r["id"] != except_run and not _pid_alive(r["pid"])]
        with self.conn:
            for rid in gone:
                self.conn.execute("UPDATE runs SET state = 'abandoned', error = COALESCE(error, ?) WHERE id = ?",
                                  ("the nightly process died before recording an end (killed or machine down)", rid))
        return gone

    def set_run(self, run_id: int, **cols: Any) -> None:
        allowed = {"previous_run", "report_dir", "error", "config_path"}
        bad = set(cols) - allowed
        if bad:
            raise ValueError(f"set_run: unknown columns {bad}")
        with self.conn:
            for k, v in cols.items():
                self.conn.execute(f"UPDATE runs SET {k} = ? WHERE id = ?", (v, run_id))

    def add_kernel(self, run_id: int, name: str, source: str | None, version: str | None = None,
                   commit_id: str | None = None, error: str | None = None) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO kernels(run_id, name, source, version, commit_id, error) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (run_id, name, source, version, commit_id, error))

    def add_series(self, run_id: int, rec: SeriesRecord) -> int:
        st = rec.stages()
        with self.conn:
            cur = self.conn.execute(
                "INSERT INTO series(run_id, kernel, name, patches, series_hash, outcome, applies, builds, boots, tested,"
                " verdict, error, notes, kernel_version, started, finished, bisect, reproducers)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, rec.kernel, rec.name, json.dumps(rec.patches), rec.series_hash, rec.outcome,
                 st["applies"], st["builds"], st["boots"], st["tested"], rec.verdict, rec.error, json.dumps(rec.notes),
                 rec.kernel_version, rec.started, rec.finished or now_iso(),
                 json.dumps(rec.bisect, sort_keys=True) if rec.bisect is not None else None,
                 json.dumps(rec.reproducers)))
            sid = int(cur.lastrowid or 0)
            for t in rec.tests:
                self.conn.execute("INSERT INTO test_results(series_id, name, status, known, observations) VALUES (?,?,?,?,?)",
                                  (sid, t["name"], t["status"], t.get("known"), json.dumps(t, sort_keys=True)))
            new_keys = {splat_key(s) for s in rec.splats.get("new", [])}
            for side in ("baseline", "patched"):
                for s in rec.splats.get(side, []):
                    self.conn.execute("INSERT INTO splats(series_id, side, kind, title, is_new, signature)"
                                      " VALUES (?,?,?,?,?,?)",
                                      (sid, side, s.get("kind"), s.get("title", ""),
                                       int(side == "patched" and splat_key(s) in new_keys), s.get("signature") or None))
            for k, v in rec.timings.items():
                if isinstance(v, (int, float)):
                    self.conn.execute("INSERT INTO timings(series_id, key, seconds) VALUES (?,?,?)", (sid, k, float(v)))
            for m in rec.bench:
                ci = m.get("ci95_pct") or [None, None]
                self.conn.execute(
                    "INSERT INTO bench(series_id, metric, unit, better, baseline_median, patched_median, change_pct, ci_lo,"
                    " ci_hi, significant, runs) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (sid, m["name"], m.get("unit"), m.get("better"), m.get("baseline_median"), m.get("patched_median"),
                     m.get("change_pct"), ci[0], ci[1], None if m.get("significant") is None else int(bool(m["significant"])),
                     m.get("runs")))
            for f in rec.findings:
                self.conn.execute("INSERT INTO findings(series_id, source, key, detail) VALUES (?,?,?,?)",
                                  (sid, "fuzz", finding_key(f), json.dumps(f, sort_keys=True)))
        return sid

    def add_placement(self, run_id: int, places: Iterable[dict], series_id: int | None = None) -> None:
        """Where tasks of the run's matrix ran (rig/nightly/placement.py place(): report.json's
        cluster.placement entries), in the order given: a cell's with SERIES_ID, a baseline's without."""
        with self.conn:
            for p in places:
                fetched = p.get("fetched")
                self.conn.execute(
                    "INSERT INTO placement(run_id, series_id, kernel, series, stage, worker, host, address, accel,"
                    " took_s, cached, kernel_key, digest, fetched) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, series_id, p.get("kernel"), p.get("series"), p.get("stage") or "?", p.get("worker"),
                     p.get("host"), p.get("address"), p.get("accel"), p.get("took_s"),
                     None if p.get("cached") is None else int(bool(p["cached"])), p.get("kernel_key"),
                     p.get("digest"), json.dumps(fetched, sort_keys=True) if fetched else None))

    def add_changes(self, run_id: int, changes: Iterable[dict]) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM changes WHERE run_id = ?", (run_id,))
            for c in changes:
                self.conn.execute(
                    "INSERT INTO changes(run_id, kind, severity, kernel, series, subject, before, after, detail)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    (run_id, c["kind"], c["severity"], c.get("kernel"), c.get("series"), c.get("subject"),
                     _s(c.get("before")), _s(c.get("after")), c.get("detail")))

    def finish_run(self, run_id: int, exit_code: int) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished = ?, complete = 1, state = 'complete', exit_code = ?,"
                              " error = NULL WHERE id = ?", (now_iso(), exit_code, run_id))

    def fail_run(self, run_id: int, error: str, interrupted: bool = False, exit_code: int | None = None) -> None:
        """The run stops without completing: it stays incomplete, with the error and the end time."""
        with self.conn:
            self.conn.execute("UPDATE runs SET finished = ?, complete = 0, state = ?, error = ?, exit_code = ?"
                              " WHERE id = ?",
                              (now_iso(), "interrupted" if interrupted else "failed", error, exit_code, run_id))

    # ------------------------------------------------------------ reading

    def run(self, run_id: int) -> dict | None:
        r = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return dict(r) if r else None

    def runs(self, limit: int | None = None, complete_only: bool = False, before: int | None = None) -> list[dict]:
        q = "SELECT * FROM runs"
        cond, args = [], []
        if complete_only:
            cond.append("complete = 1")
        if before is not None:
            cond.append("id < ?")
            args.append(before)
        if cond:
            q += " WHERE " + " AND ".join(cond)
        q += " ORDER BY id DESC"
        if limit:
            q += f" LIMIT {int(limit)}"
        return [dict(r) for r in self.conn.execute(q, args)]

    def last_complete_run(self, before: int | None = None) -> dict | None:
        rs = self.runs(limit=1, complete_only=True, before=before)
        return rs[0] if rs else None

    def kernels(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM kernels WHERE run_id = ? ORDER BY id", (run_id,))]

    def series_rows(self, run_id: int) -> list[dict]:
        out = []
        for r in self.conn.execute("SELECT * FROM series WHERE run_id = ? ORDER BY id", (run_id,)):
            d = dict(r)
            d["patches"] = json.loads(d["patches"])
            d["notes"] = json.loads(d["notes"] or "[]")
            d["bisect"] = json.loads(d["bisect"]) if d.get("bisect") else None
            d["reproducers"] = json.loads(d["reproducers"]) if d.get("reproducers") else []
            out.append(d)
        return out

    def placement(self, run_id: int) -> list[dict]:
        """The run's placement rows in the order the driver recorded them (baselines with series_id NULL);
        none for runs recorded before schema 4."""
        out = []
        for r in self.conn.execute("SELECT * FROM placement WHERE run_id = ? ORDER BY id", (run_id,)):
            d = dict(r)
            d["fetched"] = json.loads(d["fetched"]) if d.get("fetched") else []
            d["cached"] = None if d["cached"] is None else bool(d["cached"])
            out.append(d)
        return out

    def load_series(self, run_id: int) -> list[SeriesRecord]:
        """The run's series as SeriesRecord objects (what the diff works on)."""
        out = []
        for row in self.series_rows(run_id):
            sid = row["id"]
            tests = [json.loads(r["observations"]) | {"name": r["name"], "status": r["status"], "known": r["known"]}
                     for r in self.conn.execute("SELECT * FROM test_results WHERE series_id = ? ORDER BY id", (sid,))]
            splats: dict[str, list] = {"baseline": [], "patched": [], "new": []}
            for r in self.conn.execute("SELECT * FROM splats WHERE series_id = ? ORDER BY id", (sid,)):
                s = {"kind": r["kind"], "title": r["title"]}
                if r["signature"]:
                    s["signature"] = r["signature"]
                splats[r["side"]].append(s)
                if r["is_new"]:
                    splats["new"].append(s)
            timings = {r["key"]: r["seconds"] for r in self.conn.execute("SELECT * FROM timings WHERE series_id = ?", (sid,))}
            bench = [{"name": r["metric"], "unit": r["unit"], "better": r["better"], "baseline_median": r["baseline_median"],
                      "patched_median": r["patched_median"], "change_pct": r["change_pct"],
                      "ci95_pct": [r["ci_lo"], r["ci_hi"]],
                      "significant": None if r["significant"] is None else bool(r["significant"]), "runs": r["runs"]}
                     for r in self.conn.execute("SELECT * FROM bench WHERE series_id = ? ORDER BY id", (sid,))]
            findings = [json.loads(r["detail"]) for r in
                        self.conn.execute("SELECT * FROM findings WHERE series_id = ? ORDER BY id", (sid,))]
            out.append(SeriesRecord(kernel=row["kernel"], name=row["name"], patches=row["patches"],
                                    outcome=row["outcome"], series_hash=row["series_hash"], verdict=row["verdict"],
                                    error=row["error"], kernel_version=row["kernel_version"], tests=tests,
                                    splats=splats, timings=timings, bench=bench, findings=findings, notes=row["notes"],
                                    bisect=row["bisect"], reproducers=row["reproducers"], started=row["started"],
                                    finished=row["finished"]))
        return out

    def changes(self, run_id: int) -> list[dict]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM changes WHERE run_id = ? ORDER BY id", (run_id,))]

    def test_history(self, test: str | None = None, series: str | None = None, limit: int = 20) -> list[dict]:
        """Rows (run_id, started, complete, kernel, series, outcome, test, status, known) newest run first,
        for the last LIMIT runs. TEST and SERIES match as SQL GLOB patterns or exact names."""
        q = ("SELECT r.id AS run_id, r.started, r.complete, r.state, s.kernel, s.name AS series, s.outcome,"
             " s.kernel_version, t.name AS test, t.status, t.known"
             " FROM runs r JOIN series s ON s.run_id = r.id LEFT JOIN test_results t ON t.series_id = s.id"
             " WHERE r.id IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?)")
        args: list[Any] = [limit]
        if series:
            q += " AND s.name GLOB ?"
            args.append(series)
        if test:
            q += " AND (t.name GLOB ? OR t.name IS NULL)"
            args.append(test)
        q += " ORDER BY r.id DESC, s.id, t.name"
        return [dict(r) for r in self.conn.execute(q, args)]

    def bench_history(self, limit: int = 20) -> list[dict]:
        q = ("SELECT r.id AS run_id, r.started, s.kernel, s.name AS series, b.* FROM bench b"
             " JOIN series s ON s.id = b.series_id JOIN runs r ON r.id = s.run_id"
             " WHERE r.id IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?) ORDER BY r.id")
        return [dict(r) for r in self.conn.execute(q, (limit,))]


def _s(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v)
