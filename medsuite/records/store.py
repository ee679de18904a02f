"""The scoring database: one SQLite file (WAL) that batch scoring writes and the viewer reads and reviews into.

Tables: ``runs``, ``series``, ``predictions``, ``errors`` (written by scoring), ``reviews`` and ``audit``
(written by the viewer; both append-only). Series-level predictions use ``nodule_id = ''`` so the
uniqueness of (bundle, series, nodule) holds for them too. Schema version 2 binds reviews into the audit
chain (``audit.review_id``, ``audit.record_sha256``; `medsuite.records.audit`) and gives the database a random
``db_id`` that its audit anchors name; a version-1 database is upgraded when opened (its existing reviews are
sealed into the chain as they are found).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 2
log = logging.getLogger(__name__)

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
    review_id INTEGER,               -- the review this row records (action 'review' or 'seal')
    record_sha256 TEXT,              -- sha256 of that review row and of the prediction it judged
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
    """Open (and on first use create) the scoring database in WAL mode, ready for concurrent writers; a
    version-1 database is upgraded to version 2 in place."""
    path = Path(path)
    if not create and not path.is_file():
        raise StoreError(f"{path}: scoring database not found")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        conn.executescript(SCHEMA)
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row["value"]) if row is not None else None
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema version {version}, this medsuite reads version {SCHEMA_VERSION}")
        if version is None or version < SCHEMA_VERSION or _lacks_db_id(conn):
            _upgrade(conn, version)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a medsuite scoring database ({exc})") from exc
    except StoreError:
        conn.close()
        raise
    return conn


def open_readonly(path: str | Path, *, timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection that changes nothing (no schema created, no upgrade, ``PRAGMA query_only``): what a check
    such as `medsuite audit verify` must use, so that looking at a database never alters the evidence."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: scoring database not found")
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a medsuite scoring database ({exc})") from exc
    missing = sorted({"meta", "predictions", "reviews", "audit"} - tables)
    if missing:
        conn.close()
        raise StoreError(f"{path}: not a medsuite scoring database (no table(s) {missing})")
    return conn


def _lacks_db_id(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key='db_id'").fetchone() is None


def _upgrade(conn: sqlite3.Connection, version: int | None) -> None:
    """Stamp a new database, or bring a version-1 one to version 2, in one write transaction.

    A version-1 database's reviews are sealed into the chain only when it really is one: no audit row records
    a review yet and no anchor exists (version 1 had neither). A database that claims version 1 (or lost its
    version or id) but holds version-2 records was altered: nothing is sealed, so `medsuite audit verify`
    reports its unrecorded reviews and its anchor, instead of the upgrade vouching for them."""
    from medsuite.records import audit

    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row["value"]) if row is not None else None  # another process may have done it meanwhile
        columns = {r["name"] for r in conn.execute("PRAGMA table_info(audit)")}
        recorded = "review_id" in columns and conn.execute(
            "SELECT 1 FROM audit WHERE review_id IS NOT NULL OR record_sha256 IS NOT NULL LIMIT 1").fetchone()
        for column in ("review_id INTEGER", "record_sha256 TEXT"):
            if column.split()[0] not in columns:
                conn.execute(f"ALTER TABLE audit ADD COLUMN {column}")
        anchor, _ = audit.anchor_settings(conn)
        v2_marks = bool(recorded) or (anchor is not None and anchor.exists()) or conn.execute(
            "SELECT 1 FROM meta WHERE key='db_id'").fetchone() is not None  # version 1 had no anchor and no id
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('db_id', ?)", (audit.new_db_id(),))
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if version is not None and version < 2:
            if v2_marks:
                log.warning("%s claims schema version %s but holds version-2 audit records or has an anchor: it "
                            "was altered; its reviews are not sealed (`medsuite audit verify` reports them)",
                            _path_of(conn), version)
            else:
                from medsuite.records.reviews import now

                audit.seal_unrecorded_reviews(conn, "medsuite upgrade", now())
        conn.execute("CREATE INDEX IF NOT EXISTS audit_review ON audit(review_id)")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    # a new database is anchored at once (an empty chain is then vouched for too); a genuine version-1 one
    # after sealing; any other anchor is left for verification to compare
    audit.update_anchor(conn, start=version is not None and version < 2 and not v2_marks)


def _path_of(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return str(row[2])
    return "the database"
