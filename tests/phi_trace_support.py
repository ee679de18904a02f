"""A tiny cohort carrying distinctive patient markers everywhere a real export carries patient identity: the
PatientName and PatientID in every DICOM header, a folder per patient named after the patient, file names
holding the patient's name, patient ids inside the nodule ids (as the demo's ``DEMO-0001-n1``). Used by the
PHI-trace test, which runs cohort -> train -> export -> score -> viewer database and greps every output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

NAME_MARK = "Qxwzname"  # in PatientName, folder names and file names
ID_MARK = "QXWZID"  # in PatientID, folder names and nodule ids
MARKERS = (NAME_MARK, ID_MARK)


def patient_id(p: int) -> str:
    return f"{ID_MARK}{p:03d}"


def make_marked_cohort(root: Path, *, patients: int = 8, nodules_per_patient: int = 2, seed: int = 0) -> pd.DataFrame:
    """DICOM series under ``root/<Name>_<ID>/`` with marked headers and file names, and its nodule table."""
    from pydicom.uid import generate_uid

    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    rng = np.random.default_rng(seed)
    shape, spacing = (16, 48, 48), (2.0, 0.8, 0.8)
    rows = []
    for p in range(patients):
        pid = patient_id(p)
        folder = root / f"{NAME_MARK}^Jane_{pid}"
        array = rng.normal(-850, 25, size=shape).astype(np.float32)
        volume = Volume(array, spacing, (-19.2, -19.2, -100.0 - 3 * p))
        zz, yy, xx = np.indices(shape)
        for n in range(nodules_per_patient):
            malignant = (p + n) % 2 == 0
            radius = 5.0 if malignant else 2.5
            c = np.array([8, 14 + 20 * n, 24])
            d = np.sqrt(((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((xx - c[2]) * spacing[2]) ** 2)
            array[d <= radius] = 40.0 if malignant else -300.0
            x, y, z = volume.index_to_world(c)
            rows.append({"patient_id": pid, "x_mm": x, "y_mm": y, "z_mm": z, "diameter_mm": 2 * radius,
                         "label": "malignant" if malignant else "benign", "nodule_id": f"{pid}-n{n + 1}"})
        uid = generate_uid()
        files = write_series(volume, folder, patient_id=pid, series_uid=uid, PatientName=f"{NAME_MARK}^Jane",
                             SeriesDescription="chest")
        for i, f in enumerate(sorted(files)):
            f.rename(f.with_name(f"{NAME_MARK}_{pid}_{i:03d}.dcm"))
        for r in rows[-nodules_per_patient:]:
            r["series_uid"] = uid
    table = pd.DataFrame(rows)
    split = {patient_id(p): ("train" if p < patients * 0.5 else "valid" if p < patients * 0.75 else "test")
             for p in range(patients)}
    table["split"] = table["patient_id"].map(split)
    return table


def add_broken_patient(root: Path, index: int = 99) -> pd.DataFrame:
    """A patient whose series cannot be read (a truncated file) and a stray text file, both with marked
    names: what the errors and skipped-file rows of scoring must describe without the names."""
    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    pid = patient_id(index)
    folder = root / f"{NAME_MARK}^Broken_{pid}"
    files = write_series(Volume(np.full((12, 32, 32), -800, np.int16), (2.0, 0.8, 0.8), (0.0, 0.0, -50.0)), folder,
                         patient_id=pid, PatientName=f"{NAME_MARK}^Broken")
    files = [f.rename(f.with_name(f"{NAME_MARK}_{pid}_{i:03d}.dcm")) for i, f in enumerate(sorted(files))]
    victim = files[5]
    victim.write_bytes(victim.read_bytes()[:-300])
    (root / f"notes_{NAME_MARK}_{pid}.txt").write_text(f"{NAME_MARK} {pid}\n")
    from pydicom import dcmread

    uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return pd.DataFrame([{"patient_id": pid, "x_mm": 12.0, "y_mm": 12.0, "z_mm": -40.0, "diameter_mm": 6.0,
                          "label": "benign", "nodule_id": f"{pid}-n1", "series_uid": uid, "split": "test"}])


def find_markers(root: Path) -> list[str]:
    """Every place under ``root`` (file names, file bytes, zip members, SQLite text) that holds a marker."""
    import sqlite3
    import zipfile

    hits: list[str] = []
    marks = [m.lower().encode() for m in MARKERS]
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(m.decode() in rel.lower() for m in marks):
            hits.append(f"file name {rel}")
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        found = [m.decode() for m in marks if m in data.lower()]
        if found:
            hits.append(f"{rel}: {found}")
        for label, text in _decoded(path, data):  # compressed text: gzip (NIfTI headers), Parquet pages
            if any(m in text.lower() for m in marks):
                hits.append(f"{rel} ({label})")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if any(m in zf.read(info).lower() for m in marks):
                        hits.append(f"{rel}!{info.filename}")
        if data[:16] == b"SQLite format 3\x00":
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                    for row in conn.execute(f'SELECT * FROM "{table}"'):
                        text = " ".join(str(v) for v in row).lower()
                        if any(m.decode() in text for m in marks):
                            hits.append(f"{rel} table {table}: {text[:160]}")
            finally:
                conn.close()
    return hits


def _decoded(path: Path, data: bytes) -> list[tuple[str, bytes]]:
    """What a file holds once decompressed, where its bytes on disk may hide text: gzip members (``.nii.gz``)
    and Parquet (values, column names and schema metadata; pages may be compressed)."""
    import gzip

    out: list[tuple[str, bytes]] = []
    if data[:2] == b"\x1f\x8b":
        out.append(("gunzipped", gzip.decompress(data)))
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        text = [str(table.schema), str(table.schema.metadata or {})]
        text += [str(v) for col in table.columns for v in col.to_pylist()]
        out.append(("parquet values", "\n".join(text).encode()))
    return out
