"""The tamper-evident audit trail: a hash chain over the audit rows, the review rows bound into it by their
content hashes, and the chain's head anchored in a file outside the database.

What each part protects (docs/guarantees.md, section 4, says it for users):

- **The chain** (``hash = sha256(prev_hash + canonical JSON of the row)``): an audit row edited, deleted or
  inserted in the middle breaks every later link, even when the append-only triggers were dropped.
- **Review content hashes**: each review is recorded in its audit row with ``review_id`` and
  ``record_sha256`` = sha256 of the review row *and of the prediction it judged* (probability, label,
  threshold, bundle). A verdict, note or reviewer changed afterwards, a forged review inserted without an
  audit row, a deleted review or a changed probability of a reviewed prediction no longer match.
- **The anchor** (a small JSON file outside the database, rewritten after every audited write): holds the
  database's id and the head (last ``audit_id`` and its hash). Someone who rewrites the rows *and recomputes
  the whole chain*, or cuts rows off the end, produces a chain whose head is not the anchored one.
  Unsigned, it protects against anyone who can change the database but not the anchor file (keep it on
  another disk, share or host). **Signed** with an HMAC key file (``medsuite audit init --new-key``), it
  also protects against someone who can rewrite the anchor file but cannot read the key: they cannot
  produce a valid anchor for a forged chain.

Not detected: a state rolled back *together with* an older valid anchor (keep anchors where they cannot be
replaced by older copies, or copy them off the host); anything done by someone holding the key and write
access to both files; rows written after the last anchor when the writer died before anchoring (reported
as not vouched for, not as tampering); predictions no one reviewed, series and error rows (scoring output,
rebuilt by re-running scoring).
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medsuite.io.atomic import atomic_write_json, atomic_write_text

__all__ = [
    "ANCHOR_FORMAT",
    "AUDIT_FIELDS",
    "GENESIS",
    "AnchorError",
    "AuditCheck",
    "AuditReport",
    "anchor_settings",
    "audited_write",
    "configure_anchor",
    "db_id",
    "new_key_file",
    "read_anchor",
    "record_hash",
    "row_hash",
    "update_anchor",
    "verify_chain",
    "verify_records",
    "write_anchor",
]

log = logging.getLogger("medsuite.audit")

GENESIS = "0" * 64
AUDIT_FIELDS = ("audit_id", "at", "actor", "action", "series_uid", "nodule_id", "detail")
RECORD_FIELDS = ("review_id", "record_sha256")
REVIEW_FIELDS = ("review_id", "prediction_id", "series_uid", "nodule_id", "reviewer", "verdict", "note",
                 "model_name", "model_version", "bundle_sha256", "created_at")
PREDICTION_FIELDS = ("prediction_id", "run_id", "bundle_sha256", "series_uid", "nodule_id", "probability", "label",
                     "threshold")
RECORD_ACTIONS = ("review", "seal")
ANCHOR_FORMAT = "medsuite-audit-anchor/1"
MIN_KEY_BYTES = 16


class AnchorError(ValueError):
    """An anchor or key file that cannot be read, or an anchor whose signature does not verify."""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def row_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """``sha256(prev_hash + canonical JSON of the audit row's content)`` as hex.

    Rows that record a review also hash ``review_id`` and ``record_sha256``; rows without them hash the
    seven original fields only (so chains written before review hashing still verify).
    """
    fields = AUDIT_FIELDS
    if any(row.get(k) is not None for k in RECORD_FIELDS):
        fields = AUDIT_FIELDS + RECORD_FIELDS
    content = {k: row.get(k) for k in fields}
    return hashlib.sha256((prev_hash + _canonical(content)).encode("utf-8")).hexdigest()


def record_hash(review: dict[str, Any], prediction: dict[str, Any] | None) -> str:
    """sha256 of a review row and of the prediction it judged (``None`` when that prediction is gone)."""
    content = {"review": {k: review.get(k) for k in REVIEW_FIELDS},
               "prediction": None if prediction is None else {k: prediction.get(k) for k in PREDICTION_FIELDS}}
    return hashlib.sha256(_canonical(content).encode("utf-8")).hexdigest()


def append_row(conn: sqlite3.Connection, actor: str, action: str, series_uid: str | None, nodule_id: str | None,
               detail: str, at: str, *, review_id: int | None = None, record_sha256: str | None = None) -> str:
    """Insert one chained audit row; the caller holds the write transaction. Returns its hash."""
    last = conn.execute("SELECT audit_id, hash FROM audit ORDER BY audit_id DESC LIMIT 1").fetchone()
    prev = last[1] if last else GENESIS
    row = {"audit_id": (last[0] + 1) if last else 1, "at": at, "actor": actor, "action": action,
           "series_uid": series_uid, "nodule_id": nodule_id, "detail": detail, "review_id": review_id,
           "record_sha256": record_sha256}
    digest = row_hash(prev, row)
    conn.execute(
        "INSERT INTO audit(audit_id, at, actor, action, series_uid, nodule_id, detail, review_id, record_sha256, "
        "prev_hash, hash) VALUES (:audit_id, :at, :actor, :action, :series_uid, :nodule_id, :detail, :review_id, "
        ":record_sha256, :prev, :hash)",
        {**row, "prev": prev, "hash": digest},
    )
    return digest


def review_record(conn: sqlite3.Connection, review_id: int) -> str | None:
    """The record hash of review ``review_id`` as it is now in the database (None if the review is gone)."""
    conn_rows = _dict_rows(conn, "SELECT * FROM reviews WHERE review_id = ?", (int(review_id),))
    if not conn_rows:
        return None
    review = conn_rows[0]
    preds = _dict_rows(conn, "SELECT * FROM predictions WHERE prediction_id = ?", (review["prediction_id"],))
    return record_hash(review, preds[0] if preds else None)


def _dict_rows(conn: sqlite3.Connection, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


# ---------------------------------------------------------------------------------------------- chain
@dataclass
class AuditCheck:
    """Result of `verify_chain`: ``ok``, rows checked, the head hash (record it elsewhere to detect a cut tail)."""

    ok: bool
    n_rows: int
    head: str
    problems: list[str] = field(default_factory=list)
    head_id: int = 0


def verify_chain(conn: sqlite3.Connection, *, expected_head: str | None = None) -> AuditCheck:
    """Recompute the hash chain; report edited rows, deleted rows (a broken link or an id gap) and, given
    ``expected_head`` (a head recorded earlier), rows cut from the end."""
    problems: list[str] = []
    prev, expected_id, n, head_id = GENESIS, 1, 0, 0
    heads: set[str] = {GENESIS}
    for row in _dict_rows(conn, "SELECT * FROM audit ORDER BY audit_id"):
        n += 1
        if row["audit_id"] != expected_id:
            problems.append(f"audit rows {expected_id}..{row['audit_id'] - 1} are missing (deleted)")
        if row["prev_hash"] != prev:
            problems.append(f"audit row {row['audit_id']}: prev_hash does not match the row before it "
                            "(a row was deleted or edited)")
        if row_hash(row["prev_hash"], row) != row["hash"]:
            problems.append(f"audit row {row['audit_id']}: content does not match its hash (the row was edited)")
        prev, expected_id, head_id = row["hash"], row["audit_id"] + 1, row["audit_id"]
        heads.add(prev)
    if expected_head is not None and expected_head not in heads:
        problems.append("the recorded head hash is no longer in the chain (rows were cut or rewritten)")
    return AuditCheck(not problems, n, prev, problems, head_id)


def _check_reviews(conn: sqlite3.Connection) -> tuple[int, list[str]]:
    """Every review must be recorded by exactly one audit row whose record hash matches it today."""
    problems: list[str] = []
    recorded: dict[int, list[dict[str, Any]]] = {}
    for row in _dict_rows(conn, "SELECT audit_id, action, review_id, record_sha256 FROM audit "
                                "WHERE review_id IS NOT NULL ORDER BY audit_id"):
        recorded.setdefault(int(row["review_id"]), []).append(row)
    reviews = _dict_rows(conn, "SELECT * FROM reviews ORDER BY review_id")
    predictions = {r["prediction_id"]: r for r in _dict_rows(
        conn, "SELECT * FROM predictions WHERE prediction_id IN (SELECT prediction_id FROM reviews)")}
    seen: set[int] = set()
    for review in reviews:
        rid = int(review["review_id"])
        seen.add(rid)
        entries = recorded.get(rid, [])
        if not entries:
            problems.append(f"review {rid} ({review['verdict']!r} by {review['reviewer']!r} on prediction "
                            f"{review['prediction_id']}) has no audit row: it was inserted outside medsuite")
            continue
        if len(entries) > 1:
            problems.append(f"review {rid} is recorded by {len(entries)} audit rows "
                            f"({', '.join(str(e['audit_id']) for e in entries)}); one is expected")
        digest = record_hash(review, predictions.get(review["prediction_id"]))
        if entries[0]["record_sha256"] != digest:
            problems.append(f"review {rid}: the review row or the prediction it judged ({review['prediction_id']}) "
                            f"was changed after audit row {entries[0]['audit_id']} recorded it")
    for rid, entries in sorted(recorded.items()):
        if rid not in seen:
            problems.append(f"review {rid} recorded by audit row {entries[0]['audit_id']} is missing (deleted)")
    first_review = min((e["audit_id"] for es in recorded.values() for e in es if e["action"] == "review"), default=None)
    for es in recorded.values():
        for e in es:  # sealing only ever happens at a version-1 upgrade, before any review is recorded
            if e["action"] == "seal" and first_review is not None and e["audit_id"] > first_review:
                problems.append(f"audit row {e['audit_id']} seals review {e['review_id']} \"as found\" although the "
                                f"trail already recorded reviews (row {first_review}): the database was made to look "
                                "like version 1 so that an unrecorded review would be sealed")
    return len(reviews), problems


def _check_version(conn: sqlite3.Connection) -> list[str]:
    """A database whose schema version or id was removed or lowered although it holds version-2 records."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('schema_version', 'db_id')").fetchall())
    columns = {r[1] for r in conn.execute("PRAGMA table_info(audit)")}
    if "review_id" not in columns or not conn.execute(
            "SELECT 1 FROM audit WHERE review_id IS NOT NULL LIMIT 1").fetchone():
        return []
    problems = []
    if str(meta.get("schema_version")) != "2":
        problems.append(f"the database says schema version {meta.get('schema_version')!r} but holds version-2 "
                        "audit records: its version was changed")
    if not meta.get("db_id"):
        problems.append("the database's id was removed")
    return problems


