"""Series -> `Volume`: geometry-correct reading of one DICOM stack (single-frame files, enhanced multi-frame
objects, Siemens mosaics), one volume of a 4D stack at a time.

Slices are ordered by their position along the slice normal and the depth spacing comes from those
positions. Gaps or uneven spacing are regridded onto a uniform grid at a step that keeps the acquired
resolution (the smallest acquired step, or the caller's ``z_spacing``), or refused with
``on_irregular='error'``; gantry tilt is corrected by shifting each slice in-plane onto a regular grid (or
refused with ``on_tilt='error'``). Every slice whose pixels were interpolated is listed in
``meta["interpolated_slices"]``. Pixel values become Hounsfield units (or the modality's rescaled units)
with per-slice RescaleSlope/Intercept, MONOCHROME1 inverted, padding set to air.

Speed: headers come first (uncompressed little-endian files through `rawheader`, which skips pydicom's
per-element bookkeeping), so slices are ordered before any pixel is read; uncompressed pixels are then
read with one ``readinto`` per file straight into their slot of the preallocated volume (threads overlap
the reads, which release the GIL) and the rescale runs in place over runs of slices that share it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom import uid as uids

from medsuite.io.decode import check_decoder, decode_dataset, fix_bits_stored, native_dtype, syntax_name
from medsuite.io.dicom import iter_files, scan_file, scan_folder
from medsuite.io.errors import (
    DicomError,
    DicomHeaderError,
    MixedSeriesError,
    NotDicomError,
    PixelDataError,
    SeriesGeometryError,
)
from medsuite.io.files import open_regular
from medsuite.io.header import FileHeader
from medsuite.io.mosaic import untile
from medsuite.io.orientation import (
    SAME_POSITION_MM,
    SPACING_ATOL_MM,
    SPACING_RTOL,
    StackGeometry,
    analyse_positions,
    plane_axes,
)
from medsuite.io.problems import Code, first_fatal
from medsuite.io.stacks import Plane, Stack, group_stacks
from medsuite.io.volume import Volume

__all__ = ["read_dicom_files", "read_pixels", "read_series", "read_series_volumes"]

log = logging.getLogger(__name__)

AIR_HU = -1024.0
# An irregular stack is regridded at most to this many times its acquired slice count (memory bound).
MAX_REGRID_FACTOR = 4

_PIXEL_CODES = frozenset({Code.TRUNCATED, Code.NO_PIXEL_DATA, Code.PIXEL_LENGTH, Code.COLOUR, Code.VIDEO})
_NOT_DICOM_CODES = frozenset({Code.NOT_DICOM, Code.NOT_REGULAR_FILE, Code.UNREADABLE, Code.UNPARSABLE, Code.NON_IMAGE})
_GEOMETRY_CODES = frozenset({Code.DUPLICATE_POSITIONS, Code.NOT_COLLINEAR, Code.MIXED_PIXEL_SPACING})


def error_for(code: Code, message: str) -> DicomError:
    """The `DicomError` subclass that fits a problem code."""
    if code in _PIXEL_CODES:
        return PixelDataError(message, code=code)
    if code in _NOT_DICOM_CODES or code == Code.NO_IMAGE:
        return NotDicomError(message, code=code) if code != Code.NO_IMAGE else PixelDataError(message, code=code)
    if code in _GEOMETRY_CODES:
        return SeriesGeometryError(message, code=code)
    return DicomHeaderError(message, code=code)


@dataclass
class _Instance:
    """One file's header and where its stored values come from."""

    header: FileHeader
    offset: int | None = None  # byte offset of uncompressed pixel values; None: decode with pydicom
    dtype: np.dtype | None = None  # stored dtype as in the file (big endian for Explicit VR Big Endian)


