"""scan_folder: one row per stack, splitting of mixed series, duplicates, skipped files with reasons."""

from __future__ import annotations

import shutil

import pytest
from dicom_factory import (
    add_localizer,
    edit_files,
    make_volume,
    truncate,
    write_ct,
    write_garbage,
    write_non_images,
)
from pydicom.uid import generate_uid

from medsuite.io.dicom import SERIES_COLUMNS, scan_folder, scan_headers


def test_single_series_row_has_contract_columns(tmp_path):
    paths = write_ct(tmp_path, make_volume(shape=(8, 16, 16)), SeriesDescription="chest", SeriesNumber=3)
    scan = scan_folder(tmp_path)
    assert list(scan.series.columns) == SERIES_COLUMNS
    row = scan.series.iloc[0]
    assert len(scan.series) == 1 and scan.skipped.empty
    assert row.stack_id == row.series_uid
    assert (row.n_instances, row.rows, row.cols, row.status) == (8, 16, 16, "ok")
    assert (row.orientation, row.description, row.series_number, row.modality) == ("axial", "chest", 3, "CT")
    assert row.spacing_z == pytest.approx(2.5) and (row.spacing_y, row.spacing_x) == (0.7, 0.8)
    assert row.transfer_syntax == "Explicit VR Little Endian"
    assert row.files == [str(p) for p in paths], "files are listed in position order"


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal", "oblique"])
def test_orientation_label(tmp_path, plane):
    write_ct(tmp_path, make_volume(shape=(3, 8, 8), plane=plane))
    assert scan_folder(tmp_path).series.iloc[0].orientation == plane


def test_mixed_folder_splits_series_and_skips_non_images(tmp_path):
    a = write_ct(tmp_path / "x", make_volume(shape=(6, 12, 12)))
    write_ct(tmp_path / "x", make_volume(shape=(4, 10, 10), plane="coronal", seed=1))  # same folder
    scout = add_localizer(tmp_path / "x", a)
    non_images = write_non_images(tmp_path / "other")
    garbage = write_garbage(tmp_path / "junk")
    scan = scan_folder(tmp_path)
    rows = scan.series
    assert sorted(rows.n_instances) == [1, 4, 6]
    scout_row = rows[rows.files.apply(lambda f: f == [str(scout)])].iloc[0]
    assert "localizer" in scout_row.problems and scout_row.stack_id.startswith(scout_row.series_uid + ".s")
    main = rows[rows.n_instances == 6].iloc[0]
    assert main.stack_id == main.series_uid and main.status == "ok"
    reasons = dict(zip(scan.skipped.path, scan.skipped.reason, strict=True))
    for kind, text in [("sr", "SR"), ("seg", "Segmentation"), ("rtstruct", "Structure Set"), ("pr", "Presentation State"), ("kos", "Key Object")]:  # fmt: skip
        assert text in reasons[str(non_images[kind])], kind
    for path in garbage.values():
        assert str(path) in reasons
    assert "not a DICOM" in reasons[str(garbage["text"])]


def test_duplicate_files_are_dropped_with_a_note(tmp_path):
    paths = write_ct(tmp_path, make_volume(shape=(5, 8, 8)), shuffle_names=False)
    shutil.copy(paths[2], tmp_path / "copy_of_slice")
    row = scan_folder(tmp_path).series.iloc[0]
    assert row.n_instances == 5 and row.status == "warning"
    assert "duplicate file" in row.problems


def _new_instance_uid(ds, k):
    """Different instances (another acquisition) have their own SOPInstanceUIDs."""
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()


def test_same_positions_in_two_acquisitions_form_a_4d_stack(tmp_path):
    vol = make_volume(shape=(4, 8, 8))
    uid = "1.2.826.0.1.3680043.8.498.1"
    first = write_ct(tmp_path, vol, series_uid=uid, AcquisitionNumber=1)
    second = write_ct(tmp_path / "b", vol, series_uid=uid, study_uid=None, AcquisitionNumber=2, seed=5)
    edit_files(second, _new_instance_uid)
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1
    row = scan.series.iloc[0]
    assert (row.n_instances, row.n_slices, row.n_volumes, row.status) == (8, 4, 2, "warning")
    assert "multi_volume" in row.codes and "AcquisitionNumber" in row.problems
    assert row.files[:4] == [str(p) for p in first], "volume 1 first, slices in position order"


