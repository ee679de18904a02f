"""Clinician reviews and the hash-chained audit trail on the scoring database (`medsuite.records.store`).

Reviews are append-only: a changed opinion is a new row, the latest row per prediction is its status, and the
whole history stays readable. Every open and every review also appends an ``audit`` row whose ``hash`` is
``sha256(prev_hash + canonical JSON of the row)``; `verify_audit` recomputes the chain, so an edited or deleted
row is detected even if someone drops the append-only triggers. Writes run in ``BEGIN IMMEDIATE``
transactions, so several reviewers saving at once serialise on SQLite's lock and lose nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

VERDICTS = ("agree", "disagree", "uncertain")
STATUSES = ("unreviewed", "agreed", "disagreed", "uncertain")
_STATUS_OF = {"agree": "agreed", "disagree": "disagreed", "uncertain": "uncertain"}
GENESIS = "0" * 64
AUDIT_FIELDS = ("audit_id", "at", "actor", "action", "series_uid", "nodule_id", "detail")
MAX_NOTE = 4000


class ReviewError(ValueError):
    """A review or audit entry that cannot be recorded (unknown prediction, bad verdict, empty reviewer)."""


def now() -> str:
    """UTC time stamp with milliseconds, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken at once (``BEGIN IMMEDIATE``) so concurrent writers queue instead of failing."""
    if conn.in_transaction:
        raise ReviewError("a transaction is already open on this connection; reviews need their own")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# ---------------------------------------------------------------------------------------------- audit
def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of the audit row's content fields)`` as hex."""
    content = {k: row.get(k) for k in AUDIT_FIELDS}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()


def _append_audit(conn: sqlite3.Connection, actor: str, action: str, series_uid: str | None, nodule_id: str | None,
                  detail: str, at: str) -> str:
    """Insert one chained audit row; the caller holds the write transaction."""
    last = conn.execute("SELECT audit_id, hash FROM audit ORDER BY audit_id DESC LIMIT 1").fetchone()
    prev = last["hash"] if last else GENESIS
    row = {"audit_id": (last["audit_id"] + 1) if last else 1, "at": at, "actor": actor, "action": action,
           "series_uid": series_uid, "nodule_id": nodule_id, "detail": detail}
    digest = row_hash(prev, row)
    conn.execute(
        "INSERT INTO audit(audit_id, at, actor, action, series_uid, nodule_id, detail, prev_hash, hash) "
        "VALUES (:audit_id, :at, :actor, :action, :series_uid, :nodule_id, :detail, :prev, :hash)",
        {**row, "prev": prev, "hash": digest},
    )
    return digest


def append_audit(conn: sqlite3.Connection, actor: str, action: str, *, series_uid: str | None = None,
                 nodule_id: str | None = None, detail: str = "") -> str:
    """Append one audit row (``open``, ``login``, ``logout`` ...) to the chain; returns its hash."""
    actor, action = _required(actor, "actor"), _required(action, "action")
    with _immediate(conn):
        return _append_audit(conn, actor, action, series_uid, nodule_id, str(detail), now())


@dataclass
class AuditCheck:
    """Result of `verify_audit`: ``ok``, rows checked, the head hash (record it elsewhere to detect a cut tail)."""

    ok: bool
    n_rows: int
    head: str
    problems: list[str] = field(default_factory=list)


def verify_audit(conn: sqlite3.Connection, *, expected_head: str | None = None) -> AuditCheck:
    """Recompute the hash chain; report edited rows, deleted rows (a broken link or an id gap) and, given
    ``expected_head`` (a head recorded earlier), rows cut from the end."""
    problems: list[str] = []
    prev, expected_id, n = GENESIS, 1, 0
    heads: set[str] = {GENESIS}
    for r in conn.execute("SELECT * FROM audit ORDER BY audit_id"):
        row = dict(r)
        n += 1
        if row["audit_id"] != expected_id:
            problems.append(f"audit rows {expected_id}..{row['audit_id'] - 1} are missing (deleted)")
        if row["prev_hash"] != prev:
            problems.append(f"audit row {row['audit_id']}: prev_hash does not match the row before it (a row was deleted or edited)")
        if row_hash(row["prev_hash"], row) != row["hash"]:
            problems.append(f"audit row {row['audit_id']}: content does not match its hash (the row was edited)")
        prev, expected_id = row["hash"], row["audit_id"] + 1
        heads.add(prev)
    if expected_head is not None and expected_head not in heads:
        problems.append("the recorded head hash is no longer in the chain (rows were cut or rewritten)")
    return AuditCheck(not problems, n, prev, problems)


def audit_rows(conn: sqlite3.Connection, *, series_uid: str | None = None, limit: int = 200) -> pd.DataFrame:
    """The most recent audit rows (newest first), optionally for one series."""
    sql = "SELECT audit_id, at, actor, action, series_uid, nodule_id, detail FROM audit"
    args: list[Any] = []
    if series_uid is not None:
        sql += " WHERE series_uid = ?"
        args.append(series_uid)
    sql += " ORDER BY audit_id DESC LIMIT ?"
    args.append(int(limit))
    return pd.read_sql_query(sql, conn, params=args)


# --------------------------------------------------------------------------------------------- reviews
def _required(value: Any, name: str) -> str:
    text = "" if value is None else str(value).strip()
    if not text:
        raise ReviewError(f"{name} must not be empty")
    return text