def _read_header(path: str, strict: bool = True) -> _Instance:
    """Header of one file and where its pixels are (no pixel read); raise for files that are not image slices.

    ``strict`` also raises for the file's own fatal problems (truncated, invalid values, no positions).
    """
    item = scan_file(path)
    if not isinstance(item, FileHeader):
        _, code, reason = item
        raise error_for(code, f"{path}: {reason}")
    h = item
    if strict and h.fatal:
        first = next(p for p in h.problems if p.fatal)
        raise error_for(first.code, f"{path}: {'; '.join(p.message for p in h.problems if p.fatal)}")
    inst = _Instance(h)
    if h.pixel_offset is None:
        if not h.fatal:
            check_decoder(h.transfer_syntax, path)
    else:
        try:
            inst.offset = h.pixel_offset
            inst.dtype = native_dtype(h.bits_allocated, h.signed, h.transfer_syntax == uids.ExplicitVRBigEndian)
        except ValueError as exc:
            raise DicomHeaderError(f"{path}: {exc}", code=Code.INVALID_HEADER) from exc
    return inst


def _read_native_into(inst: _Instance, out: np.ndarray) -> None:
    """Read an instance's uncompressed frames straight into ``out`` (C-contiguous, native byte order)."""
    path = inst.header.path
    view = memoryview(out).cast("B")
    got = 0
    try:
        with open_regular(path) as fp:
            fp.seek(inst.offset)
            while got < len(view):  # readinto releases the GIL: threads overlap file reads
                n = fp.readinto(view[got:])
                if not n:
                    break
                got += n
    except DicomError:
        raise
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc.strerror or exc}", code=Code.UNREADABLE) from exc
    if got != len(view):
        raise PixelDataError(
            f"{path}: the file is truncated ({got} of {len(view)} pixel bytes present)", code=Code.TRUNCATED
        )
    if inst.dtype is not None and inst.dtype.byteorder == ">":
        out.byteswap(inplace=True)


def _decode(inst: _Instance) -> np.ndarray:
    """Stored values ``(frames, rows, cols)`` of a compressed or deflated instance, through pydicom."""
    path, syntax = inst.header.path, inst.header.transfer_syntax
    try:
        with open_regular(path) as fp:
            full = dcmread(fp, force=True)
            return decode_dataset(full, path=path, transfer_syntax=syntax)
    except DicomError:
        raise
    except OSError as exc:
        raise NotDicomError(f"{path}: cannot read the file: {exc.strerror or exc}", code=Code.UNREADABLE) from exc
    except MemoryError as exc:
        raise PixelDataError(f"{path}: not enough memory to decode its {syntax_name(syntax)} pixel data") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pydicom and its plugins raise assorted errors (Rust ones panic)
        raise PixelDataError(f"{path}: cannot decode its pixel data: {type(exc).__name__}: {exc}") from exc


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
        values = fix_bits_stored(_decode(inst), h.bits_stored, h.signed)
        if values.dtype != _stored_dtype(h):
            raise PixelDataError(
                f"{h.path}: decoded pixels are {values.dtype} but the header says {h.bits_allocated}-bit "
                f"{'signed' if h.signed else 'unsigned'} values",
                code=Code.PIXEL_LENGTH,
            )
        return values
    out = np.empty((h.n_frames, h.rows, h.cols), dtype=_stored_dtype(h))
    _read_native_into(inst, out)
    _fix_bits_inplace(out, h.bits_stored, h.signed)
    return out


def read_pixels(path: str | Path) -> tuple[FileHeader, np.ndarray]:
    """Header and stored pixel values ``(frames, rows, cols)`` of one file, before any rescale.

    Uncompressed syntaxes are read directly; compressed ones through pydicom's decoders (a missing decoder
    raises `MissingDecoderError` naming the transfer syntax and the package to install). A mosaic gives its
    stored lightbox image.
    """
    inst = _read_header(str(path), strict=False)
    h = inst.header
    if any(p.code in (Code.TRUNCATED, Code.PIXEL_LENGTH, Code.NO_PIXEL_DATA, Code.INVALID_HEADER) for p in h.problems):
        first = next(p for p in h.problems if p.fatal)
        raise error_for(first.code, f"{path}: {first.message}")
    return h, _instance_stored(inst)


# ------------------------------------------------------------------------------------ the source
@dataclass
class _Source:
    files: list[str]
    frames: dict[str, list[int] | None]
    stack_id: str | None
    label: str


def _row_like(source: Any) -> bool:
    return isinstance(source, Mapping) or (
        hasattr(source, "get") and hasattr(source, "index") and not isinstance(source, (list, tuple, str))
    )


