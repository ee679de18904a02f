"""Synthetic volumes with known geometry for the data-layer tests (import as `data_helpers`).

A bright sphere at a known world point, or a linear intensity ramp (which trilinear interpolation
reproduces exactly, so any sample must equal the ramp evaluated at its `grid_world`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial.transform import Rotation

from medsuite.io.volume import Volume

AXIAL = np.eye(3)[:, ::-1].copy()  # array z -> world z (head), y -> world y (posterior), x -> world x (left)

GEOMETRIES: dict[str, dict] = {
    "isotropic": {"spacing": (1.0, 1.0, 1.0), "direction": AXIAL},
    "anisotropic": {"spacing": (2.5, 0.7, 0.9), "direction": AXIAL},
    "oblique": {"spacing": (1.5, 0.8, 0.9), "direction": Rotation.from_euler("xyz", [25, 15, 35], degrees=True).as_matrix() @ AXIAL},
    "feet_first": {"spacing": (2.0, 0.8, 0.8), "direction": AXIAL @ np.diag([-1.0, 1.0, 1.0])},
}

BACKGROUND, SPHERE = -1000.0, 400.0
RAMP = np.array([3.0, -2.0, 5.0])  # HU per mm along world x, y, z


def volume_for(geometry: str, shape: tuple[int, int, int] = (40, 72, 72), origin=(-30.0, 20.0, -150.0),
               modality: str = "CT", series_uid: str = "1.2.3") -> Volume:
    g = GEOMETRIES[geometry]
    return Volume(np.zeros(shape, np.float32), g["spacing"], origin, g["direction"], series_uid=series_uid, modality=modality)


def world_of_voxels(volume: Volume) -> np.ndarray:
    idx = np.stack(np.indices(volume.shape), axis=-1).astype(np.float64)
    return volume.index_to_world(idx)


def sphere_volume(geometry: str, radius_mm: float = 7.0, at_index=(0.55, 0.45, 0.5), **kw) -> tuple[Volume, np.ndarray]:
    """A CT volume (-1000 HU) with a +400 HU sphere; returns it and the sphere's world centre."""
    base = volume_for(geometry, **kw)
    center = base.index_to_world((np.asarray(base.shape) - 1) * np.asarray(at_index))
    dist = np.linalg.norm(world_of_voxels(base) - center, axis=-1)
    array = np.where(dist <= radius_mm, SPHERE, BACKGROUND).astype(np.int16)
    return base.with_array(array), center


def ramp_volume(geometry: str, **kw) -> Volume:
    """A float volume whose value is ``RAMP . world`` (exact under trilinear interpolation)."""
    base = volume_for(geometry, **kw)
    return base.with_array((world_of_voxels(base) @ RAMP).astype(np.float32))


def inside(volume: Volume, world: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Mask of world points whose fractional index lies within the array (shrunk by ``margin`` voxels)."""
    idx = volume.world_to_index(world)
    hi = np.asarray(volume.shape) - 1
    return np.all((idx >= margin) & (idx <= hi - margin), axis=-1)


def nodule_table(n_patients: int = 10, per_patient: int = 2, series_uid_of=lambda p: f"1.2.{p}", seed: int = 0,
                 centers: dict | None = None) -> pd.DataFrame:
    """A nodule table: ``n_patients`` patients with one series each and ``per_patient`` nodules."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for j in range(per_patient):
            c = centers[series_uid_of(p)] if centers else rng.uniform(-20, 20, 3)
            rows.append({"series_uid": series_uid_of(p), "patient_id": f"P{p:03d}", "x_mm": c[0], "y_mm": c[1],
                         "z_mm": c[2], "diameter_mm": 8.0, "label": int((p + j) % 2), "nodule_id": f"n{p}-{j}"})
    return pd.DataFrame(rows)
