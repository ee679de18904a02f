"""`medsuite convert` on DICOM: agrees with dcm2niix and SimpleITK in world space; several series; bad ones."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from medsuite.commands.convert import command
from medsuite.io.dicom_write import write_series
from medsuite.io.load import read_volume
from medsuite.io.volume import Volume

MARKERS = {(2, 3, 11): 3000, (9, 12, 4): 2000}  # (z, y, x) index -> HU, off-centre on every axis


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("convert")(command)
    app.command("noop")(lambda: None)
    return app


def _invoke(*args: object):
    return CliRunner().invoke(_app(), ["convert", *map(str, args)])


def _oblique_volume(n_slices: int = 12) -> Volume:
    """A series tilted 25 degrees about one axis and 10 about another, with two bright markers."""
    a, b = np.deg2rad(25), np.deg2rad(10)
    rot_x = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot_y = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rows_cols = rot_y @ rot_x
    row, col = rows_cols[:, 0], rows_cols[:, 1]
    direction = np.stack([np.cross(row, col), col, row], axis=1)
    array = np.full((n_slices, 16, 14), -1000, dtype=np.int16)
    for index, value in MARKERS.items():
        if index[0] < n_slices:
            array[index] = value
    return Volume(array, spacing=(2.5, 0.75, 0.8), origin=(-30.0, 12.0, -80.0), direction=direction)


def _marker_world(image: sitk.Image, value: int) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    hits = np.argwhere(array == value)
    assert len(hits) == 1, f"expected one voxel of {value}, found {len(hits)}"
    z, y, x = (int(v) for v in hits[0])
    return np.asarray(image.TransformIndexToPhysicalPoint((x, y, z)))


@pytest.fixture
def series_dir(tmp_path: Path) -> tuple[Path, Volume]:
    volume = _oblique_volume()
    folder = tmp_path / "dicom"
    write_series(volume, folder, patient_id="TEST-PATIENT-42", shuffle_names=True)
    return folder, volume


def test_medsuite_dcm2niix_and_simpleitk_place_voxels_at_the_same_world_positions(tmp_path, series_dir):
    import dcm2niix
    folder, volume = series_dir
    ours = tmp_path / "medsuite.nii.gz"
    result = _invoke(folder, ours)
    assert result.exit_code == 0, result.output

    theirs_dir = tmp_path / "dcm2niix"
    theirs_dir.mkdir()
    subprocess.run(
        [str(dcm2niix.bin), "-z", "y", "-b", "n", "-f", "d2n", "-o", str(theirs_dir), str(folder)],
        check=True,
        capture_output=True,
    )
    (theirs,) = theirs_dir.glob("d2n*.nii.gz")

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    images = {
        "medsuite": sitk.ReadImage(str(ours)),
        "dcm2niix": sitk.ReadImage(str(theirs)),
        "SimpleITK DICOM": reader.Execute(),
    }
    for index, value in MARKERS.items():
        truth = volume.index_to_world(index)
        for name, image in images.items():
            np.testing.assert_allclose(_marker_world(image, value), truth, atol=0.05, err_msg=name)


def test_nifti_holds_no_patient_identifier(tmp_path, series_dir):
    folder, _ = series_dir
    out = tmp_path / "ct.nii.gz"
    assert _invoke(folder, out).exit_code == 0
    assert b"TEST-PATIENT-42" not in gzip.decompress(out.read_bytes())


def test_one_dicom_file_converts_its_whole_series(tmp_path, series_dir):
    folder, volume = series_dir
    one_file = sorted(folder.iterdir())[5]
    out = tmp_path / "from_file.nii.gz"
    result = _invoke(one_file, out)
    assert result.exit_code == 0, result.output
    assert sitk.ReadImage(str(out)).GetSize()[2] == volume.shape[0]


def _write_study(root: Path) -> dict[str, int]:
    """Two good series and one with a truncated slice, in one folder tree; returns uid -> n slices."""
    sizes = {}
    for name, n in (("big", 12), ("small", 5), ("broken", 6)):
        paths = write_series(
            _oblique_volume(n), root / name, patient_id="TEST-PATIENT-42", SeriesDescription=name
        )
        sizes[name] = (str(_series_uid(paths[0])), n)
        if name == "broken":
            data = paths[2].read_bytes()
            paths[2].write_bytes(data[: len(data) - 100])
    return sizes


def _series_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_folder_of_several_series_converts_each_and_reports_the_bad_one(tmp_path):
    sizes = _write_study(tmp_path / "study")
    out = tmp_path / "nifti"
    result = _invoke(tmp_path / "study", out)
    assert result.exit_code == 1, result.output
    written = {p.name: sitk.ReadImage(str(p)).GetSize()[2] for p in out.glob("*.nii.gz")}
    assert len(written) == 2
    for name in ("big", "small"):
        uid, n = sizes[name]
        (file_name,) = [f for f in written if uid in f]
        assert written[file_name] == n
    broken_uid = sizes["broken"][0]
    assert f"FAILED series {broken_uid}" in result.output or broken_uid in result.output.split("FAILED", 1)[1]
    assert "converted 2 of 3 stack(s)" in result.output
    assert "TEST-PATIENT-42" not in result.output
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp files left behind


def test_series_option_picks_one_series_of_a_folder(tmp_path):
    sizes = _write_study(tmp_path / "study")
    uid, n = sizes["small"]
    out = tmp_path / "small.nii.gz"
    result = _invoke(tmp_path / "study", out, "--series", uid)
    assert result.exit_code == 0, result.output
    assert sitk.ReadImage(str(out)).GetSize()[2] == n
    missing = _invoke(tmp_path / "study", tmp_path / "x.nii.gz", "--series", "1.2.3.4.5")
    assert missing.exit_code == 1 and "series 1.2.3.4.5 not found" in missing.output


def test_read_volume_on_folders_and_files(tmp_path):
    sizes = _write_study(tmp_path / "study")
    shutil.rmtree(tmp_path / "study" / "broken")
    assert read_volume(tmp_path / "study").shape[0] == sizes["big"][1]  # the largest stack
    small_uid, small_n = sizes["small"]
    picked = read_volume(tmp_path / "study", series_uid=small_uid)
    assert picked.shape[0] == small_n and picked.series_uid == small_uid
    one_file = next((tmp_path / "study" / "small").iterdir())
    assert read_volume(one_file).shape[0] == small_n
    with pytest.raises(ValueError, match="not to the requested"):
        read_volume(one_file, series_uid=sizes["big"][0])
