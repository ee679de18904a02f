"""--ray-ship-inputs with image files: a MetaImage header travels with the data file it names (``.raw``,
``.zraw``, a LIST of slices), so the node's copy reads as the original; what cannot travel is refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import scoring_support as S

from medsuite.data.source import read_files
from medsuite.pipelines.scoring.images import image_data_files, image_parts
from medsuite.pipelines.scoring.ray_engine import _materialise, ship_payload
from medsuite.pipelines.scoring.stages import WorkItem


def _round_trip(path: Path) -> np.ndarray:
    item = WorkItem("1.2.3", (str(path),))
    payload = ship_payload(item.files)
    with tempfile.TemporaryDirectory() as folder:
        copy = _materialise(item, payload, folder)
        assert len(copy.files) == 1 and copy.files[0].startswith(folder)
        return np.asarray(read_files(copy.files, "1.2.3").array)


@pytest.mark.parametrize("compress", [False, True])
def test_a_metaimage_travels_with_its_data_file(tmp_path: Path, compress: bool) -> None:
    import SimpleITK as sitk

    volume = S.make_volume(3)
    header = tmp_path / "1.2.3.mhd"
    sitk.WriteImage(volume.to_sitk(), str(header), useCompression=compress)
    data = tmp_path / ("1.2.3.zraw" if compress else "1.2.3.raw")
    assert image_data_files(header) == [data]
    assert [name for name, _ in ship_payload([str(header)])] == ["1.2.3.mhd", data.name]
    np.testing.assert_array_equal(_round_trip(header), np.asarray(volume.array))


def test_a_list_of_slice_files_in_a_subfolder_travels_too(tmp_path: Path) -> None:
    volume = S.make_volume(4)
    array = np.asarray(volume.array).astype("<i2")
    (tmp_path / "slices").mkdir()
    for z, plane in enumerate(array):
        (tmp_path / "slices" / f"s{z:03d}.raw").write_bytes(plane.tobytes())
    z, y, x = array.shape
    header = tmp_path / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                      f"DimSize = {x} {y} {z}\nElementSpacing = 1 1 2\nElementType = MET_SHORT\n"
                      "ElementDataFile = LIST 2D\n" + "".join(f"slices/s{i:03d}.raw\n" for i in range(z)))
    assert len(image_data_files(header)) == z
    assert str(tmp_path / "slices" / "s000.raw") in image_parts([header])
    np.testing.assert_array_equal(_round_trip(header), array)


def test_what_cannot_travel_is_refused_in_words(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.raw").write_bytes(b"\0" * 8)
    (tmp_path / "here").mkdir()
    header = tmp_path / "here" / "x.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 1\nElementType = MET_SHORT\n"
                      "ElementDataFile = ../elsewhere/x.raw\n")
    with pytest.raises(ValueError, match="outside the header's folder, so it cannot be shipped"):
        ship_payload([str(header)])
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 1\nElementType = MET_SHORT\n"
                      "ElementDataFile = gone.raw\n")
    with pytest.raises(FileNotFoundError):
        ship_payload([str(header)])


def test_dicom_files_keep_travelling_one_by_one(tmp_path: Path) -> None:
    volume = S.make_volume(5)
    _, files = S.write(volume, tmp_path / "series", "PT1")
    payload = ship_payload([str(f) for f in files])
    assert [name for name, _ in payload] == [f.name for f in files]
    item = WorkItem("x", tuple(str(f) for f in files))
    with tempfile.TemporaryDirectory() as folder:
        copy = _materialise(item, payload, folder)
        assert len(copy.files) == len(files)
        np.testing.assert_array_equal(np.asarray(read_files(copy.files).array), np.asarray(volume.array))
