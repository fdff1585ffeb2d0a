"""rig/nightly/store.py (schema.py, record.py): the nightly history database (deterministic data, no VM)."""
from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from rig.core.errors import BadInput
from rig.nightly.record import SeriesRecord, finding_key
from rig.nightly.schema import SCHEMA_VERSION
from rig.nightly.store import Store


def rec(name="s1", outcome="tested", kernel="k", tests=None, **kw) -> SeriesRecord:
    tests = tests if tests is not None else {"t_a": "match", "t_b": "fixed"}
    return SeriesRecord(kernel=kernel, name=name, outcome=outcome,
                        patches=[{"path": f"/p/{name}.patch", "sha256": "ab" * 32, "subject": "[PATCH] x"}],
                        series_hash="cd" * 32, verdict="clean" if outcome == "tested" else None,
                        tests=[{"name": n, "status": s, "known": None, "diffs": [],
                                "patched": {"observations": {"data": "x"}}} for n, s in tests.items()],
                        **kw)


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "h.sqlite") as s:
        yield s


def test_schema_and_version(tmp_path):
    Store.open(tmp_path / "h.sqlite").close()
    conn = sqlite3.connect(tmp_path / "h.sqlite")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "kernels", "series", "test_results", "splats", "timings", "bench", "findings", "changes"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_open_missing_without_create(tmp_path):
    with pytest.raises(BadInput, match="no nightly history database"):
        Store.open(tmp_path / "nope.sqlite", create=False)


def test_run_row_written_at_start_and_completed_at_end(store, tmp_path):
    rid = store.begin_run("h1", "/c.toml", "host", 123)
    # visible to another connection before the run ends: a crash cannot lose it
    other = sqlite3.connect(tmp_path / "h.sqlite")
    row = other.execute("SELECT complete, state, finished FROM runs WHERE id = ?", (rid,)).fetchone()
    assert row == (0, "running", None)
    store.finish_run(rid, 1)
    row = other.execute("SELECT complete, state, exit_code, finished IS NOT NULL FROM runs WHERE id = ?", (rid,)).fetchone()
    assert row == (1, "complete", 1, 1)


def test_failed_and_interrupted_runs_stay_incomplete(store):
    a = store.begin_run("h")
    store.fail_run(a, "BuildError: boom", exit_code=3)
    b = store.begin_run("h")
    store.fail_run(b, "interrupted", interrupted=True)
    ra, rb = store.run(a), store.run(b)
    assert (ra["complete"], ra["state"], ra["error"], ra["exit_code"]) == (0, "failed", "BuildError: boom", 3)
    assert (rb["complete"], rb["state"]) == (0, "interrupted")
    assert store.last_complete_run() is None


def test_last_complete_run_skips_incomplete_and_current(store):
    r1 = store.begin_run("h"); store.finish_run(r1, 0)
    r2 = store.begin_run("h"); store.fail_run(r2, "x")
    r3 = store.begin_run("h")
    assert store.last_complete_run(before=r3)["id"] == r1
    store.finish_run(r3, 0)
    assert store.last_complete_run()["id"] == r3
    assert [r["id"] for r in store.runs(complete_only=True)] == [r3, r1]


def test_mark_abandoned_only_dead_pids(store):
    p = subprocess.Popen(["true"]); p.wait()          # a pid that is surely gone
    dead = store.begin_run("h", pid=p.pid)
    import os
    alive = store.begin_run("h", pid=os.getpid())
    assert store.mark_abandoned() == [dead]
    assert store.run(dead)["state"] == "abandoned" and store.run(dead)["complete"] == 0
    assert "died" in store.run(dead)["error"]
    assert store.run(alive)["state"] == "running"


@pytest.mark.parametrize("outcome, stages", [
    ("apply-failed", (0, None, None, None)),
    ("build-failed", (1, 0, None, None)),
    ("boot-failed", (1, 1, 0, None)),
    ("tested", (1, 1, 1, 1)),
    ("error", (None, None, None, 0)),
])
def test_stage_columns(store, outcome, stages):
    rid = store.begin_run("h")
    store.add_series(rid, rec(outcome=outcome, tests={} if outcome != "tested" else None, error=None if outcome == "tested" else "e"))
    row = store.series_rows(rid)[0]
    assert (row["applies"], row["builds"], row["boots"], row["tested"]) == stages
    assert row["outcome"] == outcome


