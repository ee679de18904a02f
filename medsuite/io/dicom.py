"""DICOM discovery: walk folders, read headers only, and build the series table (one row per stack).

A *stack* is a set of slices that can become one `Volume`: same series, orientation, image size and
acquisition, not a localizer. A series that mixes these is split into several stacks; duplicate files are
dropped with a note; files that are not images (SR, SEG, RTSTRUCT, presentation states, KOS, DICOMDIR,
non-DICOM, unreadable) are listed in ``ScanResult.skipped`` with the reason. Nothing here raises for a
bad file: a scan of thousands of series carries on and reports.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from medsuite.io.decode import NATIVE_SYNTAXES, pixel_element_length, syntax_name
from medsuite.io.orientation import analyse_positions, orientation_label, plane_axes
from medsuite.io.rawheader import RawHeader, read_raw_header

SERIES_COLUMNS = [
    "stack_id", "series_uid", "study_uid", "patient_id", "study_date", "modality", "description",
    "series_number", "n_instances", "rows", "cols", "spacing_z", "spacing_y", "spacing_x", "orientation",
    "transfer_syntax", "manufacturer", "slice_thickness", "image_type", "status", "problems", "files",
]  # fmt: skip
SKIPPED_COLUMNS = ["path", "reason"]

# SOP classes whose name contains one of these are never image slices (checked before pixel data).
_NON_IMAGE_NAME_PARTS = (
    "Structured Report", "SR Storage", "Segmentation", "Structure Set", "Presentation State",
    "Key Object Selection", "Encapsulated", "Directory", "Registration", "RT Plan", "RT Dose",
    "RT Treatment", "RT Beams", "Waveform", "ECG", "Raw Data", "Fiducials", "Surface", "Real World Value",
    "Measurement Report", "Parametric Map", "Stereometric", "Content Assessment", "Deformable",
)  # fmt: skip
# Files with at most this many bytes or these names are not worth parsing.
_IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# Below this many files the scan runs in the calling thread; below _PROCESSES_FROM it uses threads (they
# overlap file I/O, e.g. on network shares); from there on processes (header parsing holds the GIL, and
# starting a worker that imports pydicom/pandas costs about a second).
_SERIAL_BELOW = 200
_PROCESSES_FROM = 1000
_CHUNK = 128


@dataclass
class FileHeader:
    """What the scan and the reader need from one instance's header (picklable, no pydicom objects)."""

    path: str
    sop_class: str = ""
    sop_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""
    patient_id: str = ""
    study_date: str = ""
    modality: str = ""
    description: str = ""
    series_number: int | None = None
    manufacturer: str = ""
    transfer_syntax: str = ""
    image_type: str = ""
    rows: int = 0
    cols: int = 0
    n_frames: int = 1
    enhanced: bool = False
    pixel_spacing: tuple[float, float] | None = None
    orientation: tuple[float, ...] | None = None
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)  # one per frame
    slopes: list[float] = field(default_factory=list)  # one per frame
    intercepts: list[float] = field(default_factory=list)
    slice_thickness: float | None = None
    acquisition: str = ""
    echo: str = ""
    temporal: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    photometric: str = "MONOCHROME2"
    samples_per_pixel: int = 1
    padding_value: int | None = None
    padding_limit: int | None = None
    window_center: float | None = None
    window_width: float | None = None
    kvp: float | None = None
    problems: list[str] = field(default_factory=list)  # file-level problems (make the stack an error)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper().split("\\")


@dataclass
class ScanResult:
    """``series``: the series table (one row per stack); ``skipped``: ``path, reason`` per non-image file."""

    series: pd.DataFrame
    skipped: pd.DataFrame

    def row(self, key: str) -> pd.Series:
        """The row whose ``stack_id`` (or else ``series_uid``, first stack) is ``key``."""
        hit = self.series[self.series["stack_id"] == key]
        if hit.empty:
            hit = self.series[self.series["series_uid"] == key]
        if hit.empty:
            raise KeyError(f"no stack or series {key!r} in this scan ({len(self.series)} stacks)")
        return hit.iloc[0]


