"""The SQL schema of the nightly history database (rig/nightly/store.py) and the migration of databases made
by an older kproto."""
from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 4     # 2: splats.signature; 3: series.bisect; 4: the placement table, series.reproducers

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id            INTEGER PRIMARY KEY,
    started       TEXT NOT NULL,             -- ISO 8601 UTC
    finished      TEXT,                      -- NULL while running or when the process died
    complete      INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL,             -- running | complete | failed | interrupted | abandoned
    error         TEXT,
    exit_code     INTEGER,
    config_path   TEXT,
    config_hash   TEXT NOT NULL,
    host          TEXT,
    pid           INTEGER,
    previous_run  INTEGER REFERENCES runs(id),   -- the complete run this one was diffed against
    report_dir    TEXT
);
CREATE TABLE IF NOT EXISTS kernels (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    source      TEXT,
    version     TEXT,
    commit_id   TEXT,
    error       TEXT,
    UNIQUE (run_id, name)
);
CREATE TABLE IF NOT EXISTS series (
    id           INTEGER PRIMARY KEY,
    run_id       INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kernel       TEXT NOT NULL,
    name         TEXT NOT NULL,
    patches      TEXT NOT NULL,              -- JSON [{"path", "sha256", "subject"}]
    series_hash  TEXT,                       -- sha256 over the patch hashes (NULL if unreadable)
    outcome      TEXT NOT NULL,              -- error | apply-failed | build-failed | boot-failed | tested
    applies      INTEGER,                    -- 1/0, NULL = not known (not got that far)
    builds       INTEGER,
    boots        INTEGER,
    tested       INTEGER,
    verdict      TEXT,                       -- kproto test verdict when tested: clean | regressed
    error        TEXT,                       -- one line, for the failed stage
    notes        TEXT,                       -- JSON [str]: bench/fuzz problems and the like
    kernel_version TEXT,
    started      TEXT,
    finished     TEXT,
    bisect       TEXT,                       -- JSON: first bad patch of a regressed series (nightly/bisecting.py)
    reproducers  TEXT,                       -- JSON [path]: reproducer bundles of a regressed series (v4; NULL before)
    UNIQUE (run_id, kernel, name)
);
CREATE TABLE IF NOT EXISTS test_results (
    id           INTEGER PRIMARY KEY,
    series_id    INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,              -- match | fixed | regressed | diverges | error
    known        TEXT,
    observations TEXT NOT NULL               -- JSON: the test's entry of the kproto test report
);
CREATE TABLE IF NOT EXISTS splats (
    id         INTEGER PRIMARY KEY,
    series_id  INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    side       TEXT NOT NULL,                -- baseline | patched
    kind       TEXT,
    title      TEXT NOT NULL,                -- the human text; identity is the signature
    is_new     INTEGER NOT NULL DEFAULT 0,   -- patched splat not in the baseline kernel
    signature  TEXT                          -- rig/analysis/splats/ signature; NULL in rows from before v2
);
CREATE TABLE IF NOT EXISTS timings (
    series_id  INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    seconds    REAL NOT NULL,
    PRIMARY KEY (series_id, key)
);
CREATE TABLE IF NOT EXISTS bench (
    id              INTEGER PRIMARY KEY,
    series_id       INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    metric          TEXT NOT NULL,
    unit            TEXT,
    better          TEXT,                    -- higher | lower | NULL (from kproto bench when it says)
    baseline_median REAL,
    patched_median  REAL,
    change_pct      REAL,
    ci_lo           REAL,
    ci_hi           REAL,
    significant     INTEGER,
    runs            INTEGER
);
CREATE TABLE IF NOT EXISTS findings (
    id          INTEGER PRIMARY KEY,
    series_id   INTEGER NOT NULL REFERENCES series(id) ON DELETE CASCADE,
    source      TEXT NOT NULL,               -- fuzz
    key         TEXT NOT NULL,               -- dedup key across runs
    detail      TEXT NOT NULL                -- JSON as kproto fuzz --json reports it
);
CREATE TABLE IF NOT EXISTS changes (
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,               -- see rig/nightly/diff.py diff()
    severity    TEXT NOT NULL,               -- regression | improvement | info
    kernel      TEXT,
    series      TEXT,
    subject     TEXT,                        -- test name, splat title, metric; NULL for series-level
    before      TEXT,
    after       TEXT,
    detail      TEXT
);
CREATE TABLE IF NOT EXISTS placement (        -- v4: which worker ran which task of the matrix (report.json's cluster.placement)
    id          INTEGER PRIMARY KEY,
    run_id      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    series_id   INTEGER REFERENCES series(id) ON DELETE CASCADE,   -- NULL for a baseline build
    kernel      TEXT,                        -- a baseline shared by several kernels: their names joined by +
    series      TEXT,                        -- NULL for a baseline build
    stage       TEXT NOT NULL,               -- baseline | patched | test | bench/fuzz
    worker      TEXT,                        -- the Dask worker's name ("embedded" on the embedded cluster)
    host        TEXT,
    address     TEXT,
    accel       TEXT,                        -- kvm | tcg, for the test and bench/fuzz stages
    took_s      REAL,
    cached      INTEGER,                     -- baseline / patched: 1 the kernel was a cache hit
    kernel_key  TEXT,                        -- baseline / patched: the kernel built (or found)
    digest      TEXT,
    fetched     TEXT                         -- JSON [{"key", "digest", "how", "from", "bytes", "why"}]: kernels moved
);
CREATE INDEX IF NOT EXISTS series_run ON series(run_id);
CREATE INDEX IF NOT EXISTS placement_run ON placement(run_id);
CREATE INDEX IF NOT EXISTS placement_series ON placement(series_id);
CREATE INDEX IF NOT EXISTS series_name ON series(name);
CREATE INDEX IF NOT EXISTS test_series ON test_results(series_id);
CREATE INDEX IF NOT EXISTS test_name ON test_results(name);
CREATE INDEX IF NOT EXISTS changes_run ON changes(run_id);
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older kproto up to this schema (CREATE TABLE IF NOT EXISTS does not
    add columns to existing tables). Idempotent."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(splats)")}
    if "signature" not in cols:
        conn.execute("ALTER TABLE splats ADD COLUMN signature TEXT")
    cols = {r[1] for r in conn.execute("PRAGMA table_info(series)")}
    if "bisect" not in cols:
        conn.execute("ALTER TABLE series ADD COLUMN bisect TEXT")
    if "reproducers" not in cols:
        conn.execute("ALTER TABLE series ADD COLUMN reproducers TEXT")
    # 4: the placement table is new (CREATE TABLE IF NOT EXISTS in SCHEMA); older runs have no rows there
