"""Clinician reviews and the hash-chained audit trail on the scoring database (`medsuite.records.store`).

Reviews are append-only: a changed opinion is a new row, the latest row per prediction is its status, and the
whole history stays readable. Every open and every review also appends an ``audit`` row whose ``hash`` is
``sha256(prev_hash + canonical JSON of the row)``; a review's audit row also holds the sha256 of the review
row and of the prediction it judged, and after each audited write the chain's head is written to an anchor
file outside the database (`medsuite.records.audit`). `verify_records` checks all of it; `verify_audit`
checks the chain alone. Writes run in ``BEGIN IMMEDIATE`` transactions, so several reviewers saving at once
serialise on SQLite's lock and lose nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from medsuite.records import audit
from medsuite.records.audit import AUDIT_FIELDS, GENESIS, AuditCheck, AuditReport, row_hash, verify_records

__all__ = [
    "AUDIT_FIELDS", "GENESIS", "STATUSES", "VERDICTS", "AuditCheck", "AuditReport", "ReviewError", "add_review",
    "append_audit", "audit_rows", "next_unreviewed", "prediction", "review_history", "row_hash", "runs",
    "verify_audit", "verify_records", "worklist",
]

VERDICTS = ("agree", "disagree", "uncertain")
STATUSES = ("unreviewed", "agreed", "disagreed", "uncertain")
_STATUS_OF = {"agree": "agreed", "disagree": "disagreed", "uncertain": "uncertain"}
MAX_NOTE = 4000


class ReviewError(ValueError):
    """A review or audit entry that cannot be recorded (unknown prediction, bad verdict, empty reviewer)."""


def now() -> str:
    """UTC time stamp with milliseconds, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction taken at once (``BEGIN IMMEDIATE``) so concurrent writers queue instead of failing;
    the anchor moves over the rows it appended (`medsuite.records.audit.audited_write`)."""
    if conn.in_transaction:
        raise ReviewError("a transaction is already open on this connection; reviews need their own")
    with audit.audited_write(conn):
        yield conn


# ---------------------------------------------------------------------------------------------- audit
def append_audit(conn: sqlite3.Connection, actor: str, action: str, *, series_uid: str | None = None,
                 nodule_id: str | None = None, detail: str = "") -> str:
    """Append one audit row (``open``, ``login``, ``logout`` ...) to the chain and move the anchor; returns
    its hash."""
    actor, action = _required(actor, "actor"), _required(action, "action")
    with _immediate(conn):
        digest = audit.append_row(conn, actor, action, series_uid, nodule_id, str(detail), now())
    return digest


def verify_audit(conn: sqlite3.Connection, *, expected_head: str | None = None) -> AuditCheck:
    """The hash chain alone (see `verify_records` for reviews and the anchor): edited or deleted rows and,
    given ``expected_head``, rows cut from the end."""
    return audit.verify_chain(conn, expected_head=expected_head)


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
        audit.append_row(conn, reviewer, "review", pred["series_uid"], pred["nodule_id"],
                         f"prediction {int(prediction_id)}: {verdict} (review {review_id})", at,
                         review_id=review_id, record_sha256=audit.review_record(conn, review_id))
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
