"""Scans as image files (MetaImage, NRRD, NIfTI) wherever DICOM is taken: a folder of `<uid>.<ext>` files, a
table's `path` column, scoring discovery (with the modality rule), and the readers scoring and the viewer use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsuite.data.source import SourceError, VolumeSource, find_image_files, read_files, read_path
from medsuite.io.volume import Volume
from medsuite.pipelines.scoring.discover import Rules, decide, discover

UIDS = {"1.2.826.0.1.3680043.8.1": ".mhd", "1.2.826.0.1.3680043.8.2": ".nrrd", "1.2.826.0.1.3680043.8.3": ".nii.gz"}


def _volume(seed: int) -> Volume:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 400, size=(12, 16, 20)).astype(np.int16)
    return Volume(array, (2.5, 0.7, 0.7), (-10.0, 20.0, -100.0 + seed))


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    import SimpleITK as sitk

    root = tmp_path / "scans"
    for i, (uid, ext) in enumerate(UIDS.items()):
        folder = root / f"subset{i}"
        folder.mkdir(parents=True)
        sitk.WriteImage(_volume(i).to_sitk(), str(folder / f"{uid}{ext}"))
    (root / "notes.txt").write_text("not a scan")
    return root


def test_a_folder_of_image_files_is_a_source_keyed_by_file_name(scans: Path) -> None:
    source = VolumeSource(scans)
    assert source.series_uids == sorted(UIDS)
    for i, uid in enumerate(UIDS):
        volume = source.get(uid)
        np.testing.assert_array_equal(volume.array, _volume(i).array)
        np.testing.assert_allclose(volume.origin, _volume(i).origin)
        assert volume.series_uid == uid
    with pytest.raises(SourceError, match="1 series of the table not found: 9.9"):
        source.check([*UIDS, "9.9"])


def test_two_files_with_one_name_are_an_error(scans: Path) -> None:
    import SimpleITK as sitk

    uid = next(iter(UIDS))
    sitk.WriteImage(_volume(5).to_sitk(), str(scans / f"{uid}.nrrd"))
    with pytest.raises(SourceError, match=f"two image files are named '{uid}'"):
        find_image_files(scans)


def test_a_table_path_column_relative_to_the_table(scans: Path, tmp_path: Path) -> None:
    files = sorted(p for p in scans.rglob("*") if p.is_file() and p.suffix in (".mhd", ".nrrd", ".gz"))
    table = pd.DataFrame({"series_uid": ["a", "b", "c"], "path": [str(p.relative_to(tmp_path)) for p in files]})
    table.attrs["source"] = str(tmp_path / "table.csv")
    source = VolumeSource.for_table(table)
    assert source.get("a").shape == (12, 16, 20)
    (scans / "subset1" / files[1].name).unlink()
    with pytest.raises(SourceError, match="1 series of the table not found: b"):
        source.check(table["series_uid"], files=True)
    with pytest.raises(SourceError, match="no 'path' column and no scan folder"):
        VolumeSource.for_table(table.drop(columns="path"))


def test_readers_for_scoring_and_the_viewer(scans: Path) -> None:
    mhd = next(scans.rglob("*.mhd"))
    uid = mhd.stem
    assert read_files([mhd], uid).series_uid == uid
    assert read_path(mhd, uid).shape == (12, 16, 20)
    assert read_path(mhd.parent, uid).series_uid == uid  # a folder of image files, by uid


def test_scoring_discovers_image_files_and_asks_for_their_modality(scans: Path, tmp_path: Path) -> None:
    found = discover([scans], workers=1)
    assert sorted(found.series["series_uid"]) == sorted(UIDS)
    row = found.series.set_index("series_uid").loc[next(iter(UIDS))]
    assert (row["n_instances"], row["rows"], row["cols"], row["orientation"]) == (12, 16, 20, "axial")
    assert row["spacing_z"] == pytest.approx(2.5)
    # only notes.txt is "not an image": the .raw beside the .mhd is part of its scan
    assert [Path(p).name for p in found.skipped_files["path"]] == ["notes.txt"]
    decisions = decide(found.series, Rules())
    assert {d.action for d in decisions} == {"skip"}
    assert "--rule modality=any" in decisions[0].reason
    # a series table with a modality column vouches for it, and names the series
    files = sorted(p for p in scans.rglob("*") if p.suffix in (".mhd", ".nrrd", ".gz"))
    table = tmp_path / "series.csv"
    pd.DataFrame({"series_uid": ["s1", "s2", "s3"], "path": [str(f) for f in files], "modality": "CT"}).to_csv(table, index=False)
    listed = discover([table], workers=1)
    assert sorted(listed.series["series_uid"]) == ["s1", "s2", "s3"] and set(listed.series["modality"]) == {"CT"}
    assert {d.action for d in decide(listed.series, Rules())} == {"score"}


def test_an_unreadable_image_file_is_an_error_row_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "1.2.3.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4\nElementDataFile = missing.raw\n")
    found = discover([tmp_path], workers=1)
    row = found.series.iloc[0]
    assert row["status"] == "error" and "1.2.3.mhd" in row["problems"]
    assert decide(found.series, Rules())[0].action == "error"
