"""The scoring writer: one transaction per series, resume bookkeeping, atomic Parquet/CSV exports."""

from __future__ import annotations

import pandas as pd
import pytest

from medsuite.pipelines.scoring.stages import SeriesResult
from medsuite.pipelines.scoring.writer import OUTPUT_COLUMNS, ScoreStore

ROW = {"study_uid": "1.2", "modality": "CT", "description": "chest", "n_instances": 12, "spacing_z": 2.0,
       "spacing_y": 0.7, "spacing_x": 0.7, "orientation": "axial", "files": ["/d/s1/a.dcm", "/d/s1/b.dcm"]}


def _pred(nodule_id: str, p: float) -> dict:
    return {"nodule_id": nodule_id, "x_mm": 1.0, "y_mm": 2.0, "z_mm": 3.0, "diameter_mm": 6.0,
            "probability": p, "label": "malignant" if p >= 0.5 else "benign"}


@pytest.fixture
def db(tmp_path):
    store = ScoreStore(tmp_path / "medsuite.db")
    store.start_run("r1", bundle_name="tiny", bundle_sha256="abc", bundle_path="/b", task="nodule", engine="local",
                    args={"workers": 1})
    yield store
    store.close()


def test_commit_series_rows_and_export(db, tmp_path):
    result = SeriesResult("1.2.3", predictions=[_pred("n1", 0.9), _pred("n2", 0.1)],
                          errors=[("preprocess", "nodule n3: point outside the scan")], n_slices=12,
                          spacing=(2.0, 0.7, 0.7))
    db.commit_series("r1", "abc", 0.5, result, ROW)
    db.commit_series("r1", "abc", 0.5, SeriesResult("9.9", errors=[("read", "/d/s2/x.dcm: truncated pixel data")]),
                     {"files": ["/d/s2/x.dcm"]})
    series = {r["series_uid"]: dict(r) for r in db.conn.execute("SELECT * FROM series")}
    assert series["1.2.3"]["status"] == "scored" and series["1.2.3"]["source"] == "/d/s1"
    assert "outside the scan" in series["1.2.3"]["reason"]
    assert series["9.9"]["status"] == "error" and "truncated" in series["9.9"]["reason"]
    errors = db.conn.execute("SELECT series_uid, stage, error FROM errors ORDER BY error_id").fetchall()
    assert [(e[0], e[1]) for e in errors] == [("1.2.3", "preprocess"), ("9.9", "read")]
    assert db.scored_series("abc") == {"1.2.3"} and db.scored_series("other") == set()

    parquet, csv = db.export(tmp_path / "out")
    df = pd.read_parquet(parquet)
    assert list(df.columns) == OUTPUT_COLUMNS
    assert df["nodule_id"].tolist() == ["n1", "n2"] and df["label"].tolist() == ["malignant", "benign"]
    assert (df["bundle_name"] == "tiny").all() and (df["threshold"] == 0.5).all()
    pd.testing.assert_frame_equal(pd.read_csv(csv, dtype={"series_uid": str, "nodule_id": str}), df,
                                  check_dtype=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scores.csv", "scores.parquet"]  # no temp files

    with_phi = db.predictions_frame({"1.2.3": "PAT-7"})
    assert with_phi.columns[4] == "patient_id" and set(with_phi["patient_id"]) == {"PAT-7"}


def test_series_is_all_or_nothing(db):
    bad = SeriesResult("5.5", predictions=[_pred("n1", 0.4), {"nodule_id": "n2"}])  # second row is incomplete
    with pytest.raises(KeyError):
        db.commit_series("r1", "abc", 0.5, bad, ROW)
    assert db.conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0
    assert db.conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 0


def test_rerun_never_duplicates_and_marks_killed_runs(db, tmp_path):
    db.commit_series("r1", "abc", 0.5, SeriesResult("7.7", predictions=[_pred("", 0.7)]), ROW)
    again = ScoreStore(tmp_path / "medsuite.db")
    again.start_run("r2", bundle_name="tiny", bundle_sha256="abc", bundle_path="/b", task="series", engine="local",
                    args={})
    assert dict(again.conn.execute("SELECT run_id, status FROM runs").fetchall()) == {"r1": "failed", "r2": "running"}
    again.commit_series("r2", "abc", 0.5, SeriesResult("7.7", predictions=[_pred("", 0.2)]), ROW)
    rows = again.conn.execute("SELECT run_id, probability FROM predictions").fetchall()
    assert [tuple(r) for r in rows] == [("r1", 0.7)]
    again.finish_run("r2", status="finished", counts={"series": 1, "scored": 1})
    assert again.conn.execute("SELECT status, n_scored FROM runs WHERE run_id='r2'").fetchone()[:] == ("finished", 1)
    again.close()


def test_record_unscored(db):
    db.record_unscored("r1", [("s1", ROW, "skipped", "image type LOCALIZER is excluded"),
                              ("s2", ROW, "error", "scan found a problem: mixed sizes")])
    assert db.counts("r1") == {"scored": 0, "skipped": 1, "error_series": 1, "errors": 1, "predictions": 0}
    stage = db.conn.execute("SELECT stage FROM errors").fetchone()[0]
    assert stage == "discover"