def _resolve(source: Any, stack: str | None) -> _Source:
    if _row_like(source):
        files = source.get("files")
        if files is None:
            raise DicomError("read_series: the row has no 'files' column (pass a row of scan_folder().series)")
        files = [str(f) for f in files]
        frames = source.get("frames")
        selected: dict[str, list[int] | None] = {}
        if isinstance(frames, (list, tuple)) and len(frames) == len(files):
            selected = {f: (None if fr is None else [int(i) for i in fr]) for f, fr in zip(files, frames, strict=True)}
        stack_id = stack or (str(source.get("stack_id")) if source.get("stack_id") else None)
        label = _label(source.get("series_uid") or "", files)
        if source.get("status") == "error":  # the scan's verdict stands (a broken file may not be in `files`)
            code = first_fatal(source.get("codes")) or Code.UNSUPPORTED
            raise error_for(code, f"stack {stack_id or ''} ({label}) cannot be read: {source.get('problems')}")
        return _Source(files, selected, stack_id, label)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            scan = scan_folder(path)
            if scan.series.empty:
                raise DicomError(f"{path}: no DICOM image stack found ({len(scan.skipped)} file(s) skipped)")
            table = scan.series
            if stack is not None:
                hit = table[table["stack_id"] == stack]
                if hit.empty:
                    raise DicomError(f"{path}: no stack {stack}; stacks: {', '.join(table['stack_id'][:8])}")
                return _resolve(hit.iloc[0], None)
            if len(table) > 1:
                raise MixedSeriesError(
                    f"{path}: holds {len(table)} stacks ({', '.join(table['stack_id'][:5])}); pass stack=ID "
                    "(or --stack ID) with one of them, or a row of scan_folder(path).series"
                )
            return _resolve(table.iloc[0], None)
        return _Source([str(path)], {}, stack, _label("", [str(path)]))
    if isinstance(source, Sequence):
        files = [str(f) for f in source]
        return _Source(files, {}, stack, _label("", files))
    raise TypeError(f"read_series: expected file paths, a folder or a series-table row, got {type(source).__name__}")


def _label(series_uid: str, files: list[str]) -> str:
    where = f" ({Path(files[0]).parent})" if files else ""
    return f"series {series_uid}{where}" if series_uid else f"files in {Path(files[0]).parent}" if files else "series"


def _workers(workers: int | None, stack: Stack) -> int:
    """Threads for pixel reading. Default: one for uncompressed files (a read from the page cache is a memory
    copy; on a shared machine threads lost up to 3x to GIL hand-offs), up to 8 for compressed ones (the
    decoders release the GIL). Pass ``workers`` for network shares, where threads overlap latency."""
    if workers is not None:
        return max(1, int(workers))
    compressed = any(h.pixel_offset is None for h in stack.headers)
    return min(8, os.cpu_count() or 1) if compressed else 1


def _describe_stacks(stacks: list[tuple[str, Stack]]) -> str:
    parts = []
    for sid, s in stacks[:6]:
        h = s.planes[0][0]
        what = [f"{len(s.planes)} plane(s)"]
        if s.n_volumes > 1:
            what.append(f"{s.n_volumes} volumes")
        if h.is_localizer:
            what.append("localizer")
        split = [p.message.split(": ", 1)[-1] for p in s.problems if p.code == Code.SPLIT]
        if split:
            what.append(split[0])
        parts.append(f"{sid} ({', '.join(what)})")
    return "; ".join(parts) + (" ..." if len(stacks) > 6 else "")


def _select_stack(instances: list[_Instance], source: _Source) -> tuple[str, Stack]:
    stacks = group_stacks([inst.header for inst in instances], source.frames)
    if len(stacks) == 1:
        return stacks[0]
    if source.stack_id is not None:
        for sid, s in stacks:
            if sid == source.stack_id:
                return sid, s
    raise MixedSeriesError(
        f"{source.label}: the files hold {len(stacks)} stacks ({_describe_stacks(stacks)}); pass stack=ID "
        "(--stack ID on the command line) with one of these ids, or read one row of scan_folder(...).series",
        code=Code.SPLIT,
    )


