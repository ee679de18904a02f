"""Case leases: "next unreviewed" gives concurrent reviewers different cases, in worklist order, and frees
them when the reviewer moves on or the lease expires."""

from __future__ import annotations

import threading
from contextlib import closing

import pytest
import viewer_support as V

from medsuite.records import leases, reviews, store


@pytest.fixture
def db(tmp_path):
    return V.make_plain_db(tmp_path / "medsuite.db", n=5)  # probabilities 0.1 .. 0.9, ids 1..5


def _conn(db):
    return store.connect(db, create=False)


def test_two_reviewers_get_different_cases_in_order(db):
    with closing(_conn(db)) as conn:
        order = list(reviews.worklist(conn)["prediction_id"])  # highest score first
        a1 = leases.claim_next(conn, "user:ann", "ann")
        b1 = leases.claim_next(conn, "user:ben", "ben")
        assert (a1, b1) == (order[0], order[1])
        # ann moves on without reviewing: the next one after hers that ben does not hold; hers is freed
        a2 = leases.claim_next(conn, "user:ann", "ann", after=a1)
        assert a2 == order[2]
        held = leases.active(conn).set_index("prediction_id")["reviewer"].to_dict()
        assert held == {b1: "ben", a2: "ann"}
        # no bouncing back to the top: from the last case she wraps around to the first free one
        reviews.add_review(conn, order[0], reviewer="cy", verdict="agree")
        a3 = leases.claim_next(conn, "user:ann", "ann", after=order[-1])
        assert a3 == order[2]  # order[0] reviewed, order[1] held by ben, order[2] is hers again
        # claiming a case someone holds returns their lease; a free one is taken
        other = leases.claim(conn, b1, "user:ann", "ann")
        assert other is not None and other.reviewer == "ben"
        assert leases.claim(conn, order[3], "user:ann", "ann") is None
        leases.release(conn, "user:ben")
        assert leases.claim(conn, b1, "user:ann", "ann") is None


def test_expired_lease_is_free_and_none_left(db):
    with closing(_conn(db)) as conn:
        first = leases.claim_next(conn, "s1", "ann", minutes=-1)  # already expired
        assert leases.claim_next(conn, "s2", "ben") == first
        for pid in reviews.worklist(conn)["prediction_id"]:
            reviews.add_review(conn, int(pid), reviewer="x", verdict="agree")
        assert leases.claim_next(conn, "s2", "ben", after=first) is None
        assert leases.active(conn).empty  # moving on with nothing left frees the last lease


def test_concurrent_claims_never_share_a_case(db):
    results: list[int | None] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(5)

    def worker(i: int) -> None:
        try:
            with closing(_conn(db)) as conn:
                barrier.wait()
                results.append(leases.claim_next(conn, f"session:{i}", f"r{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [1, 2, 3, 4, 5]  # five reviewers, five different cases


def test_lease_needs_a_holder(db):
    with closing(_conn(db)) as conn, pytest.raises(reviews.ReviewError, match="holder"):
        leases.claim_next(conn, " ", "ann")
