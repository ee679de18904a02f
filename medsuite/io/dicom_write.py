"""Write a `Volume` as a DICOM CT series (one file per slice) or as one Enhanced CT multi-frame file.

Used by the tests (to build messy folders whose truth is known) and by the demo cohort generator. HU are
stored as 16-bit integers with RescaleSlope/Intercept; the geometry (ImagePositionPatient per slice,
ImageOrientationPatient, PixelSpacing) comes from the volume so that a reader can be checked in world mm.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import uid as uids
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence

from medsuite.io.atomic import atomic_path
from medsuite.io.decode import DECODER_PACKAGES, NATIVE_SYNTAXES, syntax_name
from medsuite.io.errors import DicomError, MissingDecoderError
from medsuite.io.volume import Volume

CT_IMAGE_STORAGE = uids.CTImageStorage
ENHANCED_CT_IMAGE_STORAGE = uids.EnhancedCTImageStorage

# Syntaxes write_series can produce (lossless only: the stored values must round-trip exactly).
WRITABLE_SYNTAXES = frozenset(
    {
        *NATIVE_SYNTAXES,
        uids.DeflatedExplicitVRLittleEndian,
        uids.RLELossless,
        uids.JPEGLSLossless,
        uids.JPEG2000Lossless,
    }
)
_ENCODER_PLUGIN = {
    uids.RLELossless: "pydicom",
    uids.JPEGLSLossless: "pyjpegls",
    uids.JPEG2000Lossless: "pylibjpeg",
}
# Syntaxes whose slice files are assembled from a pre-encoded template (`_SliceEncoder`).
_TEMPLATE_SYNTAXES = frozenset({uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian})


def _check_encoder(transfer_syntax: str) -> None:
    if transfer_syntax not in WRITABLE_SYNTAXES:
        raise DicomError(
            f"write_series: cannot write {syntax_name(transfer_syntax)}; supported: "
            + ", ".join(sorted(syntax_name(s) for s in WRITABLE_SYNTAXES))
        )
    if transfer_syntax in _ENCODER_PLUGIN:
        from pydicom.pixels import get_encoder

        encoder = get_encoder(transfer_syntax)
        if not encoder.is_available:
            raise MissingDecoderError(
                f"write_series: no encoder installed for {syntax_name(transfer_syntax)}; "
                f"install {DECODER_PACKAGES[transfer_syntax].replace('decodes', 'encodes')}"
            )


def _encoder_plugin(transfer_syntax: str) -> str:
    """The pydicom encoding plugin for a compressed syntax: for RLE the compiled pylibjpeg-rle encoder
    when installed (~50x faster than pydicom's own, same lossless result), else pydicom's."""
    if transfer_syntax == uids.RLELossless:
        from pydicom.pixels import get_encoder

        if "pylibjpeg" in get_encoder(transfer_syntax).available_plugins:
            return "pylibjpeg"
    return _ENCODER_PLUGIN[transfer_syntax]


def hu_to_stored(array: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Map HU to 16-bit stored values: ``(stored, pixel_representation, slope, intercept)``.

    Integral data in [-1024, 64511] is stored unsigned with intercept -1024 (the common CT layout); other
    integral data that fits int16 is stored signed with intercept 0; anything else is scaled linearly
    onto uint16 (lossy to 1/65535 of the range).
    """
    values = np.asarray(array)
    if values.size == 0:
        raise DicomError("write_series: the volume is empty")
    if not np.all(np.isfinite(values)):
        raise DicomError("write_series: the volume holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    integral = np.issubdtype(values.dtype, np.integer) or bool(np.all(values == np.round(values)))
    if integral and lo >= -1024 and hi <= 65535 - 1024:
        return (values + 1024).astype(np.uint16), 0, 1.0, -1024.0
    if integral and lo >= -32768 and hi <= 32767:
        return values.astype(np.int16), 1, 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    stored = np.round((values.astype(np.float64) - lo) / slope).astype(np.uint16)
    return stored, 0, float(slope), float(lo)


def _ds_string(value: float) -> str:
    """A decimal string (DS, at most 16 characters) for a float."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}"
    return text


def _base_dataset(
    volume: Volume,
    *,
    sop_class: str,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    transfer_syntax: str,
    pixel_representation: int,
    slope: float,
    intercept: float,
) -> Dataset:
    """Patient/study/series/equipment and image-pixel attributes shared by every file of the series."""
    meta = volume.meta
    today = date.today().strftime("%Y%m%d")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.ImplementationClassUID = uids.PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.StudyDate = str(meta.get("study_date") or today)
    ds.StudyTime = "120000"
    ds.SeriesDate = ds.StudyDate
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Modality = volume.modality or "CT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = str(meta.get("description", ""))[:64]
    ds.Manufacturer = str(meta.get("manufacturer", "medsuite"))
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_representation
    ds.RescaleSlope = _ds_string(slope)
    ds.RescaleIntercept = _ds_string(intercept)
    ds.RescaleType = "HU"
    ds.KVP = _ds_string(float(meta.get("kvp", 120.0)))
    ds.WindowCenter = _ds_string(float(meta.get("window_center", 40.0)))
    ds.WindowWidth = _ds_string(float(meta.get("window_width", 400.0)))
    ds.BurnedInAnnotation = "NO"
    return ds


def _apply_tags(ds: Dataset, tags: dict[str, Any]) -> None:
    for keyword, value in tags.items():
        if tag_for_keyword(keyword) is None:
            raise DicomError(f"write_series: {keyword!r} is not a DICOM keyword (e.g. SeriesDescription)")
        setattr(ds, keyword, value)


def _set_pixels(ds: Dataset, stored: np.ndarray, transfer_syntax: str) -> None:
    """Put ``stored`` (frames or one slice) into ``ds`` encoded with ``transfer_syntax``."""
    if transfer_syntax == uids.JPEG2000Lossless and min(stored.shape[-2:]) < 32:
        raise DicomError(
            f"write_series: the JPEG 2000 encoder (openjpeg, 6 resolution levels) needs images of at least "
            f"32x32 pixels, got {stored.shape[-2]}x{stored.shape[-1]}"
        )
    if transfer_syntax in _ENCODER_PLUGIN:
        # keep the caller's (deterministic) SOPInstanceUID: compress() would draw a random one
        ds.compress(transfer_syntax, stored, encoding_plugin=_encoder_plugin(transfer_syntax), generate_instance_uid=False)
        return
    data = np.ascontiguousarray(stored)
    if transfer_syntax == uids.ExplicitVRBigEndian:
        data = data.astype(data.dtype.newbyteorder(">"))
    ds.PixelData = data.tobytes()
    ds["PixelData"].VR = "OW"


def _write_atomic(ds: Dataset, path: Path) -> None:
    # No fsync: test and demo data; the rename alone guarantees that a killed writer leaves no partial file.
    with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)


def _uids(patient_id: str, study_uid: str | None, series_uid: str | None) -> tuple[str, str, str]:
    study = study_uid or uids.generate_uid()
    series = series_uid or uids.generate_uid()
    frame_of_reference = uids.generate_uid(entropy_srcs=[study, "frame-of-reference"])
    return study, series, frame_of_reference


def _file_names(n: int, shuffle: bool, seed: int, series_uid: str) -> list[str]:
    """Slice-order names, or random hex names that differ between series (so series can share a folder)."""
    if not shuffle:
        return [f"IM{i + 1:05d}.dcm" for i in range(n)]
    rng = np.random.default_rng([seed, zlib.crc32(series_uid.encode())])
    names: set[str] = set()
    while len(names) < n:
        names.add(f"{int(rng.integers(0, 2**48)):012x}")
    return sorted(names)  # sorted hex names are in random slice order


def slice_uid(series_uid: str, patient_id: str, index: int) -> str:
    """SOPInstanceUID of slice ``index``: derived from the series UID (so a series is byte-identical when
    written twice with the same UIDs), unique per slice."""
    return str(uids.generate_uid(entropy_srcs=[series_uid, patient_id, "slice", str(index)]))


class _SliceEncoder:
    """Encodes one series' slice files from a template: the elements every slice shares are encoded once
    (by pydicom) and reused; per slice only the file meta, the varying elements and the pixels are encoded.

    The bytes are what ``Dataset.save_as(enforce_file_format=True)`` writes for the same dataset (tested),
    at a fraction of the cost; used for the uncompressed little-endian syntaxes only."""

    def __init__(self, template: Dataset, varying: list[str]) -> None:
        self.implicit = template.file_meta.TransferSyntaxUID == uids.ImplicitVRLittleEndian
        self.encoding = template.get("SpecificCharacterSet", "ISO_IR 100")
        self.file_meta = template.file_meta
        var_tags = {tag_for_keyword(kw): kw for kw in varying}
        self.parts: list[bytes | str] = []
        run: list[DataElement] = []
        for elem in [*template, DataElement(0x7FE00010, "OW", b"")]:
            if elem.tag in var_tags or elem.tag == 0x7FE00010:
                if run:
                    self.parts.append(self._encode(run))
                    run = []
                self.parts.append(var_tags.get(elem.tag, "PixelData"))
            else:
                run.append(elem)
        if run:
            self.parts.append(self._encode(run))

    def _encode(self, elements: list[DataElement]) -> bytes:
        ds = Dataset()
        for elem in elements:
            ds.add(elem)
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = self.implicit, True
        write_dataset(fp, ds, parent_encoding=self.encoding)
        return fp.getvalue()

    def encode(self, values: dict[str, Any], pixels: np.ndarray) -> bytes:
        """The whole file (preamble, file meta, dataset) for one slice."""
        meta = FileMetaDataset()
        for elem in self.file_meta:
            meta.add(elem)
        if "SOPInstanceUID" in values:
            meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        fp.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fp, meta, enforce_standard=True)
        chunks = [fp.getvalue()]
        for part in self.parts:
            if isinstance(part, bytes):
                chunks.append(part)
            elif part == "PixelData":
                chunks.append(
                    self._encode([DataElement(0x7FE00010, "OW", np.ascontiguousarray(pixels).tobytes())])
                )
            else:
                ds = Dataset()
                setattr(ds, part, values[part])
                chunks.append(self._encode([ds[part]]))
        return b"".join(chunks)


def _write_bytes_atomic(data: bytes, path: Path) -> None:
    with atomic_path(path, fsync=False) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def write_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
    shuffle_names: bool = False,
    seed: int = 0,
    **tags: Any,
) -> list[Path]:
    """Write ``volume`` as a CT series, one file per slice, and return the paths in slice order.

    ``tags`` are DICOM keywords set on every file (e.g. ``SeriesDescription="chest"``). Plain names are
    ``IM00001.dcm`` ... (a second series in the same folder overwrites them); with ``shuffle_names`` the
    files get random extension-less names (seeded by ``seed`` and the series UID, so series can share a
    folder) and shuffled InstanceNumbers, so that a
    reader which sorts by name or InstanceNumber instead of position is caught. UIDs are generated when
    not given (series in one study share the FrameOfReferenceUID); SOPInstanceUIDs derive from the series
    UID and the slice index, so given UIDs (and ``seed``) make the files byte-identical run to run.
    """
    transfer_syntax = uids.UID(str(transfer_syntax))
    _check_encoder(transfer_syntax)
    if not patient_id:
        raise DicomError("write_series: patient_id must be a non-empty string")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = _uids(patient_id, study_uid, series_uid)
    stored, pixel_rep, slope, intercept = hu_to_stored(volume.array)
    n = volume.shape[0]
    rng = np.random.default_rng(seed)
    instance_numbers = rng.permutation(n) + 1 if shuffle_names else np.arange(1, n + 1)
    names = _file_names(n, shuffle_names, seed, series)
    order = rng.permutation(n) if shuffle_names else np.arange(n)

    row_dir, col_dir, step = volume.direction[:, 2], volume.direction[:, 1], volume.direction[:, 0]
    template = _base_dataset(
        volume,
        sop_class=CT_IMAGE_STORAGE,
        patient_id=patient_id,
        study_uid=study,
        series_uid=series,
        frame_of_reference_uid=frame_of_reference,
        transfer_syntax=transfer_syntax,
        pixel_representation=pixel_rep,
        slope=slope,
        intercept=intercept,
    )
    template.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    template.AcquisitionNumber = 1
    template.ImageOrientationPatient = [_ds_string(float(v)) for v in (*row_dir, *col_dir)]
    template.PixelSpacing = [_ds_string(volume.spacing[1]), _ds_string(volume.spacing[2])]
    template.SliceThickness = _ds_string(float(volume.meta.get("slice_thickness", volume.spacing[0])))
    normal = np.cross(row_dir, col_dir)
    per_slice = []
    for k in range(n):
        position = np.asarray(volume.origin) + step * volume.spacing[0] * k
        per_slice.append(
            {
                "SOPInstanceUID": slice_uid(series, patient_id, k),
                "InstanceNumber": int(instance_numbers[k]),
                "ImagePositionPatient": [_ds_string(float(v)) for v in position],
                "SliceLocation": _ds_string(float(position @ normal)),
            }
        )
    template.update({kw: v for kw, v in per_slice[0].items()})
    _apply_tags(template, tags)  # user tags win, as before (they may even override per-slice ones)
    template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
    varying = [kw for kw in per_slice[0] if kw not in tags]
    encoder = _SliceEncoder(template, varying) if transfer_syntax in _TEMPLATE_SYNTAXES else None
    paths: list[Path] = []
    for k in range(n):
        paths.append(out / names[order[k]])
        values = {kw: per_slice[k][kw] for kw in varying}
        if encoder is not None:
            _write_bytes_atomic(encoder.encode(values, stored[k]), paths[-1])
            continue
        ds = copy.deepcopy(template)
        ds.update(values)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _set_pixels(ds, stored[k], transfer_syntax)
        _write_atomic(ds, paths[-1])
    return paths


def write_enhanced(
    volume: Volume,
    path: str | Path,
    *,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
    frame_order: Sequence[int] | None = None,
    **tags: Any,
) -> Path:
    """Write ``volume`` as one Enhanced CT multi-frame file (geometry in the functional groups).

    ``frame_order`` lists which slice each frame holds (default: slice order); readers must sort frames
    by PlanePositionSequence, not by frame number, so tests pass a shuffled order.
    """
    transfer_syntax = uids.UID(str(transfer_syntax))
    _check_encoder(transfer_syntax)
    if not patient_id:
        raise DicomError("write_enhanced: patient_id must be a non-empty string")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = _uids(patient_id, study_uid, series_uid)
    stored, pixel_rep, slope, intercept = hu_to_stored(volume.array)
    n = volume.shape[0]
    order = list(range(n)) if frame_order is None else [int(i) for i in frame_order]
    if sorted(order) != list(range(n)):
        raise DicomError(f"write_enhanced: frame_order must be a permutation of 0..{n - 1}")
    ds = _base_dataset(
        volume,
        sop_class=ENHANCED_CT_IMAGE_STORAGE,
        patient_id=patient_id,
        study_uid=study,
        series_uid=series,
        frame_of_reference_uid=frame_of_reference,
        transfer_syntax=transfer_syntax,
        pixel_representation=pixel_rep,
        slope=slope,
        intercept=intercept,
    )
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
        del ds[keyword]  # in the functional groups for enhanced objects
    sop_uid = slice_uid(series, patient_id, -1)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.NumberOfFrames = n
    ds.ContentQualification = "PRODUCT"

    row_dir, col_dir, step = volume.direction[:, 2], volume.direction[:, 1], volume.direction[:, 0]
    measures = Dataset()
    measures.PixelSpacing = [_ds_string(volume.spacing[1]), _ds_string(volume.spacing[2])]
    measures.SliceThickness = _ds_string(float(volume.spacing[0]))
    orientation = Dataset()
    orientation.ImageOrientationPatient = [_ds_string(float(v)) for v in (*row_dir, *col_dir)]
    transform = Dataset()
    transform.RescaleSlope = _ds_string(slope)
    transform.RescaleIntercept = _ds_string(intercept)
    transform.RescaleType = "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        position = Dataset()
        position.ImagePositionPatient = [
            _ds_string(float(v)) for v in np.asarray(volume.origin) + step * volume.spacing[0] * k
        ]
        content = Dataset()
        content.StackID = "1"
        content.InStackPositionNumber = k + 1
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        item.FrameContentSequence = DicomSequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _apply_tags(ds, tags)
    _set_pixels(ds, stored[order], transfer_syntax)
    _write_atomic(ds, target)
    return target