# --------------------------------------------------------------------------------------------- anchor
def db_id(conn: sqlite3.Connection) -> str:
    """The database's random identity (set when it was created); anchors name it."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone()
    return str(row[0]) if row else ""


def _db_path(conn: sqlite3.Connection) -> Path | None:
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main" and row[2]:
            return Path(row[2])
    return None


def default_anchor_path(db_path: str | os.PathLike[str]) -> Path:
    """Where the anchor goes unless configured: ``<database>.anchor.json`` beside the database."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.name + ".anchor.json")


def anchor_settings(conn: sqlite3.Connection) -> tuple[Path | None, Path | None]:
    """``(anchor file, key file)`` the writers use for this database: the configured ones
    (`configure_anchor`), else the default anchor beside the database and no key."""
    meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('audit_anchor', 'audit_key_file')")
                .fetchall())
    anchor = Path(meta["audit_anchor"]) if meta.get("audit_anchor") else None
    key = Path(meta["audit_key_file"]) if meta.get("audit_key_file") else None
    if anchor is None:
        db = _db_path(conn)
        anchor = default_anchor_path(db) if db is not None else None
    return anchor, key


def configure_anchor(conn: sqlite3.Connection, anchor: str | os.PathLike[str] | None,
                     key_file: str | os.PathLike[str] | None) -> None:
    """Record where this database's writers put the anchor and which key signs it (None: the defaults)."""
    with _write(conn):
        for name, value in (("audit_anchor", anchor), ("audit_key_file", key_file)):
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (name,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (name, str(Path(value).resolve())))


