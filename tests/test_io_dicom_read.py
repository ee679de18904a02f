"""read_series: world geometry and values against the truth and SimpleITK, irregular stacks, pixel encodings."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_factory import edit_files, make_volume, truncate, write_ct
from pydicom import uid as uids

from medsuite.io.dicom import scan_folder
from medsuite.io.dicom_write import write_enhanced
from medsuite.io.errors import (
    DicomError,
    DicomHeaderError,
    MissingDecoderError,
    MixedSeriesError,
    PixelDataError,
    SeriesGeometryError,
)
from medsuite.io.reader import read_pixels, read_series
from medsuite.io.volume import Volume


def assert_same_world(vol: Volume, truth: Volume, atol: float = 1e-3) -> None:
    """Every voxel of ``truth`` is found at its world position in ``vol`` with the same value."""
    idx = np.indices(truth.shape).reshape(3, -1).T
    found = np.rint(vol.world_to_index(truth.index_to_world(idx))).astype(int)
    np.testing.assert_allclose(vol.index_to_world(found), truth.index_to_world(idx), atol=atol)
    np.testing.assert_array_equal(vol.array[tuple(found.T)], truth.array[tuple(idx.T)])


def sitk_read(folder) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Volume.from_sitk(reader.Execute())


@pytest.mark.parametrize(
    "plane,feet_first",
    [("axial", False), ("axial", True), ("coronal", False), ("sagittal", False), ("oblique", False)],
)
def test_planes_match_truth_and_simpleitk(tmp_path, plane, feet_first):
    truth = make_volume(plane=plane, feet_first=feet_first)
    write_ct(tmp_path, truth)
    vol = read_series(scan_folder(tmp_path).series.iloc[0])
    assert_same_world(vol, truth)
    ref = sitk_read(tmp_path)
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-5)
    assert vol.array.dtype == np.int16 and vol.modality == "CT"
    assert vol.meta["n_files"] == truth.shape[0] and vol.meta["patient_id"] == "TEST-PATIENT"


def test_order_ignores_instance_number_and_names(tmp_path):
    truth = make_volume()
    paths = write_ct(tmp_path, truth, shuffle_names=False)
    edit_files(paths, lambda ds, k: setattr(ds, "InstanceNumber", 1 + (k * 7) % truth.shape[0]))
    assert_same_world(read_series(list(reversed(paths))), truth)


@pytest.mark.parametrize(
    "syntax",
    [
        uids.ImplicitVRLittleEndian,
        uids.ExplicitVRBigEndian,
        uids.DeflatedExplicitVRLittleEndian,
        uids.RLELossless,
        uids.JPEGLSLossless,
        uids.JPEG2000Lossless,
    ],  # fmt: skip
    ids=lambda s: s.name,
)
def test_transfer_syntaxes_decode_exactly(tmp_path, syntax):
    truth = make_volume(shape=(4, 32, 32))
    write_ct(tmp_path, truth, transfer_syntax=syntax)
    vol = read_series(scan_folder(tmp_path).series.iloc[0])
    assert_same_world(vol, truth)
    assert vol.meta["transfer_syntax"] == syntax.name


def test_missing_slice_resampled_or_refused(tmp_path):
    truth = make_volume(shape=(8, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)
    paths[3].unlink()
    with pytest.raises(SeriesGeometryError, match="non-uniform slice spacing"):
        read_series([str(p) for p in paths if p.exists()], on_irregular="error")
    vol = read_series([str(p) for p in paths if p.exists()])
    assert vol.shape == truth.shape and vol.spacing[0] == pytest.approx(2.5)
    assert "1 slice(s) missing" in vol.meta["resampled"]
    keep = [0, 1, 2, 4, 5, 6, 7]
    np.testing.assert_allclose(vol.array[keep], truth.array[keep])
    np.testing.assert_allclose(vol.array[3], (truth.array[2].astype(float) + truth.array[4]) / 2, atol=1e-3)
    np.testing.assert_allclose(vol.origin, truth.origin)


def test_gantry_tilt_corrected_or_refused(tmp_path):
    truth = make_volume(shape=(6, 16, 16), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    paths = write_ct(tmp_path, truth, shuffle_names=False)
    shift_mm = 1.0  # per slice, along +y (posterior): a tilt of atan(1/2) = 26.57 deg
    edit_files(paths, lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, k * shift_mm, 2.0 * k]))
    with pytest.raises(SeriesGeometryError, match="gantry tilt"):
        read_series(paths, on_tilt="error")
    vol = read_series(paths)
    assert vol.meta["gantry_tilt_deg"] == pytest.approx(np.degrees(np.arctan(0.5)), abs=0.01)
    assert "gantry tilt" in vol.meta["resampled"]
    # stored pixel (k, i, j) lies at world (j, i + k, 2k); on the corrected grid it is voxel (k, i + k, j)
    for k in range(1, 6):
        np.testing.assert_allclose(vol.array[k, k:, :], truth.array[k, : 16 - k, :])
        assert np.all(vol.array[k, :k, :] <= -1000)  # shifted in from outside: air


def test_per_slice_rescale_and_float_output(tmp_path):
    truth = make_volume(shape=(4, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)

    def rescale(ds, k):
        slope = [1.0, 0.5, 2.0, 0.25][k]
        hu = truth.array[k].astype(float)
        stored = np.round((hu + 2000) / slope)
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.RescaleSlope, ds.RescaleIntercept, ds.PixelRepresentation = slope, -2000, 0

    edit_files(paths, rescale)
    vol = read_series(paths)
    assert vol.array.dtype == np.float32
    for k, slope in enumerate([1.0, 0.5, 2.0, 0.25]):  # stored values were rounded: error <= slope / 2
        np.testing.assert_allclose(vol.array[k], truth.array[k], atol=slope / 2)


def test_monochrome1_padding_and_12_bit(tmp_path):
    truth = make_volume(shape=(3, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)

    def encode(ds, k):
        stored = truth.array[k].astype(np.int32) + 1024  # 0..4095 fits 12 bits
        stored[0, 0] = 4095 - 4095  # becomes 4095 after MONOCHROME1 inversion: use as padding
        inverted = 4095 - stored
        ds.PixelData = inverted.astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit, ds.PhotometricInterpretation = 12, 11, "MONOCHROME1"
        ds.PixelPaddingValue = 4095
        ds["PixelPaddingValue"].VR = "US"

    edit_files(paths, encode)
    vol = read_series(paths)
    expected = truth.array.astype(np.float32).copy()
    expected[:, 0, 0] = min(-1024, truth.array.min())
    np.testing.assert_array_equal(vol.array, expected)
    assert "MONOCHROME1" in vol.meta["inverted"]


def test_high_bits_above_bits_stored_are_ignored(tmp_path):
    truth = make_volume(shape=(2, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)

    def overlay_bits(ds, k):
        stored = (truth.array[k].astype(np.int32) + 1024) | 0xF000  # junk in bits 12-15
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11

    edit_files(paths, overlay_bits)
    np.testing.assert_array_equal(read_series(paths).array, truth.array)


def test_enhanced_multiframe_sorted_by_plane_position(tmp_path):
    truth = make_volume(shape=(6, 8, 10), plane="coronal")
    path = write_enhanced(truth, tmp_path / "mf.dcm", patient_id="P", frame_order=[5, 1, 3, 0, 4, 2])
    vol = read_series(path)
    assert_same_world(vol, truth)
    rle = write_enhanced(truth, tmp_path / "rle.dcm", patient_id="P", transfer_syntax=uids.RLELossless)
    assert_same_world(read_series(str(rle)), truth)


def test_mixed_files_refused_with_stack_list(tmp_path):
    write_ct(tmp_path, make_volume(shape=(3, 8, 8)))
    write_ct(tmp_path, make_volume(shape=(3, 10, 10), seed=2))
    with pytest.raises(MixedSeriesError, match="2 stacks"):
        read_series(tmp_path)
    with pytest.raises(MixedSeriesError, match="2 stacks"):
        read_series([str(p) for p in tmp_path.iterdir()])


def test_bad_files_name_the_file(tmp_path):
    paths = write_ct(tmp_path / "a", make_volume(shape=(3, 8, 8)), shuffle_names=False)
    truncate(paths[1], 0.97)
    with pytest.raises(PixelDataError, match=f"{paths[1]}.*truncated"):
        read_series(paths)
    paths = write_ct(tmp_path / "b", make_volume(shape=(3, 8, 8)), shuffle_names=False)
    edit_files(paths[2:], lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:-10]))
    with pytest.raises(PixelDataError, match=f"{paths[2]}.*Pixel Data holds"):
        read_series(paths)
    paths = write_ct(tmp_path / "c", make_volume(shape=(3, 8, 8)), shuffle_names=False)
    edit_files(paths[:1], lambda ds, k: delattr(ds, "ImagePositionPatient"))
    with pytest.raises(DicomHeaderError, match=f"{paths[0]}.*ImagePositionPatient"):
        read_series(paths)
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(DicomError, match="junk: not a DICOM file"):
        read_series([tmp_path / "junk"])
    with pytest.raises(ValueError, match="on_irregular"):
        read_series(paths, on_irregular="guess")


def test_missing_decoder_names_syntax_and_package(tmp_path, monkeypatch):
    paths = write_ct(tmp_path, make_volume(shape=(2, 8, 8)), transfer_syntax=uids.JPEGLSLossless)
    from medsuite.io import decode

    monkeypatch.setitem(decode.DECODER_PACKAGES, "probe", "x")  # keep the table importable
    import pydicom.pixels as pixels

    class Unavailable:
        is_available = False

    monkeypatch.setattr(pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(MissingDecoderError, match="JPEG-LS Lossless.*install pyjpegls"):
        read_series(paths)


# ---------------------------------------------------------------------- real vendor files (pydicom)
def _testdata(name: str) -> str:
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    assert path is not None, f"{name}: pydicom's test file is missing (pydicom ships it; reinstall pydicom)"
    return path


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_padded.dcm",
    ],  # fmt: skip
)
def test_vendor_mr_small_variants_equal_reference(name):
    ref = read_series(_testdata("MR_small.dcm"))
    vol = read_series(_testdata(name))
    np.testing.assert_array_equal(vol.array, ref.array)
    np.testing.assert_allclose(vol.origin, ref.origin)


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_RLE.dcm",
        "emri_small_big_endian.dcm",
        "emri_small_jpeg_2k_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
    ],  # fmt: skip
)
def test_vendor_multiframe_decoding_equals_uncompressed(name):
    _, ref = read_pixels(_testdata("emri_small.dcm"))
    _, got = read_pixels(_testdata(name))
    assert got.shape == ref.shape == (10, 64, 64)
    np.testing.assert_array_equal(got, ref)


def test_vendor_ct_matches_pydicom_and_simpleitk():
    path = _testdata("CT_small.dcm")
    vol = read_series(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(vol.array[0], expected)
    np.testing.assert_allclose(vol.origin, [float(v) for v in ds.ImagePositionPatient])
    image = sitk.ReadImage(path)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=1e-4)


def test_vendor_objects_without_geometry_are_refused_clearly():
    with pytest.raises(DicomHeaderError, match="emri_small.dcm.*no per-frame positions"):
        read_series(_testdata("emri_small.dcm"))
    with pytest.raises(DicomError, match="rtdose.dcm: not an image: RT Dose"):
        read_series(_testdata("rtdose.dcm"))
