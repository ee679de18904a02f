"""Radiomics features on shapes of known geometry, and the two baselines on data with a known driver."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsuite.io.volume import Volume
from medsuite.pipelines.baselines import diameter_baseline, radiomics_baseline
from medsuite.pipelines.radiomics import nodule_features

SPACING = (1.25, 0.7, 0.7)


def _volume_with(semi_axes_mm: tuple[float, float, float], hu: float = 40.0) -> tuple[Volume, np.ndarray]:
    shape = (48, 96, 96)
    array = np.full(shape, -850.0, dtype=np.float32)
    centre = np.array(shape) // 2
    zz, yy, xx = np.indices(shape)
    d = sum(((ax - c) * s / r) ** 2 for ax, c, s, r in zip((zz, yy, xx), centre, SPACING, semi_axes_mm, strict=True))
    array[d <= 1.0] = hu
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    volume = Volume(array, SPACING, (-30.0, 12.0, -200.0), direction)
    return volume, volume.index_to_world(centre)


def test_sphere_features_match_the_geometry() -> None:
    volume, centre = _volume_with((6.0, 6.0, 6.0))
    f = nodule_features(volume, centre, 12.0)
    assert f["seg_diameter_mm"] == pytest.approx(12.0, rel=0.1)
    assert f["seg_volume_mm3"] == pytest.approx(4 / 3 * np.pi * 6.0**3, rel=0.2)
    assert f["sphericity"] > 0.85
    assert f["elongation"] < 1.15
    assert f["hu_p50"] == pytest.approx(40.0, abs=5.0)
    assert f["frac_calcified"] == 0.0


def test_elongated_calcified_nodule_is_told_apart() -> None:
    volume, centre = _volume_with((4.0, 4.0, 10.0), hu=400.0)
    f = nodule_features(volume, centre, 20.0)
    assert f["elongation"] > 2.0
    assert f["frac_calcified"] > 0.5
    assert f["feret_mm"] == pytest.approx(20.0, rel=0.15)


def test_features_of_a_point_outside_the_scan_are_air_not_a_crash() -> None:
    volume, _ = _volume_with((5.0, 5.0, 5.0))
    f = nodule_features(volume, np.array([500.0, 500.0, 500.0]), 8.0)
    assert f["seg_volume_mm3"] == 0.0 and f["hu_max"] <= -1000.0


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    diameter = rng.uniform(4, 25, n)
    texture = rng.normal(size=n)
    malignant = rng.random(n) < 1 / (1 + np.exp(-(texture * 3)))
    return pd.DataFrame({"diameter_mm": diameter, "texture": texture, "noise": rng.normal(size=n),
                         "label": np.where(malignant, "malignant", "benign")})


def test_baselines_learn_what_drives_the_label() -> None:
    from sklearn.metrics import roc_auc_score

    train, test = _table(300, 0), _table(200, 1)
    y = (test["label"] == "malignant").to_numpy()
    diam = diameter_baseline(train, test, "malignant")
    assert abs(roc_auc_score(y, diam.probs) - 0.5) < 0.12  # size carries no signal here
    rf = radiomics_baseline(train[["diameter_mm", "texture", "noise"]], train["label"], test[["diameter_mm", "texture", "noise"]],
                            test["label"], "malignant", n_estimators=100)
    assert roc_auc_score(y, rf.probs) > 0.8
    assert rf.importance["feature"].iloc[0] == "texture"
    assert set(rf.figures) == {"permutation_importance", "partial_dependence"}


def test_largest_diameter_baseline_for_series() -> None:
    from medsuite.pipelines.baselines import largest_diameter_baseline
    from medsuite.pipelines.config import ConfigError, config_from_dict

    rng = np.random.default_rng(0)
    size = rng.uniform(3, 25, 80)
    frame = pd.DataFrame({"max_diameter_mm": size, "label": np.where(size > 12, "malignant", "benign")})
    frame.loc[0, "max_diameter_mm"] = np.nan  # a series without nodules: the smallest size, not an error
    result = largest_diameter_baseline(frame.iloc[:60], frame.iloc[60:], "malignant")
    assert result.name == "largest_diameter" and result.probs.shape == (20,)
    y = (frame.iloc[60:]["label"] == "malignant").to_numpy()
    assert result.probs[y].min() > result.probs[~y].max()  # monotone in the size that drives the label
    with pytest.raises(ValueError, match="max_diameter_mm"):
        largest_diameter_baseline(frame.drop(columns="max_diameter_mm"), frame, "malignant")
    base = {"task": "series", "data": {"table": "t.csv", "dicom_root": "."}, "block": {"type": "SeriesSlices"},
            "report": {"baselines": ["diameter", "largest_diameter"]}}
    assert config_from_dict(base, check_inputs=False).report.baselines == ["largest_diameter"]
    with pytest.raises(ConfigError, match="largest_diameter"):
        config_from_dict({**base, "task": "nodule", "block": {"type": "SliceStack"}}, check_inputs=False)


def test_patch3d_baseline_scores_the_held_out_items_and_says_its_cost(tmp_path) -> None:
    from pipeline_cohort import make_cohort

    from medsuite.data.source import VolumeSource
    from medsuite.pipelines.baselines import PATCH3D_SPEC, patch3d_baseline

    table = make_cohort(tmp_path, patients=8, nodules_per_patient=2)
    source = VolumeSource(tmp_path, cache_dir=tmp_path / "cache")
    splits = {name: table[table["split"] == name].reset_index(drop=True) for name in ("train", "valid", "test")}
    result = patch3d_baseline(splits, "test", source, "malignant", epochs=1, bs=4)
    assert result.name == "patch3d_cnn" and result.probs.shape == (len(splits["test"]),)
    assert np.all((result.probs >= 0) & (result.probs <= 1))
    assert result.cost["epochs"] == 1 and result.cost["train_min"] > 0 and result.cost["block"] == PATCH3D_SPEC
