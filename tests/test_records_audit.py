"""Tamper tests for the audit trail (issue 17 item 5): each attack an attacker with write access to the
database file can make, and what detects it: the review content hashes, the chain, the anchor, its signature."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest
import viewer_support as V
from process_support import env

from medsuite.records import audit, reviews, store


@pytest.fixture
def db(tmp_path):
    path = V.make_plain_db(tmp_path / "out" / "medsuite.db", n=5)
    with closing(store.connect(path)) as conn:
        reviews.append_audit(conn, "dr a", "login")
        reviews.add_review(conn, 1, reviewer="dr a", verdict="agree", note="solid")
        reviews.add_review(conn, 2, reviewer="dr a", verdict="disagree")
        reviews.append_audit(conn, "dr a", "open", series_uid="1.2.3.2", nodule_id="n2")
        reviews.add_review(conn, 3, reviewer="dr b", verdict="uncertain")
    return path


def _check(path, **kw) -> audit.AuditReport:
    with closing(store.connect(path, create=False)) as conn:
        return audit.verify_records(conn, **kw)


def _attacker(path) -> sqlite3.Connection:
    """A raw connection that first drops every append-only trigger (what anyone with the file can do)."""
    raw = sqlite3.connect(path, isolation_level=None)
    for name in ("reviews_no_update", "reviews_no_delete", "audit_no_update", "audit_no_delete"):
        raw.execute(f"DROP TRIGGER {name}")
    return raw


def _recompute_chain(raw: sqlite3.Connection) -> None:
    """What a knowledgeable attacker does after editing rows: recompute every record hash and every link."""
    raw.row_factory = sqlite3.Row
    prev = audit.GENESIS
    for row in [dict(r) for r in raw.execute("SELECT * FROM audit ORDER BY audit_id")]:
        if row["review_id"] is not None:
            row["record_sha256"] = audit.review_record(raw, row["review_id"])
        digest = audit.row_hash(prev, row)
        raw.execute("UPDATE audit SET record_sha256=?, prev_hash=?, hash=? WHERE audit_id=?",
                    (row["record_sha256"], prev, digest, row["audit_id"]))
        prev = digest


def test_untouched_records_are_intact_and_anchored(db):
    report = _check(db)
    assert report.status == "intact" and report.ok, report
    assert report.n_rows == 5 and report.n_reviews == 3 and report.anchored_id == 5
    assert report.summary.startswith("Hash chain intact")
    anchor = json.loads((db.parent / "medsuite.db.anchor.json").read_text())
    assert anchor["audit_id"] == 5 and "hmac" not in anchor


def test_dropped_trigger_and_updated_verdict_is_detected(db):
    with closing(_attacker(db)) as raw:
        raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
    with closing(store.connect(db, create=False)) as conn:
        assert reviews.worklist(conn, statuses=["agreed"])["prediction_id"].tolist() == [2, 1]  # the forgery shows
        assert reviews.verify_audit(conn).ok  # the chain alone cannot see it ...
    report = _check(db)  # ... the review content hashes do
    assert report.status == "tampered" and not report.ok
    assert any(p.startswith("review 2:") and "changed" in p for p in report.problems), report.problems
    assert report.summary.startswith("The audit trail was altered")


def test_inserted_forged_review_is_detected(db):
    with closing(_attacker(db)) as raw:
        raw.execute("INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, created_at) "
                    "VALUES (4, '1.2.3.3', 'n3', 'dr a', 'agree', '2025-01-02T00:00:00.000+00:00')")
    report = _check(db)
    assert report.status == "tampered"
    assert any("review 4" in p and "no audit row" in p for p in report.problems), report.problems


def test_deleted_review_and_edited_prediction_are_detected(db):
    with closing(_attacker(db)) as raw:
        raw.execute("DELETE FROM reviews WHERE review_id=3")
        raw.execute("UPDATE predictions SET probability=0.01 WHERE prediction_id=1")  # reviewed: protected
    problems = _check(db).problems
    assert any("review 3" in p and "missing (deleted)" in p for p in problems), problems
    assert any(p.startswith("review 1:") and "prediction it judged (1)" in p for p in problems), problems


def test_recomputed_chain_is_caught_by_the_anchor_only(db):
    with closing(_attacker(db)) as raw:
        raw.execute("UPDATE reviews SET verdict='agree', note='' WHERE review_id=2")
        raw.execute("UPDATE audit SET detail='prediction 2: agree (review 2)' WHERE review_id=2")
        _recompute_chain(raw)
    report = _check(db, use_configured=False)
    assert report.status == "unanchored" and report.problems == []  # the database alone is consistent again
    report = _check(db)
    assert report.status == "tampered"
    assert any("was rewritten" in p for p in report.problems), report.problems


def test_cut_tail_is_caught_by_the_anchor(db):
    with closing(_attacker(db)) as raw:  # remove the last review and its audit row: a clean, shorter chain
        raw.execute("DELETE FROM audit WHERE audit_id=5")
        raw.execute("DELETE FROM reviews WHERE review_id=3")
    assert _check(db, use_configured=False).problems == []
    report = _check(db)
    assert report.status == "tampered"
    assert any("cut from the end" in p for p in report.problems), report.problems


def test_rows_appended_after_the_anchor_are_not_vouched_for(db):
    with closing(_attacker(db)) as raw:
        raw.row_factory = sqlite3.Row
        audit.append_row(raw, "intruder", "review-less", None, None, "", "2025-01-03T00:00:00.000+00:00")
    report = _check(db)
    assert report.status == "unanchored" and not report.ok
    assert any("1 audit row(s) after the anchored row 5" in n for n in report.notes)


def test_signed_anchor_cannot_be_rewritten_without_the_key(db, tmp_path):
    key = tmp_path / "secret" / "audit.key"
    with closing(store.connect(db, create=False)) as conn:
        audit.new_key_file(key)
        audit.configure_anchor(conn, None, key)
        assert audit.update_anchor(conn, start=True) is not None  # what `medsuite audit init` does after verifying
        reviews.add_review(conn, 4, reviewer="dr b", verdict="agree")
    assert (key.stat().st_mode & 0o777) == 0o600
    anchor_file = db.parent / "medsuite.db.anchor.json"
    assert "hmac" in json.loads(anchor_file.read_text())
    assert _check(db).status == "intact" and _check(db).signed

    with closing(_attacker(db)) as raw:  # rewrite, recompute, and re-anchor without the key
        raw.execute("UPDATE reviews SET verdict='disagree' WHERE review_id=4")
        _recompute_chain(raw)
        raw.row_factory = sqlite3.Row
        audit.write_anchor(raw, anchor_file)  # unsigned
    report = _check(db)
    assert report.status == "tampered" and any("not signed" in p for p in report.problems), report.problems

    with closing(_attacker(db)) as raw:  # a forged signature with another key
        raw.row_factory = sqlite3.Row
        audit.write_anchor(raw, anchor_file, key=b"x" * 32)
    assert any("another key" in p for p in _check(db).problems)
    forged = json.loads(anchor_file.read_text())
    forged["key_id"] = audit.key_id(key.read_bytes().strip())
    anchor_file.write_text(json.dumps(forged))
    assert any("signature does not verify" in p for p in _check(db).problems)


def test_concurrent_reviewers_keep_the_anchor_at_the_head(db):
    def worker(k: int) -> None:
        with closing(store.connect(db, create=False)) as conn:
            for j in range(8):
                reviews.add_review(conn, 1 + (j % 5), reviewer=f"r{k}", verdict=reviews.VERDICTS[j % 3])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = _check(db)
    assert report.status == "intact", report
    assert report.n_reviews == 3 + 32 and report.anchored_id == report.head_id == 5 + 32


def test_version_1_database_is_upgraded_and_its_reviews_sealed(tmp_path):
    path = tmp_path / "old.db"
    old_schema = store.SCHEMA.replace("    review_id INTEGER,               -- the review this row records (action 'review' or 'seal')\n", "")
    old_schema = old_schema.replace("    record_sha256 TEXT,              -- sha256 of that review row and of the prediction it judged\n", "")
    assert "record_sha256" not in old_schema
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.executescript(old_schema)
        raw.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        raw.execute("INSERT INTO runs(run_id, started_at, bundle_name, bundle_sha256, task, engine) "
                    "VALUES ('r', 't', 'm', 'sha', 'nodule', 'local')")
        raw.execute("INSERT INTO predictions(run_id, bundle_sha256, series_uid, probability, label, threshold, "
                    "created_at) VALUES ('r', 'sha', '1.2', 0.7, 'malignant', 0.5, 't')")
        raw.execute("INSERT INTO reviews(prediction_id, series_uid, reviewer, verdict, created_at) "
                    "VALUES (1, '1.2', 'dr a', 'agree', 't')")
        row = {"audit_id": 1, "at": "t", "actor": "dr a", "action": "review", "series_uid": "1.2", "nodule_id": "",
               "detail": "prediction 1: agree (review 1)"}
        raw.execute("INSERT INTO audit(audit_id, at, actor, action, series_uid, nodule_id, detail, prev_hash, hash) "
                    "VALUES (1, 't', 'dr a', 'review', '1.2', '', ?, ?, ?)",
                    (row["detail"], audit.GENESIS, audit.row_hash(audit.GENESIS, row)))
    with closing(store.connect(path, create=False)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "2"
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY audit_id")]
        assert actions == ["review", "seal"]  # the old row still verifies; the review is sealed as found
        audit.update_anchor(conn)
    assert _check(path).status == "intact"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsuite", "audit", *args], capture_output=True, text=True,
                          env=env(), timeout=120)


def test_audit_verify_command_exit_codes(db, tmp_path):
    ok = _cli("verify", "--db", str(db))
    assert ok.returncode == 0 and "Hash chain intact" in ok.stdout, ok.stdout + ok.stderr
    copy = tmp_path / "copy" / "medsuite.db"
    copy.parent.mkdir()
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    res = _cli("verify", "--db", str(copy))  # no anchor beside the copy: consistent, not vouched for
    assert res.returncode == 2 and "NOT anchored" in res.stdout, res.stdout
    res = _cli("verify", "--db", str(copy), "--anchor", str(db.parent / "medsuite.db.anchor.json"))
    assert res.returncode == 0, res.stdout  # checked against the original's anchor
    with closing(_attacker(copy)) as raw:
        raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
    res = _cli("verify", "--db", str(copy))
    assert res.returncode == 1 and "problem: review 2" in res.stdout, res.stdout
    assert _cli("anchor", "--db", str(copy)).returncode == 1  # never vouches for a tampered trail
    res = _cli("verify", "--db", str(tmp_path / "missing.db"))
    assert res.returncode == 3 and "not found" in res.stderr and "Traceback" not in res.stderr
    res = _cli("verify", "--db", str(db), "--anchor", str(tmp_path / "nope.json"))
    assert res.returncode == 3 and "anchor file not found" in res.stderr


def test_audit_init_with_a_new_key_then_verify(db, tmp_path):
    key = tmp_path / "keys" / "audit.key"
    elsewhere = tmp_path / "anchors" / "head.json"
    res = _cli("init", "--db", str(db), "--anchor", str(elsewhere), "--key", str(key), "--new-key")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "hmac" in json.loads(elsewhere.read_text())
    with closing(store.connect(db, create=False)) as conn:
        reviews.add_review(conn, 5, reviewer="dr c", verdict="agree")  # the writer now signs the new anchor
    assert json.loads(elsewhere.read_text())["audit_id"] == 6
    res = _cli("verify", "--db", str(db), "--anchor", str(elsewhere), "--key", str(key))
    assert res.returncode == 0 and "signed anchor" in res.stdout, res.stdout
    assert "does not trust" not in res.stdout
    assert _cli("init", "--db", str(db), "--key", str(key), "--new-key").returncode == 3  # never overwrites a key
    assert Path(key).read_text().strip() and len(Path(key).read_text().strip()) == 64


def test_a_new_database_is_anchored_empty_and_a_wiped_one_is_not_intact(tmp_path):
    path = tmp_path / "fresh.db"
    store.connect(path).close()
    assert json.loads((tmp_path / "fresh.db.anchor.json").read_text())["audit_id"] == 0
    assert _check(path).status == "intact"
    with closing(store.connect(path)) as conn:
        reviews.append_audit(conn, "dr a", "login")
    with closing(_attacker(path)) as raw:
        raw.execute("DELETE FROM audit")
    assert _check(path).status == "tampered"  # the anchor remembers the row
    (tmp_path / "fresh.db.anchor.json").unlink()
    assert _check(path).status == "unanchored"  # without it, an empty trail is not vouched for


# ------------------------------------------------------------------ attacks on the anchor's bookkeeping itself
def _append_forged_review(raw: sqlite3.Connection, prediction_id: int) -> None:
    """A review plus a perfectly chained audit row for it, appended with medsuite's own code (no key needed)."""
    raw.row_factory = sqlite3.Row
    cur = raw.execute("INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, created_at) "
                      "SELECT prediction_id, series_uid, nodule_id, 'dr forger', 'agree', 't' FROM predictions "
                      "WHERE prediction_id = ?", (prediction_id,))
    rid = int(cur.lastrowid)
    audit.append_row(raw, "dr forger", "review", None, None, f"review {rid}", "t", review_id=rid,
                     record_sha256=audit.review_record(raw, rid))


