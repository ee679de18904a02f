"""Errors raised while discovering, decoding and reading DICOM.

Every message starts with the file or series it is about and then says the reason in plain words, so that a
batch job's log line is enough to find and fix the input. All are `ValueError`s (bad input, not a bug). Each
carries a `medsuite.io.problems.Code` in ``.code`` where one applies, so that callers branch on it, not on
the wording.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medsuite.io.problems import Code

__all__ = [
    "DicomError",
    "DicomHeaderError",
    "MissingDecoderError",
    "MixedSeriesError",
    "NotDicomError",
    "NotRegularFileError",
    "PixelDataError",
    "SeriesGeometryError",
]


class DicomError(ValueError):
    """Base class: a DICOM input that medsuite cannot turn into a correct volume."""

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotDicomError(DicomError):
    """The file is not DICOM at all, or its header cannot be parsed."""


class NotRegularFileError(NotDicomError):
    """A FIFO, a device, a socket or a folder where a file was expected: never read."""


class DicomHeaderError(DicomError):
    """A tag needed for correct geometry or pixel values is missing or invalid."""


class PixelDataError(DicomError):
    """The pixel data is absent, truncated or of the wrong length for Rows x Columns x frames."""


class MissingDecoderError(DicomError):
    """The transfer syntax is compressed and no installed package can decode (or encode) it."""


class SeriesGeometryError(DicomError):
    """The slices do not form a regular grid (duplicates, gaps, gantry tilt) and the caller asked for an error."""


class MixedSeriesError(DicomError):
    """The files given hold more than one stack (series, orientation, size, image type, echo ...)."""
