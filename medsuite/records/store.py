"""The scoring database: one SQLite file (WAL) that batch scoring writes and the viewer reads and reviews into.

Tables: ``runs``, ``series``, ``predictions``, ``errors`` (written by scoring), ``reviews`` and ``audit``
(written by the viewer; both append-only). Series-level predictions use ``nodule_id = ''`` so the
uniqueness of (bundle, series, nodule) holds for them too.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    bundle_name TEXT NOT NULL,
    bundle_sha256 TEXT NOT NULL,
    bundle_path TEXT,
    task TEXT NOT NULL,              -- 'nodule' or 'series'
    engine TEXT NOT NULL,            -- 'local' or 'ray'
    args_json TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'running',   -- running | finished | failed
    n_series INTEGER NOT NULL DEFAULT 0,
    n_scored INTEGER NOT NULL DEFAULT 0,
    n_skipped INTEGER NOT NULL DEFAULT 0,
    n_errors INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    series_uid TEXT NOT NULL,
    study_uid TEXT,
    modality TEXT,
    description TEXT,
    n_slices INTEGER,
    spacing_z REAL, spacing_y REAL, spacing_x REAL,
    orientation TEXT,
    source TEXT,                     -- where the files are; only the server ever opens it
    status TEXT NOT NULL,            -- scored | skipped | error
    reason TEXT,
    PRIMARY KEY (run_id, series_uid)
);
CREATE TABLE IF NOT EXISTS predictions (
    prediction_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    bundle_sha256 TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    nodule_id TEXT NOT NULL DEFAULT '',
    x_mm REAL, y_mm REAL, z_mm REAL, diameter_mm REAL,
    probability REAL NOT NULL,
    label TEXT NOT NULL,
    threshold REAL NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (bundle_sha256, series_uid, nodule_id)
);
CREATE TABLE IF NOT EXISTS errors (
    error_id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    series_uid TEXT,
    source TEXT,
    stage TEXT NOT NULL,             -- discover | read | preprocess | infer | write
    error TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    review_id INTEGER PRIMARY KEY,
    prediction_id INTEGER NOT NULL REFERENCES predictions(prediction_id),
    series_uid TEXT NOT NULL,
    nodule_id TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'uncertain')),
    note TEXT NOT NULL DEFAULT '',
    model_name TEXT,
    model_version TEXT,
    bundle_sha256 TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    audit_id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,            -- open | review | login | logout ...
    series_uid TEXT,
    nodule_id TEXT,
    detail TEXT NOT NULL DEFAULT '',
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_series ON predictions(series_uid);
CREATE INDEX IF NOT EXISTS reviews_prediction ON reviews(prediction_id, created_at);
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit table is append-only'); END;
"""


class StoreError(RuntimeError):
    """The database is missing, of another schema version, or not a medsuite database."""


def connect(path: str | Path, *, create: bool = True, timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open (and on first use create) the scoring database in WAL mode, ready for concurrent writers."""
    path = Path(path)
    if not create and not path.is_file():
        raise StoreError(f"{path}: scoring database not found")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    try:
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row["value"]) != SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {row['value']}, this medsuite reads version {SCHEMA_VERSION}")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a medsuite scoring database ({exc})") from exc
    return conn
