"""pydicom-generated quirks of real scanners, each checked against the known truth, dcm2niix and SimpleITK:
Siemens mosaics (with a CSA header, both slice orders, time series), series without SeriesInstanceUID,
magnitude + phase, dual echo, 3-plane localizers, enhanced 4D and B0-like maps, irregular spacing."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_corpus import agreement, run_dcm2niix
from dicom_factory import edit_files, make_volume, strip_series_uid, write_ct, write_enhanced_4d, write_mosaic
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.io import (
    Code,
    DicomError,
    MixedSeriesError,
    read_series,
    read_series_volumes,
    read_volume,
    scan_folder,
)


def _same_world(volume, truth, atol=1e-3):
    """Every voxel of ``truth`` is found with the same value at the same world position in ``volume``."""
    r, diff = agreement(volume.to_sitk(), truth.to_sitk())
    assert r > 0.999 and diff <= atol, (r, diff)


# ------------------------------------------------------------------------------------------ mosaic
@pytest.mark.parametrize(("plane", "feet_first"), [("axial", False), ("axial", True), ("oblique", False), ("sagittal", True)])
def test_mosaic_with_csa_header_is_decoded_into_slices(tmp_path, plane, feet_first):
    truth = make_volume(shape=(10, 16, 20), spacing=(3.0, 2.0, 2.5), plane=plane, feet_first=feet_first)
    path = write_mosaic(tmp_path / "in" / "mosaic.dcm", truth)
    volume = read_volume(path)
    assert volume.shape == truth.shape and volume.meta["mosaic"] == "Siemens mosaic: 10 slices of 16x20"
    _same_world(volume, truth, atol=0.05)  # (oblique: the header's decimal strings round the geometry)
    (theirs,) = run_dcm2niix(path.parent, tmp_path / "d2n")
    r, diff = agreement(volume.to_sitk(), sitk.ReadImage(str(theirs)))
    assert r > 0.999 and diff < 0.05


def test_mosaic_without_csa_header_is_refused_naming_siemens_mosaic(tmp_path):
    path = write_mosaic(tmp_path / "in" / "m.dcm", make_volume(shape=(9, 8, 8)), csa=False)
    with pytest.raises(DicomError, match=r"m\.dcm.*Siemens mosaic.*SliceNormalVector") as caught:
        read_volume(path)
    assert caught.value.code == Code.UNSUPPORTED
    result = CliRunner().invoke(app, ["convert", str(path), str(tmp_path / "out.nii.gz")])
    assert result.exit_code == 1 and "Siemens mosaic" in result.output
    assert not (tmp_path / "out.nii.gz").exists()


def test_folder_of_mosaics_is_one_4d_stack(tmp_path):
    truths = [make_volume(shape=(6, 8, 12), spacing=(3.0, 2.0, 2.0), seed=s) for s in range(3)]
    for t, truth in enumerate(truths):
        write_mosaic(tmp_path / "in" / f"vol{t}.dcm", truth, acquisition=t + 1)
    (row,) = scan_folder(tmp_path / "in").series.itertuples()
    assert (row.n_volumes, row.n_slices, row.status) == (3, 6, "warning") and "multi_volume" in row.codes
    for t, truth in enumerate(truths):
        _same_world(read_series(row._asdict(), volume=t), truth)
    first = read_volume(tmp_path / "in")
    assert first.meta["volume"] == {"index": 0, "count": 3}
    out = tmp_path / "fmri.nii.gz"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(out), "--volume", "all"])
    assert result.exit_code == 0, result.output
    assert "3 volumes (4D)" in result.output
    ours = sitk.ReadImage(str(out))
    (theirs,) = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    reference = sitk.ReadImage(str(theirs))
    assert ours.GetDimension() == reference.GetDimension() == 4 and ours.GetSize()[3] == reference.GetSize()[3] == 3
    for t in range(3):
        r, diff = agreement(ours[:, :, :, t], reference[:, :, :, t])
        assert r > 0.999 and diff < 1e-3


# ----------------------------------------------------------------------------------- no series UID
def test_series_without_series_uid_is_grouped_read_and_matches_peers(tmp_path):
    truth = make_volume(shape=(8, 16, 16))
    paths = write_ct(tmp_path / "in", truth)
    strip_series_uid(paths)
    (row,) = scan_folder(tmp_path / "in").series.itertuples()
    assert row.status == "warning" and row.codes == ["no_series_uid"] and row.series_uid.startswith("2.25.")
    assert "StudyInstanceUID, SeriesNumber, FrameOfReferenceUID" in row.problems
    volume = read_volume(tmp_path / "in")
    _same_world(volume, truth)
    assert volume.series_uid == row.series_uid == scan_folder(tmp_path / "in").series.iloc[0].series_uid
    (theirs,) = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert agreement(volume.to_sitk(), sitk.ReadImage(str(theirs)))[0] > 0.999
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "in")))
    assert agreement(volume.to_sitk(), reader.Execute())[0] > 0.999


def test_two_uid_less_series_of_one_study_stay_apart(tmp_path):
    for number, plane in ((3, "axial"), (4, "coronal")):
        strip_series_uid(write_ct(tmp_path / "in", make_volume(shape=(5, 8, 8), plane=plane), study_uid="1.2.3.4", SeriesNumber=number))
    table = scan_folder(tmp_path / "in").series
    assert len(table) == 2 and table.series_uid.nunique() == 2 and set(table.n_instances) == {5}


# ------------------------------------------------------------------------- several images per position
def _with_uid(value_of):
    def edit(ds, k):
        for keyword, value in value_of(k).items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    return edit


def test_magnitude_and_phase_are_two_addressable_stacks(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.300"
    magnitude, phase = make_volume(shape=(6, 12, 12), seed=1), make_volume(shape=(6, 12, 12), seed=2)
    edit_files(write_ct(tmp_path / "in", magnitude, series_uid=uid), _with_uid(lambda k: {"ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}))
    edit_files(write_ct(tmp_path / "in" / "p", phase, series_uid=uid, study_uid=None), _with_uid(lambda k: {"ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}))
    table = scan_folder(tmp_path / "in").series
    assert list(table.stack_id) == [uid, f"{uid}.s1"] and set(table.n_instances) == {6}
    assert all("split" in c for c in table.codes) and "ImageType=ORIGINAL\\PRIMARY\\M\\ND" in table.problems[0]
    with pytest.raises(MixedSeriesError, match=rf"2 stacks.*{uid}\.s1.*stack=ID") as caught:
        read_series(sorted(str(p) for p in (tmp_path / "in").rglob("*") if p.is_file()))
    assert caught.value.code == Code.SPLIT
    _same_world(read_volume(tmp_path / "in", stack=uid), magnitude)
    _same_world(read_volume(tmp_path / "in", stack=f"{uid}.s1"), phase)
    out = tmp_path / "phase.nii.gz"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(out), "--stack", f"{uid}.s1"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), phase.array)
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "in"), "--stack", f"{uid}.s1"])
    assert shown.exit_code == 0 and "ImageType=ORIGINAL\\PRIMARY\\P\\ND" in shown.output and "p/" in shown.output


def test_dual_echo_is_split_by_echo(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.301"
    echoes = [make_volume(shape=(5, 10, 10), seed=s) for s in (3, 4)]
    for e, truth in enumerate(echoes, start=1):
        edit_files(write_ct(tmp_path / "in" / f"e{e}", truth, series_uid=uid, study_uid=None), _with_uid(lambda k, e=e: {"EchoNumbers": e, "EchoTime": 5.0 * e}))
    table = scan_folder(tmp_path / "in").series
    assert len(table) == 2 and all("echo" in p for p in table.problems)
    for stack_id, truth in zip((uid, f"{uid}.s1"), echoes, strict=True):  # stacks in echo order
        _same_world(read_volume(tmp_path / "in", stack=stack_id), truth)
    theirs = run_dcm2niix(tmp_path / "in", tmp_path / "d2n")
    assert len(theirs) == 2  # dcm2niix splits echoes too


def test_three_plane_localizer_without_localizer_type_is_three_stacks(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.302"
    for plane in ("axial", "coronal", "sagittal"):
        paths = write_ct(tmp_path / "in" / plane, make_volume(shape=(3, 8, 8), plane=plane), series_uid=uid,
                         study_uid="1.2.3.5", ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
        edit_files(paths, _with_uid(lambda k: {}))
    table = scan_folder(tmp_path / "in").series
    assert len(table) == 3 and sorted(table.orientation) == ["axial", "coronal", "sagittal"]
    assert all("split" in c for c in table.codes)
    with pytest.raises(MixedSeriesError, match="3 image stacks and no single largest one.*--stack ID"):
        read_volume(tmp_path / "in")
    assert read_volume(tmp_path / "in", stack=f"{uid}.s2").shape == (3, 8, 8)


# -------------------------------------------------------------------------------------- enhanced
def test_enhanced_4d_object_reads_each_volume_and_converts_to_4d_nifti(tmp_path):
    truths = [make_volume(shape=(5, 12, 12), seed=s) for s in range(3)]
    path = write_enhanced_4d(tmp_path / "in" / "dyn.dcm", truths, kind="temporal")
    (row,) = scan_folder(tmp_path / "in").series.itertuples()
    assert (row.n_volumes, row.n_slices) == (3, 5) and "TemporalPositionIndex" in row.problems
    volumes = read_series_volumes(path)
    for volume, truth in zip(volumes, truths, strict=True):
        _same_world(volume, truth)
    assert np.array_equal(read_series(path, volume=2).array, volumes[2].array)
    with pytest.raises(DicomError, match="volume 3 does not exist.*3 volume"):
        read_series(path, volume=3)
    out = tmp_path / "dyn.nii.gz"
    result = CliRunner().invoke(app, ["convert", str(path), str(out), "--volume", "all"])
    assert result.exit_code == 0, result.output
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (12, 12, 5, 3)
    for t, truth in enumerate(truths):
        _same_world_image = agreement(image[:, :, :, t], truth.to_sitk())
        assert _same_world_image[0] > 0.999 and _same_world_image[1] < 1e-3
    single = CliRunner().invoke(app, ["convert", str(path), str(tmp_path / "first.nii.gz")])
    assert single.exit_code == 0 and "volume 0 of 3" in single.output and "--volume all" in single.output


def test_enhanced_object_with_two_frame_types_is_two_stacks_with_their_frames(tmp_path):
    image, field_map = make_volume(shape=(4, 10, 10), seed=7), make_volume(shape=(4, 10, 10), seed=8)
    path = write_enhanced_4d(tmp_path / "in" / "b0.dcm", [image, field_map], kind="frame_type")
    table = scan_folder(tmp_path / "in").series
    assert len(table) == 2 and list(table.n_instances) == [4, 4]
    main, other = table.iloc[0], table.iloc[1]
    assert main.stack_id == main.series_uid and other.stack_id == f"{main.series_uid}.s1"
    assert main.files == other.files == [str(path)] and main.frames == [[0, 1, 2, 3]] and other.frames == [[4, 5, 6, 7]]
    assert main.image_type.startswith("ORIGINAL") and other.image_type.startswith("DERIVED")  # scoring rules see it
    _same_world(read_series(main), image)  # the ORIGINAL frames are the main stack, the DERIVED map the next
    _same_world(read_series(other), field_map)
    with pytest.raises(MixedSeriesError, match="2 stacks"):
        read_series(path)
    _same_world(read_series(path, stack=other.stack_id), field_map)


# ----------------------------------------------------------------------------------- irregular spacing
def _irregular(tmp_path, steps):
    """A series whose slices sit at cumulative ``steps`` (mm) along z, values = HU of the truth's slices."""
    n = len(steps) + 1
    truth = make_volume(shape=(n, 10, 10), spacing=(1.0, 0.7, 0.8))
    paths = write_ct(tmp_path / "in", truth, shuffle_names=False)
    z = np.concatenate([[0.0], np.cumsum(steps)])
    edit_files(paths, lambda ds, k: setattr(ds, "ImagePositionPatient", [-12.0, 30.5, float(100 + z[k])]))
    return truth, z


