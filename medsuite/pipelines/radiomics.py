"""Handcrafted nodule features (size, HU statistics, shape, texture) for the classic radiomics baseline.

The nodule is segmented in a 1 mm isotropic cube around its centre (SimpleITK resampling) by the connected
component above a HU threshold that contains the centre, kept inside a sphere a little larger than the
annotated diameter. Shape comes from SimpleITK's label-shape statistics, texture from scikit-image's GLCM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from medsuite.io.volume import Volume

AIR_HU = -1024.0
SEGMENT_HU = -600.0  # includes ground-glass components; lung parenchyma sits near -850
GLCM_LEVELS = 32


def _crop_around(volume: Volume, center_xyz: np.ndarray, half_mm: float) -> Volume:
    """The part of `volume` covering a cube of half-size `half_mm` around a world point (float32)."""
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    idx = volume.world_to_index(center_xyz + half_mm * corners)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, np.asarray(volume.shape) - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 2, lo + 1, np.asarray(volume.shape))
    sub = np.asarray(volume.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    return volume.with_array(sub, origin=tuple(volume.index_to_world(lo)))


def _resample_cube(volume: Volume, center_xyz: np.ndarray, half_mm: float) -> np.ndarray:
    """A 1 mm isotropic ``(z, y, x)`` cube in patient axes around a world point (air outside the scan)."""
    import SimpleITK as sitk

    n = int(2 * half_mm) + 1
    ref = sitk.Image(n, n, n, sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.0, 1.0))
    ref.SetOrigin(tuple(float(c - half_mm) for c in center_xyz))
    out = sitk.Resample(_crop_around(volume, center_xyz, half_mm + 2).to_sitk(), ref, sitk.Transform(), sitk.sitkLinear, AIR_HU)
    return sitk.GetArrayFromImage(out)


def _segment(cube: np.ndarray, radius_mm: float) -> np.ndarray:
    """Connected component above `SEGMENT_HU` containing the centre, within a sphere of `radius_mm`."""
    from scipy import ndimage

    c = np.asarray(cube.shape) // 2
    zz, yy, xx = np.indices(cube.shape)
    sphere = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius_mm**2
    solid = (cube > SEGMENT_HU) & sphere
    labels, n = ndimage.label(solid)
    if n == 0:
        return np.zeros_like(solid)
    centre_label = labels[tuple(c)]
    if centre_label == 0:  # centre fell between components: take the component nearest to it
        dist = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
        centre_label = labels[tuple(dist[:, c[0], c[1], c[2]])]
    return labels == centre_label


def _glcm_features(cube: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    from skimage.feature import graycomatrix, graycoprops

    z = int(np.argmax(mask.sum(axis=(1, 2))))
    lo, hi = -1000.0, 400.0
    q = np.clip((cube[z] - lo) / (hi - lo) * (GLCM_LEVELS - 1), 0, GLCM_LEVELS - 1).astype(np.uint8)
    ys, xs = np.nonzero(mask[z])
    if ys.size < 4:
        return {f"glcm_{p}": float("nan") for p in ("contrast", "homogeneity", "energy", "correlation")}
    q = q[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    glcm = graycomatrix(q, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=GLCM_LEVELS, symmetric=True, normed=True)
    return {f"glcm_{p}": float(np.nanmean(graycoprops(glcm, p))) for p in ("contrast", "homogeneity", "energy", "correlation")}


def nodule_features(volume: Volume, center_xyz: Iterable[float], diameter_mm: float) -> dict[str, float]:
    """Size, HU statistics, shape (sphericity, compactness, elongation, flatness) and GLCM texture of one nodule."""
    import SimpleITK as sitk

    center = np.asarray(list(center_xyz), dtype=np.float64)
    radius = max(3.0, 0.75 * float(diameter_mm) + 2.0)
    cube = _resample_cube(volume, center, half_mm=math.ceil(radius + 3))
    mask = _segment(cube, radius)
    voxels = cube[mask]
    feats: dict[str, float] = {"diameter_mm": float(diameter_mm), "seg_volume_mm3": float(mask.sum())}
    if voxels.size == 0:
        voxels = cube[tuple(np.asarray(cube.shape) // 2)][None]
    feats.update(
        hu_mean=float(voxels.mean()),
        hu_std=float(voxels.std()),
        hu_p10=float(np.percentile(voxels, 10)),
        hu_p50=float(np.percentile(voxels, 50)),
        hu_p90=float(np.percentile(voxels, 90)),
        hu_max=float(voxels.max()),
        frac_calcified=float((voxels > 200).mean()),
        frac_ground_glass=float((voxels < -300).mean()),
    )
    if mask.sum() >= 8:
        label = sitk.GetImageFromArray(mask.astype(np.uint8))
        stats = sitk.LabelShapeStatisticsImageFilter()
        stats.ComputePerimeterOn()
        stats.ComputeFeretDiameterOn()
        stats.Execute(label)
        volume_mm3 = stats.GetPhysicalSize(1)
        area = stats.GetPerimeter(1)
        sphericity = (math.pi ** (1 / 3)) * (6 * volume_mm3) ** (2 / 3) / area if area > 0 else float("nan")
        feats.update(
            seg_diameter_mm=2 * stats.GetEquivalentSphericalRadius(1),
            sphericity=float(min(sphericity, 1.5)),
            compactness=float(36 * math.pi * volume_mm3**2 / area**3) if area > 0 else float("nan"),
            elongation=float(stats.GetElongation(1)),
            flatness=float(stats.GetFlatness(1)),
            roundness=float(stats.GetRoundness(1)),
            feret_mm=float(stats.GetFeretDiameter(1)),
        )
    else:
        feats.update({k: float("nan") for k in ("seg_diameter_mm", "sphericity", "compactness", "elongation", "flatness", "roundness", "feret_mm")})
    feats.update(_glcm_features(cube, mask))
    return feats


def feature_table(table: pd.DataFrame, get_volume: Callable[[str], Volume]) -> pd.DataFrame:
    """One row of features per nodule (index = nodule_id); each series' volume is loaded once."""
    rows = []
    for series_uid, group in table.groupby("series_uid", sort=False):
        volume = get_volume(series_uid)
        for row in group.itertuples(index=False):
            feats = nodule_features(volume, (row.x_mm, row.y_mm, row.z_mm), row.diameter_mm)
            rows.append({"nodule_id": row.nodule_id, **feats})
    return pd.DataFrame(rows).set_index("nodule_id").loc[table["nodule_id"]]
