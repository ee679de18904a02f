"""Cost of the tamper-evident audit trail: one review saved (with its content hash, the chain row and the
anchor rewritten, fsync included) and one full `verify_records`, on a scoring database of N reviews.

    python bench/bench_audit.py --reviews 2000
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

from medsuite.records import audit, reviews, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "medsuite.db"
        with closing(store.connect(db)) as conn:
            conn.execute("INSERT INTO runs(run_id, started_at, bundle_name, bundle_sha256, task, engine) "
                         "VALUES ('r', 't', 'm', 'sha', 'nodule', 'local')")
            for i in range(5):
                conn.execute("INSERT INTO predictions(run_id, bundle_sha256, series_uid, nodule_id, probability, label, "
                             "threshold, created_at) VALUES ('r', 'sha', ?, ?, 0.5, 'benign', 0.5, 't')", (f"1.2.{i}", f"n{i}"))
            times = []
            for i in range(args.reviews):
                t = time.perf_counter()
                reviews.add_review(conn, 1 + i % 5, reviewer="dr", verdict=reviews.VERDICTS[i % 3])
                times.append(time.perf_counter() - t)
            verify = []
            for _ in range(3):
                t = time.perf_counter()
                report = audit.verify_records(conn)
                verify.append(time.perf_counter() - t)
        assert report.status == "intact", report.summary
        with closing(sqlite3.connect(db)) as raw:
            raw.execute("DROP TRIGGER reviews_no_update")
            raw.execute("UPDATE reviews SET verdict='disagree' WHERE review_id=7")  # was 'agree'
            raw.commit()
        with closing(store.connect(db, create=False)) as conn:
            assert audit.verify_records(conn).status == "tampered"
    times.sort()
    print(f"add_review: median {statistics.median(times) * 1e3:.1f} ms, p95 {times[int(0.95 * len(times))] * 1e3:.1f} ms "
          f"({args.reviews} reviews)")
    print(f"verify_records over {report.n_rows} audit rows: median {statistics.median(verify):.2f} s")


if __name__ == "__main__":
    main()
