"""Slice pictures for the viewer: a plane of the volume, windowed to uint8, square pixels, crosshair, nodule
circle and an optional attribution overlay (red-yellow heat, alpha proportional to the magnitude). Pure numpy (and Pillow for resizing), no Streamlit, so it is
testable and timeable on its own.

Display conventions (radiological, as in OHIF): axial with the patient's right on the image left and
anterior up; coronal and sagittal with superior up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
CROSS = np.array([0, 200, 255], dtype=np.float32)   # crosshair colour
RING = np.array([40, 255, 90], dtype=np.float32)    # nodule circle colour (green: apart from the heat map)


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


HEAT_NAME = "red-yellow"
# (position, RGB) anchors of the overlay colour map: dark red -> red -> orange -> pale yellow
_HEAT_STOPS = np.array([0.0, 0.35, 0.7, 1.0], dtype=np.float32)
_HEAT_RGB = np.array([[128, 0, 0], [230, 20, 0], [255, 160, 0], [255, 255, 120]], dtype=np.float32)
CLIP_PERCENTILE = 99.0


def heat_rgb(values: np.ndarray) -> np.ndarray:
    """Normalised magnitude 0..1 -> RGB float 0..255 on the red-yellow heat map (higher = brighter)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.stack([np.interp(v, _HEAT_STOPS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)


def attribution_scale(attr: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """The magnitude shown at full colour: the ``percentile`` of |attribution| over the voxels that received
    any (larger values are clipped, so one hot pixel does not wash out the rest); 0 for an all-zero map."""
    mags = np.abs(np.asarray(attr, dtype=np.float32))
    mags = mags[mags > 0]
    return float(np.percentile(mags, percentile)) if mags.size else 0.0


def blend_overlay(rgb: np.ndarray, overlay: np.ndarray, opacity: float) -> np.ndarray:
    """Blend a normalised magnitude map (0..1, clipped) over ``rgb``: heat colour, alpha = opacity x magnitude,
    so weak attribution stays see-through and strong attribution is opaque."""
    v = np.clip(np.nan_to_num(overlay), 0.0, 1.0)
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * v)[..., None]
    return rgb * (1 - alpha) + heat_rgb(v) * alpha


def colorbar(width: int = 200, height: int = 14, opacity: float = 1.0, background: float = 128.0) -> np.ndarray:
    """The overlay legend as RGB uint8 ``(height, width, 3)``: magnitude 0 (left) to the clip value (right),
    blended over a mid-grey ``background`` exactly as on the views."""
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, width))
    grey = np.full((height, width, 3), background, dtype=np.float32)
    return np.clip(blend_overlay(grey, ramp, opacity), 0, 255).astype(np.uint8)


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
    opacity: float = 0.85,
    crosshair: bool = True,
    zoom: float = 1.0,
) -> np.ndarray:
    """One view as RGB uint8 ``(h, w, 3)`` with square display pixels.

    ``cursor_zyx`` chooses the plane (its coordinate along the plane's axis) and the crosshair; the nodule
    circle is the cross-section of a sphere of ``nodule_radius_mm`` at ``nodule_zyx`` (voxel indices) with
    this plane. ``zoom`` > 1 shows the part around the crosshair (before the display flip). ``overlay`` is a
    plane-shaped magnitude map normalised to 0..1 (see `overlay_plane`), drawn with
    `blend_overlay` (alpha = ``opacity`` x magnitude).
    """
    axis = PLANES.index(plane)
    grey = window_uint8(extract(array, plane, int(cursor_zyx[axis])), *window).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    if overlay is not None:
        if overlay.shape != grey.shape:
            raise ValueError(f"overlay shape {overlay.shape} does not match the {plane} plane {grey.shape}")
        rgb = blend_overlay(rgb, overlay, opacity)
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
    out = zoom_crop(np.clip(rgb, 0, 255).astype(np.uint8), (cr, cc), zoom)
    if flip:
        out = out[::-1]
    return square_pixels(out, row_mm, col_mm)


def zoom_crop(image: np.ndarray, center_rc: tuple[float, float], zoom: float) -> np.ndarray:
    """The part of ``image`` a ``zoom`` x magnification shows, centred on ``center_rc`` (kept inside the image)."""
    if zoom <= 1.0:
        return image
    out = image
    for axis, c in enumerate(center_rc):
        n = image.shape[axis]
        m = max(1, round(n / zoom))
        lo = int(np.clip(round(c - m / 2), 0, n - m))
        out = out[(slice(None),) * axis + (slice(lo, lo + m),)]
    return out


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