def _raise_if_fatal(stack: Stack, label: str) -> None:
    for h in [*stack.broken, *stack.headers]:
        fatal = [p for p in h.problems if p.fatal]
        if fatal:
            raise error_for(fatal[0].code, f"{h.path}: {'; '.join(p.message for p in fatal)} (in {label})")
    fatal = [p for p in stack.problems if p.fatal]
    if fatal:
        raise error_for(fatal[0].code, f"{label}: {'; '.join(p.message for p in fatal)}")
    missing = {
        "ImagePositionPatient": (Code.MISSING_POSITION, lambda h: any(p is None for p in h.positions)),
        "ImageOrientationPatient": (Code.MISSING_ORIENTATION, lambda h: h.orientation is None),
        "PixelSpacing": (Code.MISSING_PIXEL_SPACING, lambda h: h.pixel_spacing is None),
    }
    for h in stack.headers:
        absent = [name for name, (_, test) in missing.items() if test(h)]
        if absent:
            code = missing[absent[0]][0]
            raise DicomHeaderError(f"{h.path}: missing {', '.join(absent)} (needed for geometry) in {label}", code=code)
    spacings = {h.pixel_spacing for h in stack.headers}
    if len(spacings) > 1:
        ref = np.asarray(next(iter(spacings)))
        if any(np.max(np.abs(np.asarray(s) - ref)) > 1e-4 * max(1.0, float(ref.max())) for s in spacings):
            shown = ", ".join(f"{s[0]:g}x{s[1]:g}" for s in sorted(spacings)[:4])
            raise SeriesGeometryError(f"{label}: PixelSpacing differs between slices ({shown} mm): no single grid", code=Code.MIXED_PIXEL_SPACING)


