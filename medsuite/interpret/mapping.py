"""Carry attributions from the model's input pixels back to the scan, in world coordinates.

A 2.5D input is resampled from the volume (slices, views, series slices), so an input pixel is a world
point given by ``block.grid_world``. `splat_to_volume` accumulates every pixel's attribution onto the
original voxel grid (trilinear weights, then divided by the accumulated weight), giving a small
attribution `Volume` that shares the scan's geometry: overlays on the original axial, coronal and sagittal
slices follow from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsuite.io.volume import Volume

PLANES = ("axial", "coronal", "sagittal")


def splat_to_volume(
    values: np.ndarray,
    grid_world: np.ndarray,
    volume: Volume,
    *,
    mode: str = "trilinear",
    margin: int = 1,
    min_weight: float = 1e-3,
) -> Volume:
    """Accumulate per-pixel ``values`` (grid-shaped) at their world points onto ``volume``'s voxel grid.

    Returns a cropped attribution `Volume` (float32) with the scan's spacing and direction and its own origin;
    each voxel holds the weighted mean attribution of the input pixels around it, 0 where none landed.
    ``meta['coverage']`` is the fraction of cropped voxels that received any weight.
    """
    grid_world = np.asarray(grid_world, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if grid_world.shape[-1] != 3 or grid_world.shape[:-1] != values.shape:
        raise ValueError(f"grid_world shape {grid_world.shape} must be values shape {values.shape} + (3,)")
    if mode not in ("trilinear", "nearest"):
        raise ValueError(f"splat mode must be 'trilinear' or 'nearest', got {mode!r}")
    idx = volume.world_to_index(grid_world.reshape(-1, 3))
    vals = values.reshape(-1)
    shape = np.asarray(volume.shape)
    inside = np.all((idx > -0.5) & (idx < shape - 0.5), axis=1) & np.isfinite(vals)
    if not inside.any():
        raise ValueError(f"no input pixel of the attribution falls inside the volume {volume.series_uid or ''}".strip())
    idx, vals = idx[inside], vals[inside]
    lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + margin, shape - 1)
    crop = tuple(int(v) for v in hi - lo + 1)
    local = idx - lo
    acc = np.zeros(int(np.prod(crop)))
    wsum = np.zeros_like(acc)
    if mode == "nearest":
        corners, base, frac = [np.zeros(3, int)], np.rint(local).astype(int), None
    else:
        base = np.floor(local).astype(int)
        frac = local - base
        corners = [np.array([a, b, c]) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    for corner in corners:
        at = base + corner
        w = np.ones(len(vals)) if frac is None else np.prod(np.where(corner == 1, frac, 1 - frac), axis=1)
        ok = np.all((at >= 0) & (at < np.asarray(crop)), axis=1) & (w > 0)
        flat = np.ravel_multi_index(at[ok].T, crop)
        acc += np.bincount(flat, weights=w[ok] * vals[ok], minlength=acc.size)
        wsum += np.bincount(flat, weights=w[ok], minlength=acc.size)
    covered = wsum > min_weight
    out = np.zeros_like(acc)
    out[covered] = acc[covered] / wsum[covered]
    return Volume(
        array=out.reshape(crop).astype(np.float32),
        spacing=volume.spacing,
        origin=tuple(volume.index_to_world(lo.astype(float))),
        direction=volume.direction,
        series_uid=volume.series_uid,
        study_uid=volume.study_uid,
        modality="ATTRIBUTION",
        meta={"coverage": float(covered.mean()), "offset_zyx": [int(v) for v in lo], "splat": mode},
    )


def peak_world(attribution: Volume, *, absolute: bool = True) -> np.ndarray:
    """World ``(x, y, z)`` of the attribution volume's largest (absolute) value."""
    arr = np.abs(attribution.array) if absolute else attribution.array
    return attribution.index_to_world(np.asarray(np.unravel_index(int(np.argmax(arr)), arr.shape), float))


def grid_peak(values: np.ndarray, grid_world: np.ndarray, *, absolute: bool = True) -> np.ndarray:
    """World ``(x, y, z)`` of the input pixel with the largest (absolute) attribution."""
    arr = np.abs(values) if absolute else np.asarray(values)
    return np.asarray(grid_world).reshape(-1, 3)[int(np.argmax(arr))]


@dataclass
class PlaneView:
    """One plane through the scan: the CT pixels, the attribution on the same pixels, the extent in mm."""

    plane: str
    image: np.ndarray
    attribution: np.ndarray
    extent_mm: tuple[float, float, float, float]
    index: int


def planes_through(
    volume: Volume, attribution: Volume, center_xyz: np.ndarray | tuple[float, float, float], *, margin_vox: int = 8
) -> list[PlaneView]:
    """The axial, coronal and sagittal array planes of ``volume`` through ``center_xyz``, each cropped to the
    attribution's extent (plus ``margin_vox``), with the attribution resampled onto the same pixels.

    Planes are array planes (axis 0, 1, 2); for a scan acquired axially they are the radiological ones.
    """
    c = np.clip(np.rint(volume.world_to_index(np.asarray(center_xyz, float))).astype(int), 0, np.asarray(volume.shape) - 1)
    off = np.asarray(attribution.meta.get("offset_zyx") or np.rint(volume.world_to_index(attribution.origin)), int)
    lo = np.maximum(off - margin_vox, 0)
    hi = np.minimum(off + np.asarray(attribution.shape) + margin_vox, np.asarray(volume.shape))
    views = []
    for axis, plane in enumerate(PLANES):
        sl: list[slice | int] = [slice(int(lo[a]), int(hi[a])) for a in range(3)]
        sl[axis] = int(c[axis])
        image = np.asarray(volume.array[tuple(sl)], dtype=np.float32)
        attr = np.zeros_like(image)
        rel = int(c[axis] - off[axis])
        if 0 <= rel < attribution.shape[axis]:
            src = np.take(attribution.array, rel, axis=axis)
            others = [a for a in range(3) if a != axis]
            dst_lo = [int(off[a] - lo[a]) for a in others]
            h, w = src.shape
            attr[dst_lo[0]: dst_lo[0] + h, dst_lo[1]: dst_lo[1] + w] = src[: image.shape[0] - dst_lo[0], : image.shape[1] - dst_lo[1]]
        rows, cols = [a for a in range(3) if a != axis]
        sp = volume.spacing
        extent = (0.0, image.shape[1] * sp[cols], image.shape[0] * sp[rows], 0.0)
        views.append(PlaneView(plane, image, attr, extent, int(c[axis])))
    return views


def slice_importance(values_grid: np.ndarray, grid_world: np.ndarray) -> list[dict]:
    """Per-slice attribution mass (share of total |attribution|) and its peak pixel's world point, for inputs
    whose grid axis 0 enumerates slices (a series' slices or a stack)."""
    mags = np.abs(np.asarray(values_grid, dtype=np.float64))
    total = float(mags.sum()) or 1.0
    out = []
    for i in range(mags.shape[0]):
        flat = int(np.argmax(mags[i]))
        pix = np.unravel_index(flat, mags[i].shape)
        out.append({
            "slice": i,
            "mass": float(mags[i].sum() / total),
            "peak_pixel": [int(p) for p in pix],
            "peak_world_mm": [round(float(v), 2) for v in np.asarray(grid_world)[i][pix]],
            "slice_center_world_mm": [round(float(v), 2) for v in np.asarray(grid_world)[i].reshape(-1, 3).mean(0)],
        })
    return out
