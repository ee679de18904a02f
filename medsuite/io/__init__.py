"""Foundations: DICOM discovery and series -> `Volume` (geometry-correct), other formats via SimpleITK, NIfTI
export, the volume cache and atomic outputs.

The names below are the public API of this layer (``from medsuite.io import read_volume, scan_folder``);
they load on first use, so that importing the package does not import pydicom, pandas or SimpleITK.
"""

from typing import TYPE_CHECKING

from medsuite._exports import lazy_exports

_EXPORTS = {
    "Volume": "medsuite.io.volume",
    "read_volume": "medsuite.io.load",
    "select_stack": "medsuite.io.load",
    "stack_of_file": "medsuite.io.load",
    "read_series": "medsuite.io.reader",
    "read_series_volumes": "medsuite.io.reader",
    "read_pixels": "medsuite.io.reader",
    "scan_folder": "medsuite.io.dicom",
    "ScanResult": "medsuite.io.dicom",
    "SERIES_COLUMNS": "medsuite.io.dicom",
    "Code": "medsuite.io.problems",
    "Problem": "medsuite.io.problems",
    "DicomError": "medsuite.io.errors",
    "DicomHeaderError": "medsuite.io.errors",
    "MissingDecoderError": "medsuite.io.errors",
    "MixedSeriesError": "medsuite.io.errors",
    "NotDicomError": "medsuite.io.errors",
    "NotRegularFileError": "medsuite.io.errors",
    "PixelDataError": "medsuite.io.errors",
    "SeriesGeometryError": "medsuite.io.errors",
    "read_image": "medsuite.io.sitk_io",
    "write_nifti": "medsuite.io.sitk_io",
    "write_nifti_4d": "medsuite.io.sitk_io",
    "VolumeCache": "medsuite.io.cache",
    "CacheError": "medsuite.io.cache",
    "write_series": "medsuite.io.dicom_write",
    "write_enhanced": "medsuite.io.dicom_write",
    "atomic_dir": "medsuite.io.atomic",
    "atomic_open": "medsuite.io.atomic",
    "atomic_path": "medsuite.io.atomic",
    "atomic_write_bytes": "medsuite.io.atomic",
    "atomic_write_json": "medsuite.io.atomic",
    "atomic_write_text": "medsuite.io.atomic",
    "remove_stale_temps": "medsuite.io.atomic",
}

__all__ = [
    "CacheError",
    "Code",
    "DicomError",
    "DicomHeaderError",
    "MissingDecoderError",
    "MixedSeriesError",
    "NotDicomError",
    "NotRegularFileError",
    "PixelDataError",
    "Problem",
    "SERIES_COLUMNS",
    "ScanResult",
    "SeriesGeometryError",
    "Volume",
    "VolumeCache",
    "atomic_dir",
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_image",
    "read_pixels",
    "read_series",
    "read_series_volumes",
    "read_volume",
    "remove_stale_temps",
    "scan_folder",
    "select_stack",
    "stack_of_file",
    "write_enhanced",
    "write_nifti",
    "write_nifti_4d",
    "write_series",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from medsuite.io.atomic import (
        atomic_dir,
        atomic_open,
        atomic_path,
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        remove_stale_temps,
    )
    from medsuite.io.cache import CacheError, VolumeCache
    from medsuite.io.dicom import SERIES_COLUMNS, ScanResult, scan_folder
    from medsuite.io.dicom_write import write_enhanced, write_series
    from medsuite.io.errors import (
        DicomError,
        DicomHeaderError,
        MissingDecoderError,
        MixedSeriesError,
        NotDicomError,
        NotRegularFileError,
        PixelDataError,
        SeriesGeometryError,
    )
    from medsuite.io.load import read_volume, select_stack, stack_of_file
    from medsuite.io.problems import Code, Problem
    from medsuite.io.reader import read_pixels, read_series, read_series_volumes
    from medsuite.io.sitk_io import read_image, write_nifti, write_nifti_4d
    from medsuite.io.volume import Volume
