"""One predictor: evaluate and score give the same probabilities and labels, the report is reproduced from
scores.parquet, the threshold is chosen on the predictor's own outputs, and a TTA bundle scores with TTA."""

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
from medsuite.learn.predict import FLIPS, Predictor, choose_threshold
from medsuite.pipelines import nodule
from medsuite.pipelines.evaluation import report_from_scores
from medsuite.pipelines.tasks import plain_loader


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, patients=8, nodules_per_patient=2)
    dls = nodule.dataloaders(root / "nodules.csv", dicom_root=root, block=SliceStack(k=3, size=24, window="lung"),
                             bs=8, cache_dir=tmp_path_factory.mktemp("cache"))
    learn = nodule.learner(dls, progress=False, seed=0)
    learn.fit_one_cycle(2, 3e-3)
    out = tmp_path_factory.mktemp("bundle")
    bundle = learn.export(out / "tta.bundle", tta=True, calibration="temperature", fuse=())  # image only: fusion has its own tests
    return root, learn, bundle


def test_the_exported_predictor_is_in_bundle_json_and_its_threshold_comes_from_its_own_outputs(trained):
    _, learn, path = trained
    meta = json.loads((path / "bundle.json").read_text())
    section = meta["predictor"]
    assert section["positive"] == "malignant" and section["positive_index"] == 1
    assert section["tta"] == {"flips": [list(f) for f in FLIPS]}
    assert section["calibration"]["method"] == "temperature" and section["calibration"]["fitted_on"]["split"] == "valid"
    assert meta["threshold"] == section["threshold"]["value"] and section["threshold"]["rule"] == "youden"
    predictor = Predictor.from_bundle(load_bundle(path))
    probs, targets = predictor.predict_loader(plain_loader(learn.dls, "valid"))
    op = choose_threshold(probs[:, 1], targets == 1, "youden")
    assert op.threshold == section["threshold"]["value"]
    assert op.sensitivity == section["threshold"]["sensitivity"] and op.specificity == section["threshold"]["specificity"]
    # the bundle's stored validation metrics are those of the same outputs
    assert meta["metrics"]["valid"]["confusion"]["sensitivity"] == op.sensitivity


def test_evaluate_and_score_agree_and_the_report_is_reproduced_from_scores_parquet(trained, tmp_path):
    root, _, path = trained
    table = root / "nodules.csv"
    runner = CliRunner()
    ev = runner.invoke(app, ["evaluate", str(path), str(table), "--dicom-root", str(root), "--out", str(tmp_path / "eval"),
                             "--n-boot", "200"])
    assert ev.exit_code == 0, ev.output
    sc = runner.invoke(app, ["score", str(path), str(root), "--nodules", str(table), "--out", str(tmp_path / "score"),
                             "--workers", "1", "--device", "cpu", "--quiet"])
    assert sc.exit_code == 0, sc.output
    evaluated = pd.read_parquet(tmp_path / "eval" / "scores.parquet")
    scored = pd.read_parquet(tmp_path / "score" / "scores.parquet")
    assert len(scored) == len(evaluated) == len(pd.read_csv(table))
    both = evaluated.merge(scored, on=["series_uid", "nodule_id"], suffixes=("_eval", "_score"), validate="one_to_one")
    assert len(both) == len(evaluated)
    assert np.abs(both["probability_eval"] - both["probability_score"]).max() <= 1e-6
    assert (both["label_eval"] == both["label_score"]).all()
    assert (scored["threshold"] == load_bundle(path).threshold).all()

    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    settings = Predictor.from_bundle(load_bundle(path)).settings
    again = report_from_scores(scored, pd.read_csv(table), settings, task="nodule", n_boot=200)
    assert again["roc_auc"] == metrics["roc_auc"]
    assert again["confusion"] == metrics["confusion"] and again["threshold"] == metrics["threshold"]
    assert again["sensitivity_at_specificity"] == metrics["sensitivity_at_specificity"]
    assert again["specificity_at_sensitivity"] == metrics["specificity_at_sensitivity"]
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "temperature scaling" in html and "before and after" in html


def test_a_bundle_exported_with_tta_scores_with_tta(trained, tmp_path):
    root, learn, path = trained
    bundle = load_bundle(path)
    predictor = Predictor.from_bundle(bundle)
    ds = plain_loader(learn.dls, "valid").dataset
    x = np.stack([ds.sample(i) for i in range(len(ds))])
    with torch.no_grad():
        t = torch.from_numpy(x)
        flipped = torch.stack([torch.softmax(bundle.model(torch.flip(t, f) if f else t), 1) for f in FLIPS]).mean(0)
        plain = torch.softmax(bundle.model(t), 1)
    expected = predictor.calibrate(flipped.numpy().astype(np.float64))
    np.testing.assert_allclose(predictor.predict_proba(x), expected, atol=1e-6)
    assert not np.allclose(predictor.predict_proba(x), predictor.calibrate(plain.numpy().astype(np.float64)), atol=1e-5)


def test_the_positive_class_is_given_once_and_a_contradiction_is_an_error(trained):
    _, learn, _ = trained
    assert learn.dls.positive == "malignant" and learn.positive == "malignant"
    with pytest.raises(ValueError, match="'malignnant' is not one of the labels"):
        nodule.learner(learn.dls, positive="malignnant", progress=False)
    with pytest.raises(ValueError, match="contradicts the DataLoaders' positive class 'malignant'"):
        nodule.learner(learn.dls, positive="benign", progress=False)


def test_making_a_learner_leaves_global_rngs_alone_and_fitting_writes_nothing_by_default(trained, tmp_path, monkeypatch):
    import random

    _, learn, _ = trained
    monkeypatch.chdir(tmp_path)
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    a = nodule.learner(learn.dls, progress=False, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state) and random.getstate() == py_state
    b = nodule.learner(learn.dls, progress=False, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    a.fit(1, 1e-3)
    assert list(tmp_path.iterdir()) == []  # no checkpoints under the current directory
    with pytest.raises(ValueError, match="needs a run folder"):
        a.save("x")


def test_explain_scores_and_explains_through_the_bundles_predictor(trained):
    from medsuite.interpret.explain import explain
    from medsuite.io.load import read_volume

    root, _, path = trained
    bundle = load_bundle(path)
    predictor = Predictor.from_bundle(bundle)
    row = pd.read_csv(root / "nodules.csv").iloc[0]
    volume = read_volume(root / row["patient_id"])
    center = (row["x_mm"], row["y_mm"], row["z_mm"])
    res = explain(bundle, volume, ["ig"], center_xyz=center, n_steps=16)
    expected = predictor.predict_proba(bundle.block.sample(volume, np.asarray(center))[None])[0]
    np.testing.assert_allclose(res.probabilities, expected, atol=1e-6)
    assert res.summary["prediction"]["label"] == predictor.decide(expected[None])[0]
    assert res.target == predictor.decide_index(expected[None])[0]
    assert res.summary["predictor"]["tta_flips"] == [list(f) for f in FLIPS]
    assert res.summary["predictor"]["calibration"] == "temperature"
    # IG is complete for the explained output: log P(target) of the chain, end minus baseline
    assert res.attributions["ig"].params["convergence_delta"] < 0.05
