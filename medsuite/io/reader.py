"""Series -> `Volume`: geometry-correct reading of one DICOM stack (single-frame files or enhanced multi-frame).

Slices are ordered by their position along the slice normal and the depth spacing comes from those
positions. Gaps or uneven spacing are resampled onto a uniform grid (or refused with
``on_irregular='error'``); gantry tilt is corrected by shifting each slice in-plane onto a regular grid
(or refused with ``on_tilt='error'``). Pixel values become Hounsfield units (or the modality's rescaled
units) with per-slice RescaleSlope/Intercept, MONOCHROME1 inverted, padding set to air.

Speed: headers come first (uncompressed little-endian files through `rawheader`, which skips pydicom's
per-element bookkeeping), so slices are ordered before any pixel is read; uncompressed pixels are then
read with one ``readinto`` per file straight into their slot of the preallocated volume (threads overlap
the reads, which release the GIL) and the rescale runs in place over runs of slices that share it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.errors import InvalidDicomError

from medsuite.io.decode import (
    NATIVE_SYNTAXES,
    check_decoder,
    decode_dataset,
    fix_bits_stored,
    native_dtype,
    pixel_element_length,
)
from medsuite.io.dicom import (
    FileHeader,
    Stack,
    group_stacks,
    header_from_dataset,
    header_from_raw,
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
from medsuite.io.rawheader import read_raw_header
from medsuite.io.volume import Volume

AIR_HU = -1024.0
_ROWS, _COLUMNS = 0x00280010, 0x00280011


@dataclass
class _Instance:
    """One file's header and where its stored values come from."""

    header: FileHeader
    offset: int | None = None  # byte offset of uncompressed pixel values; None: decode with pydicom
    dtype: np.dtype | None = None  # stored dtype as in the file (big endian for Explicit VR Big Endian)


def _checked_header(
    sop_class: str, has_size: bool, header: Callable[[], FileHeader], path: str
) -> FileHeader:
    """`FileHeader` of an image slice; raise for non-image objects and colour images."""
    reason = non_image_reason(sop_class)
    if reason:
        raise NotDicomError(f"{path}: {reason}")
    if not has_size:
        raise PixelDataError(f"{path}: no image (Rows/Columns missing)")
    h = header()
    if h.samples_per_pixel != 1:
        raise PixelDataError(f"{path}: colour image ({h.photometric}); only grey-level slices")
    return h


def _locate(path: str) -> tuple[FileHeader, int | None, int, int]:
    """Header, Pixel Data value offset and length (uncompressed syntaxes only) and the file size."""
    raw = read_raw_header(path)
    if raw is not None:  # uncompressed little endian: the fast path
        has_size = _ROWS in raw.elements and _COLUMNS in raw.elements
        header = _checked_header(raw.sop_class(), has_size, lambda: header_from_raw(raw, path), path)
        if raw.pixel_offset is None:
            raise PixelDataError(
                f"{path}: the file ends before its Pixel Data element (truncated or no image)"
            )
        return header, raw.pixel_offset, raw.pixel_length, raw.file_size
    with open(path, "rb") as fp:  # anything unusual: pydicom parses the header
        try:
            ds = open_header(fp, path)
        except InvalidDicomError as exc:
            raise NotDicomError(f"{path}: not a DICOM file") from exc
        has_size = "Rows" in ds and "Columns" in ds
        header = _checked_header(sop_class_of(ds), has_size, lambda: header_from_dataset(ds, path), path)
        if header.transfer_syntax not in NATIVE_SYNTAXES:
            return header, None, 0, 0
        length = pixel_element_length(fp, header.transfer_syntax, path)
        return header, fp.tell(), length, os.fstat(fp.fileno()).st_size


