"""Late fusion of the image's score with nodule-table columns: one predictor for export, evaluate and score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from pipeline_cohort import make_cohort
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.data.blocks import SliceStack
from medsuite.learn.bundle import load_bundle
from medsuite.learn.predict import Fusion, Predictor, PredictorError, PredictorSettings, fit_fusion
from medsuite.pipelines import nodule


def test_fusion_settings_round_trip_and_refuse_missing_covariates():
    fusion = Fusion(("diameter_mm",), ("log",), 0.8, (1.5,), -3.0, {"split": "valid", "n": 10})
    settings = PredictorSettings(("benign", "malignant"), "malignant", fusion=fusion)
    again = PredictorSettings.from_json(json.loads(json.dumps(settings.to_json())), ["benign", "malignant"])
    assert again.fusion == fusion
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    predictor = Predictor(model, settings)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    with pytest.raises(PredictorError, match="diameter_mm"):
        predictor.predict_proba(x)
    with pytest.raises(PredictorError, match="missing or negative"):
        predictor.predict_proba(x, {"diameter_mm": [4.0, np.nan, 6.0]})
    image = predictor.image_proba(x)[:, 1]
    fused = predictor.predict_proba(x, {"diameter_mm": [4.0, 8.0, 16.0]})[:, 1]
    z = 0.8 * np.log(image / (1 - image)) + 1.5 * np.log([4.0, 8.0, 16.0]) - 3.0
    assert fused == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-6)
    with pytest.raises(PredictorError, match="binary"):
        PredictorSettings(("a", "b", "c"), fusion=fusion)


def test_fit_fusion_weighs_what_carries_the_label():
    rng = np.random.default_rng(0)
    size = rng.uniform(3, 30, 400)
    y = (np.log(size) + rng.normal(0, 0.3, 400) > np.log(10)).astype(int)
    noise = rng.uniform(0.2, 0.8, 400)  # an image score that knows nothing
    fusion = fit_fusion(np.c_[1 - noise, noise], y, {"diameter_mm": size}, ["diameter_mm"], positive_index=1)
    assert fusion.weights[0] > 2 and abs(fusion.image_weight) < 0.5
    assert fusion.fitted_on["auc_fused"] > fusion.fitted_on["auc_image"] + 0.3


@pytest.fixture(scope="module")
def fused_bundle(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort")
    table = make_cohort(root, patients=8, nodules_per_patient=2)
    table["density"] = np.linspace(1, 2, len(table))
    table.to_csv(root / "nodules.csv", index=False)
    dls = nodule.dataloaders(root / "nodules.csv", dicom_root=root, block=SliceStack(k=3, size=24, window="lung"),
                             bs=8, cache_dir=tmp_path_factory.mktemp("cache"))
    learn = nodule.learner(dls, progress=False, seed=0)
    learn.fit_one_cycle(2, 3e-3)
    bundle = learn.export(tmp_path_factory.mktemp("bundle") / "fused.bundle", tta=True,
                          fuse=["diameter_mm", "density"])
    return root, bundle


def test_evaluate_and_score_run_the_same_fused_predictor(fused_bundle, tmp_path):
    root, path = fused_bundle
    meta = json.loads((path / "bundle.json").read_text())
    fusion = meta["predictor"]["fusion"]
    assert fusion["covariates"] == ["diameter_mm", "density"] and fusion["fitted_on"]["split"] == "valid"
    table = root / "nodules.csv"
    runner = CliRunner()
    ev = runner.invoke(app, ["evaluate", str(path), str(table), "--dicom-root", str(root), "--out", str(tmp_path / "eval"),
                             "--n-boot", "200"])
    assert ev.exit_code == 0, ev.output
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "diameter_mm, density" in report and "fused late" in report
    sc = runner.invoke(app, ["score", str(path), str(root), "--nodules", str(table), "--out", str(tmp_path / "score"),
                             "--workers", "1", "--device", "cpu", "--quiet"])
    assert sc.exit_code == 0, sc.output
    evaluated = pd.read_parquet(tmp_path / "eval" / "scores.parquet")
    scored = pd.read_parquet(tmp_path / "score" / "scores.parquet")
    both = evaluated.merge(scored, on=["series_uid", "nodule_id"], suffixes=("_eval", "_score"), validate="one_to_one")
    assert len(both) == len(pd.read_csv(table))
    assert np.abs(both["probability_eval"] - both["probability_score"]).max() <= 1e-6
    assert (both["label_eval"] == both["label_score"]).all()
    # the fused probabilities differ from the image model's alone: the covariates are used
    predictor = Predictor.from_bundle(load_bundle(path))
    assert predictor.settings.fusion is not None

    lacking = tmp_path / "no_density.csv"
    pd.read_csv(table).drop(columns="density").to_csv(lacking, index=False)
    bad = runner.invoke(app, ["score", str(path), str(root), "--nodules", str(lacking), "--out", str(tmp_path / "bad"),
                              "--workers", "1", "--device", "cpu", "--quiet"])
    assert bad.exit_code == 3 and "density" in bad.output


def test_explain_a_fused_bundle_with_and_without_the_covariates(fused_bundle):
    from medsuite.interpret.explain import explain
    from medsuite.io.load import read_volume

    root, path = fused_bundle
    bundle = load_bundle(path)
    row = pd.read_csv(root / "nodules.csv").iloc[0]
    volume = read_volume(root / row["patient_id"])
    center = (row["x_mm"], row["y_mm"], row["z_mm"])
    cov = {"diameter_mm": float(row["diameter_mm"]), "density": float(row["density"])}
    full = explain(bundle, volume, ["occlusion"], center_xyz=center, covariates=cov)
    predictor = Predictor.from_bundle(bundle)
    sample = bundle.block.sample(volume, np.array(center))[None]
    expected = predictor.predict_proba(sample, {k: [v] for k, v in cov.items()})[0]
    assert full.probabilities == pytest.approx(expected.tolist(), abs=1e-6)
    assert full.summary["predictor"]["covariates"] == cov
    image = explain(bundle, volume, ["occlusion"], center_xyz=center)
    assert "not given" in image.summary["predictor"]["note"]
    a = full.attributions["occlusion"].values.ravel()
    b = image.attributions["occlusion"].values.ravel()
    fusion = predictor.settings.fusion
    # the same map up to the fusion's image weight (float32 log-odds: the constant covariate term costs a few digits)
    assert np.corrcoef(a, b)[0, 1] > 0.999
    assert np.median(a[b != 0] / b[b != 0]) == pytest.approx(fusion.image_weight, rel=0.02)


def test_viewer_stability_of_a_fused_bundle_uses_the_nodule_covariates(fused_bundle):
    from medsuite.io.load import read_volume
    from medsuite.viewer.score_panel import stability

    root, path = fused_bundle
    bundle = load_bundle(path)
    predictor = Predictor.from_bundle(bundle)
    row = pd.read_csv(root / "nodules.csv").iloc[0]
    volume = read_volume(root / row["patient_id"])
    center = (row["x_mm"], row["y_mm"], row["z_mm"])
    cov = (("diameter_mm", float(row["diameter_mm"])), ("density", float(row["density"])))
    res = stability(predictor, bundle.block, volume, center, covariates=cov)
    sample = bundle.block.sample(volume, np.array(center))[None]
    assert res["centre"] == pytest.approx(predictor.positive_score(sample, covariates={k: [v] for k, v in cov})[0], abs=1e-6)
    assert res["low"] <= res["centre"] <= res["high"] and res["n_flips"] == len(predictor.tta)
    with pytest.raises(PredictorError, match="density"):  # without the covariates a fused score cannot be recomputed
        stability(predictor, bundle.block, volume, center)


def test_default_diameters_are_never_fused(tmp_path, caplog):
    """A table whose diameters are partly defaults (LUNA16 candidates: ``diameter_source``) gives the label away
    through them: the default export fuses nothing and says why, and an explicit column still fuses."""
    root = tmp_path / "cohort"
    table = make_cohort(root, patients=8, nodules_per_patient=2)
    table["diameter_source"] = np.where(table["label"] == "malignant", "annotation", "default")
    table["density"] = np.linspace(1, 2, len(table))
    table.to_csv(root / "nodules.csv", index=False)
    dls = nodule.dataloaders(root / "nodules.csv", dicom_root=root, block=SliceStack(k=3, size=24, window="lung"),
                             bs=8, cache_dir=tmp_path / "cache")
    learn = nodule.learner(dls, progress=False, seed=0)
    learn.fit_one_cycle(1, 3e-3)
    with caplog.at_level("WARNING"):
        fitted = learn.fit_predictor(tta=False, fuse=["diameter_mm"])
    assert fitted.predictor.settings.fusion is None
    assert "not fused with diameter_mm" in caplog.text
    other = learn.fit_predictor(tta=False, fuse=["diameter_mm", "density"])
    assert other.predictor.settings.fusion.covariates == ("density",)
