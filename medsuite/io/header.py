"""One DICOM instance's header as medsuite needs it (`FileHeader`), validated before anything is allocated.

Values come from `rawheader`'s unconverted elements (the fast path for uncompressed little-endian files) or
from a pydicom `Dataset`. Whatever would make a volume wrong is recorded as a `Problem` on the header
(Rows 0, BitsAllocated 64, NumberOfFrames larger than the file can hold, RescaleSlope 0, PixelSpacing <= 0,
an invalid orientation ...), so that the scan reports it and the reader refuses the file. Per-plane lists
(positions, rescale, split keys) are only built once the plane count is known to fit in the file's bytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from pydicom import uid as uids
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medsuite.io.orientation import plane_axes
from medsuite.io.problems import Code, Problem
from medsuite.io.rawheader import RawHeader

__all__ = ["FileHeader", "MosaicInfo", "header_from_dataset", "header_from_raw"]

# A compressed file may decode to at most this many times its size (or MIN_DECODE_BUDGET, whichever is
# larger): lossless CT/MR compresses 2-4x, so only a header that lies about its size exceeds it.
MAX_DECOMPRESSION_RATIO = 200
MIN_DECODE_BUDGET = 256 * 2**20
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class MosaicInfo:
    """A Siemens mosaic: ``n`` slices of ``tile_rows x tile_cols`` laid out on a ``grid x grid`` lightbox."""

    n: int
    grid: int
    tile_rows: int
    tile_cols: int


@dataclass
class FileHeader:
    """What the scan and the reader need from one instance's header (picklable, no pydicom objects).

    A *plane* is one 2D image of the file: a frame of a multi-frame object, or a tile of a mosaic. The
    per-plane lists (``positions``, ``slopes``, ``intercepts`` and the optional ones) have ``n_planes`` items.
    """

    path: str
    sop_class: str = ""
    sop_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference: str = ""
    patient_id: str = ""
    study_date: str = ""
    modality: str = ""
    description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    manufacturer: str = ""
    transfer_syntax: str = ""
    image_type: str = ""
    rows: int = 0
    cols: int = 0
    n_frames: int = 1  # stored frames (NumberOfFrames)
    enhanced: bool = False
    mosaic: MosaicInfo | None = None
    file_size: int = 0
    pixel_offset: int | None = None  # byte offset of uncompressed pixel values (None: decode with pydicom)
    pixel_spacing: tuple[float, float] | None = None
    orientation: tuple[float, ...] | None = None
    positions: list[tuple[float, float, float] | None] = field(default_factory=list)  # one per plane
    slopes: list[float] = field(default_factory=list)  # one per plane
    intercepts: list[float] = field(default_factory=list)
    orientations: list[tuple[float, ...] | None] | None = None  # per plane when frames differ (enhanced)
    frame_types: list[str] | None = None  # per plane FrameType (enhanced), else image_type applies
    frame_echoes: list[str] | None = None  # per plane echo (enhanced)
    frame_volumes: list[tuple] | None = None  # per plane temporal/diffusion labels (enhanced)
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    acquisition: str = ""
    echo: str = ""
    echo_time: str = ""
    temporal: str = ""
    trigger_time: str = ""
    b_value: str = ""
    gradient: str = ""
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
    problems: list[Problem] = field(default_factory=list)  # file-level (fatal ones make the stack an error)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper().split("\\")

    @property
    def n_planes(self) -> int:
        """2D images this file contributes: tiles of a mosaic, else its frames."""
        return self.mosaic.n if self.mosaic is not None else self.n_frames

    @property
    def plane_rows(self) -> int:
        return self.mosaic.tile_rows if self.mosaic is not None else self.rows

    @property
    def plane_cols(self) -> int:
        return self.mosaic.tile_cols if self.mosaic is not None else self.cols

    @property
    def frame_bytes(self) -> int:
        """Bytes of one stored frame (uncompressed)."""
        return self.rows * self.cols * max(1, self.bits_allocated // 8) * max(1, self.samples_per_pixel)

    @property
    def fatal(self) -> bool:
        return any(p.fatal for p in self.problems)

    def add(self, code: Code, message: str) -> None:
        self.problems.append(Problem(code, message))

    def orientation_of(self, plane: int) -> tuple[float, ...] | None:
        return self.orientation if self.orientations is None else self.orientations[plane]


# ----------------------------------------------------------------------------------------- values
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
    """A finite float, or None (absent or not a number)."""
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, (list, tuple, str, MultiValue)) and len(value) == 0)


def _item(ds: Dataset | None, sequence: str) -> Dataset | None:
    if ds is None:
        return None
    seq = ds.get(sequence)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _functional(shared: Dataset | None, frame: Dataset | None, sequence: str, keyword: str) -> Any:
    """An attribute from a per-frame functional group, falling back to the shared one."""
    for group in (frame, shared):
        item = _item(group, sequence)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _label(value: Any) -> str:
    """A comparable text label for a value of any VR (lists joined by backslashes)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_label(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


_BINARY_VR = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_TEXT_VR = frozenset({"DS", "IS", "CS", "UI", "DA", "TM", "AS"})  # ASCII-only VRs: safe to decode directly

_HEADER_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "StudyDate", "Modality",
    "SeriesNumber", "InstanceNumber", "ImageType", "Rows", "Columns", "NumberOfFrames", "BitsAllocated",
    "BitsStored", "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel", "AcquisitionNumber",
    "EchoNumbers", "EchoTime", "TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue",
    "DiffusionGradientOrientation", "WindowCenter", "WindowWidth", "KVP", "SliceThickness",
    "SpacingBetweenSlices", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
    "RescaleSlope", "RescaleIntercept", "FrameOfReferenceUID",
)  # fmt: skip
_TAG_OF = {keyword: tag_for_keyword(keyword) for keyword in _HEADER_KEYWORDS}
_PADDING, _PADDING_LIMIT = tag_for_keyword("PixelPaddingValue"), tag_for_keyword("PixelPaddingRangeLimit")
# Siemens private elements: creator (0019,0010) "SIEMENS MR HEADER" owns (0019,10xx); (0029,0010)
# "SIEMENS CSA HEADER" owns (0029,10xx). Blocks other than 0x10 are looked up through their creator.
_SIEMENS_MR, _SIEMENS_CSA = "SIEMENS MR HEADER", "SIEMENS CSA HEADER"


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

    def _element(self, tag: int) -> Any:
        return self._lookup(tag)

    def tag_values(self, tag: int) -> list | None:
        """All values of the element ``tag``; None when absent."""
        elem = self._element(tag)
        if elem is None:
            return None
        if not isinstance(elem, RawDataElement):
            value = elem.value
            if value is None or value == "":
                return []
            return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        vr = elem.VR or _vr_of(tag)
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
        if vr in ("OB", "UN") and tag >> 16 & 1:  # a private element: its bytes
            return [bytes(raw)]
        value = self._dataset()[tag].value  # anything else: let pydicom convert
        return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]

    def values(self, keyword: str) -> list | None:
        return self.tag_values(_TAG_OF[keyword])

    def number(self, keyword: str) -> float | None:
        values = self.values(keyword)
        return _float(values[0]) if values else None

    def checked_number(self, keyword: str) -> tuple[float | None, bool]:
        """``(value, valid)``: an absent or empty element is ``(None, True)``, an unreadable one ``(None, False)``."""
        try:
            values = self.values(keyword)
        except Exception:  # noqa: BLE001 - a value pydicom cannot convert is simply invalid
            return None, False
        if not values or values[0] in ("", None):
            return None, True
        value = _float(values[0])
        return value, value is not None

    def numbers(self, keyword: str, n: int) -> tuple[float, ...] | None:
        return _floats(self.values(keyword), n)

    def integer(self, keyword: str, default: int | None) -> int | None:
        value = self.number(keyword)
        if value is None:
            return default
        return int(value) if abs(value) < 2**63 else default

    def text(self, keyword: str) -> str:
        values = self.values(keyword)
        return "\\".join(_label(v) for v in values) if values else ""

    def private_block(self, group: int, creator: str) -> int | None:
        """The element block (e.g. 0x10) that ``creator`` reserved in private ``group``, or None."""
        for block in range(0x10, 0x100):
            values = self.tag_values(group << 16 | block)
            if values is None:
                if block > 0x20:
                    return None
                continue
            text = values[0].decode("latin-1") if isinstance(values[0], bytes) else str(values[0])
            if text.strip(" \x00").upper() == creator:
                return block
        return None

    def private(self, group: int, creator: str, element: int) -> list | None:
        block = self.private_block(group, creator)
        if block is None:
            return None
        return self.tag_values(group << 16 | block << 8 | element)


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _padding_value(elem: Any, signed: bool) -> int | None | bool:
    """One US/SS padding element from raw bytes; None when absent, False when pydicom must convert it."""
    if elem is None:
        return None
    vr = elem.VR or ("SS" if signed else "US")
    if vr not in ("US", "SS") or len(elem.value) != 2:
        return False
    return struct.unpack("<h" if vr == "SS" else "<H", elem.value)[0]


