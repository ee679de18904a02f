"""read_volume dispatch (image files, DICOM file, folder) and the choice of stack in a folder."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from medsuite.io.errors import DicomError, MixedSeriesError, NotDicomError
from medsuite.io.load import read_volume, select_stack
from medsuite.io.volume import Volume


def _row(uid: str, n: int, status: str = "ok", stack: str | None = None, problems: str = "") -> dict:
    return {
        "stack_id": stack or uid,
        "series_uid": uid,
        "modality": "CT",
        "orientation": "axial",
        "n_instances": n,
        "status": status,
        "problems": problems,
        "patient_id": "SECRET-PATIENT",
        "files": [f"/data/{uid}/{i}.dcm" for i in range(n)],
    }


def test_select_the_only_stack():
    table = pd.DataFrame([_row("1.1", 20)])
    assert select_stack(table)["series_uid"] == "1.1"


def test_select_largest_stack_and_say_which_others_exist(caplog):
    table = pd.DataFrame([_row("1.1", 3), _row("1.2", 120), _row("1.3", 40)])
    with caplog.at_level(logging.WARNING, logger="medsuite.io.load"):
        row = select_stack(table, source="/data/study")
    assert row["series_uid"] == "1.2"
    message = caplog.text
    assert "/data/study" in message and "1.1" in message and "1.3" in message and "120 instances" in message
    assert "SECRET-PATIENT" not in message


def test_tie_for_largest_is_an_error_asking_for_a_stack():
    table = pd.DataFrame([_row("1.1", 50), _row("1.2", 50), _row("1.3", 2)])
    with pytest.raises(MixedSeriesError, match=r"/data/study: 3 image stacks.*1\.1.*1\.2.*--stack ID"):
        select_stack(table, source="/data/study")


def test_select_by_series_uid():
    table = pd.DataFrame([_row("1.1", 50), _row("1.2", 50)])
    assert select_stack(table, "1.2")["series_uid"] == "1.2"
    with pytest.raises(DicomError, match=r"series 9\.9 not found; series present: 1\.1, 1\.2"):
        select_stack(table, "9.9", source="/d")


def test_error_stacks_are_never_picked():
    table = pd.DataFrame([_row("1.1", 500, status="error", problems="pixel data truncated"), _row("1.2", 5)])
    assert select_stack(table)["series_uid"] == "1.2"
    with pytest.raises(DicomError, match="no readable image stack.*pixel data truncated"):
        select_stack(table, "1.1")
    with pytest.raises(NotDicomError, match="no DICOM image series"):
        select_stack(table.iloc[0:0], source="/d")


def test_read_volume_reads_image_files(tmp_path):
    volume = Volume(
        np.arange(60, dtype=np.float32).reshape(3, 4, 5), spacing=(3.0, 1.0, 0.5), origin=(1, 2, 3)
    )
    path = tmp_path / "scan.mha"
    sitk.WriteImage(volume.to_sitk(), str(path))
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.spacing == (3.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="apply to DICOM input only"):
        read_volume(path, series_uid="1.2")


def test_read_volume_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_volume(tmp_path / "nothing-here")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(NotDicomError, match=r"notes\.txt: neither DICOM nor a supported image file"):
        read_volume(text)
