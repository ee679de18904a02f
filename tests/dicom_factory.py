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
