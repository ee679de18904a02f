"""What the browser receives: the scan and its overlays as gzip-compressed NIfTI-1, lossless, on the scan's grid.

Pure numpy (no Streamlit), so it is testable on its own. The browser decodes with its native gzip
(``DecompressionStream``) and hands the NIfTI to NiiVue; every voxel keeps its stored value (CT in HU as int16
when every value is an integer in range, else float32/float64 as stored), so the HU readout is exact.

Overlays are volumes in world space, each with its own affine, drawn by NiiVue on the scan's grid:

- `heat_overlay`: an attribution map (|attribution| / display scale) on its crop of the scan;
- `nodule_overlay`: one ring-shaped shell per nodule of the series (label 1: the nodule under review,
  label 2: the others), in a box around them;
- `slice_marks`: one value per slice (1 = interpolated or filled, not acquired), spread over the whole plane.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_DTYPES = {np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.int32): 8, np.dtype(np.float32): 16,
           np.dtype(np.float64): 64, np.dtype(np.int8): 256, np.dtype(np.uint16): 512}
HEADER_BYTES = 352  # 348-byte NIfTI-1 header + 4-byte extension flag
NODULE_REVIEWED, NODULE_OTHER = 1, 2


@dataclass(frozen=True)
class Grid:
    """Where an array's voxels are: ``spacing`` (z, y, x) mm, ``origin`` world LPS (x, y, z) of voxel [0, 0, 0],
    ``direction[:, a]`` the LPS unit vector of array axis ``a`` (the `medsuite.io.Volume` convention)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @classmethod
    def of(cls, volume: object) -> Grid:
        """The grid of a `Volume` (anything with ``spacing``, ``origin`` and ``direction``)."""
        return cls(tuple(float(s) for s in volume.spacing), tuple(float(o) for o in volume.origin),  # type: ignore[attr-defined]
                   np.asarray(volume.direction, dtype=np.float64))  # type: ignore[attr-defined]

    def index_to_world(self, zyx: Sequence[float]) -> np.ndarray:
        return np.asarray(self.origin) + (self.direction * np.asarray(self.spacing)[None, :]) @ np.asarray(zyx, float)

    def ras_affine(self) -> np.ndarray:
        """4x4 NIfTI affine: voxel ``(i, j, k) = (x, y, z)`` array index -> world RAS mm."""
        cols_zyx = self.direction * np.asarray(self.spacing)[None, :]
        a = np.eye(4)
        a[:3, :3] = LPS_TO_RAS @ cols_zyx[:, ::-1]
        a[:3, 3] = LPS_TO_RAS @ np.asarray(self.origin)
        return a


