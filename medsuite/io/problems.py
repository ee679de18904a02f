"""What the DICOM scan and reader notice, as codes that programs branch on and sentences that people read.

Every problem has a `Code` (a stable string enum: tables store its value, code compares the member) and a
plain-words message. Whether a problem makes its stack unusable is a property of the code (`FATAL`), so
that callers never parse messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["FATAL", "SKIP_CODES", "Code", "Problem", "codes_of", "first_fatal"]


class Code(StrEnum):
    """Why a file was skipped, or what is wrong or unusual about a stack."""

    # --- files that are not image slices (ScanResult.skipped)
    NOT_DICOM = "not_dicom"  # not DICOM at all
    NOT_REGULAR_FILE = "not_regular_file"  # FIFO, device, socket, broken symlink
    UNREADABLE = "unreadable"  # the operating system refused to read it (permissions, I/O error)
    UNREADABLE_FOLDER = "unreadable_folder"  # a folder that could not be listed
    UNPARSABLE = "unparsable"  # starts like DICOM but its header cannot be parsed
    NON_IMAGE = "non_image"  # SR, SEG, RTSTRUCT, presentation state, DICOMDIR ...
    NO_IMAGE = "no_image"  # an image SOP class without Rows/Columns
    COLOUR = "colour"  # RGB, YBR, PALETTE COLOR: not a grey-level slice
    VIDEO = "video"  # MPEG/H.264/HEVC transfer syntaxes
    # --- broken image files (their stack is an error)
    TRUNCATED = "truncated"  # the file ends before its pixels (or inside its header)
    NO_PIXEL_DATA = "no_pixel_data"
    PIXEL_LENGTH = "pixel_length"  # Pixel Data length disagrees with Rows x Columns x frames x bits
    INVALID_HEADER = "invalid_header"  # Rows 0, BitsAllocated 64, NumberOfFrames -5, slope 0 ...
    UNSUPPORTED = "unsupported"  # valid DICOM that medsuite cannot turn into a correct volume
    MISSING_POSITION = "missing_position"  # ImagePositionPatient (or per-frame position) absent
    MISSING_ORIENTATION = "missing_orientation"
    MISSING_PIXEL_SPACING = "missing_pixel_spacing"
    BAD_ORIENTATION = "bad_orientation"  # ImageOrientationPatient not two unit perpendicular vectors
    # --- stacks that cannot be one regular volume (errors)
    DUPLICATE_POSITIONS = "duplicate_positions"  # different slices at one position, nothing separates them
    NOT_COLLINEAR = "not_collinear"  # slice origins not on a line
    MIXED_PIXEL_SPACING = "mixed_pixel_spacing"
    # --- warnings: the stack is read, and the reader says what it did
    NO_SERIES_UID = "no_series_uid"  # grouped by the documented fallback key
    DUPLICATE_FILES = "duplicate_files"  # same SOPInstanceUID twice: one kept
    SPLIT = "split"  # the series holds several stacks (ImageType, echo, orientation, acquisition ...)
    MULTI_VOLUME = "multi_volume"  # 4D: several volumes at the same positions
    MOSAIC = "mosaic"  # Siemens mosaic, decoded into slices
    LOCALIZER = "localizer"
    ORIENTATION_DIFFERS = "orientation_differs"
    SINGLE_SLICE = "single_slice"
    GANTRY_TILT = "gantry_tilt"
    IRREGULAR_SPACING = "irregular_spacing"  # uneven steps or gaps: resampled when read
    MIXED_PIXEL_FORMAT = "mixed_pixel_format"  # e.g. one 8-bit slice among 16-bit ones (read correctly)
    UNREADABLE_NEIGHBOUR = "unreadable_neighbour"  # an unreadable file sits in the same folder



#: Codes that make a stack unusable (status 'error'); every other code is a warning or a note.
FATAL: frozenset[Code] = frozenset(
    {
        Code.TRUNCATED, Code.NO_PIXEL_DATA, Code.PIXEL_LENGTH, Code.INVALID_HEADER, Code.UNSUPPORTED,
        Code.MISSING_POSITION, Code.MISSING_ORIENTATION, Code.MISSING_PIXEL_SPACING, Code.BAD_ORIENTATION,
        Code.DUPLICATE_POSITIONS, Code.NOT_COLLINEAR, Code.MIXED_PIXEL_SPACING,
    }
)  # fmt: skip

#: Codes of `ScanResult.skipped` rows.
SKIP_CODES: frozenset[Code] = frozenset(
    {
        Code.NOT_DICOM, Code.NOT_REGULAR_FILE, Code.UNREADABLE, Code.UNREADABLE_FOLDER, Code.UNPARSABLE,
        Code.NON_IMAGE, Code.NO_IMAGE, Code.COLOUR, Code.VIDEO, Code.TRUNCATED,
    }
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """One thing noticed about a file or a stack: its code and a sentence (which may name a file)."""

    code: Code
    message: str

    @property
    def fatal(self) -> bool:
        return self.code in FATAL

    def __str__(self) -> str:
        return self.message


def codes_of(problems: list[Problem]) -> list[str]:
    """The distinct code values of ``problems``, in first-seen order (the series table's ``codes``)."""
    seen: dict[str, None] = {}
    for p in problems:
        seen.setdefault(p.code.value, None)
    return list(seen)


def first_fatal(codes: object) -> Code | None:
    """The first fatal `Code` among code values (a series-table row's ``codes``), or None."""
    for value in codes if isinstance(codes, (list, tuple)) else ():
        try:
            code = Code(value)
        except ValueError:
            continue
        if code in FATAL:
            return code
    return None
