"""The Predictor: one chain (model -> TTA -> calibration -> probability -> threshold -> label) and its settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsuite.learn import metrics as M
from medsuite.learn.models import build_model
from medsuite.learn.predict import (
    FLIPS,
    NO_TTA,
    Calibration,
    OperatingPoint,
    Predictor,
    PredictorError,
    PredictorSettings,
    choose_threshold,
    fit_calibration,
)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("slice_cnn", in_channels=3, n_classes=2).eval()


def _samples(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 24, 24)).astype(np.float32)


def test_tta_probabilities_are_the_mean_softmax_over_the_flips(model):
    x = _samples(5)
    pred = Predictor(model, PredictorSettings(("benign", "malignant"), "malignant", FLIPS))
    with torch.no_grad():
        t = torch.from_numpy(x)
        expected = torch.stack([torch.softmax(model(torch.flip(t, f) if f else t), 1) for f in FLIPS]).mean(0).numpy()
        plain = torch.softmax(model(t), 1).numpy()
    got = pred.predict_proba(x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, plain, atol=1e-4)
    assert got.dtype == np.float64 and got.shape == (5, 2)
    # batching does not change the numbers beyond float32 rounding
    small = Predictor(model, pred.settings, batch_size=2).predict_proba(x)
    np.testing.assert_allclose(small, got, atol=1e-6)


def test_positive_class_is_named_once_and_decides_by_name(model):
    x = _samples(8)
    # positive first: the decision must read column 0, not "index 1" or "the last column"
    s = PredictorSettings(("malignant", "benign"), "malignant", NO_TTA, None, OperatingPoint(0.5, "fixed:0.5"))
    pred = Predictor(model, s)
    probs = pred.predict_proba(x)
    assert pred.positive_index == 0
    np.testing.assert_array_equal(pred.positive_score(probs, probs=True), probs[:, 0])
    assert pred.decide(probs) == ["malignant" if p >= 0.5 else "benign" for p in probs[:, 0]]
    with pytest.raises(PredictorError, match="positive: 'malignnant' is not one of"):
        PredictorSettings(("benign", "malignant"), "malignnant")
    with pytest.raises(PredictorError, match="needs its positive class"):
        PredictorSettings(("benign", "malignant"), None)
    with pytest.raises(PredictorError, match="no positive class"):
        PredictorSettings(("a", "b", "c"), "a")


def test_multiclass_decides_by_argmax_and_refuses_a_threshold():
    torch.manual_seed(1)
    m = build_model("slice_cnn", in_channels=3, n_classes=3).eval()
    pred = Predictor.plain(m, ["a", "b", "c"])
    probs = pred.predict_proba(_samples(6))
    assert pred.threshold is None and pred.positive is None
    assert pred.decide(probs) == [["a", "b", "c"][i] for i in probs.argmax(1)]
    np.testing.assert_array_equal(pred.score_of(probs), probs.max(1))
    with pytest.raises(PredictorError, match="binary problems only"):
        PredictorSettings(("a", "b", "c"), None, NO_TTA, None, OperatingPoint(0.3))
    with pytest.raises(PredictorError, match="isotonic calibration is for binary"):
        PredictorSettings(("a", "b", "c"), None, NO_TTA, Calibration("isotonic", x=(0.0, 1.0), y=(0.0, 1.0)))


def test_settings_round_trip_through_bundle_json_and_bad_values_are_named():
    s = PredictorSettings(("benign", "malignant"), "malignant", FLIPS, Calibration("temperature", 1.7, fitted_on={"n": 3}),
                          OperatingPoint(0.31, "sensitivity>=0.9", 0.92, 0.6, "valid", 40, 12))
    text = json.dumps(s.to_json(), allow_nan=False)
    back = PredictorSettings.from_json(json.loads(text), ["benign", "malignant"])
    assert back == s
    d = json.loads(text)
    d["tta"] = {"flips": [[], [1]]}
    with pytest.raises(PredictorError, match=r"predictor.tta.flips\[1\]"):
        PredictorSettings.from_json(d, ["benign", "malignant"])
    d = json.loads(text)
    d["calibration"]["temperature"] = -1
    with pytest.raises(PredictorError, match="predictor.calibration.temperature"):
        PredictorSettings.from_json(d, ["benign", "malignant"])
    d = json.loads(text)
    d["version"] = 99
    with pytest.raises(PredictorError, match="newer"):
        PredictorSettings.from_json(d, ["benign", "malignant"])
    with pytest.raises(PredictorError, match="differ from the bundle's labels"):
        PredictorSettings.from_json(json.loads(text), ["malignant", "benign"])
    # a bundle written before the predictor section: scored as it was then (last label positive, plain)
    legacy = PredictorSettings.from_bundle_meta({"labels": ["benign", "malignant"], "threshold": 0.4})
    assert legacy.positive == "malignant" and legacy.tta == NO_TTA and legacy.threshold == 0.4


def test_temperature_scaling_fixes_overconfidence_and_predict_proba_applies_it():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    true_logit = rng.normal(0, 1.5, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    over = 1 / (1 + np.exp(-3 * true_logit))  # three times too confident
    raw = np.stack([1 - over, over], 1)
    cal = fit_calibration(raw, y, "temperature", positive_index=1)
    assert cal.temperature == pytest.approx(3.0, rel=0.15)
    assert cal.fitted_on["nll_after"] < cal.fitted_on["nll_before"]
    assert cal.fitted_on["ece_after"] < cal.fitted_on["ece_before"]
    pred = Predictor(torch.nn.Linear(1, 2), PredictorSettings(("n", "p"), "p", NO_TTA, cal))
    logp = np.log(raw) / cal.temperature
    expected = np.exp(logp) / np.exp(logp).sum(1, keepdims=True)
    np.testing.assert_allclose(pred.calibrate(raw), expected, atol=1e-12)


def test_isotonic_calibration_equals_scikit_learn():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(3)
    s = rng.random(300)
    y = (rng.random(300) < s**2).astype(int)
    raw = np.stack([1 - s, s], 1)
    cal = fit_calibration(raw, y, "isotonic", positive_index=1)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    grid = np.r_[rng.random(200), 0.0, 1.0, -0.2, s[:5]]
    pred = Predictor(torch.nn.Linear(1, 2), PredictorSettings(("n", "p"), "p", NO_TTA, cal))
    got = pred.calibrate(np.stack([1 - grid, grid], 1))
    np.testing.assert_allclose(got[:, 1], iso.predict(grid), atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)


def test_threshold_rules_give_what_they_promise():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    yo = choose_threshold(s, y, "youden")
    assert yo.threshold == pytest.approx(M.youden_threshold(y, s))
    assert yo.rule == "youden" and yo.n == 100 and yo.n_positive == 40
    hi = choose_threshold(s, y, "sensitivity>=0.95")
    assert hi.sensitivity >= 0.95 and hi.rule == "sensitivity>=0.95"
    assert ((s >= hi.threshold) & (y == 1)).sum() / 40 == pytest.approx(hi.sensitivity)
    sp = choose_threshold(s, y, "specificity>=0.9")
    assert sp.specificity >= 0.9
    assert choose_threshold(s, y, "fixed:0.5").threshold == 0.5
    with pytest.raises(PredictorError, match="choose one of"):
        choose_threshold(s, y, "f1")
    with pytest.raises(PredictorError, match="positive and negative"):
        choose_threshold(s, np.ones(100), "youden")


def test_the_differentiable_module_is_the_same_chain(model):
    x = _samples(3)
    cal = Calibration("temperature", 1.5)
    pred = Predictor(model, PredictorSettings(("benign", "malignant"), "malignant", FLIPS, cal))
    iso = Predictor(model, PredictorSettings(("benign", "malignant"), "malignant", FLIPS,
                                             Calibration("isotonic", x=(0.0, 0.4, 0.6, 1.0), y=(0.0, 0.3, 0.7, 1.0))))
    np.testing.assert_allclose(torch.sigmoid(iso.module(torch.from_numpy(x))).detach().numpy(), iso.predict_proba(x),
                               atol=1e-6)
    mod = pred.module
    t = torch.from_numpy(x).requires_grad_(True)
    out = mod(t)
    np.testing.assert_allclose(torch.sigmoid(out).detach().numpy(), pred.predict_proba(x), atol=1e-6)
    np.testing.assert_allclose(out[:, 1].detach().numpy(), -out[:, 0].detach().numpy(), atol=1e-5)
    out[:, 1].sum().backward()
    assert t.grad is not None and float(t.grad.abs().sum()) > 0
    assert mod.gradcam_layer is model.gradcam_layer and mod.tta == FLIPS


def test_the_module_keeps_its_gradient_where_the_probability_rounds_to_one():
    class Big(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(30.0))

        def forward(self, x):
            m = x.flatten(1).mean(1) * self.w
            return torch.stack([-m, m], 1)

    pred = Predictor(Big(), PredictorSettings(("n", "p"), "p", FLIPS[:2], Calibration("temperature", 1.2)))
    x = torch.ones(2, 1, 4, 4, requires_grad=True)
    assert pred.predict_proba(x.detach().numpy())[0, 1] == 1.0  # float rounding: saturated
    z = pred.module(x)
    assert float(z[0, 1].detach()) == pytest.approx(2 * 30.0 / 1.2, rel=1e-4)  # log-odds still exact
    z[:, 1].sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_embed_and_loader_and_model_mode(model):
    x = _samples(7)
    pred = Predictor.plain(model, ["benign", "malignant"], "malignant", batch_size=3)
    emb = pred.embed(x)
    assert emb.shape == (7, model.embed_dim) and emb.dtype == np.float32
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.arange(7) % 2), batch_size=4)
    probs, targets = pred.predict_loader(loader)
    np.testing.assert_allclose(probs, pred.predict_proba(x), atol=1e-6)
    assert targets.tolist() == [0, 1, 0, 1, 0, 1, 0]
    model.train()
    try:
        pred.predict_proba(x)
        assert model.training  # restored
    finally:
        model.eval()


def test_bf16_precision_runs_and_stays_close(model):
    x = _samples(4)
    fp32 = Predictor.plain(model, ["b", "m"]).predict_proba(x)
    bf16 = Predictor.plain(model, ["b", "m"], precision="bf16").predict_proba(x)
    assert np.abs(bf16 - fp32).max() < 0.05
    with pytest.raises(PredictorError, match="precision"):
        Predictor.plain(model, ["b", "m"], precision="int8")


def test_classification_report_reads_the_named_positive_column():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    normal = M.classification_report(y, np.stack([1 - s, s], 1), ["benign", "malignant"], 0.5, n_boot=100)
    # the same problem with the positive class in column 0
    flipped = M.classification_report(1 - y, np.stack([s, 1 - s], 1), ["malignant", "benign"], 0.5, n_boot=100,
                                      positive_index=0)
    assert flipped["roc_auc"] == normal["roc_auc"] and flipped["confusion"] == normal["confusion"]
    assert flipped["labels"] == ["benign", "malignant"]
