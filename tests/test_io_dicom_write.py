"""write_series / write_enhanced: geometry, HU round trip, transfer syntaxes, atomic and safe output."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_factory import make_volume
from pydicom import uid as uids

from medsuite.io.dicom_write import hu_to_stored, write_enhanced, write_series
from medsuite.io.errors import DicomError
from medsuite.io.volume import Volume

SYNTAXES = [
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.RLELossless,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
]


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name)
def test_each_syntax_round_trips_hu_and_geometry(tmp_path, syntax):
    vol = make_volume(shape=(3, 32, 36))
    paths = write_series(vol, tmp_path, patient_id="P", transfer_syntax=syntax)
    assert len(paths) == 3
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPClassUID == uids.CTImageStorage
        np.testing.assert_array_equal(_hu(ds), vol.array[k])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], vol.index_to_world((k, 0, 0)))
        assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.8]


def test_uids_tags_and_shuffled_names(tmp_path):
    vol = make_volume(shape=(6, 8, 8))
    paths = write_series(
        vol, tmp_path, patient_id="ANON1", study_uid="1.2.3", series_uid="1.2.3.4", shuffle_names=True,
        seed=3, SeriesDescription="chest", SeriesNumber=7,
    )  # fmt: skip
    headers = [pydicom.dcmread(p) for p in paths]
    assert {h.SeriesInstanceUID for h in headers} == {"1.2.3.4"}
    assert {h.StudyInstanceUID for h in headers} == {"1.2.3"}
    assert len({h.SOPInstanceUID for h in headers}) == 6
    assert {h.SeriesDescription for h in headers} == {"chest"} and headers[0].SeriesNumber == 7
    assert all(p.suffix == "" for p in paths)
    assert sorted(paths) != paths, "shuffled names must not sort into slice order"
    assert [h.InstanceNumber for h in headers] != list(range(1, 7))
    assert not list(tmp_path.glob(".tmp-*")), "temporary files must be renamed into place"


def test_hu_to_stored_layouts():
    stored, rep, slope, intercept = hu_to_stored(np.array([-1024, 0, 3000]))
    assert (rep, slope, intercept, stored.dtype) == (0, 1.0, -1024.0, np.uint16)
    stored, rep, _, intercept = hu_to_stored(np.array([-3024, 0, 3000]))
    assert (rep, intercept, stored.dtype) == (1, 0.0, np.int16)
    stored, _, slope, intercept = hu_to_stored(np.array([-0.5, 0.25, 1.75]))
    np.testing.assert_allclose(stored * slope + intercept, [-0.5, 0.25, 1.75], atol=slope)


def test_bad_arguments_are_clear(tmp_path):
    vol = make_volume(shape=(2, 8, 8))
    with pytest.raises(DicomError, match="NotAKeyword"):
        write_series(vol, tmp_path, patient_id="P", NotAKeyword=1)
    with pytest.raises(DicomError, match="JPEG Baseline"):
        write_series(vol, tmp_path, patient_id="P", transfer_syntax=uids.JPEGBaseline8Bit)
    with pytest.raises(DicomError, match="32x32"):
        write_series(vol, tmp_path, patient_id="P", transfer_syntax=uids.JPEG2000Lossless)
    with pytest.raises(DicomError, match="NaN"):
        write_series(vol.with_array(np.full((2, 8, 8), np.nan)), tmp_path, patient_id="P")


def test_enhanced_multiframe_holds_per_frame_geometry(tmp_path):
    vol = make_volume(shape=(5, 8, 10))
    order = [3, 0, 4, 1, 2]
    path = write_enhanced(vol, tmp_path / "mf.dcm", patient_id="P", frame_order=order)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == uids.EnhancedCTImageStorage and ds.NumberOfFrames == 5
    for frame, k in enumerate(order):
        item = ds.PerFrameFunctionalGroupsSequence[frame]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, vol.index_to_world((k, 0, 0)))
        np.testing.assert_array_equal(ds.pixel_array[frame].astype(int) - 1024, vol.array[k])


def test_non_integral_volume_is_scaled(tmp_path):
    arr = np.linspace(-1.5, 2.5, 2 * 8 * 8).reshape(2, 8, 8)
    paths = write_series(Volume(arr, (1, 1, 1)), tmp_path, patient_id="P")
    np.testing.assert_allclose(_hu(pydicom.dcmread(paths[1])), arr[1], atol=1e-4)


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian, uids.RLELossless],
                         ids=lambda s: s.name)
def test_files_are_what_pydicom_writes_and_deterministic(tmp_path, syntax):
    import io

    vol = make_volume(shape=(4, 16, 20))
    kw = dict(patient_id="P", study_uid="1.2.3", series_uid="1.2.3.4", transfer_syntax=syntax, shuffle_names=True,
              seed=5, SeriesDescription="chest")
    paths = write_series(vol, tmp_path / "a", **kw)
    again = write_series(vol, tmp_path / "b", **kw)
    assert [p.name for p in paths] == [p.name for p in again]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(paths, again, strict=True)), "same input, same bytes"
    sops = set()
    for path in paths:  # the template-assembled files are byte for byte what pydicom writes for their dataset
        ds = pydicom.dcmread(path)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        assert buffer.getvalue() == path.read_bytes()
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == 4
    other = write_series(vol, tmp_path / "c", **{**kw, "series_uid": "1.2.3.5"})
    assert not sops & {pydicom.dcmread(p).SOPInstanceUID for p in other}
