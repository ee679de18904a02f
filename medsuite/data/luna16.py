"""LUNA16 (LIDC-IDRI subset, .mhd/.raw scans) annotations and candidates as nodule tables.

``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm) lists the nodules >= 3 mm accepted
by at least 3 of 4 LIDC readers (label 1). ``candidates.csv`` (seriesuid, coordX..Z, class) lists detection
candidates (class 1 = nodule); candidates carry no size, so a class-1 candidate takes the diameter of the
annotation it falls in and the others ``default_diameter_mm`` (column ``diameter_source`` says which).
Coordinates are world mm in the .mhd frame (ITK, i.e. LPS), so they map onto ``x_mm, y_mm, z_mm``.
Patient ids come from the LIDC database (scans table) when available, else the series uid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medsuite.data.tables import TableError, read_table, validate_nodule_table

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")


def _read(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    df = read_table(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TableError(f"{path}: missing LUNA16 column(s) {missing}; expected {list(columns)}")
    df["seriesuid"] = df["seriesuid"].astype(str)
    return df


def find_mhd(root: str | Path) -> dict[str, Path]:
    """``{series uid: path}`` of every ``<uid>.mhd`` under ``root`` (LUNA16's subset0..9 folders)."""
    root = Path(root)
    if not root.is_dir():
        raise TableError(f"{root}: LUNA16 scan folder not found")
    return {p.stem: p for p in sorted(root.rglob("*.mhd"))}


def _patient_ids(uids: pd.Series, lidc_db: str | Path | None | bool) -> pd.Series:
    if lidc_db is False:
        return uids.copy()
    try:
        from medsuite.data.lidc import LidcDatabase, LidcError

        with LidcDatabase(None if lidc_db is True else lidc_db) as db:
            mapping = db.scans().set_index("series_uid")["patient_id"]
    except (ImportError, LidcError):
        return uids.copy()
    return uids.map(mapping).fillna(uids)


def _check_inside(table: pd.DataFrame, source: str) -> None:
    import SimpleITK as sitk

    for uid, group in table.groupby("series_uid"):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(group["path"].iloc[0]))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise TableError(f"{group['path'].iloc[0]}: cannot read the .mhd header ({exc})") from exc
        size = np.array(reader.GetSize())
        spacing, origin = np.array(reader.GetSpacing()), np.array(reader.GetOrigin())
        direction = np.array(reader.GetDirection()).reshape(3, 3)
        pts = group[["x_mm", "y_mm", "z_mm"]].to_numpy() - origin
        idx = (pts @ direction) / spacing
        bad = ~np.all((idx > -0.5) & (idx < size - 0.5), axis=1)
        if bad.any():
            row = group[bad].iloc[0]
            raise TableError(f"{source}: {uid} point ({row.x_mm:.1f}, {row.y_mm:.1f}, {row.z_mm:.1f}) mm lies "
                             f"outside its scan {group['path'].iloc[0]}")


def _finish(table: pd.DataFrame, scans: str | Path | None, lidc_db: str | Path | None | bool, source: str) -> pd.DataFrame:
    table["patient_id"] = _patient_ids(table["series_uid"], lidc_db)
    if scans is not None:
        paths = find_mhd(scans)
        table["path"] = table["series_uid"].map(lambda u: str(paths[u]) if u in paths else None)
        missing = table.loc[table["path"].isna(), "series_uid"].unique()
        if len(missing):
            raise TableError(f"{source}: {len(missing)} series have no .mhd under {scans} (e.g. {missing[0]})")
        _check_inside(table, source)
    table.attrs["source"] = source
    return validate_nodule_table(table)


def luna16_annotations(path: str | Path, *, scans: str | Path | None = None,
                       lidc_db: str | Path | None | bool = True) -> pd.DataFrame:
    """Nodule table (label 1) from LUNA16's ``annotations.csv``; ``scans`` (optional) is the folder of
    .mhd files: adds ``path`` and checks that every nodule lies inside its scan."""
    df = _read(path, ANNOTATION_COLUMNS)
    table = pd.DataFrame({
        "series_uid": df["seriesuid"], "x_mm": df["coordX"].astype(float), "y_mm": df["coordY"].astype(float),
        "z_mm": df["coordZ"].astype(float), "diameter_mm": df["diameter_mm"].astype(float), "label": 1,
    })
    table["nodule_id"] = [f"{u}#{i}" for i, u in enumerate(table["series_uid"])]
    return _finish(table, scans, lidc_db, str(path))


def luna16_candidates(path: str | Path, *, annotations: str | Path | None = None, scans: str | Path | None = None,
                      default_diameter_mm: float = 6.0, lidc_db: str | Path | None | bool = True) -> pd.DataFrame:
    """Nodule table from ``candidates.csv`` (label = class); diameters from ``annotations`` (class-1
    candidates within an annotated nodule's radius) or ``default_diameter_mm``."""
    if default_diameter_mm <= 0:
        raise ValueError(f"default_diameter_mm must be positive, got {default_diameter_mm}")
    df = _read(path, CANDIDATE_COLUMNS)
    bad = ~df["class"].isin([0, 1])
    if bad.any():
        raise TableError(f"{path}: column 'class' must be 0 or 1 (row {int(df.index[bad][0])})")
    table = pd.DataFrame({
        "series_uid": df["seriesuid"], "x_mm": df["coordX"].astype(float), "y_mm": df["coordY"].astype(float),
        "z_mm": df["coordZ"].astype(float), "diameter_mm": float(default_diameter_mm),
        "label": df["class"].astype(int), "diameter_source": "default",
    })
    if annotations is not None:
        ann = _read(annotations, ANNOTATION_COLUMNS)
        for uid, group in ann.groupby("seriesuid"):
            rows = table.index[(table["series_uid"] == uid) & (table["label"] == 1)]
            if len(rows) == 0:
                continue
            pts = table.loc[rows, ["x_mm", "y_mm", "z_mm"]].to_numpy()
            centres = group[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
            d = np.sqrt(((pts[:, None] - centres[None]) ** 2).sum(-1))
            nearest = d.argmin(axis=1)
            within = d[np.arange(len(rows)), nearest] <= group["diameter_mm"].to_numpy()[nearest] / 2
            table.loc[rows[within], "diameter_mm"] = group["diameter_mm"].to_numpy()[nearest[within]]
            table.loc[rows[within], "diameter_source"] = "annotation"
    table["nodule_id"] = [f"{u}#c{i}" for i, u in enumerate(table["series_uid"])]
    return _finish(table, scans, lidc_db, str(path))