class _write:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def new_key_file(path: str | os.PathLike[str]) -> Path:
    """Create a key file of 32 random bytes (hex), readable by its owner only; refuses to overwrite one."""
    path = Path(path)
    if path.exists():
        raise AnchorError(f"{path}: a key file is already there (remove it yourself to replace it)")
    return atomic_write_text(path, secrets.token_hex(32) + "\n", mode=0o600)


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The HMAC key in ``path`` (its bytes, surrounding whitespace removed)."""
    path = Path(path)
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise AnchorError(f"{path}: cannot read the audit key file ({exc.strerror or exc})") from None
    if len(key) < MIN_KEY_BYTES:
        raise AnchorError(f"{path}: the audit key is too short ({len(key)} bytes; at least {MIN_KEY_BYTES})")
    return key


def _signature(body: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(body).encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name of a key (so a verifier can tell which key signed an anchor)."""
    return hashlib.sha256(b"medsuite-audit-key-id:" + key).hexdigest()[:16]


def write_anchor(conn: sqlite3.Connection, path: str | os.PathLike[str], *, key: bytes | None = None) -> dict[str, Any]:
    """Write the current head of the chain to ``path`` (atomically), signed with ``key`` if given."""
    last = conn.execute("SELECT audit_id, hash FROM audit ORDER BY audit_id DESC LIMIT 1").fetchone()
    body = {"format": ANCHOR_FORMAT, "db_id": db_id(conn), "audit_id": int(last[0]) if last else 0,
            "hash": last[1] if last else GENESIS,
            "written_at": datetime.now(UTC).isoformat(timespec="milliseconds")}
    anchor = dict(body)
    if key is not None:
        anchor["key_id"] = key_id(key)
        anchor["hmac"] = _signature({**body, "key_id": anchor["key_id"]}, key)
    atomic_write_json(path, anchor, indent=1, sort_keys=True)
    return anchor