def _read_header(path: str, strict: bool = True) -> _Instance:
    """Header of one file and where its pixels are; checks the pixel length without reading the pixels.

    ``strict`` raises for header problems that make the file unusable in a volume (e.g. no positions).
    """
    try:
        header, offset, length, size = _locate(path)
        inst = _Instance(header)
        if offset is None:
            check_decoder(header.transfer_syntax, path)
        else:
            dtype = native_dtype(
                header.bits_allocated, header.signed, header.transfer_syntax == uids.ExplicitVRBigEndian
            )
            expected = header.n_frames * header.rows * header.cols * dtype.itemsize
            if length < expected:
                raise PixelDataError(
                    f"{path}: Pixel Data holds {length} bytes but {header.n_frames} frame(s) of "
                    f"{header.rows}x{header.cols} at {header.bits_allocated} bits need {expected}"
                )
            if size - offset < expected:
                raise PixelDataError(
                    f"{path}: the file is truncated ({max(0, size - offset)} of {expected} pixel bytes present)"
                )
            inst.offset, inst.dtype = offset, dtype
    except DicomError:
        raise
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on corrupt headers
        raise NotDicomError(f"{path}: unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    if strict and header.problems:
        raise DicomHeaderError(f"{path}: {'; '.join(header.problems)}")
    return inst


def _read_native_into(inst: _Instance, out: np.ndarray) -> None:
    """Read an instance's uncompressed frames straight into ``out`` (C-contiguous, native byte order)."""
    path = inst.header.path
    view = memoryview(out).cast("B")
    got = 0
    try:
        with open(path, "rb", buffering=0) as fp:
            fp.seek(inst.offset)
            while got < len(view):  # readinto releases the GIL: threads overlap file reads
                n = fp.readinto(view[got:])
                if not n:
                    break
                got += n
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc}") from exc
    if got != len(view):
        raise PixelDataError(f"{path}: the file is truncated ({got} of {len(view)} pixel bytes present)")
    if inst.dtype is not None and inst.dtype.byteorder == ">":
        out.byteswap(inplace=True)


