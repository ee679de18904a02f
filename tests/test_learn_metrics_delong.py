"""DeLong's test (fast algorithm) against its textbook definition, a hand example and a paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medsuite.learn import metrics as M


def _delong_by_definition(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988) with the O(m n) kernel psi, written independently."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # (K, m, n)
    v10 = psi.mean(axis=2)  # per positive
    v01 = psi.mean(axis=1)  # per negative
    aucs = psi.mean(axis=(1, 2))
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def _correlated_pair(n: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    shared = rng.normal(size=n)
    a = 1.2 * y + shared + 0.7 * rng.normal(size=n)
    b = (1.2 - gap) * y + shared + 0.7 * rng.normal(size=n)
    return y, a, b


def test_hand_example():
    # positives 0.9, 0.6; negatives 0.7, 0.1. V10 = [1, .5], V01 = [.5, 1]: var = .125/2 + .125/2
    y = np.array([1, 1, 0, 0])
    aucs, cov = M.delong_roc_variance(y, np.array([0.9, 0.6, 0.7, 0.1]))
    assert aucs[0] == pytest.approx(0.75)
    assert cov[0, 0] == pytest.approx(0.125)


def test_fast_delong_equals_definition_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(10):
        n = int(rng.integers(10, 80))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        scores = np.round(rng.normal(y, 1.0, size=(3, n)), 1)
        aucs, cov = M.delong_roc_variance(y, scores)
        ref_aucs, ref_cov = _delong_by_definition(y, scores)
        assert np.allclose(aucs, ref_aucs) and np.allclose(cov, ref_cov)
        assert aucs[0] == pytest.approx(skm.roc_auc_score(y, scores[0]))


def test_delong_agrees_with_paired_bootstrap():
    y, a, b = _correlated_pair(400, 0.5, 1)
    r = M.paired_auc_difference(y, a, b, n_boot=2000, seed=0)
    assert r["difference"] == pytest.approx(skm.roc_auc_score(y, a) - skm.roc_auc_score(y, b))
    d, bt = r["delong"], r["bootstrap"]
    assert d["se"] == pytest.approx(bt["se"], rel=0.15)
    assert d["ci_low"] == pytest.approx(bt["ci_low"], abs=0.015)
    assert d["ci_high"] == pytest.approx(bt["ci_high"], abs=0.015)
    assert d["p_value"] < 0.01 and bt["p_value"] < 0.01  # a is truly better


def test_no_difference_gives_large_p_and_identical_scores_p_one():
    y, a, _ = _correlated_pair(200, 0.0, 2)
    rng = np.random.default_rng(3)
    b = a + rng.normal(0, 0.01, a.size)  # near-identical ranking
    r = M.paired_auc_difference(y, a, b, n_boot=500)
    assert r["delong"]["p_value"] > 0.05 and r["bootstrap"]["p_value"] > 0.05
    same = M.paired_auc_difference(y, a, a, n_boot=200)
    assert same["difference"] == 0.0 and same["delong"]["p_value"] == 1.0


def test_delong_ci_covers_the_true_difference():
    # both models share the generating process -> the true difference is 0
    covered = 0
    for seed in range(20):
        y, a, b = _correlated_pair(200, 0.0, 10 + seed)
        r = M.paired_auc_difference(y, a, b, n_boot=200, seed=seed)
        covered += r["delong"]["ci_low"] <= 0.0 <= r["delong"]["ci_high"]
    assert covered >= 16


def test_paired_accepts_two_column_probs_and_rejects_bad_labels():
    y, a, b = _correlated_pair(60, 0.3, 4)
    pa = np.stack([1 - 1 / (1 + np.exp(-a)), 1 / (1 + np.exp(-a))], 1)
    r1 = M.paired_auc_difference(y, pa, b, n_boot=100)
    r2 = M.paired_auc_difference(y, a, b, n_boot=100)
    assert r1["difference"] == pytest.approx(r2["difference"])
    with pytest.raises(ValueError, match="positive and negative"):
        M.paired_auc_difference(np.ones(60, int), a, b)
    with pytest.raises(ValueError, match="targets must have shape"):
        M.paired_auc_difference(y, a[:-1], b)
