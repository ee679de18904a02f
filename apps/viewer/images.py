"""Slice pictures for the viewer: a plane of the volume, windowed to uint8, square pixels, crosshair, nodule
circle and an optional attribution overlay. Pure numpy (and Pillow for resizing), no Streamlit, so it is
testable and timeable on its own.

Display conventions (radiological, as in OHIF): axial with the patient's right on the image left and
anterior up; coronal and sagittal with superior up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
CROSS = np.array([0, 200, 255], dtype=np.float32)   # crosshair colour
RING = np.array([255, 220, 0], dtype=np.float32)    # nodule circle colour


@dataclass(frozen=True)
class Geometry:
    """What the renderer needs of a volume besides its array: spacing (z, y, x) mm and whether array axis 0
    runs towards the feet (then coronal/sagittal are not flipped)."""

    spacing: tuple[float, float, float]
    z_towards_head: bool = True


def window_uint8(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map ``values`` through a display window (width, level) to uint8 0-255."""
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    low = level - width / 2.0
    out = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(out, 0, 255).astype(np.uint8)


def extract(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2D plane ``index`` of a ``(z, y, x)`` array: axial ``[z]``, coronal ``[:, y]``, sagittal ``[:, :, x]``."""
    axis = PLANES.index(plane)
    n = array.shape[axis]
    if not 0 <= index < n:
        raise IndexError(f"{plane} slice {index} outside 0..{n - 1}")
    return np.asarray(array[(slice(None),) * axis + (index,)])


def _pixel_mm(plane: str, spacing: tuple[float, float, float]) -> tuple[float, float]:
    sz, sy, sx = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[plane]


def _in_plane(plane: str, zyx: tuple[float, float, float]) -> tuple[float, float]:
    z, y, x = zyx
    return {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[plane]


def _heat(values: np.ndarray) -> np.ndarray:
    """Normalised magnitude 0..1 -> RGB float (black-red-yellow-white, like 'hot')."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.concatenate([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1) * 255


def render(
    array: np.ndarray,
    geometry: Geometry,
    plane: str,
    cursor_zyx: tuple[int, int, int],
    window: tuple[float, float],
    *,
    nodule_zyx: tuple[float, float, float] | None = None,
    nodule_radius_mm: float | None = None,
    overlay: np.ndarray | None = None,
    opacity: float = 0.4,
    crosshair: bool = True,
) -> np.ndarray:
    """One view as RGB uint8 ``(h, w, 3)`` with square display pixels.

    ``cursor_zyx`` chooses the plane (its coordinate along the plane's axis) and the crosshair; the nodule
    circle is the cross-section of a sphere of ``nodule_radius_mm`` at ``nodule_zyx`` (voxel indices) with
    this plane. ``overlay`` is a plane-shaped map (already normalised to 0..1) blended with ``opacity``.
    """
    axis = PLANES.index(plane)
    grey = window_uint8(extract(array, plane, int(cursor_zyx[axis])), *window).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if overlay is not None:
        if overlay.shape != grey.shape:
            raise ValueError(f"overlay shape {overlay.shape} does not match the {plane} plane {grey.shape}")
        alpha = (opacity * np.clip(overlay, 0, 1))[..., None]
        rgb = rgb * (1 - alpha) + _heat(overlay) * alpha
    row_mm, col_mm = _pixel_mm(plane, geometry.spacing)
    flip = plane != "axial" and geometry.z_towards_head
    cr, cc = _in_plane(plane, cursor_zyx)
    if crosshair:
        rgb[int(cr), :] = 0.5 * rgb[int(cr), :] + 0.5 * CROSS
        rgb[:, int(cc)] = 0.5 * rgb[:, int(cc)] + 0.5 * CROSS
    if nodule_zyx is not None and nodule_radius_mm:
        depth_mm = (cursor_zyx[axis] - nodule_zyx[axis]) * geometry.spacing[axis]
        r2 = nodule_radius_mm**2 - depth_mm**2
        if r2 > 0:
            nr, nc = _in_plane(plane, nodule_zyx)
            rows, cols = np.ogrid[: grey.shape[0], : grey.shape[1]]
            d = np.sqrt(((rows - nr) * row_mm) ** 2 + ((cols - nc) * col_mm) ** 2)
            ring = np.abs(d - np.sqrt(r2)) <= 0.75 * max(row_mm, col_mm)
            rgb[ring] = RING
    out = np.clip(rgb, 0, 255).astype(np.uint8)
    if flip:
        out = out[::-1]
    return square_pixels(out, row_mm, col_mm)


def square_pixels(image: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Resample rows so that a displayed pixel is as tall as it is wide (in mm)."""
    if abs(row_mm - col_mm) < 1e-3 * col_mm:
        return image
    from PIL import Image

    h = max(1, round(image.shape[0] * row_mm / col_mm))
    return np.asarray(Image.fromarray(image).resize((image.shape[1], h), Image.Resampling.BILINEAR))


def overlay_plane(attr: np.ndarray, offset_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int], plane: str,
                  index: int, scale: float) -> np.ndarray | None:
    """The ``plane`` slice ``index`` of a cropped attribution volume (placed at ``offset_zyx`` in a scan of
    ``shape_zyx``), as a full-plane magnitude map divided by ``scale``; None when the slice misses the crop."""
    axis = PLANES.index(plane)
    local = index - offset_zyx[axis]
    if not 0 <= local < attr.shape[axis] or not scale > 0:
        return None
    part = np.abs(extract(attr, plane, local)) / scale
    full_shape = tuple(s for a, s in enumerate(shape_zyx) if a != axis)
    offs = tuple(o for a, o in enumerate(offset_zyx) if a != axis)
    full = np.zeros(full_shape, dtype=np.float32)
    h = min(part.shape[0], full_shape[0] - offs[0])
    w = min(part.shape[1], full_shape[1] - offs[1])
    full[offs[0]: offs[0] + h, offs[1]: offs[1] + w] = part[:h, :w]
    return full