# ------------------------------------------------------------------------------------ pixels
def _load_stored(planes: list[tuple[_Instance, int]], workers: int) -> np.ndarray:
    """Stored values of ``planes`` (in that order) as one ``(n, rows, cols)`` array, bits fixed.

    Uncompressed files are read straight into their slot of the preallocated array (no intermediate
    bytes); compressed ones are decoded by pydicom; mosaic tiles are cut from their lightbox. Files are
    handled in a thread pool.
    """
    first = planes[0][0].header
    dtypes = {_stored_dtype(inst.header) for inst, _ in planes}
    dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    stored = np.empty((len(planes), first.plane_rows, first.plane_cols), dtype=dtype)
    slots: dict[int, tuple[_Instance, list[tuple[int, int]]]] = {}
    for k, (inst, f) in enumerate(planes):
        slots.setdefault(id(inst), (inst, []))[1].append((f, k))

    def load(job: tuple[_Instance, list[tuple[int, int]]]) -> None:
        inst, pairs = job
        h = inst.header
        ks = [k for _, k in pairs]
        direct = (
            inst.offset is not None
            and h.mosaic is None
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
        if h.mosaic is not None:
            tiles = untile(values[0], h.mosaic, [f for f, _ in pairs])
            for (_, k), tile in zip(pairs, tiles, strict=True):
                stored[k] = tile
            return
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


def _pixel_key(h: FileHeader, f: int) -> tuple:
    return (h.slopes[f], h.intercepts[f], h.photometric, h.bits_stored, h.signed, h.padding_value, h.padding_limit)


def _runs(frames: list[tuple[_Instance, int]]) -> list[tuple[int, int, FileHeader, int]]:
    """Consecutive planes sharing rescale, photometric and padding: ``(start, stop, header, plane)``."""
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


def _to_output(stored: np.ndarray, frames: list[tuple[_Instance, int]]) -> tuple[np.ndarray, np.ndarray | None]:
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
            np.copyto(target, part.astype(np.int32) * int(round(slope)) + int(round(intercept)), casting="unsafe")
        else:
            np.multiply(part, np.float32(slope), out=target, casting="unsafe")
            target += np.float32(intercept)
    if dtype == np.float32 and not np.isfinite(out).all():  # cannot happen with validated headers; never pass it on
        raise PixelDataError("rescaled values are not finite (RescaleSlope/RescaleIntercept overflow)", code=Code.INVALID_HEADER)
    return out, mask


# -------------------------------------------------------------------------------- regridding
def _correct_tilt(array: np.ndarray, geometry: StackGeometry, row, col, pixel_spacing, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Shift each slice in-plane so that all slices sit on the line through slice 0 along the normal.

    Returns the array and a boolean per slice: True where the slice was shifted (interpolated).
    """
    from scipy.ndimage import shift

    out = array.astype(np.float32, copy=True)
    shifted = np.zeros(len(array), dtype=bool)
    for k, offset in enumerate(geometry.offsets):
        dy, dx = float(offset @ col) / pixel_spacing[0], float(offset @ row) / pixel_spacing[1]
        if abs(dy) > 1e-6 or abs(dx) > 1e-6:
            out[k] = shift(array[k].astype(np.float32), (dy, dx), order=1, mode="constant", cval=fill)
            shifted[k] = True
    return out, shifted


def regrid_step(distances: np.ndarray) -> tuple[float, str]:
    """The step for regridding an irregular stack: the smallest acquired step (keeps the finest resolution),
    widened only as far as needed to stay within `MAX_REGRID_FACTOR` times the acquired slice count."""
    steps = np.diff(np.sort(distances))
    steps = steps[steps >= SAME_POSITION_MM]
    finest = float(steps.min())
    span = float(distances.max() - distances.min())
    limit = MAX_REGRID_FACTOR * len(distances)
    if span / finest + 1 <= limit:
        return finest, f"the smallest acquired step, {finest:.4g} mm"
    step = span / (limit - 1)
    return step, f"{step:.4g} mm (the smallest acquired step, {finest:.4g} mm, would need more than {limit} slices)"


def _regrid(
    array: np.ndarray, distances: np.ndarray, step: float, modified: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """Linear interpolation along the normal onto slices ``step`` mm apart from the first one.

    A target that coincides with an acquired slice (within the spacing tolerance) copies it; the others are
    interpolated and listed. ``modified`` marks acquired slices that were themselves interpolated (tilt).
    """
    d = distances - distances[0]
    count = int(np.floor(d[-1] / step + 1e-6)) + 1
    targets = np.arange(count) * step
    tolerance = max(SPACING_ATOL_MM, SPACING_RTOL * step)
    out = np.empty((count, *array.shape[1:]), dtype=np.float32)
    interpolated: list[int] = []
    upper = np.clip(np.searchsorted(d, targets, side="left"), 0, len(d) - 1)
    lower = np.clip(upper - 1, 0, len(d) - 1)
    for t in range(count):
        nearest = upper[t] if abs(d[upper[t]] - targets[t]) <= abs(d[lower[t]] - targets[t]) else lower[t]
        if abs(d[nearest] - targets[t]) <= tolerance:
            out[t] = array[nearest]
            if modified[nearest]:
                interpolated.append(t)
            continue
        a = int(np.clip(np.searchsorted(d, targets[t], side="right") - 1, 0, len(d) - 2))
        w = np.float32((targets[t] - d[a]) / (d[a + 1] - d[a]))
        out[t] = array[a] * (1 - w) + array[a + 1] * w
        interpolated.append(t)
    return out, interpolated


# ------------------------------------------------------------------------------------- reading
def read_series(
    source: Any,
    *,
    stack: str | None = None,
    volume: int | None = None,
    on_irregular: str = "resample",
    on_tilt: str = "correct",
    z_spacing: float | None = None,
    workers: int | None = None,
) -> Volume:
    """Read one stack into a `Volume` (LPS world geometry, HU for CT).

    ``source``: a row of ``scan_folder(...).series`` (uses its ``files``, ``frames`` and ``stack_id``), a list
    of files, one file (an enhanced multi-frame object, a mosaic, a slice) or a folder holding one stack.
    ``stack``: the stack id to read when the files hold several (magnitude and phase, two echoes, three
    localizer planes ...). ``volume``: which volume of a 4D stack (0-based; default the first, and the
    volume's meta says so). ``on_irregular``: 'resample' (regrid along the normal at the smallest acquired
    step, or ``z_spacing`` mm) or 'error' for missing slices / uneven spacing; ``on_tilt``: 'correct' or
    'error' for gantry tilt. ``workers`` threads read and decode files in parallel (default: one for
    uncompressed files, up to 8 for compressed ones).
    """
    stack_obj, label, instances = _open_stack(source, stack, on_irregular, on_tilt, z_spacing)
    n = stack_obj.n_volumes
    index = 0 if volume is None else int(volume)
    if not 0 <= index < n:
        raise DicomError(f"{label}: volume {volume} does not exist (the stack has {n} volume(s), 0 to {n - 1})")
    out = _read_volume(stack_obj, index, label, instances, on_irregular, on_tilt, z_spacing, _workers(workers, stack_obj))
    _record_unread(out, source)
    if n > 1 and volume is None:
        log.warning("%s: 4D stack of %d volumes; read the first (pass volume=N for another)", label, n)
    return out


def read_series_volumes(
    source: Any,
    *,
    stack: str | None = None,
    on_irregular: str = "resample",
    on_tilt: str = "correct",
    z_spacing: float | None = None,
    workers: int | None = None,
) -> list[Volume]:
    """Every volume of a (4D) stack, in order: time points, b-values/directions, mosaic files (see `read_series`)."""
    stack_obj, label, instances = _open_stack(source, stack, on_irregular, on_tilt, z_spacing)
    w = _workers(workers, stack_obj)
    volumes = [
        _read_volume(stack_obj, v, label, instances, on_irregular, on_tilt, z_spacing, w)
        for v in range(stack_obj.n_volumes)
    ]
    for v in volumes:
        _record_unread(v, source)
    return volumes


def _record_unread(volume: Volume, source: Any) -> None:
    """A row whose folder held files that could not be read (they may be its slices): every consumer of the
    volume is told (``meta["unread_files"]``, a note), since the geometry alone cannot show a lost end slice."""
    if not _row_like(source):
        return
    from medsuite.io.dicom import unread_neighbours

    n = unread_neighbours(source)
    if n:
        volume.meta["unread_files"] = n
        volume.meta.setdefault("notes", []).append(
            f"{n} file(s) beside this stack could not be read and may be slices of it: the volume may lack them")


def _open_stack(
    source: Any, stack: str | None, on_irregular: str, on_tilt: str, z_spacing: float | None
) -> tuple[Stack, str, dict[int, _Instance]]:
    if on_irregular not in ("resample", "error"):
        raise ValueError(f"on_irregular must be 'resample' or 'error', got {on_irregular!r}")
    if on_tilt not in ("correct", "error"):
        raise ValueError(f"on_tilt must be 'correct' or 'error', got {on_tilt!r}")
    if z_spacing is not None and not (np.isfinite(z_spacing) and z_spacing > 0):
        raise ValueError(f"z_spacing must be a positive number of mm, got {z_spacing!r}")
    src = _resolve(source, stack)
    if not src.files:
        raise DicomError("read_series: no files given")
    instances = [_read_header(f, strict=False) for f in src.files]
    stack_id, chosen = _select_stack(instances, src)
    label = f"series {chosen.series_uid}" + (f" stack {stack_id}" if stack_id != chosen.series_uid else "")
    label += f" ({Path(src.files[0]).parent})"
    _raise_if_fatal(chosen, label)
    by_header = {id(inst.header): inst for inst in instances}
    for h in chosen.headers:
        if h.pixel_offset is None:
            check_decoder(h.transfer_syntax, h.path)
    return chosen, label, by_header


def _read_volume(
    stack: Stack,
    index: int,
    label: str,
    instances: dict[int, _Instance],
    on_irregular: str,
    on_tilt: str,
    z_spacing: float | None,
    workers: int,
) -> Volume:
    planes: list[Plane] = stack.volume(index)
    first = planes[0][0]
    try:
        row, col, normal = plane_axes(first.orientation_of(planes[0][1]), first.path)
    except ValueError as exc:
        raise DicomHeaderError(str(exc), code=Code.BAD_ORIENTATION) from exc
    positions = np.array([h.positions[i] for h, i in planes], dtype=np.float64)
    geometry = analyse_positions(positions, row, col, first.pixel_spacing)
    if geometry.duplicate_positions:
        raise SeriesGeometryError(
            f"{label}: {geometry.duplicate_positions} position(s) hold more than one slice", code=Code.DUPLICATE_POSITIONS
        )
    if not geometry.collinear:
        raise SeriesGeometryError(
            f"{label}: slice positions do not lie on a line (erratic in-plane offsets)", code=Code.NOT_COLLINEAR
        )
    if geometry.tilt_deg > 0 and on_tilt == "error":
        raise SeriesGeometryError(
            f"{label}: gantry tilt of {geometry.tilt_deg:.2f} deg (slices shifted in-plane); "
            "pass on_tilt='correct' to resample onto a regular grid",
            code=Code.GANTRY_TILT,
        )
    irregular = geometry.spacing is not None and not geometry.uniform
    spacing_problem = "; ".join(p.message for p in geometry.problem_list() if p.code == Code.IRREGULAR_SPACING)
    if irregular and on_irregular == "error":  # refuse before reading any pixel
        raise SeriesGeometryError(
            f"{label}: {spacing_problem}; pass on_irregular='resample' to interpolate", code=Code.IRREGULAR_SPACING
        )
    if irregular:
        step, why = (float(z_spacing), f"{float(z_spacing):.4g} mm (chosen)") if z_spacing else regrid_step(geometry.distances)
        count = int(np.floor((geometry.distances[-1] - geometry.distances[0]) / step + 1e-6)) + 1
        if count > 16 * len(planes):
            raise DicomError(f"{label}: a step of {step:g} mm would make {count} slices from {len(planes)}; choose a larger step")
    frames = [(instances[id(planes[i][0])], planes[i][1]) for i in geometry.order]
    array, pad_mask = _to_output(_load_stored(frames, workers), frames)
    meta: dict[str, Any] = {}
    notes = [p.message for p in stack.problems if not p.fatal]
    fill = 0.0
    if pad_mask is not None or geometry.tilt_deg > 0:  # the fill value costs a pass over the voxels
        fill = float(array[~pad_mask].min()) if pad_mask is not None and (~pad_mask).any() else float(array.min())
        if first.modality == "CT":
            fill = min(fill, AIR_HU)
    if pad_mask is not None:
        array[pad_mask] = fill
        meta["padding_replaced_with"] = fill
    if first.photometric == "MONOCHROME1":
        meta["inverted"] = "MONOCHROME1 inverted so that higher values are brighter"

    resampled: list[str] = []
    modified = np.zeros(len(frames), dtype=bool)
    if geometry.tilt_deg > 0:
        array, modified = _correct_tilt(array, geometry, row, col, first.pixel_spacing, fill)
        meta["gantry_tilt_deg"] = round(geometry.tilt_deg, 4)
        resampled.append(f"gantry tilt {geometry.tilt_deg:.2f} deg corrected by shifting slices in-plane (linear)")
    interpolated = [int(k) for k in np.flatnonzero(modified)]
    spacing_z = geometry.spacing
    if spacing_z is None:
        spacing_z = first.spacing_between_slices or first.slice_thickness
        spacing_z = spacing_z if spacing_z and spacing_z > 0 else 1.0
        notes.append("single slice: depth spacing taken from SpacingBetweenSlices or SliceThickness (or 1 mm)")
    elif irregular:
        n_before = array.shape[0]
        array, interpolated = _regrid(array, geometry.distances, step, modified)
        spacing_z = step
        resampled.append(
            f"{spacing_problem}: {n_before} slices regridded onto {array.shape[0]} slices {step:.4g} mm apart "
            f"(step: {why}); {len(interpolated)} slice(s) interpolated (linear, along the normal)"
        )
    if resampled:
        meta["resampled"] = "; ".join(resampled)
    meta["interpolated_slices"] = sorted(interpolated)
    if stack.n_volumes > 1:
        meta["volume"] = {"index": index, "count": stack.n_volumes}
        notes.append(f"volume {index + 1} of {stack.n_volumes} of a 4D stack")
    if first.mosaic is not None:
        meta["mosaic"] = f"Siemens mosaic: {first.mosaic.n} slices of {first.mosaic.tile_rows}x{first.mosaic.tile_cols}"
    if notes:
        meta["notes"] = notes
    meta.update(_meta_from(first, len(stack.headers)))
    h0, p0 = frames[0][0].header, frames[0][1]
    return Volume(
        array=array,
        spacing=(float(spacing_z), float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        origin=tuple(h0.positions[p0]),
        direction=np.stack([normal, col, row], axis=1),
        series_uid=stack.series_uid,
        study_uid=first.study_uid,
        modality=first.modality,
        meta=meta,
    )


def _meta_from(h: FileHeader, n_files: int) -> dict[str, Any]:
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

