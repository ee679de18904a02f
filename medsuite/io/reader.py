"""Series -> `Volume`: geometry-correct reading of one DICOM stack (single-frame files or enhanced multi-frame).

Slices are ordered by their position along the slice normal and the depth spacing comes from those
positions. Gaps or uneven spacing are resampled onto a uniform grid (or refused with
``on_irregular='error'``); gantry tilt is corrected by shifting each slice in-plane onto a regular grid
(or refused with ``on_tilt='error'``). Pixel values become Hounsfield units (or the modality's rescaled
units) with per-slice RescaleSlope/Intercept, MONOCHROME1 inverted, padding set to air.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from medsuite.io.decode import NATIVE_SYNTAXES, check_decoder, decode_dataset, fix_bits_stored, read_native
from medsuite.io.dicom import (
    FileHeader,
    Stack,
    group_stacks,
    header_from_dataset,
    iter_files,
    non_image_reason,
    open_header,
    scan_folder,
    sop_class_of,
)
from medsuite.io.errors import (
    DicomError,
    DicomHeaderError,
    MixedSeriesError,
    NotDicomError,
    PixelDataError,
    SeriesGeometryError,
)
from medsuite.io.orientation import StackGeometry, analyse_positions, plane_axes
from medsuite.io.volume import Volume

AIR_HU = -1024.0


@dataclass
class _Instance:
    header: FileHeader
    stored: np.ndarray  # (frames, rows, cols) stored values, bits fixed


def _read_instance(path: str, strict: bool = True) -> _Instance:
    """Header and stored pixel values of one file (uncompressed data read directly at its offset).

    ``strict`` raises for header problems that make the file unusable in a volume (e.g. no positions).
    """
    try:
        with open(path, "rb") as fp:
            try:
                ds = open_header(fp, path)
            except InvalidDicomError as exc:
                raise NotDicomError(f"{path}: not a DICOM file") from exc
            reason = non_image_reason(sop_class_of(ds))
            if reason:
                raise NotDicomError(f"{path}: {reason}")
            if "Rows" not in ds or "Columns" not in ds:
                raise PixelDataError(f"{path}: no image (Rows/Columns missing)")
            header = header_from_dataset(ds, path)
            if header.samples_per_pixel != 1:
                raise PixelDataError(f"{path}: colour image ({header.photometric}); only grey-level slices")
            if header.transfer_syntax in NATIVE_SYNTAXES:
                stored = read_native(
                    fp,
                    path=path,
                    transfer_syntax=header.transfer_syntax,
                    frames=header.n_frames,
                    rows=header.rows,
                    cols=header.cols,
                    bits_allocated=header.bits_allocated,
                    signed=header.signed,
                )
            else:
                check_decoder(header.transfer_syntax, path)
                fp.seek(0)
                full = dcmread(fp, force=True)
                stored = decode_dataset(full, path=path, transfer_syntax=header.transfer_syntax)
    except DicomError:
        raise
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on corrupt headers
        raise NotDicomError(f"{path}: unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    if strict and header.problems:
        raise DicomHeaderError(f"{path}: {'; '.join(header.problems)}")
    return _Instance(header, fix_bits_stored(stored, header.bits_stored, header.signed))


def read_pixels(path: str | Path) -> tuple[FileHeader, np.ndarray]:
    """Header and stored pixel values ``(frames, rows, cols)`` of one file, before any rescale.

    Uncompressed syntaxes are read directly; compressed ones through pydicom's decoders (a missing decoder
    raises `MissingDecoderError` naming the transfer syntax and the package to install).
    """
    inst = _read_instance(str(path), strict=False)
    return inst.header, inst.stored


def _resolve_files(source: Any) -> list[str]:
    if isinstance(source, Mapping) or (
        hasattr(source, "get") and hasattr(source, "index") and not isinstance(source, (list, tuple))
    ):
        files = source.get("files")
        if files is None:
            raise DicomError(
                "read_series: the row has no 'files' column (pass a row of scan_folder().series)"
            )
        return [str(f) for f in files]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            scan = scan_folder(path)
            if scan.series.empty:
                raise DicomError(f"{path}: no DICOM image stack found ({len(scan.skipped)} file(s) skipped)")
            if len(scan.series) > 1:
                raise MixedSeriesError(
                    f"{path}: holds {len(scan.series)} stacks ({', '.join(scan.series['stack_id'][:5])}); "
                    "pick one row of scan_folder(path).series"
                )
            return list(scan.series.iloc[0]["files"])
        return [str(path)]
    if isinstance(source, Sequence):
        return [str(f) for f in source]
    raise TypeError(
        f"read_series: expected file paths, a folder or a series-table row, got {type(source).__name__}"
    )


def _read_all(files: list[str], workers: int | None) -> list[_Instance]:
    if not files:
        raise DicomError("read_series: no files given")
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers == 1 or len(files) < 4:
        return [_read_instance(f) for f in files]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_read_instance, files))


def _one_stack(instances: list[_Instance], label: str) -> tuple[list[_Instance], list[str]]:
    """The instances of the single stack they form (duplicates dropped); raise if they form several."""
    stacks: list[tuple[str, Stack]] = group_stacks([inst.header for inst in instances])
    if len(stacks) > 1:
        parts = [
            f"{sid} ({len(s.headers)} file(s){', localizer' if s.headers[0].is_localizer else ''})"
            for sid, s in stacks
        ]
        raise MixedSeriesError(
            f"{label}: the files hold {len(stacks)} stacks ({'; '.join(parts[:5])}); read one row of "
            "scan_folder(...).series at a time"
        )
    stack = stacks[0][1]
    if stack.fatal:
        raise SeriesGeometryError(f"{label}: {'; '.join(stack.problems)}")
    keep = {id(h) for h in stack.headers}
    return [inst for inst in instances if id(inst.header) in keep], stack.problems


def _check_geometry_tags(instances: list[_Instance], label: str) -> None:
    for inst in instances:
        h = inst.header
        missing = [
            name
            for name, bad in (
                ("ImagePositionPatient", any(p is None for p in h.positions)),
                ("ImageOrientationPatient", h.orientation is None),
                ("PixelSpacing", h.pixel_spacing is None),
            )
            if bad
        ]
        if missing:
            raise DicomHeaderError(f"{h.path}: missing {', '.join(missing)} (needed for geometry) in {label}")


def _to_output(
    frames: list[tuple[_Instance, int]], exact: bool, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale each frame into one ``(n, rows, cols)`` array; also return the padding mask (or None)."""
    first = frames[0][0].header
    out = np.empty((len(frames), first.rows, first.cols), dtype=dtype)
    mask = None
    for k, (inst, f) in enumerate(frames):
        h = inst.header
        stored = inst.stored[f]
        if h.padding_value is not None:
            lo = h.padding_value
            hi = h.padding_limit if h.padding_limit is not None else lo
            lo, hi = min(lo, hi), max(lo, hi)
            pad = (stored >= lo) & (stored <= hi)
            if pad.any():
                if mask is None:
                    mask = np.zeros(out.shape, dtype=bool)
                mask[k] = pad
        if h.photometric == "MONOCHROME1":  # invert within the stored range so that bright = high
            top = (1 << (h.bits_stored - 1)) - 1 if h.signed else (1 << h.bits_stored) - 1
            low = -(1 << (h.bits_stored - 1)) if h.signed else 0
            stored = (top + low) - stored.astype(np.int64)
        slope, intercept = h.slopes[f], h.intercepts[f]
        if exact and slope == 1:
            np.add(stored, np.int32(round(intercept)), out=out[k], casting="unsafe")
        elif exact:
            np.copyto(
                out[k], stored.astype(np.int32) * int(round(slope)) + int(round(intercept)), casting="unsafe"
            )
        else:
            np.multiply(stored, np.float32(slope), out=out[k], casting="unsafe")
            out[k] += np.float32(intercept)
    return out, mask


