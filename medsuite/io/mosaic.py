"""Siemens mosaic: one DICOM image holding a whole volume as tiles on a lightbox (EPI fMRI/DWI/ASL before XA).

A mosaic file says ``MOSAIC`` in ImageType; the number of slices comes from the CSA image header
(``NumberOfImagesInMosaic``, read with nibabel's ``nicom.csareader``) or the private element
(0019,xx0A). Tiles sit row by row on a ``ceil(sqrt(n))`` square grid. Geometry follows nibabel and
dcm2niix:

- ImagePositionPatient is the corner of the whole lightbox, so the first slice's corner is shifted by
  half the difference between the lightbox and a tile, along the row and column directions;
- slice ``k`` lies ``k * SpacingBetweenSlices`` (else SliceThickness) along the slice normal, whose sign
  comes from the CSA header's ``SliceNormalVector`` (the cross product of the orientation vectors gives
  its direction; only Siemens knows whether the slices were stored ascending or descending).

Without the CSA slice normal or the slice count the file is refused with an error that says "Siemens mosaic".
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from medsuite.io.orientation import plane_axes

if TYPE_CHECKING:
    from medsuite.io.header import FileHeader, MosaicInfo, _Fields

__all__ = ["csa_image_header", "mosaic_layout", "tile_positions", "untile"]

_CSA_CREATOR = "SIEMENS CSA HEADER"
_MR_CREATOR = "SIEMENS MR HEADER"


def csa_image_header(fields: _Fields) -> dict[str, Any] | None:
    """The parsed CSA image header (0029,xx10) of a Siemens file, or None when absent or unreadable."""
    values = fields.private(0x0029, _CSA_CREATOR, 0x10)
    if not values or not isinstance(values[0], (bytes, bytearray)):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nibabel.nicom announces itself as experimental on import
        from nibabel.nicom import csareader

    try:
        return csareader.read(bytes(values[0]))
    except Exception:  # noqa: BLE001 - nibabel raises assorted errors on corrupt CSA headers
        return None


def _csa_values(csa: dict[str, Any] | None, name: str) -> list:
    if not csa:
        return []
    item = csa.get("tags", {}).get(name)
    if not item:
        return []
    return list(item.get("items") or [])


def _count(fields: _Fields, csa: dict[str, Any] | None) -> int | None:
    items = _csa_values(csa, "NumberOfImagesInMosaic")
    if items:
        try:
            return int(items[0])
        except (TypeError, ValueError):
            return None
    values = fields.private(0x0019, _MR_CREATOR, 0x0A)
    if not values:
        return None
    value = values[0]
    if isinstance(value, (bytes, bytearray)):
        return struct.unpack("<H", bytes(value[:2]))[0] if len(value) >= 2 else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def mosaic_layout(fields: _Fields, h: FileHeader) -> MosaicInfo:
    """The lightbox layout of a mosaic file; `ValueError` (a plain reason) when it cannot be decoded."""
    from medsuite.io.header import MosaicInfo

    if h.n_frames != 1:
        raise ValueError(f"a mosaic with NumberOfFrames {h.n_frames} (expected 1)")
    csa = csa_image_header(fields)
    n = _count(fields, csa)
    if n is None:
        raise ValueError("NumberOfImagesInMosaic is missing (no CSA image header or (0019,xx0A))")
    grid = math.ceil(math.sqrt(n)) if n > 0 else 0
    if n < 1 or grid == 0 or h.rows < grid or h.cols < grid:
        raise ValueError(f"NumberOfImagesInMosaic {n} does not fit a {h.rows}x{h.cols} image")
    if h.rows % grid or h.cols % grid:
        raise ValueError(
            f"a {h.rows}x{h.cols} image is not a whole number of tiles for NumberOfImagesInMosaic {n} on a "
            f"{grid}x{grid} lightbox (resized or cropped after acquisition?)"
        )
    info = MosaicInfo(n=n, grid=grid, tile_rows=h.rows // grid, tile_cols=h.cols // grid)
    matrix = _acquisition_matrix(csa)
    if matrix is not None and sorted(matrix) != sorted((info.tile_rows, info.tile_cols)):
        raise ValueError(
            f"tiles of {info.tile_rows}x{info.tile_cols} on a {grid}x{grid} lightbox disagree with the acquisition "
            f"matrix {matrix[0]}x{matrix[1]} (AcquisitionMatrixText): the image was resized after acquisition"
        )
    return info


def _acquisition_matrix(csa: dict[str, Any] | None) -> tuple[int, int] | None:
    """The in-plane matrix from the CSA AcquisitionMatrixText ('128p*128' -> (128, 128)), when readable."""
    items = _csa_values(csa, "AcquisitionMatrixText")
    if not items:
        return None
    parts = re.findall(r"\d+", str(items[0]))
    if len(parts) != 2:
        return None
    return int(parts[0]), int(parts[1])


def tile_positions(h: FileHeader, position: tuple[float, float, float], fields: _Fields) -> list:
    """World position (LPS mm) of the first voxel of every tile, in tile order."""
    info = h.mosaic
    assert info is not None and h.orientation is not None and h.pixel_spacing is not None
    row, col, normal = plane_axes(h.orientation, h.path)
    csa_normal = _csa_values(csa_image_header(fields), "SliceNormalVector")
    if len(csa_normal) < 3:
        raise ValueError("the CSA image header has no SliceNormalVector, so the slice order is unknown")
    csa = np.asarray([float(v) for v in csa_normal[:3]])
    norm = float(np.linalg.norm(csa))
    if not np.isfinite(norm) or norm < 0.5 or abs(float(csa @ normal)) / norm < 0.99:
        raise ValueError(f"the CSA SliceNormalVector {csa.tolist()} is not the normal of ImageOrientationPatient")
    if csa @ normal < 0:
        normal = -normal
    step = h.spacing_between_slices or h.slice_thickness
    if step is None or not step > 0:
        raise ValueError("no SpacingBetweenSlices or SliceThickness, so the slice spacing is unknown")
    row_mm, col_mm = h.pixel_spacing  # between rows (along col), between columns (along row)
    # The lightbox is taken as grid x (size / grid) tiles even when size / grid is not whole (as nibabel and
    # dcm2niix do: Siemens positions the nominal lightbox).
    shift = (h.cols - h.cols / info.grid) / 2 * col_mm * row + (h.rows - h.rows / info.grid) / 2 * row_mm * col
    first = np.asarray(position, dtype=np.float64) + shift
    return [tuple(float(v) for v in first + k * step * normal) for k in range(info.n)]


def untile(stored: np.ndarray, info: MosaicInfo, tiles: list[int]) -> np.ndarray:
    """Tiles ``tiles`` of a ``(rows, cols)`` mosaic as ``(len(tiles), tile_rows, tile_cols)``."""
    out = np.empty((len(tiles), info.tile_rows, info.tile_cols), dtype=stored.dtype)
    for k, tile in enumerate(tiles):
        r, c = divmod(tile, info.grid)
        out[k] = stored[r * info.tile_rows : (r + 1) * info.tile_rows, c * info.tile_cols : (c + 1) * info.tile_cols]
    return out