@pytest.mark.parametrize("signed", [False, True])
def test_a_later_write_never_vouches_for_rows_it_did_not_write(db, tmp_path, signed):
    """A forged, correctly chained review appended after the anchor stays 'not vouched for' after the viewer's
    next (legitimate) write: the anchor moves only over the rows its writer appended."""
    if signed:
        assert _cli("init", "--db", str(db), "--key", str(tmp_path / "k.key"), "--new-key").returncode == 0
    with closing(_attacker(db)) as raw:
        _append_forged_review(raw, 4)
    with closing(store.connect(db, create=False)) as conn:
        reviews.add_review(conn, 5, reviewer="dr a", verdict="agree")  # a legitimate write afterwards
    report = _check(db)
    assert report.status == "unanchored" and report.anchored_id == 5, report
    assert any("after the anchored row 5" in n for n in report.notes), report.notes
    assert _cli("verify", "--db", str(db)).returncode == 2


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("how", ["deleted", "garbled"])
def test_a_removed_or_garbled_anchor_is_not_rebuilt_over_a_rewritten_chain(db, tmp_path, signed, how):
    """Before: deleting (or garbling) the anchor, then any legitimate write, gave a fresh anchor - signed with
    the real key - over the attacker's recomputed chain, and 'intact'."""
    if signed:
        assert _cli("init", "--db", str(db), "--key", str(tmp_path / "k.key"), "--new-key").returncode == 0
    anchor_file = db.parent / "medsuite.db.anchor.json"
    with closing(_attacker(db)) as raw:
        raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
        _recompute_chain(raw)
    if how == "deleted":
        anchor_file.unlink()
    else:
        anchor_file.write_text("{}")
    with closing(store.connect(db, create=False)) as conn:
        reviews.append_audit(conn, "dr a", "login")
    assert (not anchor_file.exists()) if how == "deleted" else anchor_file.read_text() == "{}"
    report = _check(db)
    assert report.status == ("unanchored" if how == "deleted" and not signed else "tampered"), report
    assert _cli("anchor", "--db", str(db)).returncode == (0 if report.status == "unanchored" else 1)