def add_review(conn: sqlite3.Connection, prediction_id: int, *, reviewer: str, verdict: str, note: str = "",
               model_name: str | None = None, model_version: str | None = None,
               bundle_sha256: str | None = None) -> int:
    """Record one review of a prediction and its audit row in a single transaction; returns the review id."""
    reviewer = _required(reviewer, "reviewer")
    if verdict not in VERDICTS:
        raise ReviewError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    note = str(note or "")
    if len(note) > MAX_NOTE:
        raise ReviewError(f"note is {len(note)} characters; at most {MAX_NOTE} are kept")
    at = now()
    with _immediate(conn):
        pred = conn.execute("SELECT series_uid, nodule_id, bundle_sha256 FROM predictions WHERE prediction_id = ?",
                            (int(prediction_id),)).fetchone()
        if pred is None:
            raise ReviewError(f"prediction {prediction_id} is not in the database")
        cur = conn.execute(
            "INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, note, model_name, "
            "model_version, bundle_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (int(prediction_id), pred["series_uid"], pred["nodule_id"], reviewer, verdict, note, model_name,
             model_version, bundle_sha256 or pred["bundle_sha256"], at),
        )
        review_id = int(cur.lastrowid)
        _append_audit(conn, reviewer, "review", pred["series_uid"], pred["nodule_id"],
                      f"prediction {int(prediction_id)}: {verdict} (review {review_id})", at)
    return review_id


def review_history(conn: sqlite3.Connection, prediction_id: int) -> pd.DataFrame:
    """Every review of one prediction, oldest first."""
    return pd.read_sql_query(
        "SELECT review_id, created_at, reviewer, verdict, note, model_name, model_version, bundle_sha256 "
        "FROM reviews WHERE prediction_id = ? ORDER BY review_id", conn, params=(int(prediction_id),))


# -------------------------------------------------------------------------------------------- worklist
_WORKLIST_SQL = """
SELECT p.prediction_id, p.run_id, p.series_uid, p.nodule_id, p.x_mm, p.y_mm, p.z_mm, p.diameter_mm,
       p.probability, p.label, p.threshold, p.bundle_sha256, p.created_at,
       s.description, s.modality, s.n_slices,
       r.verdict AS last_verdict, r.reviewer AS last_reviewer, r.created_at AS reviewed_at
FROM predictions p
LEFT JOIN series s ON s.run_id = p.run_id AND s.series_uid = p.series_uid
LEFT JOIN reviews r ON r.review_id = (SELECT MAX(review_id) FROM reviews WHERE prediction_id = p.prediction_id)
"""


def worklist(conn: sqlite3.Connection, *, statuses: Iterable[str] | None = None, min_score: float = 0.0,
             max_score: float = 1.0, run_ids: Sequence[str] | None = None, descending: bool = True) -> pd.DataFrame:
    """Scored predictions with their review status (the latest review), filtered and sorted by score."""
    wanted = list(statuses) if statuses is not None else list(STATUSES)
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        raise ReviewError(f"unknown review status {bad}; choose from {STATUSES}")
    if not 0.0 <= float(min_score) <= float(max_score) <= 1.0:
        raise ReviewError(f"score range must satisfy 0 <= min <= max <= 1, got {min_score}..{max_score}")
    sql = _WORKLIST_SQL + " WHERE p.probability BETWEEN ? AND ?"
    args: list[Any] = [float(min_score), float(max_score)]
    if run_ids:
        sql += f" AND p.run_id IN ({','.join('?' * len(run_ids))})"
        args += list(run_ids)
    sql += f" ORDER BY p.probability {'DESC' if descending else 'ASC'}, p.prediction_id"
    df = pd.read_sql_query(sql, conn, params=args)
    df.insert(0, "status", df["last_verdict"].map(_STATUS_OF).fillna("unreviewed"))
    return df[df["status"].isin(wanted)].reset_index(drop=True)


def next_unreviewed(conn: sqlite3.Connection, *, after: int | None = None, run_ids: Sequence[str] | None = None) -> int | None:
    """The highest-scoring unreviewed prediction (other than ``after``), or None when all are reviewed."""
    df = worklist(conn, statuses=["unreviewed"], run_ids=run_ids)
    if after is not None:
        df = df[df["prediction_id"] != int(after)]
    return None if df.empty else int(df["prediction_id"].iloc[0])


def prediction(conn: sqlite3.Connection, prediction_id: int) -> dict[str, Any]:
    """One prediction with its series (``source`` = where the files are, server side only) and run."""
    row = conn.execute(
        "SELECT p.*, s.source, s.description, s.modality, s.n_slices, r.bundle_name, r.bundle_path, r.task "
        "FROM predictions p LEFT JOIN series s ON s.run_id = p.run_id AND s.series_uid = p.series_uid "
        "LEFT JOIN runs r ON r.run_id = p.run_id WHERE p.prediction_id = ?", (int(prediction_id),)).fetchone()
    if row is None:
        raise ReviewError(f"prediction {prediction_id} is not in the database")
    return dict(row)


def runs(conn: sqlite3.Connection) -> pd.DataFrame:
    """The scoring runs, newest first."""
    return pd.read_sql_query(
        "SELECT run_id, started_at, finished_at, bundle_name, bundle_sha256, task, status, n_scored FROM runs "
        "ORDER BY started_at DESC", conn)
