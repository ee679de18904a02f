"""Slice geometry shared by the folder scan and the reader: plane axes, ordering along the normal, spacing,
gaps and gantry tilt, all from ImagePositionPatient / ImageOrientationPatient (never InstanceNumber).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsuite.io.problems import Code, Problem

# A slice spacing step may differ from the median by this much (relative, absolute mm) and still be regular.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01
# In-plane drift of slice origins (as a fraction of the smallest pixel size) below which there is no tilt.
TILT_TOLERANCE_PIXELS = 0.1
# Positions along the normal closer than this (mm) are the same position.
SAME_POSITION_MM = 1e-3
# |normal . axis| at least this (about 20 degrees) names the plane; below it the stack is oblique.
PLANE_COSINE = 0.94


def plane_axes(iop: tuple[float, ...] | np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ``(row, col, normal)`` vectors from ImageOrientationPatient; ``where`` names the file in errors.

    ``row`` is the world direction of increasing column index (array x), ``col`` of increasing row index
    (array y); ``normal = row x col``. Slightly non-unit or non-perpendicular values (decimal-string
    rounding) are cleaned up; clearly invalid ones raise ``ValueError``.
    """
    values = np.asarray(iop, dtype=np.float64).reshape(-1)
    if values.size != 6 or not np.all(np.isfinite(values)):
        raise ValueError(f"{where}: ImageOrientationPatient must hold six numbers, got {list(values)}")
    row, col = values[:3], values[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if min(nr, nc) < 0.9 or max(nr, nc) > 1.1:
        raise ValueError(f"{where}: ImageOrientationPatient vectors are not unit length ({nr:.3f}, {nc:.3f})")
    row, col = row / nr, col / nc
    if abs(row @ col) > 1e-2:
        raise ValueError(f"{where}: ImageOrientationPatient row and column vectors are not perpendicular")
    col = col - (row @ col) * row
    col /= np.linalg.norm(col)
    return row, col, np.cross(row, col)


def orientation_label(normal: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique' from the slice normal (LPS)."""
    a = np.abs(np.asarray(normal, dtype=np.float64))
    axis = int(np.argmax(a))
    if a[axis] < PLANE_COSINE:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class StackGeometry:
    """Where the slices of one stack lie along its normal, and what is irregular about them."""

    order: np.ndarray  # indices into the input positions, sorted along the normal
    distances: np.ndarray  # sorted positions along the normal (mm)
    spacing: float | None  # median step (mm); None for a single slice
    uniform: bool  # every step within tolerance of the median
    duplicate_positions: int  # positions holding more than one slice
    missing_slices: int  # estimated slices missing from gaps that are multiples of the spacing
    tilt_deg: float  # gantry tilt: angle between the stack's step vector and the normal
    offsets: np.ndarray  # in-plane offset (mm, world) of each sorted slice from the line through slice 0
    collinear: bool  # the in-plane offsets grow linearly (plain tilt) rather than erratically

    def problem_list(self) -> list[Problem]:
        """What is irregular, with codes (empty when the stack is a regular grid)."""
        out = []
        if self.duplicate_positions:
            out.append(Problem(Code.DUPLICATE_POSITIONS, f"{self.duplicate_positions} position(s) hold more than one slice"))
        if not self.collinear:
            out.append(Problem(Code.NOT_COLLINEAR, "slice positions do not lie on a line (erratic in-plane offsets)"))
        elif self.tilt_deg > 0:
            out.append(Problem(Code.GANTRY_TILT, f"gantry tilt {self.tilt_deg:.2f} deg"))
        if not self.uniform and self.spacing is not None:
            steps = np.diff(self.distances)
            steps = steps[steps >= SAME_POSITION_MM]
            text = f"non-uniform slice spacing (steps {steps.min():.3g}-{steps.max():.3g} mm"
            if self.missing_slices:
                text += f", about {self.missing_slices} slice(s) missing"
            out.append(Problem(Code.IRREGULAR_SPACING, text + ")"))
        return out

    def problems(self) -> list[str]:
        """Plain-words descriptions of what is irregular (empty when the stack is a regular grid)."""
        return [p.message for p in self.problem_list()]


def analyse_positions(
    positions: np.ndarray, row: np.ndarray, col: np.ndarray, pixel_spacing: tuple[float, float]
) -> StackGeometry:
    """Order ``positions`` (n, 3) along the normal of ``row``/``col`` and measure spacing, gaps and tilt."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    normal = np.cross(row, col)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    d = dist[order]
    p = pos[order]
    n = len(d)
    offsets = (p - p[0]) - np.outer(d - d[0], normal)
    if n < 2:
        return StackGeometry(order, d, None, True, 0, 0, 0.0, offsets, True)
    steps = np.diff(d)
    duplicates = int(np.count_nonzero(steps < SAME_POSITION_MM))
    real = steps[steps >= SAME_POSITION_MM]
    spacing = float(np.median(real)) if real.size else None
    uniform = spacing is not None and bool(
        np.all(np.abs(real - spacing) <= max(SPACING_ATOL_MM, SPACING_RTOL * spacing))
    )
    missing = 0
    if spacing and not uniform:
        missing = int(np.sum(np.maximum(np.round(real / spacing) - 1, 0)))
    tolerance = TILT_TOLERANCE_PIXELS * min(pixel_spacing)
    tilt, collinear = 0.0, True
    if np.max(np.linalg.norm(offsets, axis=1)) > tolerance and d[-1] > d[0]:
        delta = d - d[0]
        slope = (delta @ offsets) / (delta @ delta)  # in-plane shift per mm along the normal
        residual = np.max(np.linalg.norm(offsets - np.outer(delta, slope), axis=1))
        collinear = bool(residual <= tolerance)
        tilt = float(np.degrees(np.arctan(np.linalg.norm(slope))))
    return StackGeometry(order, d, spacing, uniform, duplicates, missing, tilt, offsets, collinear)
