"""Demo cohort: a tiny cohort reads back through the I/O layer with its nodules where the table says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsuite.data.demo import DemoError, make_demo_cohort
from medsuite.data.tables import read_table, validate_nodule_table, validate_series_table

TINY = dict(patients=2, seed=3, size=96, slab_mm=20.0, max_nodules=2, rle_share=0.5, shuffle_share=0.5)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "cohort"
    table = make_demo_cohort(out, workers=1, **TINY)
    return out, table


def test_tables_follow_the_contracts(cohort):
    out, table = cohort
    nodules = validate_nodule_table(read_table(out / "nodules.csv"))
    series = validate_series_table(read_table(out / "series.csv"))
    assert len(nodules) == len(table) >= 2
    assert set(nodules["label"]) <= {"benign", "malignant"}
    assert nodules.groupby("patient_id")["split"].nunique().max() == 1  # patient-level split
    assert {"manufacturer", "slice_thickness", "lidc_scan_id", "lidc_annotation_id", "lidc_nodule_id"} <= set(nodules.columns)
    assert set(series["series_uid"]) == set(nodules["series_uid"])
    assert (out / "cohort.json").is_file()
    # labels are the real LIDC ratings under the default rule
    assert ((nodules["label"] == "malignant") == (nodules["malignancy"] > 3)).all()
    # per-reader ratings (slots r1..r4): as many as readers, their median is the consensus rating
    readers = nodules[[f"malignancy_r{k}" for k in range(1, 5)]]
    assert (readers.notna().sum(axis=1) == nodules["n_readers"].clip(upper=4)).all()
    assert np.allclose(readers.median(axis=1, skipna=True), nodules["malignancy"])
    values = readers.to_numpy()[readers.notna().to_numpy()]
    assert ((values >= 1) & (values <= 5)).all()


def test_series_read_back_with_nodules_at_their_world_positions(cohort):
    from medsuite.io.dicom import scan_folder
    from medsuite.io.reader import read_series

    out, table = cohort
    found = scan_folder(out / "dicom", workers=1).series
    assert len(found) == 2 and (found["status"] != "error").all()
    series = pd.read_csv(out / "series.csv")
    assert set(found["series_uid"]) == set(series["series_uid"])
    for _, row in found.iterrows():
        vol = read_series(row)
        meta = series.set_index("series_uid").loc[row["series_uid"]]
        assert vol.shape == (meta["n_slices"], 96, 96)
        assert vol.spacing[1] == pytest.approx(meta["pixel_spacing"], abs=1e-4)
        lung = vol.array[(vol.array > -950) & (vol.array < -700)]
        assert lung.size > 0.05 * vol.array.size  # the field of view shows lung
        for nod in table[table["series_uid"] == row["series_uid"]].itertuples():
            idx = vol.world_to_index((nod.x_mm, nod.y_mm, nod.z_mm))
            assert np.all(idx >= 0) and np.all(idx <= np.asarray(vol.shape) - 1)
            k = np.round(idx).astype(int)
            r = max(1, int(0.2 * nod.rendered_diameter_mm / vol.spacing[1]))
            core = vol.array[k[0], k[1] - r:k[1] + r + 1, k[2] - r:k[2] + r + 1]
            assert core.mean() > np.median(lung) + 150, nod.nodule_id


def test_deterministic_by_seed_and_workers(cohort, tmp_path):
    from medsuite.io.reader import read_series

    out, table = cohort
    again = make_demo_cohort(tmp_path / "again", workers=2, **TINY)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), again.reset_index(drop=True))
    uid = table["series_uid"].iloc[0]
    pid = table["patient_id"].iloc[0]
    a = read_series(out / "dicom" / pid).array
    b = read_series(tmp_path / "again" / "dicom" / pid).array
    assert uid == again["series_uid"].iloc[0]
    np.testing.assert_array_equal(a, b)
    # every file is byte-identical (deterministic SOPInstanceUIDs, names and headers), as are the tables
    files = sorted(p.relative_to(out) for p in (out / "dicom").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again" / "dicom").rglob("*")
                           if p.is_file())
    assert all((out / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    for name in ("nodules.csv", "series.csv"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_bad_requests_are_clear_errors(cohort, tmp_path):
    out, _ = cohort
    with pytest.raises(DemoError, match="not empty"):
        make_demo_cohort(out, patients=1)
    with pytest.raises(DemoError, match="patients"):
        make_demo_cohort(tmp_path / "x", patients=0)
    with pytest.raises(DemoError, match="size"):
        make_demo_cohort(tmp_path / "y", patients=1, size=8)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(DemoError, match="not a demo cohort"):
        make_demo_cohort(tmp_path / "other", patients=1, overwrite=True)