def lossless(array: np.ndarray) -> np.ndarray:
    """The smallest NIfTI dtype that holds every value of ``array`` exactly (int16 for CT in whole HU)."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        return a.astype(np.uint8)
    if a.dtype in _DTYPES and a.dtype.kind in "iu" and a.dtype.itemsize <= 2:
        return a
    if a.size == 0:
        return a.astype(np.int16)
    if a.dtype.kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if -32768 <= lo and hi <= 32767:
            return a.astype(np.int16)
        if -(2**31) <= lo and hi < 2**31:
            return a.astype(np.int32)
        return a.astype(np.float64)  # exact for |v| < 2**53
    if a.dtype.kind == "f":
        finite = bool(np.isfinite(a).all())
        if finite:
            lo, hi = float(a.min()), float(a.max())
            if -32768 <= lo and hi <= 32767 and np.array_equal(np.rint(a), a):
                return a.astype(np.int16)
        if a.dtype.itemsize <= 4:
            return a.astype(np.float32)
        as32 = a.astype(np.float32)
        return as32 if np.array_equal(as32, a, equal_nan=True) else a.astype(np.float64)
    raise ValueError(f"cannot send a volume of dtype {a.dtype} to the viewer")


def nifti1(array_zyx: np.ndarray, grid: Grid, *, description: str = "") -> bytes:
    """An uncompressed NIfTI-1 file (header + voxels) of a ``(z, y, x)`` array; the sform holds the RAS affine."""
    data = np.ascontiguousarray(array_zyx)
    if data.ndim != 3:
        raise ValueError(f"a viewer volume must be 3D (z, y, x), got shape {data.shape}")
    code = _DTYPES.get(data.dtype)
    if code is None:
        raise ValueError(f"NIfTI cannot hold dtype {data.dtype}; convert it with lossless() first")
    hdr = np.zeros(HEADER_BYTES, dtype=np.uint8)
    view = memoryview(hdr)

    def put(offset: int, fmt: str, values: Sequence[float]) -> None:
        arr = np.asarray(values, dtype=fmt)
        view[offset: offset + arr.nbytes] = arr.tobytes()

    nz, ny, nx = data.shape
    sz, sy, sx = grid.spacing
    affine = grid.ras_affine()
    put(0, "<i4", [348])
    put(40, "<i2", [3, nx, ny, nz, 1, 1, 1, 1])
    put(70, "<i2", [code, data.dtype.itemsize * 8])
    put(76, "<f4", [1.0, sx, sy, sz, 0, 0, 0, 0])
    put(108, "<f4", [HEADER_BYTES, 1.0, 0.0])   # vox_offset, scl_slope, scl_inter
    hdr[123] = 2 + 8                            # xyzt_units: mm, s
    desc = description.encode("ascii", "replace")[:79]
    view[148: 148 + len(desc)] = desc
    put(252, "<i2", [0, 1])                     # qform_code 0, sform_code 1 (scanner)
    put(280, "<f4", affine[:3, :].ravel())      # srow_x, srow_y, srow_z
    view[344:348] = b"n+1\0"
    body = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()
    return hdr.tobytes() + body


def encode(array_zyx: np.ndarray, grid: Grid, *, level: int = 1, description: str = "") -> bytes:
    """``nifti1`` of the lossless form of ``array_zyx``, gzip-compressed (level 1: fast, most of the gain)."""
    return gzip.compress(nifti1(lossless(array_zyx), grid, description=description), compresslevel=level, mtime=0)


# --------------------------------------------------------------------------------------------- overlays
def heat_overlay(attribution: np.ndarray, offset_zyx: Sequence[int], grid: Grid, scale: float) -> bytes:
    """|attribution| / ``scale`` (1 = full colour) on the crop that starts at voxel ``offset_zyx`` of the scan."""
    if not scale > 0:
        raise ValueError(f"attribution display scale must be > 0, got {scale}")
    mag = (np.abs(np.asarray(attribution, dtype=np.float32)) / np.float32(scale)).astype(np.float32)
    crop = Grid(grid.spacing, tuple(grid.index_to_world(offset_zyx)), grid.direction)
    return encode(mag, crop, description="medsuite attribution")


@dataclass(frozen=True)
class Nodule:
    """A nodule to mark: voxel centre (z, y, x) of the scan, diameter in mm (None: unknown), under review or not."""

    zyx: tuple[float, float, float]
    diameter_mm: float | None
    reviewed: bool = False


UNKNOWN_DIAMETER_MM = 6.0


def nodule_overlay(nodules: Sequence[Nodule], grid: Grid, shape_zyx: Sequence[int], *, gap_mm: float = 1.5,
                   thickness_mm: float | None = None) -> bytes | None:
    """Spherical shells just outside each nodule (radius = diameter / 2 + ``gap_mm``), so that every plane through
    a nodule shows a ring around it without covering its edge; None when there is no nodule."""
    if not nodules:
        return None
    spacing = np.asarray(grid.spacing, dtype=float)
    thick = float(thickness_mm) if thickness_mm else max(1.2, 1.6 * float(spacing[1:].max()))
    radii = [(n.diameter_mm or UNKNOWN_DIAMETER_MM) / 2 + gap_mm for n in nodules]
    centres = np.asarray([n.zyx for n in nodules], dtype=float)
    reach = (np.asarray(radii)[:, None] + thick) / spacing[None, :]
    lo = np.floor(centres - reach - 1).min(axis=0).astype(int)
    hi = np.ceil(centres + reach + 1).max(axis=0).astype(int)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(shape_zyx) - 1)
    if np.any(hi < lo):
        return None
    labels = np.zeros(tuple(hi - lo + 1), dtype=np.uint8)
    # each nodule in its own small box; the others first, then the reviewed one on top
    for n, r in sorted(zip(nodules, radii, strict=True), key=lambda t: t[0].reviewed):
        c = np.asarray(n.zyx, dtype=float) - lo
        ext = (r + thick) / spacing
        a = np.maximum(np.floor(c - ext).astype(int), 0)
        b = np.minimum(np.ceil(c + ext).astype(int), np.asarray(labels.shape) - 1)
        if np.any(b < a):
            continue
        axes = [(np.arange(a[d], b[d] + 1) - c[d]) * spacing[d] for d in range(3)]
        dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
        box = labels[a[0]: b[0] + 1, a[1]: b[1] + 1, a[2]: b[2] + 1]
        box[np.abs(dist - r) <= thick / 2] = NODULE_REVIEWED if n.reviewed else NODULE_OTHER
    crop = Grid(grid.spacing, tuple(grid.index_to_world(lo)), grid.direction)
    return encode(labels, crop, level=6, description="medsuite nodules")


def slice_marks(marked_z: Sequence[int], grid: Grid, shape_zyx: Sequence[int]) -> bytes | None:
    """A ``(nz, 1, 1)`` volume whose one voxel per slice spans the whole plane: 1 on the ``marked_z`` slices
    (interpolated or filled, not acquired), 0 elsewhere; None when no slice is marked."""
    nz, ny, nx = (int(s) for s in shape_zyx)
    marks = sorted({int(z) for z in marked_z})
    if not marks:
        return None
    bad = [z for z in marks if not 0 <= z < nz]
    if bad:
        raise ValueError(f"interpolated slice indices {bad} are outside the scan's 0..{nz - 1}")
    arr = np.zeros((nz, 1, 1), dtype=np.uint8)
    arr[marks, 0, 0] = 1
    sz, sy, sx = grid.spacing
    centre = grid.index_to_world((0.0, (ny - 1) / 2, (nx - 1) / 2))
    wide = Grid((sz, sy * ny, sx * nx), tuple(centre), grid.direction)
    return encode(arr, wide, level=6, description="medsuite interpolated slices")
