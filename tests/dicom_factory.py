"""Build small, messy DICOM folders whose truth is known (shared test helpers; import as `dicom_factory`).

Everything is written with `medsuite.io.dicom_write` plus pydicom edits, so a test can state exactly which
voxel should land at which world position. Volumes are tiny (default 10 x 24 x 28) to keep tests fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset

from medsuite.io.dicom_write import write_series
from medsuite.io.volume import Volume

PLANES = ("axial", "coronal", "sagittal", "oblique")


def direction_for(plane: str = "axial", feet_first: bool = False) -> np.ndarray:
    """A ``Volume.direction`` (columns: array z, y, x in LPS) for a named plane; oblique is about 30 deg."""
    if plane == "axial":
        d = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float).T  # z -> S, y -> P, x -> L
    elif plane == "coronal":
        d = np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], dtype=float).T  # z -> P, y -> -S, x -> L
    elif plane == "sagittal":
        d = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float).T  # z -> L, y -> -S, x -> P
    elif plane == "oblique":
        from scipy.spatial.transform import Rotation

        d = Rotation.from_euler("xyz", [30, 20, 10], degrees=True).as_matrix() @ direction_for("axial")
    else:
        raise ValueError(f"unknown plane {plane!r}; one of {PLANES}")
    if feet_first:  # slices written in decreasing position along the DICOM normal
        d = d.copy()
        d[:, 0] *= -1
    return d


def make_volume(
    shape: tuple[int, int, int] = (10, 24, 28),
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.8),
    origin: tuple[float, float, float] = (-12.0, 30.5, 100.0),
    plane: str = "axial",
    feet_first: bool = False,
    seed: int = 0,
) -> Volume:
    """A CT-like volume (integer HU, air around a body with a bright 'bone' blob) with a distinct slice pattern."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    body = (
        (y - shape[1] / 2) ** 2 / (shape[1] / 2.5) ** 2 + (x - shape[2] / 2) ** 2 / (shape[2] / 2.5) ** 2
    ) < 1
    array = np.where(body, 40, -1000) + 7 * z + rng.integers(-20, 20, shape)
    array[(z == shape[0] // 2) & body & (x < shape[2] / 2)] += 900
    return Volume(
        array.astype(np.int16),
        spacing,
        origin,
        direction=direction_for(plane, feet_first),
        modality="CT",
        meta={"description": f"{plane} test"},
    )


def write_ct(
    folder: Path, volume: Volume | None = None, *, patient_id: str = "TEST-PATIENT", **kwargs
) -> list[Path]:
    """`write_series` with test defaults (shuffled names unless ``shuffle_names=False``)."""
    kwargs.setdefault("shuffle_names", True)
    return write_series(
        volume if volume is not None else make_volume(), folder, patient_id=patient_id, **kwargs
    )


def edit_files(
    paths: Sequence[Path], edit: Callable[[Dataset, int], None], *, slice_order: bool = True
) -> None:
    """Apply ``edit(ds, k)`` to each file and save it in place; ``k`` is the slice index along the stack.

    ``paths`` are `write_series` output (already in slice order); pixel data is read and rewritten too.
    """
    for k, path in enumerate(paths if slice_order else sorted(paths)):
        ds = pydicom.dcmread(path)
        edit(ds, k)
        ds.save_as(path, enforce_file_format=True)


def position_of(volume: Volume, k: float) -> np.ndarray:
    """World position of slice ``k`` (its first voxel) in ``volume``."""
    return volume.index_to_world((k, 0, 0))


def add_localizer(folder: Path, series_paths: Sequence[Path], name: str = "scout") -> Path:
    """Add a coronal LOCALIZER image to the same series as ``series_paths`` (as scanners do)."""
    ds = pydicom.dcmread(series_paths[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [-100, 0, 200]
    ds.SOPInstanceUID = uids.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 999
    out = Path(folder) / name
    ds.save_as(out, enforce_file_format=True)
    return out


def _non_image_base(sop_class: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uids.generate_uid()
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = uids.generate_uid()
    ds.PatientID = "TEST-PATIENT"
    return ds


def write_non_images(folder: Path, study_uid: str = "") -> dict[str, Path]:
    """Write an SR, a SEG (which has pixel data), an RTSTRUCT, a presentation state and a KOS."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or uids.generate_uid()
    kinds = {
        "sr": uids.ComprehensiveSRStorage,
        "rtstruct": uids.RTStructureSetStorage,
        "pr": uids.GrayscaleSoftcopyPresentationStateStorage,
        "kos": uids.KeyObjectSelectionDocumentStorage,
    }
    out = {}
    for kind, sop_class in kinds.items():
        ds = _non_image_base(sop_class, study_uid)
        ds.Modality = {"sr": "SR", "rtstruct": "RTSTRUCT", "pr": "PR", "kos": "KO"}[kind]
        out[kind] = folder / f"{kind}_object"
        ds.save_as(out[kind], enforce_file_format=True)
    seg = _non_image_base(uids.SegmentationStorage, study_uid)
    seg.Modality = "SEG"
    seg.Rows, seg.Columns, seg.BitsAllocated, seg.BitsStored, seg.HighBit = 8, 8, 1, 1, 0
    seg.SamplesPerPixel, seg.PixelRepresentation, seg.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    seg.NumberOfFrames = 1
    seg.PixelData = bytes(8)
    out["seg"] = folder / "seg_object"
    seg.save_as(out["seg"], enforce_file_format=True)
    return out


def write_garbage(folder: Path) -> dict[str, Path]:
    """A text file, random bytes, an empty file and a file with a DICM preamble but nothing valid after it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    files = {
        "text": (folder / "notes.txt", b"not an image\n"),
        "random": (folder / "random.bin", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()),
        "empty": (folder / "empty", b""),
        "fake_dicm": (
            folder / "fake",
            bytes(128) + b"DICM" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes(),
        ),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {k: v[0] for k, v in files.items()}


def truncate(path: Path, keep_fraction: float = 0.7) -> Path:
    """Cut a file to ``keep_fraction`` of its size (simulates an interrupted copy)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(path)


# ------------------------------------------------------------------------------- quirks of real scanners
def strip_series_uid(paths: Sequence[Path]) -> None:
    """Remove SeriesInstanceUID from every file (as some anonymisers do)."""
    edit_files(paths, lambda ds, k: delattr(ds, "SeriesInstanceUID"))


def csa2_header(tags: dict[str, tuple[str, list]]) -> bytes:
    """A Siemens CSA2 ('SV10') header holding ``tags``: name -> (VR, values), as nibabel and dcm2niix read it."""
    import struct

    out = bytearray(b"SV10\x04\x03\x02\x01" + struct.pack("<2I", len(tags), 77))
    for name, (vr, values) in tags.items():
        out += name.encode().ljust(64, b"\0") + struct.pack("<i", len(values)) + vr.encode().ljust(4, b"\0")
        out += struct.pack("<3i", 0, len(values), 205)
        for value in values:
            data = (f"{value:.8f}" if isinstance(value, float) else str(value)).encode() + b"\0"
            out += struct.pack("<4i", len(data), len(data), 77, len(data)) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def write_mosaic(
    path: Path,
    volume: Volume,
    *,
    csa: bool = True,
    normal_sign: float | None = None,
    acquisition: int = 1,
    series_uid: str = "1.2.826.0.1.3680043.8.498.700",
    patient_id: str = "TEST-PATIENT",
) -> Path:
    """One Siemens mosaic file of ``volume`` (slice k on tile k), geometry as a Siemens EPI writes it.

    ``normal_sign`` overrides the sign of the CSA SliceNormalVector relative to the true slice direction
    (to build a deliberately wrong file); ``csa=False`` leaves the CSA header out.
    """
    n, tr, tc = volume.shape
    grid = int(np.ceil(np.sqrt(n)))
    stored = np.zeros((grid * tr, grid * tc), dtype=np.uint16)
    values = np.asarray(volume.array)
    offset = int(-min(0, values.min()))
    for k in range(n):
        r, c = divmod(k, grid)
        stored[r * tr : (r + 1) * tr, c * tc : (c + 1) * tc] = values[k] + offset
    row, col, step = volume.direction[:, 2], volume.direction[:, 1], volume.direction[:, 0]
    row_mm, col_mm = volume.spacing[1], volume.spacing[2]
    corner = np.asarray(volume.origin) - ((grid * tc - tc) / 2 * col_mm * row + (grid * tr - tr) / 2 * row_mm * col)
    # (tiles fill the lightbox exactly here, so the nominal and the integer tile sizes agree)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uids.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = f"{series_uid}.{acquisition}"
    ds.file_meta.TransferSyntaxUID = uids.ImplicitVRLittleEndian
    ds.SOPClassUID = uids.MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.701", series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.702"
    ds.PatientID, ds.Modality, ds.Manufacturer, ds.SeriesNumber = patient_id, "MR", "SIEMENS", 5
    ds.InstanceNumber = ds.AcquisitionNumber = acquisition
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.StudyDate, ds.SeriesDescription = "20240101", "ep2d_bold"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [f"{row_mm:.6f}", f"{col_mm:.6f}"]
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{volume.spacing[0]:.6f}"
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
    ds.ImagePositionPatient = [f"{v:.6f}" for v in corner]
    ds.RescaleSlope, ds.RescaleIntercept = "1", str(-offset)
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100A, "US", n)
    if csa:
        normal = step if normal_sign is None else normal_sign * np.cross(row, col)
        ds.add_new(0x00290010, "LO", "SIEMENS CSA HEADER")
        header = csa2_header({
            "NumberOfImagesInMosaic": ("US", [n]),
            "SliceNormalVector": ("FD", [float(v) for v in normal]),
        })  # fmt: skip
        ds.add_new(0x00291010, "OB", header)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_enhanced_4d(
    path: Path,
    volumes: Sequence[Volume],
    *,
    kind: str = "temporal",
    frame_types: Sequence[Sequence[str]] | None = None,
    patient_id: str = "TEST-PATIENT",
) -> Path:
    """One Enhanced CT file holding several volumes on the same grid, frames interleaved by position.

    ``kind='temporal'``: frames told apart by FrameContentSequence TemporalPositionIndex (a 4D series);
    ``kind='frame_type'``: by CTImageFrameTypeSequence FrameType (e.g. an image and a B0-like map).
    """
    from medsuite.io.dicom_write import write_enhanced

    n = volumes[0].shape[0]
    stacked = np.concatenate([np.asarray(v.array) for v in volumes])
    big = volumes[0].with_array(stacked)
    write_enhanced(big, path, patient_id=patient_id)
    ds = pydicom.dcmread(path)
    types = frame_types or [["ORIGINAL", "PRIMARY", "AXIAL", "NONE"], ["DERIVED", "PRIMARY", "AXIAL", "MAP"]]
    frames = list(ds.PerFrameFunctionalGroupsSequence)
    organization = "1.2.826.0.1.3680043.8.498.900"
    ds.DimensionOrganizationSequence = pydicom.sequence.Sequence([Dataset()])
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = organization
    pointers = ["StackID", "InStackPositionNumber"] + (["TemporalPositionIndex"] if kind == "temporal" else [])
    dimensions = []
    for keyword in pointers:
        item = Dataset()
        item.DimensionOrganizationUID = organization
        item.DimensionIndexPointer = pydicom.tag.Tag(keyword)
        item.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
        dimensions.append(item)
    ds.DimensionIndexSequence = pydicom.sequence.Sequence(dimensions)
    for f, item in enumerate(frames):
        v, k = divmod(f, n)
        position = np.asarray(volumes[0].origin) + volumes[0].direction[:, 0] * volumes[0].spacing[0] * k
        item.PlanePositionSequence[0].ImagePositionPatient = [f"{x:.6f}" for x in position]
        content = item.FrameContentSequence[0]
        content.InStackPositionNumber = k + 1
        if kind == "temporal":
            content.TemporalPositionIndex = v + 1
            content.DimensionIndexValues = [1, k + 1, v + 1]
        else:
            content.DimensionIndexValues = [1, k + 1]
            frame_type = Dataset()
            frame_type.FrameType = list(types[v])
            item.CTImageFrameTypeSequence = pydicom.sequence.Sequence([frame_type])
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