# ----------------------------------------------------------------------------------------- headers
def _first(value: Any) -> Any:
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            return value
        return value[0] if len(value) else None
    except TypeError:
        return value


def _float(value: Any) -> float | None:
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__") and not hasattr(value, "original_string"):
        return "\\".join(str(v) for v in value)
    return str(value)


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _functional(shared: Dataset | None, frame: Dataset | None, sequence: str, keyword: str) -> Any:
    """An attribute from a per-frame functional group, falling back to the shared one."""
    for group in (frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


_BINARY_VR = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_TEXT_VR = frozenset({"DS", "IS", "CS", "UI", "DA", "TM", "AS"})  # ASCII-only VRs: safe to decode directly


_HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "StudyDate", "Modality",
    "SeriesNumber", "ImageType", "Rows", "Columns", "NumberOfFrames", "BitsAllocated", "BitsStored",
    "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel", "AcquisitionNumber",
    "EchoNumbers", "TemporalPositionIdentifier", "WindowCenter", "WindowWidth", "KVP", "SliceThickness",
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "RescaleSlope", "RescaleIntercept",
)  # fmt: skip
_TAG_OF = {keyword: tag_for_keyword(keyword) for keyword in _HEADER_KEYWORDS}
_ROWS, _COLUMNS = tag_for_keyword("Rows"), tag_for_keyword("Columns")
_PADDING, _PADDING_LIMIT = tag_for_keyword("PixelPaddingValue"), tag_for_keyword("PixelPaddingRangeLimit")


class _Fields:
    """Values of header elements read from their raw bytes, skipping pydicom's (slow) conversion.

    Header parsing dominates reading and scanning time; this decodes the few tags we need directly.
    Built from a pydicom `Dataset` or from `read_raw_header`'s elements (then the `Dataset` is only
    built for the rare element that needs pydicom: an unexpected VR or character set).
    """

    def __init__(self, ds: Dataset | None = None, raw: RawHeader | None = None) -> None:
        self._ds = ds
        self._raw = raw
        self._lookup = raw.elements.get if raw is not None else ds.get_item

    def _dataset(self) -> Dataset:
        if self._ds is None:
            self._ds = self._raw.dataset()
        return self._ds

    def string(self, keyword: str) -> str:
        """A text element (any character set) as ``str(ds.get(keyword, ""))`` gives it; "" when absent."""
        if self._raw is not None:
            value = self._raw.text(tag_for_keyword(keyword))
            if value is not None:
                return value
        return str(self._dataset().get(keyword, "") or "")

    def padding(self) -> tuple[int | None, int | None]:
        """PixelPaddingValue and PixelPaddingRangeLimit (US or SS depending on PixelRepresentation)."""
        if self._raw is not None:
            if _PADDING not in self._raw.elements:
                return None, None
            signed = self.integer("PixelRepresentation", 0) == 1
            values = [_padding_value(self._raw.elements.get(t), signed) for t in (_PADDING, _PADDING_LIMIT)]
            if all(v is not False for v in values):
                return values[0], values[1]
        ds = self._dataset()
        if "PixelPaddingValue" not in ds:
            return None, None
        padding, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
        return (
            int(padding) if isinstance(padding, (int, np.integer)) else None,
            int(limit) if isinstance(limit, (int, np.integer)) else None,
        )

    def functional_groups(self) -> tuple[Dataset, Any] | None:
        """``(dataset, per-frame sequence or None)`` of an enhanced multi-frame object, else None."""
        if self._raw is not None:
            return None  # read_raw_header leaves enhanced objects to pydicom
        per_frame = self._ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame is not None or "SharedFunctionalGroupsSequence" in self._ds:
            return self._ds, per_frame
        return None

    def values(self, keyword: str) -> list | None:
        """All values of an element; None when absent."""
        tag = _TAG_OF[keyword]
        elem = self._lookup(tag)
        if elem is None:
            return None
        if not isinstance(elem, RawDataElement):
            value = elem.value
            if value is None or value == "":
                return []
            return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        vr = elem.VR or dictionary_VR(tag)
        raw = elem.value
        if not raw:
            return []
        if vr in _BINARY_VR:
            fmt = _BINARY_VR[vr]
            size = struct.calcsize(fmt)
            n = len(raw) // size
            return list(struct.unpack(f"{'<' if elem.is_little_endian else '>'}{n}{fmt}", raw[: n * size]))
        if vr in _TEXT_VR:
            text = raw.decode("latin-1").strip(" \x00")
            return [t.strip(" \x00") for t in text.split("\\")] if text else []
        value = self._dataset()[tag].value  # anything else: let pydicom convert
        return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]

    def number(self, keyword: str) -> float | None:
        values = self.values(keyword)
        return _float(values[0]) if values else None

    def numbers(self, keyword: str, n: int) -> tuple[float, ...] | None:
        return _floats(self.values(keyword), n)

    def integer(self, keyword: str, default: int | None) -> int | None:
        value = self.number(keyword)
        return default if value is None else int(value)

    def text(self, keyword: str) -> str:
        values = self.values(keyword)
        return "\\".join(str(v) for v in values) if values else ""