def test_same_positions_covering_different_ranges_split_by_acquisition(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.11"
    write_ct(tmp_path / "a", make_volume(shape=(4, 8, 8)), series_uid=uid, AcquisitionNumber=1)
    shifted = make_volume(shape=(4, 8, 8), origin=(-12.0, 30.5, 105.0), seed=5)
    edit_files(write_ct(tmp_path / "b", shifted, series_uid=uid, study_uid=None, AcquisitionNumber=2), _new_instance_uid)
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 2 and set(scan.series.n_instances) == {4}
    assert all("split" in codes for codes in scan.series.codes)
    assert all("AcquisitionNumber" in p for p in scan.series.problems)


def test_inseparable_same_positions_is_an_error_row(tmp_path):
    vol = make_volume(shape=(4, 8, 8))
    uid = "1.2.826.0.1.3680043.8.498.2"
    write_ct(tmp_path / "a", vol, series_uid=uid)
    edit_files(write_ct(tmp_path / "b", vol, series_uid=uid, seed=9), _new_instance_uid)
    row = scan_folder(tmp_path).series.iloc[0]
    assert row.status == "error" and "same position" in row.problems


def test_gap_tilt_missing_tags_and_truncation_are_reported(tmp_path):
    gap = write_ct(tmp_path / "gap", make_volume(shape=(8, 8, 8)), shuffle_names=False)
    gap[3].unlink()
    tilted = write_ct(tmp_path / "tilt", make_volume(shape=(6, 8, 8), seed=2), shuffle_names=False)
    edit_files(
        tilted, lambda ds, k: setattr(ds, "ImagePositionPatient", [-12.0, 30.5 + k * 0.9, 100 + 2.5 * k])
    )
    missing = write_ct(tmp_path / "missing", make_volume(shape=(3, 8, 8), seed=3), shuffle_names=False)
    edit_files(missing[:1], lambda ds, k: delattr(ds, "PixelSpacing"))
    cut = write_ct(tmp_path / "cut", make_volume(shape=(3, 8, 8), seed=4), shuffle_names=False)
    truncate(cut[1], 0.9)
    by_folder = {row.files[0].split("/")[-2]: row for row in scan_folder(tmp_path).series.itertuples()}
    assert by_folder["gap"].status == "warning" and "1 slice(s) missing" in by_folder["gap"].problems
    assert by_folder["tilt"].status == "warning" and "gantry tilt" in by_folder["tilt"].problems
    assert by_folder["missing"].status == "error" and "PixelSpacing" in by_folder["missing"].problems
    assert by_folder["cut"].status == "error" and "truncated" in by_folder["cut"].problems


def test_enhanced_multiframe_is_one_stack(tmp_path):
    from medsuite.io.dicom_write import write_enhanced

    write_enhanced(make_volume(shape=(5, 8, 8)), tmp_path / "mf", patient_id="P", frame_order=[4, 2, 0, 1, 3])
    row = scan_folder(tmp_path).series.iloc[0]
    assert (row.n_instances, row.status, row.spacing_z) == (5, "ok", pytest.approx(2.5))


def test_process_and_thread_pools_agree_with_serial(tmp_path):
    for i in range(3):
        write_ct(tmp_path / str(i), make_volume(shape=(70, 4, 4), seed=i))
    files = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    serial = scan_headers(files, workers=1)
    for executor in ("thread", "process"):
        parallel = scan_headers(files, workers=2, executor=executor)
        assert [h.path for h in parallel] == [h.path for h in serial]
        assert [h.positions for h in parallel] == [h.positions for h in serial]
    assert len(scan_folder(tmp_path, workers=2).series) == 3


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        scan_folder(tmp_path / "nowhere")


def test_empty_folder_gives_empty_tables(tmp_path):
    scan = scan_folder(tmp_path)
    assert scan.series.empty and scan.skipped.empty and list(scan.series.columns) == SERIES_COLUMNS
    assert list(scan.skipped.columns) == ["path", "reason", "code"]