def read_anchor(path: str | os.PathLike[str], *, key: bytes | None = None) -> dict[str, Any]:
    """An anchor file's content; with ``key`` its signature must verify (an unsigned anchor is refused)."""
    path = Path(path)
    try:
        anchor = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnchorError(f"{path}: anchor file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnchorError(f"{path}: not a readable anchor file ({exc})") from None
    if not isinstance(anchor, dict) or anchor.get("format") != ANCHOR_FORMAT:
        raise AnchorError(f"{path}: not a medsuite audit anchor (format {ANCHOR_FORMAT!r} expected)")
    if not isinstance(anchor.get("audit_id"), int) or not isinstance(anchor.get("hash"), str):
        raise AnchorError(f"{path}: the anchor has no audit_id/hash")
    if key is not None:
        if "hmac" not in anchor:
            raise AnchorError(f"{path}: the anchor is not signed, but a key was given (an unsigned anchor can be "
                              "rewritten by anyone who can write the file)")
        body = {k: v for k, v in anchor.items() if k != "hmac"}
        if anchor.get("key_id") != key_id(key):
            raise AnchorError(f"{path}: the anchor was signed with another key (key id {anchor.get('key_id')}, "
                              f"this key is {key_id(key)})")
        if not hmac.compare_digest(str(anchor["hmac"]), _signature(body, key)):
            raise AnchorError(f"{path}: the anchor's signature does not verify: the file was altered")
    return anchor


def update_anchor(conn: sqlite3.Connection, *, start: bool = False) -> Path | None:
    """Anchor the current head. ``start=False``: only the empty chain of a new database is anchored (a missing
    anchor, or one an older database left there); any other anchor stays as it is. ``start=True``: the caller
    has verified the trail (`medsuite audit init`, a version-1 upgrade) and the head is written whatever is
    there. Writers do not call this: `audited_write` moves the anchor over exactly the rows they wrote.
    Failures are logged, never raised. Returns the anchor's path when it stands at the head."""
    path, key_file = anchor_settings(conn)
    if path is None:  # an in-memory database
        return None
    fd = _lock(path)
    try:
        last = conn.execute("SELECT MAX(audit_id) FROM audit").fetchone()[0] or 0
        return _move_anchor(conn, path, key_file, None if start else last)
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def audited_write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` for rows appended to the chain, then the anchor moved over them.

    The anchor's lock is held across the transaction, so writers follow one another and each one knows the
    rows it wrote: the anchor moves only when it stood exactly at the head this write started from. Rows it
    did not write (appended outside medsuite, or by a writer killed before anchoring) are never vouched for
    by a later write: `verify_records` keeps reporting them until ``medsuite audit anchor`` is run by someone
    who trusts them. An anchor that was deleted, garbled, replaced or no longer matches the chain is left as
    it is (logged), so verification reports it rather than a later write hiding it."""
    if conn.in_transaction:
        raise sqlite3.OperationalError("a transaction is already open on this connection; audited writes need their own")
    path, key_file = anchor_settings(conn)
    fd = _lock(path) if path is not None else None
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.execute("SELECT MAX(audit_id) FROM audit").fetchone()[0] or 0
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if path is not None:
            _move_anchor(conn, path, key_file, before)
    finally:
        if fd is not None:
            os.close(fd)


def _lock(path: Path) -> int | None:
    """An exclusive lock on ``<anchor>.lock`` (released when the fd is closed or the process dies)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("audit anchor %s cannot be locked (%s)", path, exc)
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _move_anchor(conn: sqlite3.Connection, path: Path, key_file: Path | None, before: int | None) -> Path | None:
    """Write the head to the anchor. ``before``: the head this write started from (the anchor must stand
    there); None: unconditionally."""
    try:
        key = load_key(key_file) if key_file is not None else None
        last = conn.execute("SELECT MAX(audit_id) FROM audit").fetchone()[0] or 0
        if before is not None:
            refusal, anchored = _anchor_refusal(conn, path, key, last, empty=before == 0)
            if refusal is None and anchored is not None and anchored != before:
                refusal = (f"it vouches for rows up to {anchored} but this write started after row {before}: "
                           f"row(s) {anchored + 1}..{before} were written without being anchored (outside medsuite, "
                           "or by a writer that was killed); `medsuite audit anchor` vouches for them once you "
                           "trust them")
            if refusal == "current":
                return path
            if refusal:
                log.warning("audit anchor %s not moved: %s", path, refusal)
                return None
        write_anchor(conn, path, key=key)
        return path
    except (OSError, AnchorError, sqlite3.Error) as exc:
        log.warning("audit anchor not updated (%s); `medsuite audit verify` will report the rows after the last "
                    "anchor as not vouched for", exc)
        return None


def _anchor_refusal(conn: sqlite3.Connection, path: Path, key: bytes | None, last: int,
                    *, empty: bool) -> tuple[str | None, int | None]:
    """``(why the anchor at path must not be moved to row last, or None; the row it anchors)``; the reason
    "current" means it is already there. A missing anchor may be created, and one of another database
    replaced (it is kept as ``<anchor>.superseded-<db id>.json``), only when the chain was ``empty`` before
    this write (a new database, or a copy of one without its anchor)."""
    this_db = db_id(conn)
    if not path.exists():
        if empty:
            return None, None
        return (f"the anchor file is missing while the chain holds {last} row(s) (deleted?); `medsuite audit "
                "anchor` re-creates it once you trust the trail"), None
    try:
        current = read_anchor(path, key=key)
    except AnchorError as exc:
        return f"the anchor there does not verify ({exc})", None
    if current.get("db_id") != this_db:
        if empty and this_db:  # a new database where an older one's anchor was
            old = "".join(c for c in str(current.get("db_id") or "unknown") if c.isalnum())[:12] or "unknown"
            os.replace(path, path.with_name(f"{path.name}.superseded-{old}.json"))
            return None, None
        return (f"the anchor belongs to another database (id {current.get('db_id')!r}) or this database's id "
                "was changed"), None
    anchored_id, anchored_hash = int(current["audit_id"]), str(current["hash"])
    if anchored_id > 0:
        row = conn.execute("SELECT hash FROM audit WHERE audit_id = ?", (anchored_id,)).fetchone()
        if row is None or row[0] != anchored_hash:
            return (f"audit row {anchored_id} no longer has the anchored hash (rows were cut or the chain "
                    "rewritten)"), anchored_id
    return ("current" if anchored_id >= last else None), anchored_id