def _syntax_of(ds: Dataset) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax:
        return str(syntax)
    implicit, little = ds.original_encoding
    if implicit:
        return uids.ImplicitVRLittleEndian
    return uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian


def header_from_dataset(ds: Dataset, path: str) -> FileHeader:
    """Collect a `FileHeader` from a dataset read with or without pixel data."""
    return _fill_header(FileHeader(path=path), _Fields(ds=ds), _syntax_of(ds))


def header_from_raw(raw: RawHeader, path: str) -> FileHeader:
    """Collect a `FileHeader` from `read_raw_header`'s elements (same values as `header_from_dataset`)."""
    return _fill_header(FileHeader(path=path), _Fields(raw=raw), raw.transfer_syntax)


def _padding_value(elem: Any, signed: bool) -> int | None | bool:
    """One US/SS padding element from raw bytes; None when absent, False when pydicom must convert it."""
    if elem is None:
        return None
    vr = elem.VR or ("SS" if signed else "US")
    if vr not in ("US", "SS") or len(elem.value) != 2:
        return False
    return struct.unpack("<h" if vr == "SS" else "<H", elem.value)[0]


def _fill_header(h: FileHeader, fields: _Fields, transfer_syntax: str) -> FileHeader:
    """Fill ``h`` from the header ``fields`` of one instance."""
    h.sop_class = fields.text("SOPClassUID")
    h.sop_uid = fields.text("SOPInstanceUID")
    h.series_uid = fields.text("SeriesInstanceUID")
    h.study_uid = fields.text("StudyInstanceUID")
    h.patient_id = fields.string("PatientID")
    h.study_date = fields.text("StudyDate")
    h.modality = fields.text("Modality")
    h.description = fields.string("SeriesDescription")
    h.series_number = fields.integer("SeriesNumber", None)
    h.manufacturer = fields.string("Manufacturer")
    h.transfer_syntax = transfer_syntax
    h.image_type = fields.text("ImageType")
    h.rows, h.cols = fields.integer("Rows", 0), fields.integer("Columns", 0)
    h.n_frames = fields.integer("NumberOfFrames", 1) or 1
    h.bits_allocated = fields.integer("BitsAllocated", 16) or 16
    h.bits_stored = fields.integer("BitsStored", h.bits_allocated) or h.bits_allocated
    h.signed = fields.integer("PixelRepresentation", 0) == 1
    h.photometric = (fields.text("PhotometricInterpretation") or "MONOCHROME2").upper()
    h.samples_per_pixel = fields.integer("SamplesPerPixel", 1) or 1
    h.padding_value, h.padding_limit = fields.padding()
    h.acquisition = fields.text("AcquisitionNumber")
    echo = fields.values("EchoNumbers")
    h.echo = str(echo[0]) if echo else ""
    h.temporal = fields.text("TemporalPositionIdentifier")
    h.window_center = fields.number("WindowCenter")
    h.window_width = fields.number("WindowWidth")
    h.kvp = fields.number("KVP")
    h.slice_thickness = fields.number("SliceThickness")

    enhanced = fields.functional_groups()
    if enhanced is not None:
        _enhanced_geometry(enhanced[0], h, enhanced[1])
    else:
        h.pixel_spacing = fields.numbers("PixelSpacing", 2)
        h.orientation = fields.numbers("ImageOrientationPatient", 6)
        position = fields.numbers("ImagePositionPatient", 3)
        h.positions = [position] * h.n_frames if h.n_frames == 1 else [None] * h.n_frames
        if h.n_frames > 1:
            h.problems.append(f"{h.n_frames} frames but no per-frame positions (not an enhanced object)")
        slope = fields.number("RescaleSlope")
        intercept = fields.number("RescaleIntercept")
        h.slopes = [1.0 if slope is None else slope] * h.n_frames
        h.intercepts = [0.0 if intercept is None else intercept] * h.n_frames
    return h


