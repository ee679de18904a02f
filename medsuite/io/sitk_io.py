"""Non-DICOM image files (NIfTI, NRRD, MetaImage) through SimpleITK, and atomic NIfTI export.

SimpleITK converts every format's own convention (NIfTI's RAS qform/sform, NRRD's space directions) to
LPS on read and back on write, so a `Volume` keeps DICOM world coordinates whatever the file format.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsuite.io.atomic import atomic_path
from medsuite.io.volume import Volume

#: File name endings read by `read_image` (lower-case; ``.nii.gz`` is matched as a whole).
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

_FORMAT_NAMES = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
}


def image_suffix(path: str | os.PathLike[str]) -> str | None:
    """The recognised image suffix of ``path`` (``'.nii.gz'``, ``'.nrrd'`` ...), or None."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has a suffix that `read_image` handles."""
    return image_suffix(path) is not None


def read_image(path: str | os.PathLike[str]) -> Volume:
    """Read a NIfTI / NRRD / MetaImage file into a `Volume` (LPS world geometry, array ``(z, y, x)``).

    A 4D file whose fourth axis has length 1 is accepted as 3D; anything else that is not a scalar 3D
    image is a `ValueError` naming the file.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: not a supported image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: SimpleITK cannot read it as {_FORMAT_NAMES[suffix]}: {_sitk_reason(exc)}"
        ) from exc
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    try:
        volume = Volume.from_sitk(image, meta={"format": _FORMAT_NAMES[suffix], "n_files": 1})
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return volume


def write_nifti(volume: Volume, path: str | os.PathLike[str]) -> Path:
    """Write ``volume`` as NIfTI (``.nii`` or ``.nii.gz``) atomically: a temp file beside it, then rename.

    SimpleITK fills both the qform and the sform from the LPS geometry (converted to NIfTI's RAS), so
    other tools (nibabel, dcm2niix outputs, viewers) place every voxel at the same world position.
    Boolean arrays are written as uint8 and float16 as float32 (NIfTI has neither).
    """

    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: a NIfTI output must end in .nii or .nii.gz")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {path.parent} does not exist")
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind not in "uif":
        raise ValueError(f"{path}: cannot write a volume of dtype {array.dtype} as NIfTI")
    return _write_image(volume.with_array(array).to_sitk(), path, suffix)


def _write_image(image: object, path: Path, suffix: str) -> Path:
    """Write a SimpleITK image atomically (`medsuite.io.atomic`: a temp beside the target keeps the suffix,
    so SimpleITK picks the writer from the name; temps left by killed writers are removed first)."""
    import SimpleITK as sitk

    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=suffix == ".nii.gz")
    except RuntimeError as exc:
        raise OSError(f"{path}: SimpleITK could not write it: {_sitk_reason(exc)}") from exc
    return path


def write_nifti_4d(volumes: list[Volume], path: str | os.PathLike[str]) -> Path:
    """Write volumes that share one grid (a 4D DICOM stack) as one 4D NIfTI, atomically.

    Every volume must have the same shape, spacing, origin and direction (else `ValueError`); the fourth
    axis is the volume index, as dcm2niix writes fMRI and diffusion series.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: a NIfTI output must end in .nii or .nii.gz")
    if not volumes:
        raise ValueError(f"{path}: no volumes to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {path.parent} does not exist")
    ref = volumes[0]
    for k, v in enumerate(volumes[1:], start=1):
        same = (
            v.shape == ref.shape
            and np.allclose(v.spacing, ref.spacing, atol=1e-4)
            and np.allclose(v.origin, ref.origin, atol=1e-3)
            and np.allclose(v.direction, ref.direction, atol=1e-5)
        )
        if not same:
            raise ValueError(f"{path}: volume {k} does not share volume 0's grid; write the volumes one by one")
    dtype = np.result_type(*[np.asarray(v.array).dtype for v in volumes])
    images = [v.with_array(np.asarray(v.array).astype(dtype, copy=False)).to_sitk() for v in volumes]
    return _write_image(sitk.JoinSeries(images), path, suffix)


def _sitk_reason(exc: BaseException) -> str:
    """SimpleITK errors carry a C++ backtrace; the useful sentence is the last non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(exc).__name__
    return reason.removeprefix("sitk::ERROR:").strip()
