"""A small DICOM cohort where malignancy is in the nodule's *shape and texture*, not in its size.

Both classes draw their diameters from the same distribution, so the diameter carries nothing (a diameter-only
score sits near chance). Malignant nodules are solid and lobulated (the radius varies with direction); benign ones
are smooth, partly ground-glass, some with a calcified core. Lung-like background with noise and vessels. A model
that beats a shuffled-label control on this cohort has learned image content that no ruler measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid

from medsuite.io.dicom_write import write_series
from medsuite.io.volume import Volume


def _nodule(shape: tuple[int, int, int], center: np.ndarray, spacing: np.ndarray, radius: float, malignant: bool,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(occupancy, HU) of one nodule on the volume grid."""
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    d = np.stack([(zz - center[0]) * spacing[0], (yy - center[1]) * spacing[1], (xx - center[2]) * spacing[2]])
    r = np.sqrt((d ** 2).sum(0)) + 1e-6
    if malignant:  # lobulated: the surface radius follows a few random cosine lobes of the direction
        u = d / r
        bumps = sum(np.cos(4.0 * (u * rng.normal(size=(3, 1, 1, 1))).sum(0) + rng.uniform(0, 6.3)) for _ in range(3))
        surface = radius * (1.0 + 0.12 * bumps)
    else:
        surface = np.full(shape, radius, dtype=np.float32)
    occ = np.clip(surface - r + 0.5, 0, 1)
    if malignant:
        hu = np.full(shape, rng.uniform(10, 50), dtype=np.float32)
    else:
        hu = np.full(shape, rng.uniform(-550, -350), dtype=np.float32)
        if rng.random() < 0.4:
            hu[r < 0.4 * radius] = rng.uniform(300, 600)
    return occ, hu


def make_shape_cohort(root: Path, *, patients: int = 24, nodules_per_patient: int = 4, seed: int = 0,
                      shape: tuple[int, int, int] = (28, 64, 64),
                      spacing: tuple[float, float, float] = (1.25, 0.8, 0.8)) -> pd.DataFrame:
    """Write ``patients`` CT series under ``root`` and return (and write ``root/nodules.csv``) their nodule table
    with a patient-level split (train 60 %, valid 15 %, test 25 %)."""
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing)
    rows = []
    for p in range(patients):
        pid = f"SHAPE{p:03d}"
        hu = rng.normal(-860, 18, size=shape).astype(np.float32)
        for _ in range(4):  # a few vessels (bright lines) as distractors
            axis = rng.integers(1, 3)
            pos = rng.integers(4, shape[3 - axis] - 4)
            if axis == 1:
                hu[:, :, pos - 1:pos + 1] = 40.0
            else:
                hu[:, pos - 1:pos + 1, :] = 40.0
        volume = Volume(hu, spacing, (-25.6, -25.6, -100.0 + 7 * p))
        slots = rng.permutation(4)[:nodules_per_patient]
        for n, slot in enumerate(slots):
            malignant = bool((p + n) % 2)
            radius = rng.uniform(3.0, 5.5)  # the same for both classes
            c = np.array([shape[0] // 2 + rng.integers(-2, 3), 16 + 32 * (slot // 2) + rng.integers(-2, 3),
                          16 + 32 * (slot % 2) + rng.integers(-2, 3)], dtype=np.float32)
            occ, values = _nodule(shape, c, sp, radius, malignant, rng)
            hu = hu * (1 - occ) + values * occ
            x, y, z = volume.index_to_world(c)
            rows.append({"patient_id": pid, "x_mm": float(x), "y_mm": float(y), "z_mm": float(z), "diameter_mm": 2 * radius,
                         "label": "malignant" if malignant else "benign", "nodule_id": f"{pid}-n{n}"})
        hu += rng.normal(0, 12, size=shape).astype(np.float32)
        series_uid = generate_uid(entropy_srcs=["medsuite-shape-cohort", str(seed), pid])
        write_series(Volume(np.rint(hu).astype(np.int16), spacing, volume.origin), root / pid, patient_id=pid,
                     series_uid=series_uid, seed=p)
        for r in rows[-nodules_per_patient:]:
            r["series_uid"] = series_uid
    table = pd.DataFrame(rows)
    order = np.random.default_rng(seed + 1).permutation(patients)
    n_train, n_valid = int(round(0.6 * patients)), int(round(0.15 * patients))
    split = {f"SHAPE{p:03d}": ("train" if k < n_train else "valid" if k < n_train + n_valid else "test") for k, p in enumerate(order)}
    table["split"] = table["patient_id"].map(split)
    table.to_csv(root / "nodules.csv", index=False)
    return table
