"""Real DICOM files that ship inside installed PyPI packages, and the peers to compare with (dcm2niix,
SimpleITK), for the corpus and fuzz tests (import as `dicom_corpus`).

- pydicom's own test files and the pydicom-data package (`pydicom.data.get_testdata_file`): GE/Philips/
  Siemens/Toshiba CT, MR, CR, NM, US objects in every transfer syntax, palette and RGB images, RT objects;
- nibabel's ``nicom/tests/data``: real Siemens mosaics with CSA headers (fMRI/DWI), a Siemens slice
  without SeriesInstanceUID, an enhanced Philips MPRAGE.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

NIBABEL_DATA = Path(__import__("nibabel").__file__).parent / "nicom" / "tests" / "data"


def pydicom_file(name: str) -> Path:
    """A test file shipped by pydicom or pydicom-data (asserted present: both are installed dependencies)."""
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    assert path is not None, f"{name}: pydicom's test file is missing (pydicom and pydicom-data ship it)"
    return Path(path)


def nibabel_file(name: str, folder: Path) -> Path:
    """A file of nibabel's nicom test data, copied (and un-gzipped) into ``folder``."""
    source = NIBABEL_DATA / name
    assert source.is_file(), f"{source}: nibabel's test data is missing (nibabel ships it)"
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".gz"):
        target = folder / name[:-3]
        target.write_bytes(gzip.decompress(source.read_bytes()))
    else:
        target = folder / name
        shutil.copyfile(source, target)
    return target


def copy_into(path: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or path.name)
    shutil.copyfile(path, target)
    return target


def run_dcm2niix(source: Path, out: Path, name: str = "d2n", *, check: bool = True) -> list[Path]:
    """dcm2niix (the pip package's binary) on a folder; returns the NIfTI files it wrote (sorted).

    ``check``: raise when dcm2niix exits with an error (it does for files it cannot convert)."""
    import dcm2niix

    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(dcm2niix.bin), "-z", "n", "-b", "n", "-f", f"{name}_%s_%e", "-o", str(out), str(source)],
        check=check, capture_output=True, timeout=120,
    )  # fmt: skip
    return sorted(p for p in out.glob(f"{name}*.nii") if "_ROI" not in p.name)  # not overlays as images


def _grid(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, origin)``: world = matrix @ (x, y, z) index + origin (LPS)."""
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    return d * np.asarray(image.GetSpacing())[None, :], np.asarray(image.GetOrigin())


def agreement(ours: sitk.Image, theirs: sitk.Image, ignore: float | None = None) -> tuple[float, float]:
    """``(r, max |difference|)`` of ours against theirs on their grid: ours is sampled (linearly) at the
    world position of every one of their voxels that lies inside ours. Same voxels at the same places give
    r = 1 and a difference of 0. Fails if under 95% of their voxels lie inside ours (grids disagree).
    Reference voxels equal to ``ignore`` (e.g. PixelPaddingValue, which medsuite sets to air) are left out."""
    from scipy.ndimage import map_coordinates

    b = sitk.GetArrayFromImage(theirs).astype(np.float64)  # (z, y, x)
    m_t, o_t = _grid(theirs)
    m_o, o_o = _grid(ours)
    z, y, x = np.indices(b.shape)
    index_xyz = np.stack([x.ravel(), y.ravel(), z.ravel()])
    world = m_t @ index_xyz + o_t[:, None]
    ours_xyz = np.linalg.solve(m_o, world - o_o[:, None])
    size = np.asarray(ours.GetSize())[:, None]
    inside = np.all((ours_xyz > -1e-3) & (ours_xyz < size - 1 + 1e-3), axis=0)
    assert inside.mean() > 0.95, f"only {inside.mean():.1%} of the reference voxels lie inside ours: grids differ"
    a_arr = sitk.GetArrayFromImage(ours).astype(np.float64)
    zyx = ours_xyz[::-1, inside]
    sampled = map_coordinates(a_arr, np.clip(zyx, 0, np.asarray(a_arr.shape)[:, None] - 1), order=1)
    ref = b.ravel()[inside]
    if ignore is not None:
        keep = ref != ignore
        sampled, ref = sampled[keep], ref[keep]
    if sampled.std() == 0 or ref.std() == 0:
        return float(np.array_equal(sampled, ref)), float(np.max(np.abs(sampled - ref)))
    return float(np.corrcoef(sampled, ref)[0, 1]), float(np.max(np.abs(sampled - ref)))


def to_image(volume) -> sitk.Image:
    return volume.to_sitk()


def padding_hu(path: Path) -> float | None:
    """PixelPaddingValue of a file in output units (medsuite replaces padding with air; peers keep it)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if "PixelPaddingValue" not in ds:
        return None
    return float(ds.PixelPaddingValue) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