# --------------------------------------------------------------------------------------------- verify
@dataclass
class AuditReport:
    """Everything `verify_records` found. ``status``: ``intact`` (chain, reviews and anchor all check),
    ``unanchored`` (consistent, but no anchor vouches for the head: a recomputed chain or a cut tail could
    not be detected) or ``tampered`` (see ``problems``)."""

    status: str
    n_rows: int
    n_reviews: int
    head: str
    head_id: int
    anchor: str | None = None
    anchored_id: int | None = None
    signed: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True only when everything checked and an anchor vouches for the whole chain."""
        return self.status == "intact"

    @property
    def summary(self) -> str:
        """One line for people (the viewer's audit page, the CLI)."""
        if self.status == "tampered":
            return (f"The audit trail was altered: {len(self.problems)} problem(s) in {self.n_rows} audit rows and "
                    f"{self.n_reviews} reviews")
        if self.status == "unanchored":
            return (f"Hash chain consistent ({self.n_rows} rows, {self.n_reviews} reviews match their audit rows) "
                    f"but NOT anchored: {self.notes[0] if self.notes else 'no anchor'}")
        return (f"Hash chain intact: {self.n_rows} rows, {self.n_reviews} reviews match their audit rows, head "
                f"{self.head[:16]}… matches the {'signed ' if self.signed else ''}anchor {self.anchor}")


def verify_records(conn: sqlite3.Connection, *, anchor: str | os.PathLike[str] | None = None,
                   key: bytes | None = None, use_configured: bool = True) -> AuditReport:
    """Check the chain, every review against its audit row, and the head against an anchor.

    ``anchor``: the anchor file to trust; ``key``: the HMAC key (the anchor must then be signed with it).
    With ``use_configured`` the ones the database's writers use (`anchor_settings`) fill in what is not
    given: convenient, but those settings live in the database itself, so an independent check passes both
    explicitly. A missing or unreadable anchor given explicitly is a problem; a missing default one makes
    the result ``unanchored``.
    """
    chain = verify_chain(conn)
    notes: list[str] = []
    if "review_id" in {r[1] for r in conn.execute("PRAGMA table_info(audit)")}:
        n_reviews, review_problems = _check_reviews(conn)
    else:  # a version-1 database not yet opened by this medsuite (`medsuite audit verify` does not upgrade)
        n_reviews, review_problems = conn.execute("SELECT COUNT(*) FROM reviews").fetchone()[0], []
        notes.append("a version-1 database: its reviews are not bound to the trail yet (opening it with medsuite "
                     "upgrades it and seals them as found)")
    problems = chain.problems + review_problems + _check_version(conn)
    report = AuditReport("tampered", chain.n_rows, n_reviews, chain.head, chain.head_id, problems=problems,
                         notes=notes)
    explicit = anchor is not None
    if use_configured:
        configured_anchor, configured_key = anchor_settings(conn)
        anchor = configured_anchor if anchor is None else anchor
        if key is None and configured_key is not None:
            try:
                key = load_key(configured_key)
            except AnchorError as exc:
                notes.append(f"the anchor's signature cannot be checked: {exc}")
    if anchor is None:
        notes.append("no anchor file: a recomputed chain or rows cut from the end cannot be detected")
    else:
        report.anchor = str(anchor)
        try:
            data = read_anchor(anchor, key=key)
        except AnchorError as exc:
            if explicit or key is not None or Path(anchor).exists():
                problems.append(str(exc))
            else:
                notes.append(f"no anchor at {anchor}: a recomputed chain or rows cut from the end cannot be detected")
            data = None
        if data is not None:
            report.anchored_id, report.signed = int(data["audit_id"]), "hmac" in data and key is not None
            _compare_anchor(conn, data, chain, problems, notes)
            if "hmac" in data and key is None:
                notes.insert(0, "the anchor is signed but no key was given: its signature was not checked")
    if problems:
        report.status = "tampered"
    elif notes:
        report.status = "unanchored"
    else:
        report.status = "intact"
    return report


def _compare_anchor(conn: sqlite3.Connection, data: dict[str, Any], chain: AuditCheck, problems: list[str],
                    notes: list[str]) -> None:
    if data.get("db_id") != db_id(conn):
        problems.append(f"the anchor belongs to another database (id {data.get('db_id')!r}, this one is "
                        f"{db_id(conn)!r}), or this database's id was changed")
        return
    anchored_id, anchored_hash = int(data["audit_id"]), str(data["hash"])
    if anchored_id == 0:
        if chain.n_rows:
            notes.append(f"the anchor predates every audit row: {chain.n_rows} row(s) are not vouched for by it")
        return
    row = conn.execute("SELECT hash FROM audit WHERE audit_id = ?", (anchored_id,)).fetchone()
    if row is None:
        problems.append(f"the anchor records {anchored_id} audit rows but the chain ends at row {chain.head_id}: "
                        "rows were cut from the end")
    elif row[0] != anchored_hash:
        problems.append(f"audit row {anchored_id} no longer has the anchored hash {anchored_hash[:16]}…: the chain "
                        "was rewritten (and recomputed) up to there")
    elif chain.head_id > anchored_id:
        notes.append(f"{chain.head_id - anchored_id} audit row(s) after the anchored row {anchored_id} are not "
                     "vouched for (appended outside medsuite, or a writer stopped before anchoring; "
                     "`medsuite audit anchor` re-anchors once you trust them)")


def seal_unrecorded_reviews(conn: sqlite3.Connection, actor: str, at: str) -> int:
    """Record reviews that have no audit row (written before review hashing) as ``seal`` rows; the caller
    holds the write transaction. Returns how many were sealed."""
    rows = _dict_rows(conn, "SELECT review_id FROM reviews WHERE review_id NOT IN "
                            "(SELECT review_id FROM audit WHERE review_id IS NOT NULL) ORDER BY review_id")
    for r in rows:
        review = _dict_rows(conn, "SELECT * FROM reviews WHERE review_id = ?", (r["review_id"],))[0]
        append_row(conn, actor, "seal", review["series_uid"], review["nodule_id"],
                   f"review {review['review_id']} written before review hashing, sealed as found", at,
                   review_id=int(review["review_id"]), record_sha256=review_record(conn, review["review_id"]))
    return len(rows)


def new_db_id() -> str:
    """A fresh random database identity."""
    return uuid.uuid4().hex