@pytest.mark.parametrize("signed", [False, True])
def test_a_database_made_to_look_like_version_1_does_not_seal_a_forged_review(db, tmp_path, signed):
    """Before: 'UPDATE meta SET schema_version=1' plus a forged review; the next open sealed the review 'as found'
    and moved the (signed) anchor over it: intact."""
    if signed:
        assert _cli("init", "--db", str(db), "--key", str(tmp_path / "k.key"), "--new-key").returncode == 0
    with closing(_attacker(db)) as raw:
        raw.execute("INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, created_at) "
                    "VALUES (4, '1.2.3.3', 'n3', 'dr x', 'agree', 't')")
        raw.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    res = _cli("verify", "--db", str(db))  # read-only: looking does not upgrade (or seal) anything
    assert res.returncode == 1 and "version was changed" in res.stdout and "review 4" in res.stdout, res.stdout
    with closing(store.connect(db, create=False)) as conn:  # the viewer opens it
        assert conn.execute("SELECT COUNT(*) FROM audit WHERE action='seal'").fetchone()[0] == 0
    report = _check(db)
    assert report.status == "tampered" and any("review 4" in p and "no audit row" in p for p in report.problems)


def test_a_seal_row_after_recorded_reviews_is_tampering(db):
    """Even a chain recomputed with a 'seal' row for the forged review (and the anchor deleted) is refused."""
    with closing(_attacker(db)) as raw:
        raw.row_factory = sqlite3.Row
        cur = raw.execute("INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, created_at) "
                          "VALUES (4, '1.2.3.3', 'n3', 'dr x', 'agree', 't')")
        audit.seal_unrecorded_reviews(raw, "medsuite upgrade", "t")
        assert cur.lastrowid == 4
    (db.parent / "medsuite.db.anchor.json").unlink()
    report = _check(db)
    assert report.status == "tampered"
    assert any("seals review 4" in p for p in report.problems), report.problems


