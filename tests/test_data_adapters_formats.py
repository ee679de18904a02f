"""LUNA16 csv + .mhd, NoduleMNIST3D .npz and series CSV adapters on tiny generated files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsuite.data.luna16 import luna16_annotations, luna16_candidates
from medsuite.data.nodulemnist import NoduleMNIST3D, load_nodulemnist3d
from medsuite.data.series_csv import read_series_csv
from medsuite.data.tables import TableError

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860"  # a LUNA16 series uid


@pytest.fixture()
def luna(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((10, 20, 20), np.int16))
    img.SetSpacing((1.0, 1.0, 2.5))
    img.SetOrigin((-10.0, -20.0, -100.0))
    (tmp_path / "subset0").mkdir()
    sitk.WriteImage(img, str(tmp_path / "subset0" / f"{UID}.mhd"))
    pd.DataFrame({"seriesuid": [UID], "coordX": [-1.0], "coordY": [-10.0], "coordZ": [-90.0],
                  "diameter_mm": [5.0]}).to_csv(tmp_path / "annotations.csv", index=False)
    pd.DataFrame({"seriesuid": [UID] * 3, "coordX": [-1.5, 5.0, -1.0], "coordY": [-10.0, -5.0, -10.0],
                  "coordZ": [-90.0, -85.0, -80.0], "class": [1, 0, 1]}).to_csv(tmp_path / "candidates.csv", index=False)
    return tmp_path


def test_luna16_annotations_and_candidates(luna):
    ann = luna16_annotations(luna / "annotations.csv", scans=luna, lidc_db=False, labels="nodule")
    assert ann.loc[0, ["x_mm", "y_mm", "z_mm", "diameter_mm"]].tolist() == [-1.0, -10.0, -90.0, 5.0]
    assert ann.loc[0, "label"] == "nodule" and ann.loc[0, "patient_id"] == UID and ann.loc[0, "path"].endswith(".mhd")
    with pytest.raises(TableError, match="no 'label' column"):
        luna16_annotations(luna / "annotations.csv", scans=luna, lidc_db=False)
    # the CSV's own label column (and any other column) is kept
    pd.read_csv(luna / "annotations.csv").assign(label="malignant", split="test").to_csv(luna / "own.csv", index=False)
    own = luna16_annotations(luna / "own.csv", scans=luna, lidc_db=False)
    assert own.loc[0, "label"] == "malignant" and own.loc[0, "split"] == "test"
    cand = luna16_candidates(luna / "candidates.csv", annotations=luna / "annotations.csv", lidc_db=False)
    assert cand["label"].tolist() == ["nodule", "non_nodule", "nodule"] and cand["class"].tolist() == [1, 0, 1]
    assert cand["diameter_source"].tolist() == ["annotation", "default", "default"]  # third is 10 mm away
    assert cand["diameter_mm"].tolist() == [5.0, 6.0, 6.0]


def test_luna16_errors_name_file_and_reason(luna):
    with pytest.raises(TableError, match="outside its scan"):
        pd.DataFrame({"seriesuid": [UID], "coordX": [500.0], "coordY": [0.0], "coordZ": [-90.0],
                      "diameter_mm": [5.0]}).to_csv(luna / "far.csv", index=False)
        luna16_annotations(luna / "far.csv", scans=luna, lidc_db=False, labels="nodule")
    pd.DataFrame({"seriesuid": ["9.9"], "coordX": [0.0], "coordY": [0.0], "coordZ": [0.0],
                  "diameter_mm": [5.0]}).to_csv(luna / "other.csv", index=False)
    with pytest.raises(TableError, match="none of its 1 series has a .mhd"):
        luna16_annotations(luna / "other.csv", scans=luna, lidc_db=False, labels="nodule")
    pd.DataFrame({"seriesuid": [UID]}).to_csv(luna / "bad.csv", index=False)
    with pytest.raises(TableError, match="bad.csv.*coordX"):
        luna16_annotations(luna / "bad.csv")


def test_nodulemnist3d(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for key, n in (("train", 4), ("val", 2), ("test", 3)):
        arrays[f"{key}_images"] = rng.integers(0, 256, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{key}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(tmp_path / "nodulemnist3d.npz", **arrays)
    images, table = load_nodulemnist3d(tmp_path / "nodulemnist3d.npz")
    assert table["split"].value_counts().to_dict() == {"train": 4, "test": 3, "valid": 2}
    ds = NoduleMNIST3D(tmp_path / "nodulemnist3d.npz", "valid")
    x, y = ds[1]
    assert tuple(x.shape) == (1, 28, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert int(y) == int(arrays["val_labels"][1, 0])
    del arrays["test_labels"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(TableError, match="broken.npz.*test_labels"):
        load_nodulemnist3d(tmp_path / "broken.npz")


def test_series_csv(tmp_path):
    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    vol = Volume(np.zeros((3, 8, 8), np.int16), spacing=(1.0, 1.0, 1.0))
    write_series(vol, tmp_path / "s1", patient_id="P1", series_uid="1.2.3.1")
    write_series(vol, tmp_path / "s2", patient_id="P2", series_uid="1.2.3.2")
    pd.DataFrame({"path": ["s1", "s2"], "label": [0, 1]}).to_csv(tmp_path / "series.csv", index=False)
    table = read_series_csv(tmp_path / "series.csv")
    assert table[["series_uid", "patient_id", "label"]].values.tolist() == [["1.2.3.1", "P1", 0], ["1.2.3.2", "P2", 1]]
    pd.DataFrame({"path": ["s1", "missing"], "label": [0, 1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TableError, match="bad.csv: row 1: series folder or image file .*missing does not exist"):
        read_series_csv(tmp_path / "bad.csv")
    # an image file is a series too, named by its file name unless the CSV says otherwise
    import SimpleITK as sitk

    sitk.WriteImage(vol.to_sitk(), str(tmp_path / "1.2.3.9.nrrd"))
    pd.DataFrame({"path": ["s1", "1.2.3.9.nrrd"], "label": [0, 1]}).to_csv(tmp_path / "mixed.csv", index=False)
    mixed = read_series_csv(tmp_path / "mixed.csv")
    assert mixed[["series_uid", "patient_id"]].values.tolist() == [["1.2.3.1", "P1"], ["1.2.3.9", "1.2.3.9"]]
    assert mixed["path"].iloc[1].endswith("1.2.3.9.nrrd")
    pd.DataFrame({"folder": ["s1"]}).to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(TableError, match="missing column 'path'"):
        read_series_csv(tmp_path / "nolabel.csv")