def _output_dtype(frames: list[tuple[_Instance, int]]) -> tuple[bool, np.dtype]:
    """int16 when every rescale is integral and the result fits int16, else float32."""
    lo, hi = np.inf, -np.inf
    for inst, f in frames:
        h = inst.header
        slope, intercept = h.slopes[f], h.intercepts[f]
        if slope != round(slope) or intercept != round(intercept) or h.photometric == "MONOCHROME1":
            return False, np.dtype(np.float32)
        a, b = float(inst.stored[f].min()), float(inst.stored[f].max())
        ends = (a * slope + intercept, b * slope + intercept)
        lo, hi = min(lo, *ends), max(hi, *ends)
    exact = lo >= -32768 and hi <= 32767
    return exact, np.dtype(np.int16 if exact else np.float32)


def _correct_tilt(
    array: np.ndarray, geometry: StackGeometry, row, col, pixel_spacing, fill: float
) -> np.ndarray:
    """Shift each slice in-plane so that all slices sit on the line through slice 0 along the normal."""
    from scipy.ndimage import shift

    out = array.astype(np.float32, copy=True)
    for k, offset in enumerate(geometry.offsets):
        dy, dx = float(offset @ col) / pixel_spacing[0], float(offset @ row) / pixel_spacing[1]
        if abs(dy) > 1e-6 or abs(dx) > 1e-6:
            out[k] = shift(array[k].astype(np.float32), (dy, dx), order=1, mode="constant", cval=fill)
    return out