def syntax_of(ds: Dataset) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax:
        return str(syntax)
    implicit, little = ds.original_encoding
    if implicit:
        return uids.ImplicitVRLittleEndian
    return uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian


def header_from_dataset(
    ds: Dataset, path: str, file_size: int = 0, pixel: tuple[int, int] | None = None
) -> FileHeader:
    """Collect a `FileHeader` from a dataset read with or without pixel data.

    ``file_size`` (bytes) and ``pixel`` (an uncompressed Pixel Data element's declared length and the bytes
    of it present in the file, when known) bound the frame count before any per-frame list is built.
    """
    h = FileHeader(path=path, file_size=file_size)
    return _fill_header(h, _Fields(ds=ds), syntax_of(ds), pixel)


def header_from_raw(raw: RawHeader, path: str) -> FileHeader:
    """Collect a `FileHeader` from `read_raw_header`'s elements (same values as `header_from_dataset`)."""
    h = FileHeader(path=path, file_size=raw.file_size, pixel_offset=raw.pixel_offset)
    pixel = None if raw.pixel_offset is None else (raw.pixel_length, max(0, raw.file_size - raw.pixel_offset))
    return _fill_header(h, _Fields(raw=raw), raw.transfer_syntax, pixel)


# ------------------------------------------------------------------------------------ the header
def _fill_header(
    h: FileHeader, fields: _Fields, transfer_syntax: str, pixel: tuple[int, int] | None
) -> FileHeader:
    """Fill ``h`` from the header ``fields`` of one instance and validate what the pixels depend on."""
    h.sop_class = fields.text("SOPClassUID")
    h.sop_uid = fields.text("SOPInstanceUID")
    h.series_uid = fields.text("SeriesInstanceUID")
    h.study_uid = fields.text("StudyInstanceUID")
    h.frame_of_reference = fields.text("FrameOfReferenceUID")
    h.patient_id = fields.string("PatientID")
    h.study_date = fields.text("StudyDate")
    h.modality = fields.text("Modality")
    h.description = fields.string("SeriesDescription")
    h.series_number = fields.integer("SeriesNumber", None)
    h.instance_number = fields.integer("InstanceNumber", None)
    h.manufacturer = fields.string("Manufacturer")
    h.transfer_syntax = transfer_syntax
    h.image_type = fields.text("ImageType")
    h.rows, h.cols = fields.integer("Rows", 0) or 0, fields.integer("Columns", 0) or 0
    h.bits_allocated = fields.integer("BitsAllocated", 16)
    h.bits_stored = fields.integer("BitsStored", h.bits_allocated)
    h.signed = fields.integer("PixelRepresentation", 0) == 1
    h.photometric = (fields.text("PhotometricInterpretation") or "MONOCHROME2").upper().strip()
    h.samples_per_pixel = fields.integer("SamplesPerPixel", 1)
    h.padding_value, h.padding_limit = fields.padding()
    h.acquisition = fields.text("AcquisitionNumber")
    echo = fields.values("EchoNumbers")
    h.echo = _label(echo[0]) if echo else ""
    h.echo_time = fields.text("EchoTime")
    h.temporal = fields.text("TemporalPositionIdentifier")
    h.trigger_time = fields.text("TriggerTime")
    h.b_value = fields.text("DiffusionBValue")
    h.gradient = fields.text("DiffusionGradientOrientation")
    h.window_center = fields.number("WindowCenter")
    h.window_width = fields.number("WindowWidth")
    h.kvp = fields.number("KVP")
    h.slice_thickness = fields.number("SliceThickness")
    h.spacing_between_slices = fields.number("SpacingBetweenSlices")
    frames = fields.integer("NumberOfFrames", 1)
    h.n_frames = 1 if frames is None else frames
    if not _check_pixel_format(h, transfer_syntax, pixel):
        h.n_frames = 1  # per-plane lists stay small; the problem recorded makes the file unusable
    if "MOSAIC" in h.image_type.upper().split("\\"):
        _mosaic(h, fields)
    if not h.b_value and "SIEMENS" in h.manufacturer.upper():
        b = fields.private(0x0019, _SIEMENS_MR, 0x0C)
        h.b_value = _label(b[0]) if b else ""

    enhanced = fields.functional_groups()
    if enhanced is not None:
        _enhanced_geometry(enhanced[0], h, enhanced[1])
    else:
        h.pixel_spacing = _spacing(h, fields.values("PixelSpacing"))
        h.orientation = _orientation(h, fields.values("ImageOrientationPatient"))
        position = _position(h, fields.values("ImagePositionPatient"))
        if h.n_frames > 1:
            h.add(Code.MISSING_POSITION, f"{h.n_frames} frames but no per-frame positions (not an enhanced object)")
            h.positions = [None] * h.n_frames
        elif h.mosaic is not None:
            h.positions = _mosaic_positions(h, position, fields)
        else:
            h.positions = [position]
        slope, slope_ok = fields.checked_number("RescaleSlope")
        intercept, intercept_ok = fields.checked_number("RescaleIntercept")
        _check_rescale(h, slope, intercept, slope_ok and intercept_ok)
        h.slopes = [1.0 if slope is None else slope] * h.n_planes
        h.intercepts = [0.0 if intercept is None else intercept] * h.n_planes
    return h


