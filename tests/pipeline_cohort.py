"""A tiny synthetic nodule cohort written as DICOM (seconds to make) for the pipeline tests.

Malignant nodules are larger, solid and lobulated; benign ones small and smooth, so a model can learn the
task in a couple of epochs and every stage (training, baselines, report, scoring) sees both classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import RLELossless, generate_uid

from medsuite.io.dicom_write import write_series
from medsuite.io.volume import Volume


def make_cohort(root: Path, *, patients: int = 10, nodules_per_patient: int = 3, seed: int = 0,
                shape: tuple[int, int, int] = (24, 64, 64), spacing: tuple[float, float, float] = (1.5, 0.8, 0.8)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        pid = f"PT{p:03d}"
        array = rng.normal(-850, 25, size=shape).astype(np.float32)
        origin = (-25.6, -25.6, -100.0 + 5 * p)
        volume = Volume(array, spacing, origin)
        zz, yy, xx = np.indices(shape)
        for n in range(nodules_per_patient):
            malignant = (p + n) % 2 == 0
            radius = rng.uniform(4.0, 6.0) if malignant else rng.uniform(1.8, 3.0)
            c = np.array([shape[0] // 2 + rng.integers(-3, 4), 14 + 18 * n + rng.integers(-2, 3), 32 + rng.integers(-8, 9)])
            d = np.sqrt(((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((xx - c[2]) * spacing[2]) ** 2)
            array[d <= radius] = 40.0 if malignant else -300.0
            x, y, z = volume.index_to_world(c)
            rows.append({"patient_id": pid, "x_mm": x, "y_mm": y, "z_mm": z, "diameter_mm": 2 * radius,
                         "label": "malignant" if malignant else "benign", "nodule_id": f"{pid}-n{n}",
                         "manufacturer": "ACME" if p % 2 else "OTHER", "slice_thickness": spacing[0]})
        series_uid = generate_uid()
        write_series(volume, root / pid, patient_id=pid, series_uid=series_uid,
                     transfer_syntax=RLELossless if p % 3 == 0 else "1.2.840.10008.1.2.1", shuffle_names=True, seed=p,
                     Manufacturer="ACME" if p % 2 else "OTHER")
        for r in rows[-nodules_per_patient:]:
            r["series_uid"] = series_uid
    table = pd.DataFrame(rows)
    n = patients
    split = {f"PT{p:03d}": ("train" if p < n * 0.5 else "valid" if p < n * 0.7 else "test") for p in range(n)}
    table["split"] = table["patient_id"].map(split)
    table.to_csv(root / "nodules.csv", index=False)
    return table