def _resample_uniform(array: np.ndarray, distances: np.ndarray, spacing: float) -> np.ndarray:
    """Linear interpolation along the normal onto slices ``spacing`` mm apart from the first one."""
    d = distances - distances[0]
    count = int(np.floor(d[-1] / spacing + 1e-6)) + 1
    targets = np.arange(count) * spacing
    lower = np.clip(np.searchsorted(d, targets, side="right") - 1, 0, len(d) - 2)
    weight = ((targets - d[lower]) / (d[lower + 1] - d[lower])).astype(np.float32)
    out = np.empty((count, *array.shape[1:]), dtype=np.float32)
    for t in range(count):
        a, w = lower[t], weight[t]
        out[t] = array[a] * (1 - w) + array[a + 1] * w if w > 0 else array[a]
    return out


def read_series(
    source: Any,
    *,
    on_irregular: str = "resample",
    on_tilt: str = "correct",
    workers: int | None = None,
) -> Volume:
    """Read one stack into a `Volume` (LPS world geometry, HU for CT).

    ``source``: a row of ``scan_folder(...).series`` (uses its ``files``), a list of files, one file
    (e.g. an enhanced multi-frame object) or a folder holding exactly one stack. ``on_irregular``:
    'resample' (linear, along the normal) or 'error' for missing slices / uneven spacing; ``on_tilt``:
    'correct' or 'error' for gantry tilt. ``workers`` threads decode files in parallel.
    """
    if on_irregular not in ("resample", "error"):
        raise ValueError(f"on_irregular must be 'resample' or 'error', got {on_irregular!r}")
    if on_tilt not in ("correct", "error"):
        raise ValueError(f"on_tilt must be 'correct' or 'error', got {on_tilt!r}")
    files = _resolve_files(source)
    instances = _read_all(files, workers)
    series_uid = instances[0].header.series_uid
    label = f"series {series_uid or '(no SeriesInstanceUID)'}" + (
        f" ({Path(files[0]).parent})" if files else ""
    )
    instances, notes = _one_stack(instances, label)
    _check_geometry_tags(instances, label)

    first = instances[0].header
    try:
        row, col, normal = plane_axes(first.orientation, first.path)
    except ValueError as exc:
        raise DicomHeaderError(str(exc)) from exc
    frames = [(inst, f) for inst in instances for f in range(inst.header.n_frames)]
    positions = np.array([inst.header.positions[f] for inst, f in frames], dtype=np.float64)
    geometry = analyse_positions(positions, row, col, first.pixel_spacing)
    if geometry.duplicate_positions:
        raise SeriesGeometryError(
            f"{label}: {geometry.duplicate_positions} position(s) hold more than one slice"
        )
    frames = [frames[i] for i in geometry.order]

    exact, dtype = _output_dtype(frames)
    array, pad_mask = _to_output(frames, exact, dtype)
    meta: dict[str, Any] = {}
    fill = float(array[~pad_mask].min()) if pad_mask is not None and (~pad_mask).any() else float(array.min())
    if first.modality == "CT":
        fill = min(fill, AIR_HU)
    if pad_mask is not None:
        array[pad_mask] = fill
        meta["padding_replaced_with"] = fill
    if first.photometric == "MONOCHROME1":
        meta["inverted"] = "MONOCHROME1 inverted so that higher values are brighter"

    resampled: list[str] = []
    if not geometry.collinear:
        raise SeriesGeometryError(f"{label}: slice positions do not lie on a line (erratic in-plane offsets)")
    if geometry.tilt_deg > 0:
        if on_tilt == "error":
            raise SeriesGeometryError(
                f"{label}: gantry tilt of {geometry.tilt_deg:.2f} deg (slices shifted in-plane); "
                "pass on_tilt='correct' to resample onto a regular grid"
            )
        array = _correct_tilt(array, geometry, row, col, first.pixel_spacing, fill)
        meta["gantry_tilt_deg"] = round(geometry.tilt_deg, 4)
        resampled.append(
            f"gantry tilt {geometry.tilt_deg:.2f} deg corrected by shifting slices in-plane (linear)"
        )
    spacing_z = geometry.spacing
    if spacing_z is None:
        spacing_z = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
        notes = [*notes, "single slice: depth spacing taken from SliceThickness (or 1 mm)"]
    elif not geometry.uniform:
        problem = "; ".join(p for p in geometry.problems() if "spacing" in p)
        if on_irregular == "error":
            raise SeriesGeometryError(f"{label}: {problem}; pass on_irregular='resample' to interpolate")
        n_before = array.shape[0]
        array = _resample_uniform(array, geometry.distances, spacing_z)
        resampled.append(
            f"{problem}: {n_before} slices linearly interpolated onto {array.shape[0]} slices {spacing_z:.4g} mm apart"
        )
    if resampled:
        meta["resampled"] = "; ".join(resampled)
    if notes:
        meta["notes"] = list(notes)

    meta.update(_meta_from(first, len(instances)))
    return Volume(
        array=array,
        spacing=(float(spacing_z), float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        origin=tuple(frames[0][0].header.positions[frames[0][1]]),
        direction=np.stack([normal, col, row], axis=1),
        series_uid=series_uid,
        study_uid=first.study_uid,
        modality=first.modality,
        meta=meta,
    )


def _meta_from(h: FileHeader, n_files: int) -> dict[str, Any]:
    from medsuite.io.decode import syntax_name

    values = {
        "patient_id": h.patient_id,
        "study_date": h.study_date,
        "manufacturer": h.manufacturer,
        "slice_thickness": h.slice_thickness,
        "window_center": h.window_center,
        "window_width": h.window_width,
        "kvp": h.kvp,
        "transfer_syntax": syntax_name(h.transfer_syntax),
        "n_files": n_files,
        "description": h.description,
    }
    return {k: v for k, v in values.items() if v not in (None, "")}


def read_dicom_files(paths: Sequence[str | Path], **kwargs: Any) -> Volume:
    """`read_series` over every file under ``paths`` (files or folders) that must form one stack."""
    return read_series(list(iter_files(paths)), **kwargs)
