"""Metrics against scikit-learn and hand-computed values; bootstrap CIs; calibration; the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from medsuite.learn import metrics as M


def _binormal(n: int, d: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores N(0,1) for negatives and N(d,1) for positives: true AUC = Phi(d / sqrt 2)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    return y, rng.normal(d * y, 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def test_roc_auc_hand_example_and_input_forms():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    assert M.roc_auc(y, p) == pytest.approx(0.75)
    assert M.roc_auc(y, np.stack([1 - p, p], 1)) == pytest.approx(0.75)
    assert M.roc_auc(y.astype(float), p) == pytest.approx(0.75)


def test_roc_auc_multiclass_is_sklearn_ovr_macro():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 1.5 * np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.roc_auc(y, p) == pytest.approx(expected)
    ci = M.roc_auc_ci(y, p, n_boot=200)
    assert ci["ci_low"] < expected < ci["ci_high"]


def test_bootstrap_replicates_equal_sklearn_on_tied_scores():
    rng = np.random.default_rng(1)
    for _ in range(8):
        n = int(rng.integers(8, 50))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = np.round(rng.normal(y * 0.8, 1), 1)  # many ties
        idx = M._stratified_indices(y, 10, rng)
        auc = M._boot_auc_binary(s, y, idx)
        assert np.allclose(auc, [skm.roc_auc_score(y[i], s[i]) for i in idx])
        for level in (0.33, 0.5, 0.8, 0.9, 0.95):
            sens = M._boot_sens_at_spec(s, y, idx, level)
            assert np.allclose(sens, [M._sens_at_spec(s[i], y[i], level)[0] for i in idx])
            spec = M._boot_spec_at_sens(s, y, idx, level)
            assert np.allclose(spec, [M._spec_at_sens(s[i], y[i], level)[0] for i in idx])


def test_stratified_bootstrap_keeps_class_counts():
    y = np.r_[np.zeros(7, int), np.ones(3, int)]
    idx = M._stratified_indices(y, 50, np.random.default_rng(0))
    assert idx.shape == (50, 10)
    assert np.all((y[idx] == 1).sum(1) == 3)


def test_auc_ci_is_seeded_and_covers_the_truth():
    truth = stats.norm.cdf(1.0 / math.sqrt(2))
    a = M.roc_auc_ci(*_binormal(300, 1.0, 0), n_boot=300, seed=5)
    b = M.roc_auc_ci(*_binormal(300, 1.0, 0), n_boot=300, seed=5)
    assert a == b
    assert a["ci_low"] < a["value"] < a["ci_high"]
    covered = 0
    for seed in range(20):
        y, s = _binormal(300, 1.0, seed)
        ci = M.roc_auc_ci(y, s, n_boot=300, seed=seed)
        covered += ci["ci_low"] <= truth <= ci["ci_high"]
    assert covered >= 16  # nominal 95 %: P(covered <= 15 of 20) < 0.3 %


def test_operating_points_by_hand():
    # negatives 0.0..0.9, positives 0.55..1.0 step 0.05 (10 each)
    neg = np.arange(10) / 10
    pos = 0.55 + np.arange(10) * 0.05
    y = np.r_[np.zeros(10, int), np.ones(10, int)]
    s = np.r_[neg, pos]
    r = M.sensitivity_at_specificity(y, s, specificity=0.9, n_boot=50)
    # spec >= 0.9 allows one false positive (0.9): threshold > 0.8 -> positives 0.85..1.0 = 4 (+0.9 tie)
    assert r["value"] == pytest.approx(sum(pos > 0.8) / 10)
    assert r["ci_low"] <= r["value"] <= r["ci_high"]
    r = M.specificity_at_sensitivity(y, s, sensitivity=1.0 - 1e-9, n_boot=50)
    # all positives needed: threshold 0.55 -> negatives below 0.55 = 0.0..0.5 = 6
    assert r["value"] == pytest.approx(0.6)
    assert r["threshold"] == pytest.approx(0.55)


def test_youden_threshold_and_confusion():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    t = M.youden_threshold(y, s)
    assert t == pytest.approx(0.6)
    cm = M.confusion_at_threshold(y, s, threshold=t)
    assert (cm["tp"], cm["fp"], cm["tn"], cm["fn"]) == (3, 0, 3, 0)
    cm = M.confusion_at_threshold(y, s, threshold=0.25)
    assert cm["matrix"] == [[2, 1], [0, 3]]
    assert cm["sensitivity"] == 1.0 and cm["specificity"] == pytest.approx(2 / 3)
    assert cm["ppv"] == pytest.approx(0.75) and cm["npv"] == 1.0
    p3 = np.eye(3)[[0, 1, 2, 2]] * 0.8 + 0.2 / 3
    assert M.confusion_at_threshold(np.array([0, 1, 2, 1]), p3)["matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="binary"):
        M.confusion_at_threshold(np.array([0, 1, 2, 1]), p3, threshold=0.5)


def test_balanced_accuracy_and_brier_match_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 100)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    assert M.balanced_accuracy(y, p, threshold=0.4) == pytest.approx(
        skm.balanced_accuracy_score(y, (p >= 0.4).astype(int))
    )
    assert M.brier_score(y, p) == pytest.approx(np.mean((p - y) ** 2))
    p3 = rng.dirichlet([1, 1, 1], 50)
    y3 = rng.integers(0, 3, 50)
    assert M.brier_score(y3, p3) == pytest.approx(np.mean(((p3 - np.eye(3)[y3]) ** 2).sum(1)))


def test_ece_of_calibrated_probs_is_near_zero_and_of_miscalibrated_is_not():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(int)
    for strategy in ("uniform", "quantile"):
        assert M.expected_calibration_error(y, p, strategy=strategy) < 0.02
        assert M.expected_calibration_error(y, p**3, strategy=strategy) > 0.15


def test_calibration_bins_match_sklearn_and_quantile_bins_have_equal_mass():
    rng = np.random.default_rng(1)
    p = rng.beta(2, 5, 1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    for strategy in ("uniform", "quantile"):
        bins = M.calibration_bins(y, p, n_bins=8, strategy=strategy)
        frac, mean = calibration_curve(y, p, n_bins=8, strategy=strategy)
        assert np.allclose(bins["observed"], frac) and np.allclose(bins["mean_confidence"], mean)
    counts = M.calibration_bins(y, p, n_bins=10, strategy="quantile")["count"]
    assert max(counts) - min(counts) <= 2
    with pytest.raises(ValueError, match="strategy"):
        M.calibration_bins(y, p, strategy="equal")


def test_multiclass_ece_uses_top_label_confidence():
    p = np.array([[0.9, 0.05, 0.05]] * 10)
    y = np.array([0] * 9 + [1])  # 90 % correct at confidence 0.9
    assert M.expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)


def test_reliability_diagram_returns_a_figure():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p).astype(int)
    fig = M.reliability_diagram(y, p, strategy="quantile", title="valid")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "valid" and len(ax.lines) == 2
    assert "ECE" in ax.get_legend().get_texts()[1].get_text()


@pytest.mark.parametrize(
    ("probs", "targets", "match"),
    [
        (np.zeros((3, 2)), np.zeros(4, int), "targets must have shape"),
        (np.full((2, 2), np.nan), np.array([0, 1]), "NaN"),
        (np.full((2, 2), 0.5), np.array([0, 2]), r"targets must lie in \[0, 1\]"),
        (np.full((2, 2), 0.5), np.array([0.5, 1.0]), "integer"),
        (np.zeros((2, 2, 2)), np.array([0, 1]), "shape"),
    ],
)
def test_bad_inputs_are_clear_errors(probs, targets, match):
    with pytest.raises(ValueError, match=match):
        M.roc_auc(targets, probs)


def test_calibration_and_brier_need_probabilities_but_auc_takes_scores():
    y = np.array([0, 1, 0, 1])
    logits = np.array([-2.0, 3.0, 0.5, 1.0])
    assert M.roc_auc(y, logits) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Brier score needs probabilities in \[0, 1\]"):
        M.brier_score(y, logits)
    with pytest.raises(ValueError, match="calibration needs probabilities"):
        M.expected_calibration_error(y, logits)


def test_single_class_is_a_clear_error():
    with pytest.raises(ValueError, match="positive and negative"):
        M.roc_auc(np.array([1, 1]), np.array([0.2, 0.4]))
    with pytest.raises(ValueError, match="class"):
        M.roc_auc(np.array([0, 1, 1]), np.full((3, 3), 1 / 3))


def test_classification_report_is_strict_json():
    y, s = _binormal(120, 1.0, 2)
    p = _sigmoid(s)
    rep = M.classification_report(y, p, ["benign", "malignant"], 0.4, n_boot=100)
    json.dumps(rep, allow_nan=False)
    assert rep["threshold"] == 0.4 and rep["labels"] == ["benign", "malignant"]
    assert rep["class_counts"] == {"benign": 60, "malignant": 60}
    assert rep["roc_auc"]["value"] == pytest.approx(skm.roc_auc_score(y, p))
    assert rep["confusion"]["tp"] == int(((p >= 0.4) & (y == 1)).sum())
    for key in ("sensitivity_at_specificity", "specificity_at_sensitivity", "ece", "brier", "calibration"):
        assert key in rep
    rng = np.random.default_rng(0)
    p3 = rng.dirichlet([1, 1, 1], 90)
    rep3 = M.classification_report(np.arange(90) % 3, p3, ["a", "b", "c"], n_boot=50)
    json.dumps(rep3, allow_nan=False)
    assert set(rep3["roc_auc_per_class"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="labels has 2 names"):
        M.classification_report(np.arange(90) % 3, p3, ["a", "b"])


def test_registered_metrics_follow_the_learner_signature():
    y, s = _binormal(60, 1.0, 0)
    probs = np.stack([1 - _sigmoid(s), _sigmoid(s)], 1).astype(np.float32)
    for name, fn in M.METRICS.items():
        out = fn(y, probs)
        assert isinstance(out, float | dict), name
    assert M.get_metric("roc_auc") is M.roc_auc
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        M.get_metric("auc")