@pytest.mark.parametrize("signed", [False, True])
def test_a_removed_database_id_with_a_recomputed_chain_is_detected(db, tmp_path, signed):
    """Before: deleting meta.db_id made the next open give the database a new id and re-anchor (and re-sign)
    the recomputed chain."""
    if signed:
        assert _cli("init", "--db", str(db), "--key", str(tmp_path / "k.key"), "--new-key").returncode == 0
    with closing(_attacker(db)) as raw:
        raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
        _recompute_chain(raw)
        raw.execute("DELETE FROM meta WHERE key='db_id'")
    res = _cli("verify", "--db", str(db))
    assert res.returncode == 1 and "id was removed" in res.stdout, res.stdout
    with closing(store.connect(db, create=False)) as conn:  # the viewer opens it: a new id, the anchor stays
        reviews.append_audit(conn, "dr a", "login")
    report = _check(db)
    assert report.status == "tampered" and any("another database" in p for p in report.problems), report.problems


def test_verify_changes_nothing(db):
    with closing(_attacker(db)) as raw:
        raw.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
        raw.execute("DELETE FROM meta WHERE key='db_id'")
    files = {p.name: p.read_bytes() for p in db.parent.iterdir() if p.is_file()}
    assert _cli("verify", "--db", str(db)).returncode == 1
    assert {p.name: p.read_bytes() for p in db.parent.iterdir() if p.is_file()} == files


