"""The fast paths (raw header reader, direct pixel reads, in-place rescale) give exactly what pydicom gives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import edit_files, make_volume, truncate, write_ct
from pydicom import uid as uids
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsuite.io.decode import pixel_element_length
from medsuite.io.dicom import open_header, scan_file
from medsuite.io.errors import PixelDataError
from medsuite.io.header import header_from_dataset, header_from_raw, syntax_of
from medsuite.io.rawheader import read_raw_header
from medsuite.io.reader import read_series


def pydicom_view(path: Path):
    """Header and Pixel Data (offset, length) as the pydicom path sees them."""
    with open(path, "rb") as fp:
        ds = open_header(fp, str(path))
        size = os.fstat(fp.fileno()).st_size
        length = pixel_element_length(fp, syntax_of(ds), str(path))
        header = header_from_dataset(ds, str(path), size, (length, size - fp.tell()))
        header.pixel_offset = fp.tell()
        return header, (fp.tell(), length)


def assert_raw_equals_pydicom(path: Path) -> None:
    raw = read_raw_header(str(path))
    assert raw is not None, f"{path}: expected the fast path"
    header, location = pydicom_view(path)
    assert header_from_raw(raw, str(path)) == header
    assert (raw.pixel_offset, raw.pixel_length) == location


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian])
def test_written_series_match_pydicom(tmp_path, syntax):
    paths = write_ct(
        tmp_path, make_volume(shape=(3, 8, 8)), transfer_syntax=syntax, SeriesDescription="chest"
    )
    for path in paths:
        assert_raw_equals_pydicom(path)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtdose.dcm"])
def test_pydicom_test_files_match(name):
    assert_raw_equals_pydicom(Path(get_testdata_file(name)))


@pytest.mark.parametrize(
    "syntax", [uids.ExplicitVRBigEndian, uids.DeflatedExplicitVRLittleEndian, uids.RLELossless]
)
def test_other_syntaxes_are_left_to_pydicom(tmp_path, syntax):
    path = write_ct(tmp_path, make_volume(shape=(2, 8, 8)), transfer_syntax=syntax)[0]
    assert read_raw_header(str(path)) is None
    assert scan_file(str(path)).transfer_syntax == syntax  # and the pydicom path still reads it


def test_enhanced_objects_and_garbage_are_left_to_pydicom(tmp_path):
    from medsuite.io.dicom_write import write_enhanced

    enhanced = write_enhanced(make_volume(shape=(3, 8, 8)), tmp_path / "enhanced.dcm", patient_id="P")
    assert read_raw_header(str(enhanced)) is None
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300))
    assert read_raw_header(str(garbage)) is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_raw_header(str(tmp_path / "empty")) is None


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian])
def test_nested_undefined_length_sequences_and_large_headers(tmp_path, syntax):
    paths = write_ct(tmp_path, make_volume(shape=(2, 8, 8)), transfer_syntax=syntax, shuffle_names=False)

    def add_sequences(ds, k):
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D3000", "SRT", "Chest"
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.4"
        item.AnatomicRegionSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, item])  # pydicom writes undefined lengths
        ds.add_new(0x00290010, "LO", "MEDSUITE TEST")  # a vendor block longer than the first read
        ds.add_new(0x00291010, "OB", bytes(40000))

    edit_files(paths, add_sequences)
    assert len(pydicom.dcmread(paths[0]).ReferencedImageSequence) == 2
    for path in paths:
        assert_raw_equals_pydicom(path)
    np.testing.assert_array_equal(read_series(paths).array.shape, (2, 8, 8))


@pytest.mark.parametrize(
    "charset,name",
    [
        (None, "M\u00fcller"),
        ("ISO_IR 100", "M\u00fcller"),
        ("ISO_IR 192", "\u5c71\u7530"),
        ("ISO_IR 144", "\u0418\u0432\u0430\u043d\u043e\u0432"),
    ],
)
def test_text_in_character_sets_matches_pydicom(tmp_path, charset, name):
    path = write_ct(tmp_path, make_volume(shape=(1, 8, 8)), shuffle_names=False)[0]

    def set_text(ds, k):
        if charset is not None:
            ds.SpecificCharacterSet = charset
        elif "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        ds.PatientID = name
        ds.SeriesDescription = f"{name} chest "
        ds.Manufacturer = "A\\B"  # two values: pydicom decides

    edit_files([path], set_text)
    assert_raw_equals_pydicom(path)
    assert header_from_raw(read_raw_header(str(path)), str(path)).patient_id == name


@pytest.mark.parametrize("syntax", [uids.ExplicitVRLittleEndian, uids.ImplicitVRLittleEndian])
def test_signed_padding_value_matches_pydicom(tmp_path, syntax):
    path = write_ct(tmp_path, make_volume(shape=(1, 8, 8)), transfer_syntax=syntax, shuffle_names=False)[0]

    def pad(ds, k):
        ds.PixelRepresentation = 1
        ds.PixelPaddingValue = -2000
        ds["PixelPaddingValue"].VR = "SS"

    edit_files([path], pad)
    assert_raw_equals_pydicom(path)
    assert header_from_raw(read_raw_header(str(path)), str(path)).padding_value == -2000


def test_truncated_pixels_named_before_any_pixel_is_read(tmp_path):
    paths = write_ct(tmp_path, make_volume(shape=(4, 64, 64)), shuffle_names=False)
    truncate(paths[2], keep_fraction=0.8)  # header intact, pixels cut
    with pytest.raises(PixelDataError, match=paths[2].name):
        read_series(paths)
    assert "truncated" in " ".join(p.message for p in scan_file(str(paths[2])).problems)


def test_threads_and_serial_give_the_same_volume(tmp_path):
    truth = make_volume(shape=(70, 8, 8))
    paths = write_ct(tmp_path, truth)
    one, many = read_series(paths, workers=1), read_series(paths, workers=3)
    np.testing.assert_array_equal(one.array, truth.array)
    np.testing.assert_array_equal(many.array, truth.array)
    assert one.array.dtype == np.int16 and one.spacing == many.spacing


def test_unsigned_stored_values_with_intercept_become_exact_int16(tmp_path):
    truth = make_volume(shape=(3, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)

    def unsigned(ds, k):
        ds.PixelData = (truth.array[k].astype(np.int32) + 1024).astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 0, 1, -1024

    edit_files(paths, unsigned)
    vol = read_series(paths)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, truth.array)


@pytest.mark.parametrize(
    "stored_dtype,offset,intercept,out_dtype",
    [
        (np.uint16, 40000, -40000, np.int16),  # fits int16 only because the smallest value is large
        (np.int16, 30000, -30000, np.int16),  # intercept added in place, modulo 2**16
        (np.int16, 30000, 3000, np.float32),  # results above 32767: float output
    ],
)
def test_in_place_rescale_edges(tmp_path, stored_dtype, offset, intercept, out_dtype):
    truth = make_volume(shape=(2, 8, 8))
    paths = write_ct(tmp_path, truth, shuffle_names=False)
    stored = truth.array.astype(np.int64) + offset
    assert stored.min() >= np.iinfo(stored_dtype).min and stored.max() <= np.iinfo(stored_dtype).max

    def encode(ds, k):
        ds.PixelData = stored[k].astype(stored_dtype).tobytes()
        ds.PixelRepresentation = 1 if stored_dtype == np.int16 else 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept

    edit_files(paths, encode)
    vol = read_series(paths)
    assert vol.array.dtype == out_dtype
    np.testing.assert_array_equal(vol.array, stored + intercept)
