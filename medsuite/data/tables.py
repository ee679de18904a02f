"""The nodule table and series-label table contracts shared by adapters, data blocks, pipelines and scoring."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

NODULE_REQUIRED = ("series_uid", "patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm", "label")
NODULE_OPTIONAL = ("nodule_id", "malignancy", "n_readers", "split")
SERIES_LABEL_REQUIRED = ("series_uid", "patient_id", "label")


class TableError(ValueError):
    """A table that does not follow its contract; the message names the file and the column."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet table, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: table file not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"series_uid": str, "patient_id": str})
    except Exception as exc:  # pandas raises many types for a bad file
        raise TableError(f"{path}: cannot read table ({exc})") from exc
    df.attrs["source"] = str(path)
    return df


def _check(df: pd.DataFrame, required: tuple[str, ...], kind: str) -> None:
    source = df.attrs.get("source", f"{kind} table")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(f"{source}: missing column(s) {missing}; a {kind} table needs {list(required)}")
    if len(df) == 0:
        raise TableError(f"{source}: the {kind} table is empty")
    nulls = [c for c in required if df[c].isna().any()]
    if nulls:
        rows = df.index[df[nulls[0]].isna()].tolist()[:5]
        raise TableError(f"{source}: empty values in column {nulls[0]!r} (rows {rows})")


def _check_frame(df: pd.DataFrame) -> None:
    """A table that says where its x/y come from (``xy_frame``, the LIDC adapter) must say world (LPS)."""
    if "xy_frame" not in df.columns:
        return
    bad = df["xy_frame"].astype(str).str.strip() != "patient"
    if bad.any():
        source = df.attrs.get("source", "nodule table")
        frames = sorted(set(df.loc[bad, "xy_frame"].astype(str)))
        raise TableError(
            f"{source}: {int(bad.sum())} row(s) (e.g. row {int(df.index[bad][0])}) have xy_frame {frames}: their x/y "
            "are pixel positions in the image, not world coordinates. Convert them with your scans "
            "(datasets/lidc-idri/prepare.py --dicom DIR keeps the nodules of the series you have) or drop those rows")


def validate_nodule_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check the nodule-table contract and return a normalised copy (string ids, float mm, a nodule_id).
    Rows whose ``xy_frame`` (where a table has one) is not ``'patient'`` are refused: pixel x/y are never
    used as world coordinates."""
    _check_frame(df)
    _check(df, NODULE_REQUIRED, "nodule")
    out = df.copy()
    out["series_uid"] = out["series_uid"].astype(str)
    out["patient_id"] = out["patient_id"].astype(str)
    for col in ("x_mm", "y_mm", "z_mm", "diameter_mm"):
        try:
            out[col] = out[col].astype(float)
        except (TypeError, ValueError) as exc:
            raise TableError(f"{df.attrs.get('source', 'nodule table')}: column {col!r} must be numeric ({exc})") from exc
    if "nodule_id" not in out.columns:
        out["nodule_id"] = [f"{uid}#{i}" for i, uid in enumerate(out["series_uid"])]
    out["nodule_id"] = out["nodule_id"].astype(str)
    if out["nodule_id"].duplicated().any():
        dup = out.loc[out["nodule_id"].duplicated(), "nodule_id"].iloc[0]
        raise TableError(f"{df.attrs.get('source', 'nodule table')}: duplicate nodule_id {dup!r}")
    out.attrs = dict(df.attrs)
    return out


def validate_series_table(df: pd.DataFrame) -> pd.DataFrame:
    """Check a series-label table (one row a series: series_uid, patient_id, label, optional path/split)."""
    _check(df, SERIES_LABEL_REQUIRED, "series-label")
    out = df.copy()
    out["series_uid"] = out["series_uid"].astype(str)
    out["patient_id"] = out["patient_id"].astype(str)
    out.attrs = dict(df.attrs)
    return out