def _check_pixel_format(h: FileHeader, transfer_syntax: str, pixel: tuple[int, int] | None) -> bool:
    """Record invalid image attributes; False when NumberOfFrames cannot be trusted (lists stay 1 long).

    ``pixel``: an uncompressed Pixel Data element's declared length and the bytes of it present in the file.
    """
    ok = True
    if not (0 < h.rows <= 65535 and 0 < h.cols <= 65535):
        h.add(Code.INVALID_HEADER, f"Rows {h.rows} x Columns {h.cols}: both must be between 1 and 65535")
        ok = False
    if h.bits_allocated not in (8, 16, 32):
        h.add(Code.INVALID_HEADER, f"BitsAllocated {h.bits_allocated} is not supported (8, 16 or 32)")
        ok = False
    elif h.bits_stored is None or not 0 < h.bits_stored <= h.bits_allocated:
        h.add(Code.INVALID_HEADER, f"BitsStored {h.bits_stored} must be between 1 and BitsAllocated {h.bits_allocated}")
        h.bits_stored = h.bits_allocated
    if h.samples_per_pixel is None or h.samples_per_pixel < 1:
        h.add(Code.INVALID_HEADER, f"SamplesPerPixel {h.samples_per_pixel} must be at least 1")
        h.samples_per_pixel = 1
        ok = False
    if h.n_frames < 1:
        h.add(Code.INVALID_HEADER, f"NumberOfFrames {h.n_frames} must be at least 1")
        return False
    if not ok:
        return False
    needed = h.n_frames * h.frame_bytes
    if transfer_syntax in _NATIVE:
        if pixel is None:  # no Pixel Data element found: the caller reports it; bound the lists by the file
            return not h.file_size or needed <= max(h.file_size, h.frame_bytes)
        declared, present = pixel
        what = f"{h.n_frames} frame(s) of {h.rows}x{h.cols} at {h.bits_allocated} bits need {needed}"
        if declared < needed:
            h.add(Code.PIXEL_LENGTH, f"pixel data too short: Pixel Data holds {declared} bytes but {what} (the header does not describe the data)")
        elif present < needed:
            h.add(Code.TRUNCATED, f"pixel data too short: the file is truncated, {present} of {needed} pixel bytes present ({what})")
        return needed <= max(declared, h.frame_bytes) and needed <= max(present, h.frame_bytes)
    if h.file_size and h.n_frames > max(1, h.file_size // 8):  # every compressed frame is an 8-byte item or more
        h.add(
            Code.INVALID_HEADER,
            f"NumberOfFrames {h.n_frames} cannot fit in a file of {h.file_size} bytes (each compressed frame "
            "needs at least one 8-byte item)",
        )
        return False
    budget = max(MIN_DECODE_BUDGET, MAX_DECOMPRESSION_RATIO * h.file_size)
    if h.file_size and needed > budget:
        h.add(
            Code.INVALID_HEADER,
            f"{h.n_frames} frame(s) of {h.rows}x{h.cols} would decode to {needed} bytes from a {h.file_size}-byte "
            f"file (more than {MAX_DECOMPRESSION_RATIO}x): the header does not describe this file",
        )
        return False
    return True


_NATIVE = frozenset({uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian, uids.ExplicitVRBigEndian})


def _check_rescale(h: FileHeader, slope: float | None, intercept: float | None, valid: bool) -> None:
    """RescaleSlope/Intercept must be numbers that give finite float32 values; slope 0 erases the image."""
    if not valid:
        h.add(Code.INVALID_HEADER, "RescaleSlope/RescaleIntercept is not a number")
        return
    if slope is not None and slope == 0:
        h.add(Code.INVALID_HEADER, "RescaleSlope 0 would map every pixel to the intercept")
        return
    top = float(2 ** max(1, min(h.bits_stored or 16, 32)))
    if abs(slope or 1.0) * top + abs(intercept or 0.0) >= _FLOAT32_MAX:
        h.add(Code.INVALID_HEADER, f"RescaleSlope {slope:g} / RescaleIntercept {intercept or 0:g} overflow 32-bit floats")


def _spacing(h: FileHeader, values: list | None) -> tuple[float, float] | None:
    if not _present(values):
        return None
    spacing = _floats(values, 2)
    if spacing is None or min(spacing) <= 0:
        h.add(Code.INVALID_HEADER, f"PixelSpacing {list(values)} must be two positive numbers (mm)")
        return None
    return spacing  # type: ignore[return-value]


@lru_cache(maxsize=256)
def _orientation_problem(iop: tuple[float, ...]) -> str | None:
    """Why six numbers are not an orientation (cached: a series repeats one orientation in every file)."""
    try:
        plane_axes(iop, "")
    except ValueError as exc:
        return str(exc).lstrip(": ")
    return None


def _orientation(h: FileHeader, values: list | None) -> tuple[float, ...] | None:
    if not _present(values):
        return None
    iop = _floats(values, 6)
    if iop is None:
        h.add(Code.BAD_ORIENTATION, f"ImageOrientationPatient {list(values)} must be six numbers")
        return None
    problem = _orientation_problem(iop)
    if problem:
        h.add(Code.BAD_ORIENTATION, problem)
        return None
    return iop


def _position(h: FileHeader, values: list | None) -> tuple[float, float, float] | None:
    if not _present(values):
        return None
    position = _floats(values, 3)
    if position is None:
        h.add(Code.INVALID_HEADER, f"ImagePositionPatient {list(values)} must be three numbers (mm)")
    return position  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------- mosaic
def _mosaic(h: FileHeader, fields: _Fields) -> None:
    """Recognise a Siemens mosaic (ImageType MOSAIC) and its lightbox layout; refuse one that cannot be decoded."""
    from medsuite.io.mosaic import mosaic_layout

    try:
        h.mosaic = mosaic_layout(fields, h)
    except ValueError as exc:
        h.add(Code.UNSUPPORTED, f"Siemens mosaic that cannot be decoded: {exc}")
        h.mosaic = None


def _mosaic_positions(h: FileHeader, position: tuple[float, float, float] | None, fields: _Fields) -> list:
    from medsuite.io.mosaic import tile_positions

    if h.mosaic is None:
        return [position]
    if position is None or h.orientation is None or h.pixel_spacing is None:
        return [None] * h.n_planes
    try:
        return tile_positions(h, position, fields)
    except ValueError as exc:
        h.add(Code.UNSUPPORTED, f"Siemens mosaic that cannot be decoded: {exc}")
        h.mosaic = None
        return [position]


# -------------------------------------------------------------------------------------- enhanced
def _enhanced_geometry(ds: Dataset, h: FileHeader, per_frame: Any) -> None:
    """Per-frame positions, orientation, spacing, rescale and split labels of an enhanced (multi-frame) object."""
    h.enhanced = True
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    frames = list(per_frame) if per_frame is not None else []
    if len(frames) != h.n_frames:
        h.add(
            Code.MISSING_POSITION,
            f"PerFrameFunctionalGroupsSequence has {len(frames)} items for {h.n_frames} frames",
        )
        frames = (frames + [None] * h.n_frames)[: h.n_frames]
    h.positions, h.slopes, h.intercepts = [], [], []
    orientations: list[tuple[float, ...] | None] = []
    types: list[str] = []
    echoes: list[str] = []
    volumes: list[tuple] = []
    bad_rescale = False
    for frame in frames:
        position = _functional(shared, frame, "PlanePositionSequence", "ImagePositionPatient")
        h.positions.append(_floats(position, 3))
        iop = _floats(_functional(shared, frame, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        orientations.append(iop)
        slope = _functional(shared, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(shared, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None and "RescaleSlope" in ds:  # some writers keep rescale at the top level
            slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        s, i = _float(slope), _float(intercept)
        if (_present(slope) and s is None) or (_present(intercept) and i is None) or s == 0:
            bad_rescale = True
        h.slopes.append(1.0 if s is None else s)
        h.intercepts.append(0.0 if i is None else i)
        frame_type = _functional(shared, frame, "MRImageFrameTypeSequence", "FrameType")
        if frame_type is None:
            frame_type = _functional(shared, frame, "CTImageFrameTypeSequence", "FrameType")
        types.append(_label(frame_type))
        echoes.append(_label(_functional(shared, frame, "MREchoSequence", "EffectiveEchoTime")))
        volumes.append(
            (
                _label(_functional(shared, frame, "FrameContentSequence", "TemporalPositionIndex")),
                _label(_functional(shared, frame, "MRDiffusionSequence", "DiffusionBValue")),
                _label(_functional(shared, frame, "FrameContentSequence", "FrameAcquisitionNumber")),
            )
        )
    if bad_rescale:
        h.add(Code.INVALID_HEADER, "a frame's RescaleSlope/RescaleIntercept is not a number (or the slope is 0)")
    else:
        top = float(2 ** max(1, min(h.bits_stored or 16, 32)))
        if any(abs(s) * top + abs(i) >= _FLOAT32_MAX for s, i in zip(h.slopes, h.intercepts, strict=True)):
            h.add(Code.INVALID_HEADER, "a frame's RescaleSlope/RescaleIntercept overflows 32-bit floats")
    valid = [o for o in orientations if o is not None]
    h.orientation = valid[0] if valid else None
    if len({tuple(np.round(o, 4)) for o in valid}) > 1 or (valid and len(valid) < len(orientations)):
        h.orientations = orientations
    for iop in set(valid):
        problem = _orientation_problem(iop)
        if problem:
            h.add(Code.BAD_ORIENTATION, problem)
            break
    if len(set(types)) > 1:
        h.frame_types = types
    if len(set(echoes)) > 1:
        h.frame_echoes = echoes
    if len(set(volumes)) > 1:
        h.frame_volumes = volumes
    first = frames[0] if frames else None
    spacing = _functional(shared, first, "PixelMeasuresSequence", "PixelSpacing")
    h.pixel_spacing = _spacing(h, spacing)
    spacings = {_floats(_functional(shared, f, "PixelMeasuresSequence", "PixelSpacing"), 2) for f in frames[:4096]}
    if len(spacings) > 1:
        h.add(Code.MIXED_PIXEL_SPACING, f"frames have different PixelSpacing ({', '.join(map(str, sorted(spacings, key=str)[:3]))})")
    thickness = _float(_functional(shared, first, "PixelMeasuresSequence", "SliceThickness"))
    h.slice_thickness = thickness if thickness is not None else h.slice_thickness
    between = _float(_functional(shared, first, "PixelMeasuresSequence", "SpacingBetweenSlices"))
    h.spacing_between_slices = between if between is not None else h.spacing_between_slices
    window_center = _float(_functional(shared, first, "FrameVOILUTSequence", "WindowCenter"))
    if window_center is not None:
        h.window_center = window_center
        h.window_width = _float(_functional(shared, first, "FrameVOILUTSequence", "WindowWidth"))
