"""A CSV of series and labels (series classification) → the series-label table.

Columns: the series (default ``path``: a DICOM folder, or one image file .mhd/.mha/.nrrd/.nii(.gz);
relative paths are resolved against the CSV's folder), ``label``, optional ``patient_id``, ``series_uid``,
``split``. Missing UIDs / patient ids are read from the DICOM headers of the folder (which must then hold
exactly one series); an image file without them is named by its file name (uid and patient alike).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medsuite.data.tables import TableError, read_table, validate_series_table


def _header_ids(folder: Path, source: str, row: int) -> tuple[str, str]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    uids: dict[str, str] = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "PatientID"])
        except (InvalidDicomError, OSError):
            continue
        if "SeriesInstanceUID" in ds:
            uids.setdefault(str(ds.SeriesInstanceUID), str(ds.get("PatientID", "")))
    if not uids:
        raise TableError(f"{source}: row {row}: no DICOM series found in {folder}")
    if len(uids) > 1:
        raise TableError(f"{source}: row {row}: {folder} holds {len(uids)} series; add a series_uid column")
    return next(iter(uids.items()))


def read_series_csv(path: str | Path, *, path_column: str = "path", label_column: str = "label",
                    patient_column: str = "patient_id") -> pd.DataFrame:
    """Series-label table from a CSV of series folders; every folder must exist (clear error otherwise)."""
    path = Path(path)
    df = read_table(path)
    source = str(path)
    for col in (path_column, label_column):
        if col not in df.columns:
            raise TableError(f"{source}: missing column {col!r} (columns: {list(df.columns)})")
    out = pd.DataFrame({"path": df[path_column].astype(str), "label": df[label_column]})
    if out["label"].isna().any():
        raise TableError(f"{source}: empty label in row {int(out.index[out['label'].isna()][0])}")
    for extra in ("series_uid", "split"):
        if extra in df.columns:
            out[extra] = df[extra].astype(str)
    if patient_column in df.columns:
        out["patient_id"] = df[patient_column].astype(str)
    from medsuite.io.sitk_io import image_suffix, is_image_file

    folders = []
    for i, p in enumerate(out["path"]):
        folder = Path(p) if Path(p).is_absolute() else path.parent / p
        if not (folder.is_dir() or (folder.is_file() and is_image_file(folder))):
            raise TableError(f"{source}: row {i}: series folder or image file {folder} does not exist")
        folders.append(folder)
    out["path"] = [str(f) for f in folders]
    need_uid = "series_uid" not in out.columns
    need_pid = "patient_id" not in out.columns
    if need_uid or need_pid:
        ids = [(f.name[: -len(image_suffix(f) or "")],) * 2 if f.is_file() else _header_ids(f, source, i)
               for i, f in enumerate(folders)]
        if need_uid:
            out["series_uid"] = [u for u, _ in ids]
        if need_pid:
            out["patient_id"] = [p or u for u, p in ids]
    out.attrs["source"] = source
    table = validate_series_table(out[["series_uid", "patient_id", "label", *[c for c in ("path", "split") if c in out]]])
    dup = table["series_uid"].duplicated()
    if dup.any():
        raise TableError(f"{source}: series {table.loc[dup, 'series_uid'].iloc[0]} is listed twice")
    return table
