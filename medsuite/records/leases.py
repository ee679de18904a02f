"""Case leases: "next unreviewed" claims a case for a while, so that two reviewers working through the same
worklist get different cases.

A lease is one row per prediction in ``case_leases`` (created on first use; the scoring schema is untouched):
who holds it (a stable holder key: the login name, or a per-session key without logins), the reviewer's display
name, and when it expires. Claims run in ``BEGIN IMMEDIATE`` transactions, so two reviewers asking at the same
moment are serialised by SQLite and never get the same case. An expired lease is free; leases are renewed while
the reviewer works on the case and released when they move on.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd

from medsuite.records import reviews

LEASE_MINUTES = 15.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS case_leases (
    prediction_id INTEGER PRIMARY KEY REFERENCES predictions(prediction_id),
    holder TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Lease:
    """Who holds a case and until when (ISO 8601 UTC)."""

    prediction_id: int
    holder: str
    reviewer: str
    expires_at: str


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute(_SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _active(conn: sqlite3.Connection, now: datetime) -> dict[int, Lease]:
    rows = conn.execute("SELECT prediction_id, holder, reviewer, expires_at FROM case_leases WHERE expires_at > ?",
                        (_iso(now),)).fetchall()
    return {int(r[0]): Lease(int(r[0]), r[1], r[2], r[3]) for r in rows}


def _take(conn: sqlite3.Connection, pid: int, holder: str, reviewer: str, now: datetime, minutes: float) -> None:
    conn.execute(
        "INSERT INTO case_leases(prediction_id, holder, reviewer, claimed_at, expires_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(prediction_id) DO UPDATE SET holder = excluded.holder, reviewer = excluded.reviewer, "
        "claimed_at = excluded.claimed_at, expires_at = excluded.expires_at",
        (int(pid), holder, reviewer, _iso(now), _iso(now + timedelta(minutes=minutes))))
    # one case at a time per holder: moving on frees the previous one
    conn.execute("DELETE FROM case_leases WHERE holder = ? AND prediction_id != ?", (holder, int(pid)))


def claim_next(conn: sqlite3.Connection, holder: str, reviewer: str, *, after: int | None = None,
               run_ids: Sequence[str] | None = None, minutes: float = LEASE_MINUTES) -> int | None:
    """Claim the next unreviewed case nobody else holds, in worklist order (highest score first) after ``after``
    (wrapping around; ``after`` itself is never returned); None when there is none."""
    holder, reviewer = _required(holder, "holder"), _required(reviewer, "reviewer")
    now = _now()
    with _immediate(conn):
        table = reviews.worklist(conn, run_ids=run_ids)  # every status, in worklist order
        order = [int(p) for p in table["prediction_id"]]
        unreviewed = {int(p) for p in table.loc[table["status"] == "unreviewed", "prediction_id"]}
        busy = {pid for pid, lease in _active(conn, now).items() if lease.holder != holder}
        free = [p for p in order if p in unreviewed and p not in busy and p != after]
        if not free:
            conn.execute("DELETE FROM case_leases WHERE holder = ?", (holder,))
            return None
        pick = free[0]
        if after is not None and after in order:
            pos = order.index(after)
            pick = next((p for p in free if order.index(p) > pos), free[0])
        _take(conn, pick, holder, reviewer, now, minutes)
        return pick


def claim(conn: sqlite3.Connection, prediction_id: int, holder: str, reviewer: str, *,
          minutes: float = LEASE_MINUTES) -> Lease | None:
    """Claim (or renew) one case; returns None when it is now ours, else the other reviewer's lease."""
    holder, reviewer = _required(holder, "holder"), _required(reviewer, "reviewer")
    now = _now()
    with _immediate(conn):
        other = _active(conn, now).get(int(prediction_id))
        if other is not None and other.holder != holder:
            return other
        _take(conn, int(prediction_id), holder, reviewer, now, minutes)
    return None


def release(conn: sqlite3.Connection, holder: str, prediction_id: int | None = None) -> None:
    """Free the holder's lease (on ``prediction_id``, or all of them)."""
    with _immediate(conn):
        if prediction_id is None:
            conn.execute("DELETE FROM case_leases WHERE holder = ?", (holder,))
        else:
            conn.execute("DELETE FROM case_leases WHERE holder = ? AND prediction_id = ?", (holder, int(prediction_id)))


def active(conn: sqlite3.Connection) -> pd.DataFrame:
    """Leases in force: ``prediction_id, holder, reviewer, expires_at``."""
    conn.execute(_SCHEMA)
    return pd.read_sql_query("SELECT prediction_id, holder, reviewer, expires_at FROM case_leases WHERE expires_at > ?",
                             conn, params=(_iso(_now()),))


def _required(value: str | None, name: str) -> str:
    text = (value or "").strip()
    if not text:
        raise reviews.ReviewError(f"lease {name} must not be empty")
    return text