def _decode(inst: _Instance) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` of a compressed or deflated instance, through pydicom."""
    path, syntax = inst.header.path, inst.header.transfer_syntax
    try:
        full = dcmread(path, force=True)
        return decode_dataset(full, path=path, transfer_syntax=syntax)
    except DicomError:
        raise
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on corrupt files
        raise NotDicomError(f"{path}: unreadable DICOM: {type(exc).__name__}: {exc}") from exc


def _stored_dtype(header: FileHeader) -> np.dtype:
    return native_dtype(header.bits_allocated, header.signed, False)


def _fix_bits_inplace(stored: np.ndarray, bits_stored: int, signed: bool) -> None:
    """`fix_bits_stored` without a copy: clear (or sign-extend) the bits above BitsStored."""
    bits_allocated = stored.dtype.itemsize * 8
    if bits_stored >= bits_allocated or bits_stored <= 0:
        return
    if signed:
        shift = bits_allocated - bits_stored
        np.left_shift(stored, shift, out=stored)
        np.right_shift(stored, shift, out=stored)
    else:
        np.bitwise_and(stored, np.array((1 << bits_stored) - 1, dtype=stored.dtype), out=stored)


def _instance_stored(inst: _Instance) -> np.ndarray:
    """All frames of one instance as a new ``(frames, rows, cols)`` array of stored values, bits fixed."""
    h = inst.header
    if inst.offset is None:
        return fix_bits_stored(_decode(inst), h.bits_stored, h.signed)
    out = np.empty((h.n_frames, h.rows, h.cols), dtype=_stored_dtype(h))
    _read_native_into(inst, out)
    _fix_bits_inplace(out, h.bits_stored, h.signed)
    return out


def read_pixels(path: str | Path) -> tuple[FileHeader, np.ndarray]:
    """Header and stored pixel values ``(frames, rows, cols)`` of one file, before any rescale.

    Uncompressed syntaxes are read directly; compressed ones through pydicom's decoders (a missing decoder
    raises `MissingDecoderError` naming the transfer syntax and the package to install).
    """
    inst = _read_header(str(path), strict=False)
    return inst.header, _instance_stored(inst)


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


def _workers(workers: int | None) -> int:
    return min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))


def _read_headers(files: list[str]) -> list[_Instance]:
    """Headers of every file (no pixels yet), so that slices are ordered before any pixel is read.

    In the calling thread: parsing holds the GIL, so threads gave no gain on the 2-core machine (and
    sometimes lost time to GIL hand-offs after each small read).
    """
    if not files:
        raise DicomError("read_series: no files given")
    return [_read_header(f) for f in files]


def _load_stored(frames: list[tuple[_Instance, int]], workers: int) -> np.ndarray:
    """Stored values of ``frames`` (in that order) as one ``(n, rows, cols)`` array, bits fixed.

    Uncompressed files are read straight into their slot of the preallocated array (no intermediate
    bytes); compressed ones are decoded by pydicom. Files are handled in a thread pool.
    """
    first = frames[0][0].header
    dtypes = {_stored_dtype(inst.header) for inst, _ in frames}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    stored = np.empty((len(frames), first.rows, first.cols), dtype=dtype)
    slots: dict[int, tuple[_Instance, list[tuple[int, int]]]] = {}
    for k, (inst, f) in enumerate(frames):
        slots.setdefault(id(inst), (inst, []))[1].append((f, k))

    def load(job: tuple[_Instance, list[tuple[int, int]]]) -> None:
        inst, pairs = job
        h = inst.header
        ks = [k for _, k in pairs]
        direct = (
            inst.offset is not None
            and _stored_dtype(h) == dtype
            and [f for f, _ in pairs] == list(range(h.n_frames))
            and ks == list(range(ks[0], ks[0] + h.n_frames))
        )
        if direct:  # the common case: frames land on consecutive slots of the output
            target = stored[ks[0] : ks[0] + h.n_frames]
            _read_native_into(inst, target)
            _fix_bits_inplace(target, h.bits_stored, h.signed)
            return
        values = _instance_stored(inst)
        for f, k in pairs:
            stored[k] = values[f]

    jobs = list(slots.values())
    if workers == 1 or len(jobs) < 4:
        for job in jobs:
            load(job)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(load, jobs))
    return stored


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


def _pixel_key(h: FileHeader, f: int) -> tuple:
    return (
        h.slopes[f],
        h.intercepts[f],
        h.photometric,
        h.bits_stored,
        h.signed,
        h.padding_value,
        h.padding_limit,
    )


def _runs(frames: list[tuple[_Instance, int]]) -> list[tuple[int, int, FileHeader, int]]:
    """Consecutive frames sharing rescale, photometric and padding: ``(start, stop, header, frame)``."""
    runs: list[tuple[int, int, FileHeader, int]] = []
    key = None
    for k, (inst, f) in enumerate(frames):
        this = _pixel_key(inst.header, f)
        if this == key:
            start, _, h, hf = runs[-1]
            runs[-1] = (start, k + 1, h, hf)
        else:
            runs.append((k, k + 1, inst.header, f))
            key = this
    return runs


def _padding_mask(stored: np.ndarray, runs: list[tuple[int, int, FileHeader, int]]) -> np.ndarray | None:
    """True where a stored value lies in PixelPaddingValue..PixelPaddingRangeLimit (None if nowhere)."""
    mask = None
    for start, stop, h, _ in runs:
        if h.padding_value is None:
            continue
        lo = h.padding_value
        hi = h.padding_limit if h.padding_limit is not None else lo
        lo, hi = min(lo, hi), max(lo, hi)
        part = stored[start:stop]
        pad = (part >= lo) & (part <= hi)
        if pad.any():
            if mask is None:
                mask = np.zeros(stored.shape, dtype=bool)
            mask[start:stop] = pad
    return mask


def _rescaled_fits_int16(part: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether ``part * slope + intercept`` fits int16; one pass over unsigned data when that settles it."""

    def fits(a: float, b: float) -> bool:
        ends = (a * slope + intercept, b * slope + intercept)
        return min(ends) >= -32768 and max(ends) <= 32767

    if part.dtype.kind == "u" and slope > 0 and fits(0.0, float(part.max())):
        return True  # the smallest stored value is at least 0: no need to look for it
    return fits(float(part.min()), float(part.max()))


def _output_dtype(stored: np.ndarray, runs: list[tuple[int, int, FileHeader, int]]) -> tuple[bool, np.dtype]:
    """int16 when every rescale is integral and the result fits int16, else float32."""
    for _, _, h, f in runs:
        slope, intercept = h.slopes[f], h.intercepts[f]
        if slope != round(slope) or intercept != round(intercept) or h.photometric == "MONOCHROME1":
            return False, np.dtype(np.float32)
    for start, stop, h, f in runs:
        slope, intercept = h.slopes[f], h.intercepts[f]
        if stored.dtype == np.int16 and slope == 1 and intercept == 0:
            continue  # int16 values unchanged: always fit
        if not _rescaled_fits_int16(stored[start:stop], slope, intercept):
            return False, np.dtype(np.float32)
    return True, np.dtype(np.int16)


def _to_output(
    stored: np.ndarray, frames: list[tuple[_Instance, int]]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rescale stored values into output units, vectorised over runs of slices with the same rescale.

    Returns the array (int16 when exact, else float32) and the padding mask (or None), taken from the
    stored values. 16-bit stored values with slope 1 are rescaled in place, without a copy.
    """
    runs = _runs(frames)
    mask = _padding_mask(stored, runs)
    exact, dtype = _output_dtype(stored, runs)
    if exact and stored.dtype in (np.int16, np.uint16) and all(h.slopes[f] == 1 for _, _, h, f in runs):
        # The usual CT. Adding modulo 2**16 gives the right int16 bits because every result fits int16.
        for start, stop, h, f in runs:
            shift = int(round(h.intercepts[f])) % 65536
            if shift:
                part = stored[start:stop]
                np.add(part, np.array(shift, dtype=np.uint16).view(stored.dtype), out=part)
        return stored.view(np.int16), mask
    out = np.empty(stored.shape, dtype=dtype)
    for start, stop, h, f in runs:
        part, target = stored[start:stop], out[start:stop]
        if h.photometric == "MONOCHROME1":  # invert within the stored range so that bright = high
            top = (1 << (h.bits_stored - 1)) - 1 if h.signed else (1 << h.bits_stored) - 1
            low = -(1 << (h.bits_stored - 1)) if h.signed else 0
            part = (top + low) - part.astype(np.int64)
        slope, intercept = h.slopes[f], h.intercepts[f]
        if exact and slope == 1:
            np.add(part, np.int32(round(intercept)), out=target, casting="unsafe")
        elif exact:
            np.copyto(
                target, part.astype(np.int32) * int(round(slope)) + int(round(intercept)), casting="unsafe"
            )
        else:
            np.multiply(part, np.float32(slope), out=target, casting="unsafe")
            target += np.float32(intercept)
    return out, mask


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
    'correct' or 'error' for gantry tilt. ``workers`` threads read and decode files in parallel
    (default: up to 8).
    """
    if on_irregular not in ("resample", "error"):
        raise ValueError(f"on_irregular must be 'resample' or 'error', got {on_irregular!r}")
    if on_tilt not in ("correct", "error"):
        raise ValueError(f"on_tilt must be 'correct' or 'error', got {on_tilt!r}")
    files = _resolve_files(source)
    workers = _workers(workers)
    instances = _read_headers(files)
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

    if not geometry.collinear:
        raise SeriesGeometryError(f"{label}: slice positions do not lie on a line (erratic in-plane offsets)")
    if geometry.tilt_deg > 0 and on_tilt == "error":
        raise SeriesGeometryError(
            f"{label}: gantry tilt of {geometry.tilt_deg:.2f} deg (slices shifted in-plane); "
            "pass on_tilt='correct' to resample onto a regular grid"
        )
    irregular = geometry.spacing is not None and not geometry.uniform
    spacing_problem = "; ".join(p for p in geometry.problems() if "spacing" in p) if irregular else ""
    if irregular and on_irregular == "error":  # refuse before reading any pixel
        raise SeriesGeometryError(f"{label}: {spacing_problem}; pass on_irregular='resample' to interpolate")
    array, pad_mask = _to_output(_load_stored(frames, workers), frames)
    meta: dict[str, Any] = {}
    fill = 0.0
    if pad_mask is not None or geometry.tilt_deg > 0:  # the fill value costs a pass over the voxels
        fill = (
            float(array[~pad_mask].min())
            if pad_mask is not None and (~pad_mask).any()
            else float(array.min())
        )
        if first.modality == "CT":
            fill = min(fill, AIR_HU)
    if pad_mask is not None:
        array[pad_mask] = fill
        meta["padding_replaced_with"] = fill
    if first.photometric == "MONOCHROME1":
        meta["inverted"] = "MONOCHROME1 inverted so that higher values are brighter"

    resampled: list[str] = []
    if geometry.tilt_deg > 0:
        array = _correct_tilt(array, geometry, row, col, first.pixel_spacing, fill)
        meta["gantry_tilt_deg"] = round(geometry.tilt_deg, 4)
        resampled.append(
            f"gantry tilt {geometry.tilt_deg:.2f} deg corrected by shifting slices in-plane (linear)"
        )
    spacing_z = geometry.spacing
    if spacing_z is None:
        spacing_z = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
        notes = [*notes, "single slice: depth spacing taken from SliceThickness (or 1 mm)"]
    elif irregular:
        problem = spacing_problem
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