def test_series_roundtrip(store):
    rid = store.begin_run("h")
    r = rec(splats={"baseline": [{"kind": "lockdep", "title": "old one", "log": "..."}],
                    "patched": [{"kind": "lockdep", "title": "old one", "log": "..."},
                                {"kind": "warning", "title": "WARNING in ovl_copy_up_one", "log": "..."}],
                    "new": [{"kind": "warning", "title": "WARNING in ovl_copy_up_one", "log": "..."}]},
            timings={"build_s": 30.5, "total_s": 90.0, "note": "not a number"},
            bench=[{"name": "read_4k", "unit": "MB/s", "baseline_median": 100.0, "patched_median": 90.0,
                    "change_pct": -10.0, "ci95_pct": [-12.0, -8.0], "significant": True, "runs": 5}],
            findings=[{"ops": ["open a w", "read b"], "first_difference": {"op_index": 1, "reference": "ok", "target": "EIO"},
                       "reproducer": "/x.c"}],
            notes=["kproto bench: something"])
    store.add_series(rid, r)
    [back] = store.load_series(rid)
    assert back.name == "s1" and back.outcome == "tested" and back.verdict == "clean"
    assert [(t["name"], t["status"]) for t in back.tests] == [("t_a", "match"), ("t_b", "fixed")]
    assert back.tests[0]["patched"]["observations"] == {"data": "x"}          # observations JSON kept
    assert [s["title"] for s in back.splats["patched"]] == ["old one", "WARNING in ovl_copy_up_one"]
    assert [s["title"] for s in back.splats["new"]] == ["WARNING in ovl_copy_up_one"]
    assert back.timings == {"build_s": 30.5, "total_s": 90.0}
    assert back.bench[0]["ci95_pct"] == [-12.0, -8.0] and back.bench[0]["significant"] is True
    assert back.findings[0]["reproducer"] == "/x.c"
    assert back.notes == ["kproto bench: something"]
    assert back.patches[0]["sha256"] == "ab" * 32


CYCLE = "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]|&type->i_mutex_dir_key|sb_writers"


def test_splat_signature_roundtrip_and_is_new_by_signature(store):
    rid = store.begin_run("h")
    base = {"kind": "lockdep", "title": "possible deadlock in filldir64", "signature": CYCLE, "log": "..."}
    same = {"kind": "lockdep", "title": "possible deadlock in fault_in_readable", "signature": CYCLE, "log": "..."}
    new = {"kind": "lockdep", "title": "possible deadlock in filldir64", "log": "...",
           "signature": "lockdep-cycle:&mm->mmap_lock|&ovl_i_lock_key[depth]"}
    # the new one has the baseline's title but another signature: only it is new
    store.add_series(rid, rec(splats={"baseline": [base], "patched": [same, new], "new": [new]}))
    [back] = store.load_series(rid)
    assert [(s["title"], s.get("signature")) for s in back.splats["patched"]] == [
        ("possible deadlock in fault_in_readable", CYCLE), ("possible deadlock in filldir64", new["signature"])]
    assert back.splats["new"] == [{"kind": "lockdep", "title": "possible deadlock in filldir64",
                                   "signature": new["signature"]}]