def test_irregular_spacing_keeps_the_finest_step_and_marks_interpolated_slices(tmp_path):
    truth, z = _irregular(tmp_path, [1.0, 1.0, 1.0, 3.0, 7.0, 1.0, 1.0])
    row = scan_folder(tmp_path / "in").series.iloc[0]
    assert row.status == "warning" and "irregular_spacing" in row.codes
    volume = read_volume(tmp_path / "in")
    assert volume.spacing[0] == pytest.approx(1.0) and volume.shape[0] == 16  # 0..15 mm at 1 mm
    acquired = [int(round(v)) for v in z]
    assert volume.meta["interpolated_slices"] == sorted(set(range(16)) - set(acquired))
    for k, position in enumerate(acquired):  # acquired slices are copied, not blurred
        np.testing.assert_array_equal(volume.array[position], truth.array[k])
    assert "smallest acquired step" in volume.meta["resampled"]
    coarse = read_volume(tmp_path / "in", z_spacing=3.0)
    assert coarse.spacing[0] == 3.0 and coarse.shape[0] == 6 and "(chosen)" in coarse.meta["resampled"]
    with pytest.raises(DicomError, match="non-uniform slice spacing") as caught:
        read_volume(tmp_path / "in", on_irregular="error")
    assert caught.value.code == Code.IRREGULAR_SPACING


