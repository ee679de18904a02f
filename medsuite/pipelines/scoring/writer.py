"""Where results go: SQLite rows (one transaction per series) and the Parquet/CSV exports made from them.

The database is the source of truth; ``scores.parquet`` and ``scores.csv`` are rewritten from it
atomically (`medsuite.io.atomic`: temp file, then ``os.replace``), so a reader never sees a half-written file
and an export killed half-way leaves nothing that the next one does not remove.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medsuite.io.atomic import atomic_path
from medsuite.io.phi import Pseudonymizer
from medsuite.io.sitk_io import is_image_file
from medsuite.pipelines.scoring.stages import SeriesResult
from medsuite.records import store

OUTPUT_COLUMNS = [
    "run_id", "bundle_name", "bundle_sha256", "series_uid", "nodule_id", "x_mm", "y_mm", "z_mm",
    "probability", "label", "threshold", "scored_at",
]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _meta(row: dict[str, Any], key: str) -> Any:
    value = row.get(key)
    try:
        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):  # lists are not NA
        return value


def _source(row: dict[str, Any]) -> str | None:
    """Where the series' files are, as an absolute path with no ``..`` or symlink left (the viewer opens it
    from whatever folder it was started in); this runs on the driver, whose paths the discovery listed."""
    files = row.get("files")
    if files is None or len(files) == 0:
        path = _meta(row, "path")
        return None if path is None else str(Path(str(path)).resolve())
    if len(files) == 1 and is_image_file(str(files[0])):
        return str(Path(str(files[0])).resolve())  # an image file (.mhd, .nrrd, .nii.gz) is the whole series
    where = Path(os.path.commonpath([str(f) for f in files])) if len(files) > 1 else Path(str(files[0])).parent
    return str(where.resolve())


class ScoreStore:
    """The scoring database for one run: open, record, commit, export.

    With a `Pseudonymizer` (`use_pseudonyms`; the default of `medsuite score`), a series' location is
    stored sealed (only the key's holder, e.g. the viewer, can open it) and an error's source as a path
    pseudonym, so the database holds no folder or file name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.conn: sqlite3.Connection = store.connect(self.path)
        self.pz: Pseudonymizer | None = None

    def use_pseudonyms(self, pz: Pseudonymizer | None) -> None:
        """Seal locations and pseudonymise error sources from now on (None: store them as they are)."""
        self.pz = pz

    def _location(self, row: dict[str, Any]) -> str | None:
        source = _source(row)
        return self.pz.seal(source) if self.pz is not None else source

    def _error_source(self, row: dict[str, Any]) -> str | None:
        source = _source(row)
        return self.pz.path(source) if self.pz is not None else source

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- runs
    def start_run(self, run_id: str, *, bundle_name: str, bundle_sha256: str, bundle_path: str, task: str,
                  engine: str, args: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            # a run still 'running' in this database was killed: the caller holds the database lock
            self.conn.execute("UPDATE runs SET status='failed', finished_at=? WHERE status='running'", (now(),))
            self.conn.execute(
                "INSERT INTO runs(run_id, started_at, bundle_name, bundle_sha256, bundle_path, task, engine, args_json)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, now(), bundle_name, bundle_sha256, bundle_path, task, engine, json.dumps(args, sort_keys=True)),
            )

    def finish_run(self, run_id: str, *, status: str, counts: dict[str, int]) -> None:
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute(
                "UPDATE runs SET finished_at=?, status=?, n_series=?, n_scored=?, n_skipped=?, n_errors=? WHERE run_id=?",
                (now(), status, counts.get("series", 0), counts.get("scored", 0), counts.get("skipped", 0),
                 counts.get("errors", 0), run_id),
            )

    def scored_series(self, bundle_sha256: str) -> set[str]:
        """Series already scored by a bundle with this sha256, in any earlier run of this database."""
        rows = self.conn.execute(
            "SELECT DISTINCT s.series_uid FROM series s JOIN runs r ON r.run_id = s.run_id"
            " WHERE r.bundle_sha256 = ? AND s.status = 'scored'",
            (bundle_sha256,),
        )
        return {r[0] for r in rows}

    # -------------------------------------------------------------- series
    def _series_row(self, run_id: str, uid: str, row: dict[str, Any], status: str, reason: str | None,
                    n_slices: int | None = None, spacing: tuple[float, float, float] | None = None) -> tuple:
        sz, sy, sx = spacing if spacing else (_meta(row, "spacing_z"), _meta(row, "spacing_y"), _meta(row, "spacing_x"))
        return (
            run_id, uid, _meta(row, "study_uid"), _meta(row, "modality"), _meta(row, "description"),
            n_slices if n_slices is not None else _meta(row, "n_instances"), sz, sy, sx,
            _meta(row, "orientation"), self._location(row), status, reason,
        )

    _SERIES_SQL = (
        "INSERT OR REPLACE INTO series(run_id, series_uid, study_uid, modality, description, n_slices,"
        " spacing_z, spacing_y, spacing_x, orientation, source, status, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )

    def record_unscored(self, run_id: str, entries: Iterable[tuple[str, dict[str, Any], str, str]],
                        *, error_stage: str = "discover") -> None:
        """Series that will not be scored: ``(uid, row, 'skipped'|'error', reason)``, in one transaction."""
        with self.conn:
            self.conn.execute("BEGIN")
            for uid, row, status, reason in entries:
                self.conn.execute(self._SERIES_SQL, self._series_row(run_id, uid, row, status, reason))
                if status == "error":
                    self.conn.execute(
                        "INSERT INTO errors(run_id, series_uid, source, stage, error, created_at) VALUES (?,?,?,?,?,?)",
                        (run_id, uid, self._error_source(row), error_stage, reason, now()),
                    )

    def commit_series(self, run_id: str, bundle_sha256: str, threshold: float, result: SeriesResult,
                      row: dict[str, Any], *, scrub: Any = None) -> None:
        """One series, all-or-nothing: its series row, every prediction and every error in one transaction."""
        clean = scrub or (lambda text: text)
        reason = None
        if result.errors:
            reason = clean(result.errors[0][1]) + (f" (+{len(result.errors) - 1} more)" if len(result.errors) > 1 else "")
        elif _unread_neighbours(row):  # scored, but files beside it could not be read: it may lack slices
            reason = clean(f"scored, but it may lack slices: {row.get('problems')}")
        created = now()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(
                self._SERIES_SQL,
                self._series_row(run_id, result.series_uid, row, result.status, reason, result.n_slices, result.spacing),
            )
            for p in result.predictions:
                self.conn.execute(
                    "INSERT INTO predictions(run_id, bundle_sha256, series_uid, nodule_id, x_mm, y_mm, z_mm,"
                    " diameter_mm, probability, label, threshold, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(bundle_sha256, series_uid, nodule_id) DO NOTHING",
                    (run_id, bundle_sha256, result.series_uid, p["nodule_id"], p["x_mm"], p["y_mm"], p["z_mm"],
                     p["diameter_mm"], p["probability"], p["label"], threshold, created),
                )
            for stage, error in result.errors:
                self.conn.execute(
                    "INSERT INTO errors(run_id, series_uid, source, stage, error, created_at) VALUES (?,?,?,?,?,?)",
                    (run_id, result.series_uid, self._error_source(row), stage, clean(error), created),
                )

    # -------------------------------------------------------------- export
    def predictions_frame(self, patient_ids: dict[str, str] | None = None) -> pd.DataFrame:
        """Every prediction in the database as the output table (``patient_id`` only when a map is given)."""
        df = pd.read_sql_query(
            "SELECT p.run_id, r.bundle_name, p.bundle_sha256, p.series_uid, p.nodule_id, p.x_mm, p.y_mm, p.z_mm,"
            " p.probability, p.label, p.threshold, p.created_at AS scored_at"
            " FROM predictions p JOIN runs r ON r.run_id = p.run_id"
            " ORDER BY p.bundle_sha256, p.series_uid, p.nodule_id",
            self.conn,
        )
        df = df.astype({"x_mm": "float64", "y_mm": "float64", "z_mm": "float64", "probability": "float64",
                        "threshold": "float64"})
        if patient_ids is not None:
            df.insert(4, "patient_id", df["series_uid"].map(patient_ids).fillna(""))
        return df

    def export(self, out_dir: str | Path, patient_ids: dict[str, str] | None = None) -> tuple[Path, Path]:
        """Rewrite ``scores.parquet`` and ``scores.csv`` from the database, each atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        df = self.predictions_frame(patient_ids)
        parquet = _atomic(out_dir / "scores.parquet", lambda p: df.to_parquet(p, index=False))
        csv = _atomic(out_dir / "scores.csv", lambda p: df.to_csv(p, index=False))
        return parquet, csv

    def counts(self, run_id: str) -> dict[str, int]:
        rows = self.conn.execute("SELECT status, COUNT(*) FROM series WHERE run_id=? GROUP BY status", (run_id,))
        counts = {r[0]: r[1] for r in rows}
        n_err = self.conn.execute("SELECT COUNT(*) FROM errors WHERE run_id=?", (run_id,)).fetchone()[0]
        n_pred = self.conn.execute("SELECT COUNT(*) FROM predictions WHERE run_id=?", (run_id,)).fetchone()[0]
        return {"scored": counts.get("scored", 0), "skipped": counts.get("skipped", 0),
                "error_series": counts.get("error", 0), "errors": n_err, "predictions": n_pred}


def _atomic(target: Path, write: Any) -> Path:
    """``write(temp path)`` then rename onto ``target`` (`medsuite.io.atomic`: a killed writer's temporary
    is removed by the next export)."""
    with atomic_path(target) as tmp:
        write(tmp)
    return target


def _unread_neighbours(row: Any) -> int:
    """How many files beside a scan row's stack could not be read (0 for rows that are not scan rows)."""
    if not isinstance(row, dict) or "codes" not in row:
        return 0
    from medsuite.io.dicom import unread_neighbours

    return unread_neighbours(row)