def test_old_database_gets_the_signature_column(tmp_path):
    path = tmp_path / "h.sqlite"
    with Store.open(path) as s:
        rid = s.begin_run("h")
        s.add_series(rid, rec(splats={"baseline": [], "patched": [{"kind": "warning", "title": "WARNING in ovl_x"}],
                                      "new": [{"kind": "warning", "title": "WARNING in ovl_x"}]}))
        s.finish_run(rid, 0)
    # turn it into what kproto wrote before signatures: schema 1, splats without the column
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE splats_v1 (
            id INTEGER PRIMARY KEY, series_id INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
            side TEXT NOT NULL, kind TEXT, title TEXT NOT NULL, is_new INTEGER NOT NULL DEFAULT 0);
        INSERT INTO splats_v1 SELECT id, series_id, side, kind, title, is_new FROM splats;
        DROP TABLE splats;
        ALTER TABLE splats_v1 RENAME TO splats;
        PRAGMA user_version = 1;
    """)
    conn.close()
    with Store.open(path) as s:
        cols = [r[1] for r in s.conn.execute("PRAGMA table_info(splats)")]
        assert "signature" in cols
        [old] = s.load_series(rid)
        assert old.splats["patched"] == [{"kind": "warning", "title": "WARNING in ovl_x"}]   # no signature key
        assert old.splats["new"] == old.splats["patched"]
        r2 = s.begin_run("h")
        sp = {"kind": "warning", "title": "WARNING in ovl_x", "signature": "warning:ovl_x@fs/overlayfs/x.c"}
        s.add_series(r2, rec(splats={"baseline": [], "patched": [sp], "new": [sp]}))
        assert s.load_series(r2)[0].splats["patched"] == [sp]
    with Store.open(path) as s:        # opening again does not try to add it twice
        assert [r[1] for r in s.conn.execute("PRAGMA table_info(splats)")].count("signature") == 1
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_changes_and_test_history(store):
    r1 = store.begin_run("h")
    store.add_series(r1, rec("v1", tests={"rfc_read": "match"}))
    store.add_series(r1, rec("v2", tests={"rfc_read": "match"}))
    store.finish_run(r1, 0)
    r2 = store.begin_run("h")
    store.add_series(r2, rec("v1", outcome="apply-failed", tests={}, error="does not apply"))
    store.add_series(r2, rec("v2", tests={"rfc_read": "regressed"}))
    store.add_changes(r2, [{"kind": "test-newly-failing", "severity": "regression", "kernel": "k", "series": "v2",
                            "subject": "rfc_read", "before": "match", "after": "regressed"}])
    store.finish_run(r2, 1)
    assert [c["kind"] for c in store.changes(r2)] == ["test-newly-failing"]
    h = store.test_history(test="rfc*", series="v2")
    assert [(r["run_id"], r["status"]) for r in h] == [(r2, "regressed"), (r1, "match")]
    h1 = store.test_history(series="v1")
    assert [(r["run_id"], r["outcome"], r["test"]) for r in h1] == [(r2, "apply-failed", None), (r1, "tested", "rfc_read")]
    assert [r["id"] for r in store.runs(limit=1)] == [r2]


def test_finding_key_stable():
    f = {"ops": ["open f w", "pread f 0 3"], "first_difference": {"op_index": 1, "reference": "bar", "target": "foo"}}
    assert finding_key(f) == "pread|bar|foo"
    assert finding_key({}) == "?|None|None"


BISECT = {"criterion": {"kind": "test", "value": "a_read"}, "result": "found", "message": "first bad patch: 0003 x",
          "first_bad": {"index": 3, "path": "/p/0003-x.patch", "subject": "x", "sha256": "ef" * 32},
          "candidates": [], "series": [], "steps": [{"prefix": 3, "verdict": "bad"}], "bisected": True,
          "evidence": "a_read regressed"}


def test_bisect_entry_roundtrip_and_none_when_not_bisected(store):
    rid = store.begin_run("h")
    store.add_series(rid, rec("bad", bisect=BISECT))
    store.add_series(rid, rec("clean"))
    bad, clean = store.load_series(rid)
    assert bad.bisect == BISECT and clean.bisect is None
    rows = {r["name"]: r for r in store.series_rows(rid)}
    assert rows["bad"]["bisect"]["first_bad"]["index"] == 3 and rows["clean"]["bisect"] is None


def test_schema_2_database_gets_the_bisect_column(tmp_path):
    """A history written before series.bisect existed: opened, migrated once, its rows read back as unbisected."""
    path = tmp_path / "h.sqlite"
    with Store.open(path) as s:
        rid = s.begin_run("h")
        s.add_series(rid, rec())
        s.finish_run(rid, 0)
    conn = sqlite3.connect(path)
    conn.executescript("ALTER TABLE series DROP COLUMN bisect; PRAGMA user_version = 2;")
    conn.close()
    with Store.open(path) as s:
        assert "bisect" in [r[1] for r in s.conn.execute("PRAGMA table_info(series)")]
        [old] = s.load_series(rid)
        assert old.bisect is None
        r2 = s.begin_run("h")
        s.add_series(r2, rec(bisect=BISECT))
        assert s.load_series(r2)[0].bisect == BISECT
    with Store.open(path) as s:
        assert [r[1] for r in s.conn.execute("PRAGMA table_info(series)")].count("bisect") == 1
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


# ---------------------------------------------------------------- schema 4: placement, reproducers

BASE_PLACE = {"kernel": "k", "series": None, "stage": "baseline", "worker": "plain-worker", "host": "b1",
              "address": "tcp://10.0.0.2:4000", "accel": None, "took_s": 12.5, "cached": False,
              "kernel_key": "k" * 16, "digest": "d" * 64}
CELL_PLACES = [
    {"kernel": "k", "series": "s1", "stage": "patched", "worker": "plain-worker", "host": "b1",
     "address": "tcp://10.0.0.2:4000", "accel": None, "took_s": 3.0, "cached": True, "kernel_key": "p" * 16,
     "digest": "e" * 64},
    {"kernel": "k", "series": "s1", "stage": "test", "worker": "kvm-worker", "host": "kvm1",
     "address": "tcp://10.0.0.3:4000", "accel": "kvm", "took_s": 40.0,
     "fetched": [{"key": "p" * 16, "digest": "e" * 64, "how": "dask", "from": "plain-worker", "bytes": 1234}]},
    {"kernel": "k", "series": "s1", "stage": "bench/fuzz", "worker": "kvm-worker", "host": "kvm1",
     "address": "tcp://10.0.0.3:4000", "accel": "kvm", "took_s": 5.0},
]


def test_placement_and_reproducers_roundtrip(store):
    """Which worker ran which task of a cell (report.json's cluster.placement) and the reproducer bundles of
    a series come back as written; a baseline's rows have no series."""
    from rig.nightly.history import history_text
    rid = store.begin_run("h")
    store.add_placement(rid, [BASE_PLACE])
    sid = store.add_series(rid, rec("s1", reproducers=["/out/runs/1/repro/k--s1/a_read"]))
    store.add_placement(rid, CELL_PLACES, series_id=sid)
    store.add_series(rid, rec("s2"))               # a cell that never ran anywhere: no rows
    store.finish_run(rid, 0)
    rows = store.placement(rid)
    assert [(r["series_id"], r["series"], r["stage"], r["worker"], r["accel"]) for r in rows] == [
        (None, None, "baseline", "plain-worker", None), (sid, "s1", "patched", "plain-worker", None),
        (sid, "s1", "test", "kvm-worker", "kvm"), (sid, "s1", "bench/fuzz", "kvm-worker", "kvm")]
    assert rows[0]["cached"] is False and rows[1]["cached"] is True and rows[2]["cached"] is None
    assert rows[0]["kernel_key"] == "k" * 16 and rows[0]["took_s"] == 12.5 and rows[0]["host"] == "b1"
    assert rows[2]["fetched"] == CELL_PLACES[1]["fetched"] and rows[1]["fetched"] == []
    s1, s2 = store.load_series(rid)
    assert s1.reproducers == ["/out/runs/1/repro/k--s1/a_read"] and s2.reproducers == []
    assert store.series_rows(rid)[0]["reproducers"] == ["/out/runs/1/repro/k--s1/a_read"]
    # kproto history --series: where the series' kproto test ran, with which accel
    out = {o["series"]: o for o in json.loads(history_text(store, series="s*", as_json=True))}
    assert (out["s1"]["worker"], out["s1"]["accel"]) == ("kvm-worker", "kvm")
    assert [p["stage"] for p in out["s1"]["placement"]] == ["patched", "test", "bench/fuzz"]
    assert out["s1"]["placement"][1]["fetched"][0]["how"] == "dask"
    assert out["s1"]["reproducers"] == ["/out/runs/1/repro/k--s1/a_read"]
    assert (out["s2"]["worker"], out["s2"]["accel"], out["s2"]["placement"]) == (None, None, [])
    lines = history_text(store, series="s*").splitlines()
    head = lines[0].split()
    assert head[-4:] == ["BAD", "WORKER", "ACCEL", "ERROR"]
    row = next(l for l in lines if " s1 " in l)
    assert "kvm-worker  kvm" in row


def test_schema_3_database_gets_the_placement_table_and_reproducers_column(tmp_path):
    """A history written by schema 3 (no placement table, no series.reproducers): opened, migrated to 4
    once, its old rows kept and read back with no placement and no reproducers."""
    from rig.nightly.history import history_text
    path = tmp_path / "h.sqlite"
    with Store.open(path) as s:
        rid = s.begin_run("h")
        sid = s.add_series(rid, rec("s1", bisect=BISECT))
        s.add_changes(rid, [{"kind": "series-added", "severity": "info", "kernel": "k", "series": "s1"}])
        s.finish_run(rid, 0)
    conn = sqlite3.connect(path)
    conn.executescript("DROP INDEX placement_run; DROP INDEX placement_series; DROP TABLE placement;"
                       " ALTER TABLE series DROP COLUMN reproducers; PRAGMA user_version = 3;")
    conn.close()
    with Store.open(path) as s:
        assert s.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert "reproducers" in [r[1] for r in s.conn.execute("PRAGMA table_info(series)")]
        assert s.placement(rid) == []
        [old] = s.load_series(rid)
        assert (old.name, old.outcome, old.bisect, old.reproducers) == ("s1", "tested", BISECT, [])
        assert [(t["name"], t["status"]) for t in old.tests] == [("t_a", "match"), ("t_b", "fixed")]
        assert [c["kind"] for c in s.changes(rid)] == ["series-added"] and s.run(rid)["complete"] == 1
        [o] = json.loads(history_text(s, series="s1", as_json=True))
        assert (o["worker"], o["accel"], o["placement"], o["reproducers"]) == (None, None, [], [])
        # the migrated database takes schema-4 rows
        r2 = s.begin_run("h")
        sid2 = s.add_series(r2, rec("s1", reproducers=["/r/k--s1/t_a"]))
        s.add_placement(r2, CELL_PLACES, series_id=sid2)
        assert s.load_series(r2)[0].reproducers == ["/r/k--s1/t_a"]
        assert [p["worker"] for p in s.placement(r2)] == ["plain-worker", "kvm-worker", "kvm-worker"]
    assert sid
    with Store.open(path) as s:        # opening again migrates nothing twice
        assert [r[1] for r in s.conn.execute("PRAGMA table_info(series)")].count("reproducers") == 1
        assert len(s.placement(r2)) == 3 and len(s.load_series(rid)) == 1
