"""Reviews, worklist filters and the hash-chained audit trail on the scoring database."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing

import pytest
import viewer_support as V

from medsuite.records import reviews, store


@pytest.fixture
def db(tmp_path):
    return V.make_plain_db(tmp_path / "medsuite.db", n=5)


def _conn(db):
    return store.connect(db, create=False)


def test_review_history_and_status(db):
    with closing(_conn(db)) as conn:
        top = reviews.next_unreviewed(conn)
        assert reviews.prediction(conn, top)["probability"] == pytest.approx(0.9)
        reviews.add_review(conn, top, reviewer="dr a", verdict="agree", note="solid", model_version="1.0")
        reviews.add_review(conn, top, reviewer="dr b", verdict="disagree")
        hist = reviews.review_history(conn, top)
        assert list(hist["verdict"]) == ["agree", "disagree"] and list(hist["reviewer"]) == ["dr a", "dr b"]
        assert hist["bundle_sha256"].tolist() == ["sha", "sha"]  # filled from the prediction when not given
        wl = reviews.worklist(conn)
        assert wl.loc[wl["prediction_id"] == top, "status"].item() == "disagreed"  # the latest review counts
        assert reviews.next_unreviewed(conn) != top
        assert len(reviews.worklist(conn, statuses=["unreviewed"])) == 4
        assert reviews.worklist(conn, statuses=["agreed"]).empty


def test_worklist_filters_and_sorting(db):
    with closing(_conn(db)) as conn:
        wl = reviews.worklist(conn)
        assert list(wl["probability"]) == sorted(wl["probability"], reverse=True)
        asc = reviews.worklist(conn, descending=False)
        assert list(asc["probability"]) == sorted(asc["probability"])
        mid = reviews.worklist(conn, min_score=0.2, max_score=0.6)
        assert sorted(round(p, 2) for p in mid["probability"]) == [0.3, 0.5]
        assert set(reviews.worklist(conn, run_ids=["runB"])["run_id"]) == {"runB"}
        with pytest.raises(reviews.ReviewError, match="unknown review status"):
            reviews.worklist(conn, statuses=["done"])
        with pytest.raises(reviews.ReviewError, match="score range"):
            reviews.worklist(conn, min_score=0.8, max_score=0.2)


def test_bad_reviews_are_refused(db):
    with closing(_conn(db)) as conn:
        with pytest.raises(reviews.ReviewError, match="prediction 999"):
            reviews.add_review(conn, 999, reviewer="a", verdict="agree")
        with pytest.raises(reviews.ReviewError, match="verdict"):
            reviews.add_review(conn, 1, reviewer="a", verdict="maybe")
        with pytest.raises(reviews.ReviewError, match="reviewer"):
            reviews.add_review(conn, 1, reviewer="  ", verdict="agree")
        assert conn.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0  # nothing half-written
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            reviews.add_review(conn, 1, reviewer="a", verdict="agree")
            conn.execute("UPDATE reviews SET verdict='disagree'")


def _tamper_copy(db, tmp_path):
    """A copy of the database with the append-only triggers dropped (what an attacker with file access can do)."""
    copy = tmp_path / "copy.db"
    with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(copy)) as dst:
        src.backup(dst)
    raw = sqlite3.connect(copy, isolation_level=None)
    raw.execute("DROP TRIGGER audit_no_update")
    raw.execute("DROP TRIGGER audit_no_delete")
    return raw


def test_audit_chain_detects_edit_and_delete(db, tmp_path):
    with closing(_conn(db)) as conn:
        reviews.append_audit(conn, "dr a", "login")
        reviews.append_audit(conn, "dr a", "open", series_uid="1.2.3.0", nodule_id="n0")
        reviews.add_review(conn, 1, reviewer="dr a", verdict="agree")
        reviews.append_audit(conn, "dr a", "logout")
        check = reviews.verify_audit(conn)
        assert check.ok and check.n_rows == 4 and check.problems == []
        rows = conn.execute("SELECT action, prev_hash, hash FROM audit ORDER BY audit_id").fetchall()
        assert rows[2]["action"] == "review" and rows[0]["prev_hash"] == reviews.GENESIS
        assert all(rows[i]["prev_hash"] == rows[i - 1]["hash"] for i in range(1, 4))

    edited = _tamper_copy(db, tmp_path)
    edited.execute("UPDATE audit SET actor='dr x' WHERE audit_id=2")
    edited.row_factory = sqlite3.Row
    bad = reviews.verify_audit(edited)
    assert not bad.ok and any("row 2" in p and "edited" in p for p in bad.problems)
    edited.close()

    (tmp_path / "d").mkdir()
    deleted = _tamper_copy(db, tmp_path / "d")
    deleted.execute("DELETE FROM audit WHERE audit_id=2")
    deleted.row_factory = sqlite3.Row
    bad = reviews.verify_audit(deleted)
    assert not bad.ok and any("missing" in p for p in bad.problems)
    deleted.close()


def test_audit_tail_cut_needs_recorded_head(db, tmp_path):
    with closing(_conn(db)) as conn:
        for action in ("login", "open", "logout"):
            reviews.append_audit(conn, "dr a", action)
        head = reviews.verify_audit(conn).head
    cut = _tamper_copy(db, tmp_path)
    cut.execute("DELETE FROM audit WHERE audit_id=3")
    cut.row_factory = sqlite3.Row
    assert reviews.verify_audit(cut).ok  # a clean prefix is still a valid chain ...
    assert not reviews.verify_audit(cut, expected_head=head).ok  # ... but the recorded head is gone
    cut.close()


def test_concurrent_reviewers_lose_nothing(db):
    n_threads, per_thread = 6, 15
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            with closing(store.connect(db, create=False)) as conn:
                for j in range(per_thread):
                    reviews.add_review(conn, 1 + (j % 5), reviewer=f"reviewer{k}", verdict=reviews.VERDICTS[j % 3],
                                       note=f"{k}-{j}")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with closing(_conn(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == n_threads * per_thread
        notes = {r[0] for r in conn.execute("SELECT note FROM reviews")}
        assert len(notes) == n_threads * per_thread
        check = reviews.verify_audit(conn)
        assert check.ok and check.n_rows == n_threads * per_thread
