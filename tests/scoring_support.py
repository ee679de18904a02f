"""Tiny generated cohorts and bundles for the scoring tests (imported by tests/test_scoring_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PATIENT_PREFIX = "PHIPAT"          # every generated PatientID starts with this; must never leak
PATIENT_NAME = "Zzyzx^Quintavius"  # the generated PatientName; must never leak
SHAPE = (12, 24, 24)
SPACING = (2.0, 1.0, 1.0)


def make_volume(seed: int, *, modality: str = "CT"):
    """A small CT volume (HU) with a bright sphere; origin differs per seed."""
    from medsuite.io.volume import Volume

    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    array = -800.0 + 30.0 * rng.standard_normal(SHAPE)
    r = ((z - 6) * 2.0) ** 2 + (y - 12.0) ** 2 + (x - 12.0) ** 2
    array[r < 25] = 40.0 + 10 * seed
    return Volume(array.astype(np.int16), SPACING, origin=(-12.0 + seed, -12.0, -100.0 - seed), modality=modality)


def write(volume, folder: Path, patient: str, **tags) -> tuple[str, list[Path]]:
    """Write a series; returns (series_uid, files)."""
    from pydicom import dcmread

    from medsuite.io.dicom_write import write_series

    files = write_series(volume, folder, patient_id=patient, PatientName=PATIENT_NAME, **tags)
    return str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID), files


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])


def corrupt_rle(path: Path) -> None:
    """Damage the first RLE fragment's header (its first segment offset) of a compressed file: the file keeps its
    structure (so the header scan passes) but cannot be decoded."""
    data = bytearray(path.read_bytes())
    pixel = data.rindex(b"\xe0\x7f\x10\x00")
    items = [k for k in range(pixel, len(data) - 4) if data[k : k + 4] == b"\xfe\xff\x00\xe0"]
    fragment = items[1] + 8  # items[0] is the basic offset table
    data[fragment + 4 : fragment + 8] = (0x7FFFFFF0).to_bytes(4, "little")  # first segment offset past the end
    path.write_bytes(bytes(data))


def write_sr(path: Path, patient: str) -> None:
    """A Basic Text SR instance (not an image) in the cohort folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.Modality = patient, PATIENT_NAME, "SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_cohort(root: Path, n_good: int = 3, *, extras: bool = True) -> dict:
    """Good series, plus (with ``extras``) a truncated one (found by the scan), a truncated RLE one (found
    when read), a localizer, an SR and a text file.

    Returns {'good': [uids], 'corrupt': uid, 'corrupt_read': uid, 'localizer': uid, 'centers': {uid: (x, y, z)}}.
    """
    out: dict = {"good": [], "centers": {}}
    for i in range(n_good):
        vol = make_volume(i)
        uid, _ = write(vol, root / f"case{i:03d}", f"{PATIENT_PREFIX}{i:03d}", SeriesDescription="chest")
        out["good"].append(uid)
        out["centers"][uid] = tuple(vol.index_to_world((6.0, 12.0, 12.0)))
    if extras:
        uid, files = write(make_volume(90), root / "corrupt", f"{PATIENT_PREFIX}090")
        truncate(files[5])
        out["corrupt"] = uid
        from pydicom.uid import RLELossless

        # the folder is named after the patient, as many exports are: error messages must not repeat it
        uid, files = write(make_volume(93), root / f"rle_{PATIENT_PREFIX}093", f"{PATIENT_PREFIX}093",
                           transfer_syntax=RLELossless)
        corrupt_rle(files[4])  # passes the header scan (compressed), fails when decoded
        out["corrupt_read"] = uid
        loc = make_volume(91)
        uid, _ = write(loc, root / "scout", f"{PATIENT_PREFIX}091", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
        out["localizer"] = uid
        write_sr(root / "report" / "sr.dcm", f"{PATIENT_PREFIX}092")
        (root / "notes.txt").write_text("not a dicom file\n")
    return out


def nodule_table(cohort: dict, *, outside: bool = True) -> pd.DataFrame:
    """Two nodules per good series (at the sphere and near it), one outside the first scan, and one in each
    corrupt or localizer series of the cohort."""
    rows = []
    for i, uid in enumerate(cohort["good"]):
        x, y, z = cohort["centers"][uid]
        pid = f"{PATIENT_PREFIX}{i:03d}"
        rows.append({"series_uid": uid, "patient_id": pid, "x_mm": x, "y_mm": y, "z_mm": z, "diameter_mm": 8.0,
                     "label": 1, "nodule_id": f"n{i}a"})
        rows.append({"series_uid": uid, "patient_id": pid, "x_mm": x + 5, "y_mm": y - 4, "z_mm": z + 2,
                     "diameter_mm": 4.0, "label": 0, "nodule_id": f"n{i}b"})
    if outside:
        uid = cohort["good"][0]
        rows.append({"series_uid": uid, "patient_id": f"{PATIENT_PREFIX}000", "x_mm": 500.0, "y_mm": 0.0,
                     "z_mm": 0.0, "diameter_mm": 5.0, "label": 0, "nodule_id": "far"})
    for i, key in enumerate(k for k in ("corrupt", "corrupt_read", "localizer") if k in cohort):
        rows.append({"series_uid": cohort[key], "patient_id": f"{PATIENT_PREFIX}09{i}", "x_mm": 0.0, "y_mm": 0.0,
                     "z_mm": -90.0, "diameter_mm": 5.0, "label": 0, "nodule_id": f"x{i}"})
    return pd.DataFrame(rows)


def make_bundle(path: Path, task: str, *, seed: int = 0, extra_meta: dict | None = None) -> Path:
    """Export a tiny untrained bundle (SliceStack 3 x 16 x 16, slice_cnn) for ``task`` 'nodule'|'series'."""
    import torch

    from medsuite.data.blocks import SliceStack
    from medsuite.learn.bundle import export_bundle
    from medsuite.learn.models import build_model

    torch.manual_seed(seed)
    block = SliceStack(k=3, size=16, spacing_mm=2.0, pixel_mm=1.0, window="lung")
    arch_kwargs = {"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2}
    model = build_model("slice_cnn", **arch_kwargs)
    return export_bundle(path, model, arch="slice_cnn", arch_kwargs=arch_kwargs, block_spec=block.spec(),
                         labels=["benign", "malignant"], threshold=0.5, task=task, extra_meta=extra_meta)


def fake_prepare(item, block_spec_json, read_options):
    """A stand-in for `stages.prepare` (runs in worker processes): 'crash*' kills its worker, 'bad*' fails."""
    import os

    from medsuite.pipelines.scoring.stages import Prepared

    if item.series_uid.startswith("crash"):
        os._exit(9)  # what a decoder segfault or the OOM killer does to a worker
    if item.series_uid.startswith("bad"):
        return Prepared(item.series_uid, error=("read", f"{item.files[0]}: truncated"))
    value = float(item.series_uid.split("-", 1)[1])
    return Prepared(item.series_uid, samples=np.full((1, 3, 4, 4), value, np.float32), keys=[None], n_slices=4)


def scored_count(db: Path) -> int:
    """Series marked scored in a scoring database, read-only (0 before its tables exist or while it is locked)."""
    import sqlite3

    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM series WHERE status='scored'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