def _enhanced_geometry(ds: Dataset, h: FileHeader, per_frame: Any) -> None:
    """Per-frame positions, orientation, spacing and rescale of an enhanced (multi-frame) object."""
    h.enhanced = True
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = list(per_frame) if per_frame is not None else []
    if len(frames) != h.n_frames:
        h.problems.append(f"PerFrameFunctionalGroupsSequence has {len(frames)} items for {h.n_frames} frames")
        frames = (frames + [None] * h.n_frames)[: h.n_frames]
    orientations = set()
    h.positions, h.slopes, h.intercepts = [], [], []
    for frame in frames:
        h.positions.append(
            _floats(_functional(shared, frame, "PlanePositionSequence", "ImagePositionPatient"), 3)
        )
        iop = _floats(_functional(shared, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        orientations.add(None if iop is None else tuple(np.round(iop, 4)))
        h.orientation = h.orientation or iop
        slope = _float(_functional(shared, frame, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _float(_functional(shared, frame, "PixelValueTransformationSequence", "RescaleIntercept"))
        if slope is None and "RescaleSlope" in ds:  # some writers keep rescale at the top level
            slope, intercept = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
        h.slopes.append(1.0 if slope is None else slope)
        h.intercepts.append(0.0 if intercept is None else intercept)
    if len(orientations) > 1:
        h.problems.append("frames have different orientations (split the object before reading)")
    first = frames[0] if frames else None
    h.pixel_spacing = _floats(_functional(shared, first, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thickness = _float(_functional(shared, first, "PixelMeasuresSequence", "SliceThickness"))
    h.slice_thickness = thickness if thickness is not None else h.slice_thickness
    window_center = _float(_functional(shared, first, "FrameVOILUTSequence", "WindowCenter"))
    if window_center is not None:
        h.window_center = window_center
        h.window_width = _float(_functional(shared, first, "FrameVOILUTSequence", "WindowWidth"))


def open_header(fp: BinaryIO, path: str) -> Dataset:
    """Read the header of an open file, leaving ``fp`` at the Pixel Data element (raises for non-DICOM)."""
    try:
        return dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        fp.seek(0)
        ds = dcmread(fp, stop_before_pixels=True, force=True)  # old files without the DICM preamble
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise
        return ds


def sop_class_of(ds: Dataset) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID (DICOMDIR has only the latter)."""
    value = ds.get("SOPClassUID")
    if not value and hasattr(ds, "file_meta"):
        value = ds.file_meta.get("MediaStorageSOPClassUID")
    return str(value or "")


def non_image_reason(sop_class: str) -> str | None:
    """Why instances of this SOP class are not image slices (None for image storage classes)."""
    if not sop_class:
        return None
    if sop_class == uids.MediaStorageDirectoryStorage:
        return "DICOMDIR (media directory), not an image"
    name = uids.UID(sop_class).name
    if any(part in name for part in _NON_IMAGE_NAME_PARTS):
        return f"not an image: {name}"
    return None


def scan_file(path: str) -> FileHeader | tuple[str, str]:
    """Header of one file, or ``(path, reason)`` when it is not an image slice; never raises."""
    try:
        raw = read_raw_header(path)
        if raw is not None:  # uncompressed little endian: the fast path
            return _scan_raw(raw, path)
        with open(path, "rb") as fp:
            try:
                ds = open_header(fp, path)
            except InvalidDicomError:
                return path, "not a DICOM file"
            reason = non_image_reason(sop_class_of(ds))
            if reason:
                return path, reason
            if "Rows" not in ds or "Columns" not in ds:
                return path, "no image (no Rows/Columns)"
            header = header_from_dataset(ds, path)
            if header.samples_per_pixel != 1:
                return path, f"colour image ({header.photometric}), not a grey-level slice"
            syntax = header.transfer_syntax
            if syntax.startswith("1.2.840.10008.1.2.4.10") or "MPEG" in syntax_name(syntax):
                return path, f"video ({syntax_name(syntax)}), not a slice"
            if syntax in NATIVE_SYNTAXES:
                _check_native_pixels(fp, header)
            elif syntax != uids.DeflatedExplicitVRLittleEndian and not fp.read(4):
                return path, "no pixel data"
            return header
    except Exception as exc:  # a broken file must never stop a scan
        return path, f"unreadable DICOM header: {type(exc).__name__}: {exc}"


def _scan_raw(raw: RawHeader, path: str) -> FileHeader | tuple[str, str]:
    """`scan_file` for a header read by `read_raw_header` (same results as the pydicom path)."""
    reason = non_image_reason(raw.sop_class())
    if reason:
        return path, reason
    if _ROWS not in raw.elements or _COLUMNS not in raw.elements:
        return path, "no image (no Rows/Columns)"
    header = header_from_raw(raw, path)
    if header.samples_per_pixel != 1:
        return path, f"colour image ({header.photometric}), not a grey-level slice"
    if raw.pixel_offset is None:
        header.problems.append("no pixel data (the file ends before it: truncated?)")
    else:
        _check_pixel_length(header, raw.pixel_length, raw.file_size - raw.pixel_offset)
    return header


def _check_native_pixels(fp: BinaryIO, header: FileHeader) -> None:
    """Note a missing or truncated uncompressed Pixel Data element on ``header`` (cheap: no pixel read)."""
    start = fp.tell()
    size = os.fstat(fp.fileno()).st_size
    if size - start < 8:
        header.problems.append("no pixel data (the file ends before it: truncated?)")
        return
    try:
        length = pixel_element_length(fp, header.transfer_syntax, header.path)
    except ValueError as exc:
        header.problems.append(str(exc).split(": ", 1)[-1])
        return
    _check_pixel_length(header, length, size - fp.tell())


def _check_pixel_length(header: FileHeader, length: int, present: int) -> None:
    expected = header.n_frames * header.rows * header.cols * (header.bits_allocated // 8)
    if length < expected or present < expected:
        header.problems.append(
            f"pixel data too short ({min(length, present)} of {expected} bytes; truncated or wrong length)"
        )


# ----------------------------------------------------------------------------------------- walking
def iter_files(paths: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Every regular file under ``paths`` (files or folders), in a stable order; hidden names skipped."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for root in paths:
        root = Path(root)
        if root.is_file():
            yield str(root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such file or folder")
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith(".") or name in _IGNORED_NAMES:
                    continue
                yield os.path.join(folder, name)


def _scan_chunk(paths: Sequence[str]) -> list[FileHeader | tuple[str, str]]:
    return [scan_file(p) for p in paths]


def scan_headers(
    files: Sequence[str], workers: int | None = None, executor: str = "auto"
) -> list[FileHeader | tuple[str, str]]:
    """`scan_file` over ``files`` in parallel; ``executor`` is 'auto', 'thread', 'process' or 'serial'."""
    if executor not in ("auto", "thread", "process", "serial"):
        raise ValueError(f"executor must be 'auto', 'thread', 'process' or 'serial', got {executor!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if executor == "auto":
        many = len(files) >= _PROCESSES_FROM and workers >= 4  # on 2 busy cores threads measured faster
        executor = "serial" if len(files) < _SERIAL_BELOW else "process" if many else "thread"
    if workers <= 1 or executor == "serial" or not files:
        return _scan_chunk(files)
    chunks = [files[i : i + _CHUNK] for i in range(0, len(files), _CHUNK)]
    if executor == "thread":
        pool: Any = ThreadPoolExecutor(workers)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("forkserver"))
    with pool:
        return [item for chunk in pool.map(_scan_chunk, chunks) for item in chunk]


# -------------------------------------------------------------------------------------------- stacks
@dataclass
class Stack:
    """Headers of one stack plus what was noticed while forming it."""

    headers: list[FileHeader]
    problems: list[str] = field(default_factory=list)
    fatal: bool = False


def _partition_key(h: FileHeader) -> tuple:
    iop = None if h.orientation is None else tuple(np.round(h.orientation, 3))
    return (h.path if h.enhanced else "", h.is_localizer, iop, h.rows, h.cols)


def _normal_distances(headers: list[FileHeader]) -> list[float] | None:
    first = headers[0]
    if first.orientation is None:
        return None
    try:
        _, _, normal = plane_axes(first.orientation, first.path)
    except ValueError:
        return None
    out = []
    for h in headers:
        for p in h.positions:
            if p is None:
                return None
            out.append(float(np.asarray(p) @ normal))
    return out


def _has_duplicate_positions(headers: list[FileHeader]) -> bool:
    distances = _normal_distances(headers)
    if distances is None or len(distances) < 2:
        return False
    d = np.sort(np.asarray(distances))
    return bool(np.any(np.diff(d) < 1e-3))


def _split_duplicates(headers: list[FileHeader]) -> list[Stack]:
    """Split a partition by acquisition / echo / temporal position when slices share positions."""
    if not _has_duplicate_positions(headers):
        return [Stack(headers)]
    for attr, label in (("acquisition", "AcquisitionNumber"), ("echo", "EchoNumbers"), ("temporal", "TemporalPositionIdentifier")):  # fmt: skip
        groups: dict[str, list[FileHeader]] = defaultdict(list)
        for h in headers:
            groups[getattr(h, attr)].append(h)
        if len(groups) > 1 and not any(_has_duplicate_positions(g) for g in groups.values()):
            note = f"series split by {label} (slices at the same positions)"
            return [Stack(g, [f"{note}: {label}={key or '(none)'}"]) for key, g in sorted(groups.items())]
    return [
        Stack(headers, ["different instances at the same position (not separable by acquisition/echo)"], True)
    ]


def group_stacks(headers: list[FileHeader]) -> list[tuple[str, Stack]]:
    """Group headers into stacks; returns ``(stack_id, stack)`` with each series' main stack first."""
    by_series: dict[str, list[FileHeader]] = defaultdict(list)
    for h in headers:
        by_series[h.series_uid].append(h)
    out: list[tuple[str, Stack]] = []
    for series_uid, members in by_series.items():
        seen: dict[str, FileHeader] = {}
        dropped: list[str] = []
        for h in sorted(members, key=lambda h: h.path):
            if h.sop_uid and h.sop_uid in seen:
                dropped.append(h.path)
            else:
                seen[h.sop_uid or h.path] = h
        partitions: dict[tuple, list[FileHeader]] = defaultdict(list)
        for h in seen.values():
            partitions[_partition_key(h)].append(h)
        stacks = [s for part in partitions.values() for s in _split_duplicates(part)]
        stacks.sort(key=lambda s: (s.headers[0].is_localizer, -sum(h.n_frames for h in s.headers)))
        if dropped:
            stacks[0].problems.append(
                f"{len(dropped)} duplicate file(s) (same SOPInstanceUID) dropped: {', '.join(dropped[:3])}"
                + (" ..." if len(dropped) > 3 else "")
            )
        main = stacks[0].headers[0]
        for i, stack in enumerate(stacks):
            first = stack.headers[0]
            if not series_uid:
                stack.problems.append("no SeriesInstanceUID")
                stack.fatal = True
            if first.is_localizer:
                stack.problems.append("localizer (scout) image(s)")
            elif i > 0 and first.orientation != main.orientation and len(stack.headers) <= 2:
                stack.problems.append("orientation differs from the rest of the series (localizer?)")
            stack_id = series_uid if i == 0 else f"{series_uid}.s{i}"
            out.append((stack_id, stack))
    return out


def describe_stack(stack: Stack) -> dict[str, Any]:
    """The geometry columns and problems of a stack (spacing, orientation, status)."""
    headers = stack.headers
    first = headers[0]
    problems = list(stack.problems)
    fatal = stack.fatal
    for h in headers:
        for problem in h.problems:
            problems.append(f"{Path(h.path).name}: {problem}")
            fatal = True
    missing = [
        label
        for label, bad in (
            ("ImagePositionPatient", any(p is None for h in headers for p in h.positions)),
            ("ImageOrientationPatient", any(h.orientation is None for h in headers)),
            ("PixelSpacing", any(h.pixel_spacing is None for h in headers)),
        )
        if bad
    ]
    if missing:
        problems.append("missing " + ", ".join(missing))
        fatal = True
    row: dict[str, Any] = {"spacing_z": np.nan, "orientation": "", "spacing_y": np.nan, "spacing_x": np.nan}
    if first.pixel_spacing is not None:
        row["spacing_y"], row["spacing_x"] = first.pixel_spacing
    if "ImageOrientationPatient" not in " ".join(missing) and first.orientation is not None:
        try:
            axes = plane_axes(first.orientation, first.path)
        except ValueError as exc:
            problems.append(str(exc))
            fatal = True
            axes = None
        if axes is not None:
            row["orientation"] = orientation_label(axes[2])
            if "ImagePositionPatient" not in " ".join(missing):
                positions = np.array([p for h in headers for p in h.positions], dtype=np.float64)
                geometry = analyse_positions(positions, axes[0], axes[1], first.pixel_spacing or (1.0, 1.0))
                row["spacing_z"] = geometry.spacing if geometry.spacing is not None else np.nan
                if (geometry.duplicate_positions or not geometry.collinear) and not stack.fatal:
                    fatal = True
                problems.extend(
                    p for p in geometry.problems() if "more than one slice" not in p or not stack.fatal
                )
                row["_order"] = geometry.order
    n = sum(h.n_frames for h in headers)
    if n == 1 and not first.is_localizer:
        problems.append("single slice")
    status = "error" if fatal else ("warning" if problems else "ok")
    row.update(status=status, problems="; ".join(problems), n_instances=n)
    return row


def _files_in_order(stack: Stack, order: np.ndarray | None) -> list[str]:
    if order is None or any(h.n_frames != 1 for h in stack.headers):
        return sorted(h.path for h in stack.headers)
    return [stack.headers[i].path for i in order]


def stack_row(stack_id: str, stack: Stack) -> dict[str, Any]:
    """One series-table row (see docs/contracts.md) for a stack."""
    first = stack.headers[0]
    geometry = describe_stack(stack)
    order = geometry.pop("_order", None)
    return {
        "stack_id": stack_id,
        "series_uid": first.series_uid,
        "study_uid": first.study_uid,
        "patient_id": first.patient_id,
        "study_date": first.study_date,
        "modality": first.modality,
        "description": first.description,
        "series_number": first.series_number,
        "rows": first.rows,
        "cols": first.cols,
        "transfer_syntax": syntax_name(first.transfer_syntax),
        "manufacturer": first.manufacturer,
        "slice_thickness": first.slice_thickness,
        "image_type": first.image_type,
        **geometry,
        "files": _files_in_order(stack, order),
    }


def scan_folder(paths: str | Path | Iterable[str | Path], workers: int | None = None) -> ScanResult:
    """Discover every image stack under ``paths`` (files and/or folders, any names, no DICOMDIR needed).

    Headers only, in parallel over ``workers`` (default: all cores): in-process below 200 files, else
    threads, or processes from 1000 files when there are at least 4 workers. Never raises for a bad file: it goes to ``skipped`` or makes its stack's
    status 'error'.
    """
    files = list(iter_files(paths))
    headers: list[FileHeader] = []
    skipped: list[tuple[str, str]] = []
    for item in scan_headers(files, workers):
        if isinstance(item, FileHeader):
            headers.append(item)
        else:
            skipped.append(item)
    rows = [stack_row(stack_id, stack) for stack_id, stack in group_stacks(headers)]
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    if not series.empty:
        series = series.sort_values(
            ["study_uid", "series_number", "series_uid"], kind="stable", na_position="last"
        )
        series = series.reset_index(drop=True)
    return ScanResult(series=series, skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
