"""NIfTI / NRRD / MetaImage through SimpleITK: geometry survives a round trip and the NIfTI affine is right."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsuite.io.sitk_io import image_suffix, read_image, write_nifti
from medsuite.io.volume import LPS_TO_RAS, Volume


def _oblique_volume(dtype=np.int16) -> Volume:
    rng = np.random.default_rng(0)
    angle = np.deg2rad(20)
    # columns: world directions of array axes z, y, x (a rotation about the world x axis, right-handed)
    x = np.array([1.0, 0.0, 0.0])
    y = np.array([0.0, np.cos(angle), np.sin(angle)])
    z = np.cross(x, y)
    direction = np.stack([z, y, x], axis=1)
    array = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(dtype)
    return Volume(
        array, spacing=(2.5, 0.7, 0.8), origin=(-10.0, 20.0, 30.5), direction=direction, series_uid="1.2.3"
    )


def _nifti_header(path: Path) -> dict:
    """The qform/sform fields of a NIfTI-1 header, parsed from the raw bytes (no nibabel needed)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read(348)
    assert struct.unpack("<i", raw[:4])[0] == 348
    return {
        "qform_code": struct.unpack("<h", raw[252:254])[0],
        "sform_code": struct.unpack("<h", raw[254:256])[0],
        "srow": np.array(struct.unpack("<12f", raw[280:328])).reshape(3, 4),
    }


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_sform_is_lps_geometry_converted_to_ras(tmp_path, suffix):
    volume = _oblique_volume()
    path = write_nifti(volume, tmp_path / f"ct{suffix}")
    header = _nifti_header(path)
    assert header["sform_code"] > 0 and header["qform_code"] > 0
    # NIfTI voxel (i, j, k) = array (x, y, z); its sform gives RAS millimetres.
    expected = LPS_TO_RAS @ np.c_[volume.direction[:, ::-1] * np.asarray(volume.spacing)[::-1], volume.origin]
    np.testing.assert_allclose(header["srow"], expected, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_voxels_at_the_same_world_position(tmp_path, suffix):
    volume = _oblique_volume()
    path = tmp_path / f"ct{suffix}"
    if suffix.startswith(".nii"):
        write_nifti(volume, path)
    else:
        sitk.WriteImage(volume.to_sitk(), str(path))
    back = read_image(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.int16
    np.testing.assert_allclose(back.spacing, volume.spacing, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-5)
    marker = (3, 1, 5)
    np.testing.assert_allclose(back.index_to_world(marker), volume.index_to_world(marker), atol=1e-3)
    assert back.meta["n_files"] == 1


def test_bool_and_float16_are_written_in_nifti_types(tmp_path):
    volume = _oblique_volume()
    mask = volume.with_array(volume.array > 0)
    back = read_image(write_nifti(mask, tmp_path / "mask.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.array.astype(np.uint8))
    half = volume.with_array(volume.array.astype(np.float16))
    assert read_image(write_nifti(half, tmp_path / "half.nii.gz")).array.dtype == np.float32


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    volume = _oblique_volume()
    target = tmp_path / "ct.nii.gz"
    write_nifti(volume, target)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="dtype"):
        write_nifti(volume.with_array(volume.array.astype(np.complex64)), target)
    assert target.read_bytes() == before
    write_nifti(volume.with_array(volume.array + 1), target)  # overwrite goes through a rename
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
    np.testing.assert_array_equal(read_image(target).array, volume.array + 1)


def test_write_errors_name_the_path(tmp_path):
    volume = _oblique_volume()
    with pytest.raises(ValueError, match=r"out\.nrrd.*\.nii"):
        write_nifti(volume, tmp_path / "out.nrrd")
    with pytest.raises(FileNotFoundError, match="missing"):
        write_nifti(volume, tmp_path / "missing" / "ct.nii.gz")


def test_read_errors_name_the_file_and_reason(tmp_path):
    with pytest.raises(ValueError, match=r"scan\.txt: not a supported image file"):
        read_image(tmp_path / "scan.txt")
    with pytest.raises(FileNotFoundError, match="absent.nii.gz"):
        read_image(tmp_path / "absent.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image" * 10)
    with pytest.raises(ValueError, match=r"garbage\.nii\.gz: SimpleITK cannot read it as NIfTI"):
        read_image(garbage)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(4, 4, sitk.sitkInt16), str(flat))
    with pytest.raises(ValueError, match=r"flat\.nrrd: expected a 3D image"):
        read_image(flat)


def test_single_frame_4d_is_read_as_3d(tmp_path):
    image = sitk.GetImageFromArray(np.arange(2 * 3 * 4, dtype=np.int16).reshape(1, 2, 3, 4), isVector=False)
    path = tmp_path / "one_frame.mha"
    sitk.WriteImage(image, str(path))
    assert read_image(path).shape == (2, 3, 4)


def test_image_suffix():
    assert image_suffix("a/B.NII.GZ") == ".nii.gz"
    assert image_suffix("x.mhd") == ".mhd"
    assert image_suffix("x.gz") is None
    assert image_suffix(".nii") is None
