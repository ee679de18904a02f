"""Real files shipped in PyPI packages (pydicom, pydicom-data, nibabel) read by medsuite and compared with
dcm2niix and SimpleITK: same voxels at the same world positions, or a clear refusal that names the reason."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_corpus import agreement, copy_into, nibabel_file, padding_hu, pydicom_file, run_dcm2niix

from medsuite.io import Code, DicomError, read_volume, scan_folder
from medsuite.io.reader import read_series


def _grid_corners(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize()) - 1
    corners = [(x, y, z) for x in (0, size[0]) for y in (0, size[1]) for z in (0, size[2])]
    return np.array(sorted(np.round(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in k]), 3).tolist() for k in corners))


def _same_grid(ours: sitk.Image, theirs: sitk.Image) -> None:
    """The two images cover the same voxel centres (whatever the axis order and flips each chose)."""
    assert sorted(ours.GetSize()) == sorted(theirs.GetSize())
    np.testing.assert_allclose(_grid_corners(ours), _grid_corners(theirs), atol=0.05)


# ------------------------------------------------------------------------------------- pydicom files
@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
     "693_UNCR.dcm", "693_J2KR.dcm", "MR2_UNCR.dcm", "MR2_J2KR.dcm", "explicit_VR-UN.dcm", "eCT_Supplemental.dcm",
     "MR-SIEMENS-DICOM-WithOverlays.dcm", "bad_sequence.dcm"],
)  # fmt: skip
def test_real_files_match_dcm2niix_and_simpleitk(tmp_path, name):
    src = copy_into(pydicom_file(name), tmp_path / "in")
    ours = read_volume(src)
    (theirs,) = run_dcm2niix(src.parent, tmp_path / "d2n")
    reference = sitk.ReadImage(str(theirs))
    padding = padding_hu(src)  # medsuite sets padding to air; the peers keep the stored padding value
    r, diff = agreement(ours.to_sitk(), reference, ignore=padding)
    assert r > 0.999 and diff < 1e-3 * max(1.0, float(np.abs(ours.array).max())), (name, r, diff)
    _same_grid(ours.to_sitk(), reference)
    if ours.shape[0] == 1:  # SimpleITK reads single files (its multi-frame support is partial)
        image = sitk.ReadImage(str(src))
        np.testing.assert_allclose(ours.origin, image.GetOrigin(), atol=1e-3)
        r, diff = agreement(ours.to_sitk(), image, ignore=padding)
        assert r > 0.999 and diff < 1e-3 * max(1.0, float(np.abs(ours.array).max())), (name, "SimpleITK", r, diff)


def test_siemens_series_without_series_uid_is_read_under_a_derived_uid(tmp_path):
    src = nibabel_file("decimal_rescale.dcm", tmp_path / "in")
    assert "SeriesInstanceUID" not in pydicom.dcmread(src, stop_before_pixels=True)
    row = scan_folder(src.parent).series.iloc[0]
    assert row.status == "warning" and "no_series_uid" in row.codes and row.series_uid.startswith("2.25.")
    volume = read_volume(src)
    assert volume.series_uid == row.series_uid
    (theirs,) = run_dcm2niix(src.parent, tmp_path / "d2n")
    _same_grid(volume.to_sitk(), sitk.ReadImage(str(theirs)))
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(volume.array[0], expected)


@pytest.mark.parametrize("name", ["siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz"])
def test_real_siemens_dwi_mosaics_have_dcm2niix_geometry(tmp_path, name):
    src = nibabel_file(name, tmp_path / "in")
    volume = read_volume(src)
    assert volume.shape == (48, 128, 128) and "Siemens mosaic: 48 slices of 128x128" == volume.meta["mosaic"]
    (theirs,) = run_dcm2niix(src.parent, tmp_path / "d2n")
    reference = sitk.ReadImage(str(theirs))
    reference = reference[:, :, :, 0] if reference.GetDimension() == 4 else reference
    _same_grid(volume.to_sitk(), reference)
    assert agreement(volume.to_sitk(), reference) == (1.0, 0.0)


def test_resized_mosaic_is_refused_not_read_as_garbage(tmp_path):
    """nibabel's 0.dcm is a real Siemens mosaic scaled from 896 to 256 pixels after acquisition: its tiles no
    longer line up (dcm2niix still writes a volume of mixed tiles)."""
    src = nibabel_file("0.dcm", tmp_path / "in")
    with pytest.raises(DicomError, match=r"0\.dcm.*Siemens mosaic.*not a whole number of tiles") as caught:
        read_volume(src)
    assert caught.value.code == Code.UNSUPPORTED
    row = scan_folder(src.parent).series.iloc[0]
    assert row.status == "error" and "Siemens mosaic" in row.problems


def test_header_only_mosaic_is_flagged_as_missing_its_pixels(tmp_path):
    src = nibabel_file("csa_slice_norm.dcm", tmp_path / "in")  # real CSA header, pixel data stripped
    row = scan_folder(src.parent).series.iloc[0]
    assert row.status == "error" and "truncated" in row.codes and "csa_slice_norm.dcm" in row.problems


def test_enhanced_philips_mr_matches_dcm2niix_grid(tmp_path):
    src = nibabel_file("philips_mprage.dcm.gz", tmp_path / "in")
    volume = read_volume(src)
    assert volume.shape == (176, 256, 256)
    (theirs,) = run_dcm2niix(src.parent, tmp_path / "d2n")
    _same_grid(volume.to_sitk(), sitk.ReadImage(str(theirs)))


@pytest.mark.parametrize(
    ("name", "code", "words"),
    [
        ("OBXXXX1A.dcm", Code.COLOUR, "PALETTE COLOR"),
        ("OT-PAL-8-face.dcm", Code.COLOUR, "PALETTE COLOR"),
        ("US1_J2KR.dcm", Code.COLOUR, "YBR_RCT"),
        ("SC_rgb.dcm", Code.COLOUR, "RGB"),
        ("rtdose.dcm", Code.NON_IMAGE, "RT Dose"),
        ("liver.dcm", Code.NON_IMAGE, "Segmentation"),
        ("emri_small.dcm", Code.MISSING_POSITION, "no per-frame positions"),
        ("JPEG-LL.dcm", Code.MISSING_POSITION, "ImagePositionPatient"),
        ("RG1_UNCR.dcm", Code.INVALID_HEADER, "PixelSpacing"),
        ("MR_truncated.dcm", Code.TRUNCATED, "truncated"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", Code.MISSING_POSITION, "cut short"),
    ],
)
def test_real_files_that_cannot_be_volumes_are_refused_with_a_code(tmp_path, name, code, words):
    src = copy_into(pydicom_file(name), tmp_path / "in")
    with pytest.raises(DicomError, match=words) as caught:
        read_series(src)
    assert caught.value.code == code and name in str(caught.value)


_VARIANTS = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_jpeg_ls_lossless.dcm",
             "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_jp2klossless.dcm", "MR_small_padded.dcm"]  # fmt: skip


def test_one_instance_in_eight_transfer_syntaxes_is_one_slice_and_seven_duplicates(tmp_path):
    for name in _VARIANTS:
        copy_into(pydicom_file(name), tmp_path / "in")
    (row,) = scan_folder(tmp_path / "in").series.itertuples()
    assert row.status == "warning" and "duplicate_files" in row.codes and row.n_instances == 1


def test_different_instances_at_one_position_convert_file_by_file(tmp_path):
    """Eight slices of one series at the same place (as the issue's nine-syntax series): no stack, but each
    file converts on its own."""
    names = _VARIANTS
    for k, name in enumerate(names):
        path = copy_into(pydicom_file(name), tmp_path / "in")
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{k}"
        ds.save_as(path)
    row = scan_folder(tmp_path / "in").series.iloc[0]
    assert row.status == "error" and "duplicate_positions" in row.codes
    reference = read_volume(tmp_path / "in" / "MR_small.dcm")  # a file converts on its own
    assert any("on its own" in note for note in reference.meta["notes"])
    for name in names[1:]:
        np.testing.assert_array_equal(read_volume(tmp_path / "in" / name).array, reference.array)