def test_irregular_conversion_says_what_was_interpolated(tmp_path):
    _irregular(tmp_path, [2.0, 2.0, 6.0, 2.0])
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), str(tmp_path / "o.nii.gz"), "--z-step", "1"])
    assert result.exit_code == 0, result.output
    assert "regridded onto 13 slices 1 mm apart" in result.output and "interpolated" in result.output


def test_regular_stack_has_no_interpolated_slices(tmp_path):
    write_ct(tmp_path / "in", make_volume(shape=(6, 8, 8)))
    volume = read_volume(tmp_path / "in")
    assert volume.meta["interpolated_slices"] == [] and "resampled" not in volume.meta


def test_gantry_tilt_marks_every_shifted_slice(tmp_path):
    paths = write_ct(tmp_path / "in", make_volume(shape=(5, 8, 8)), shuffle_names=False)
    edit_files(paths, lambda ds, k: setattr(ds, "ImagePositionPatient", [-12.0, 30.5 + k * 0.9, 100 + 2.5 * k]))
    volume = read_volume(tmp_path / "in")
    assert volume.meta["interpolated_slices"] == [1, 2, 3, 4] and volume.meta["gantry_tilt_deg"] > 0


# ------------------------------------------------------------------------------------- convert FILE
def test_convert_file_converts_its_stack_and_says_so_when_alone(tmp_path):
    truth = make_volume(shape=(6, 8, 8))
    paths = write_ct(tmp_path / "in", truth, shuffle_names=False)
    out = tmp_path / "stack.nii.gz"
    result = CliRunner().invoke(app, ["convert", str(paths[2]), str(out)])
    assert result.exit_code == 0 and sitk.ReadImage(str(out)).GetSize()[2] == 6
    data = paths[4].read_bytes()
    paths[4].write_bytes(data[: len(data) - 50])  # the stack is now broken: the file converts on its own
    alone = CliRunner().invoke(app, ["convert", str(paths[2]), str(tmp_path / "alone.nii.gz")])
    assert alone.exit_code == 0 and "on its own" in alone.output and paths[4].name in alone.output
    assert sitk.ReadImage(str(tmp_path / "alone.nii.gz")).GetSize()[2] == 1
    ds = pydicom.dcmread(paths[2])
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "alone.nii.gz")))[0],
                          ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