def test_a_killed_writers_rows_stay_unanchored_until_audit_anchor(db):
    with closing(store.connect(db, create=False)) as conn:  # committed, then killed before anchoring
        conn.execute("BEGIN IMMEDIATE")
        audit.append_row(conn, "dr a", "open", None, None, "", reviews.now())
        conn.execute("COMMIT")
        reviews.append_audit(conn, "dr b", "login")  # a later write does not vouch for row 6
    assert _check(db).status == "unanchored"
    res = _cli("anchor", "--db", str(db))
    assert res.returncode == 0 and "anchored audit row 7" in res.stdout, res.stdout
    assert _check(db).status == "intact"


def test_a_rollback_together_with_its_old_anchor_is_not_detected(db, tmp_path):
    """A documented limit (docs/guarantees.md section 4): an older database and the anchor of that time agree."""
    old = tmp_path / "old"
    old.mkdir()
    for name in ("medsuite.db", "medsuite.db.anchor.json"):
        (old / name).write_bytes((db.parent / name).read_bytes())
    with closing(store.connect(db, create=False)) as conn:
        reviews.add_review(conn, 5, reviewer="dr a", verdict="disagree")
    for name in ("medsuite.db", "medsuite.db.anchor.json"):
        (db.parent / name).write_bytes((old / name).read_bytes())
    for extra in ("medsuite.db-wal", "medsuite.db-shm"):
        (db.parent / extra).unlink(missing_ok=True)
    assert _check(db).status == "intact"  # not detectable from these two files: keep anchors' history elsewhere


# ------------------------------------------------------------------ what the viewer's audit page shows
def _audit_page(db, tmp_path, monkeypatch):
    """The viewer's "Audit trail" page rendered (streamlit.testing) on ``db``."""
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    import medsuite.viewer

    st_config.set_option("server.address", "127.0.0.1")
    monkeypatch.setattr(sys, "argv", ["app.py", "--db", str(db), "--cache", str(tmp_path / "cache")])
    at = AppTest.from_file(str(Path(medsuite.viewer.__file__).resolve().parent / "app.py"), default_timeout=120)
    at.run()
    at.radio(key="page").set_value("Audit trail").run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("attack", ["update", "insert", "recomputed", "cut"])
def test_the_viewer_shows_each_attack_as_not_intact(db, tmp_path, monkeypatch, attack):
    """Before: after DROP TRIGGER + UPDATE the worklist showed the forged verdict and the page said 'Hash chain
    intact'. Now the page shows the same verdict as `medsuite audit verify` (an error, never a success)."""
    with closing(_attacker(db)) as raw:
        if attack == "update":
            raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
        elif attack == "insert":
            raw.execute("INSERT INTO reviews(prediction_id, series_uid, nodule_id, reviewer, verdict, created_at) "
                        "VALUES (4, '1.2.3.3', 'n3', 'dr a', 'agree', '2025-01-02T00:00:00.000+00:00')")
        elif attack == "recomputed":
            raw.execute("UPDATE reviews SET verdict='agree' WHERE review_id=2")
            _recompute_chain(raw)
        else:
            raw.execute("DELETE FROM audit WHERE audit_id=5")
            raw.execute("DELETE FROM reviews WHERE review_id=3")
    res = _cli("verify", "--db", str(db))
    assert res.returncode == 1, res.stdout + res.stderr
    at = _audit_page(db, tmp_path, monkeypatch)
    assert not at.success, [s.value for s in at.success]
    assert at.error and at.error[0].value.startswith("The audit trail was altered"), [e.value for e in at.error]


def test_the_viewer_shows_an_untouched_trail_as_intact(db, tmp_path, monkeypatch):
    at = _audit_page(db, tmp_path, monkeypatch)
    assert at.success and at.success[0].value.startswith("Hash chain intact") and not at.error
