"""Classification metrics with honest uncertainty: bootstrap confidence intervals, DeLong's test, calibration.

Every metric takes ``(y_true, y_score)`` in that order, as scikit-learn does (and as the Learner calls
its metrics): ``y_true`` ``(N,)`` integer class ids, ``y_score`` ``(N, C)`` class probabilities or, for a
binary problem, ``(N,)`` scores of the positive class with ``y_true`` 1 for positive. An ``(N, 2)``
``y_score`` takes column 1 as the positive class; callers with another positive index pass
``(y_true == positive_index, probs[:, positive_index])`` (`medsuite.learn.predict` does). The point estimates come from
scikit-learn; this module adds the resampling (stratified, seeded), the operating points and the
paired comparison (fast DeLong, Sun & Xu 2014) that scikit-learn does not provide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats
from sklearn import metrics as skm

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BinStrategy = Literal["uniform", "quantile"]

__all__ = [
    "METRICS",
    "accuracy",
    "balanced_accuracy",
    "brier_score",
    "calibration_bins",
    "classification_report",
    "confusion_at_threshold",
    "delong_roc_variance",
    "expected_calibration_error",
    "get_metric",
    "paired_auc_difference",
    "reliability_diagram",
    "roc_auc",
    "roc_auc_ci",
    "sensitivity_at_specificity",
    "specificity_at_sensitivity",
    "youden_threshold",
]


# --------------------------------------------------------------------------------------------- inputs
def _as_probs_targets(probs: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise to ``(N, C)`` float64 probabilities and ``(N,)`` int64 targets."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must have shape (N, C) with C >= 2 or (N,) for binary, got {p.shape}")
    if y.ndim != 1 or y.shape[0] != p.shape[0]:
        raise ValueError(f"targets must have shape (N,) matching probs {p.shape}, got {y.shape}")
    if p.shape[0] == 0:
        raise ValueError("metrics need at least one item, got an empty array")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"probs contain {int((~np.isfinite(p)).sum())} NaN/inf value(s)")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError("targets must be integer class ids, got non-integer floats")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"targets must be integer class ids, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"targets must lie in [0, {p.shape[1] - 1}], got range [{y.min()}, {y.max()}]")
    return p, y


def _binary(probs: Any, targets: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class scores and 0/1 targets of a binary problem, both classes required."""
    p, y = _as_probs_targets(probs, targets)
    if p.shape[1] != 2:
        raise ValueError(f"{what} is defined for binary problems; got {p.shape[1]} classes")
    _require_both_classes(y, what)
    return p[:, 1], y


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int((y == 1).sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"{what} needs positive and negative items; got {n_pos} positive of {y.size}")


def _check_level(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _stratified_indices(y: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, N)`` bootstrap index sets that keep every class's count fixed (stratified)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        parts.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    return np.concatenate(parts, axis=1)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _with_ci(value: float, samples: np.ndarray, level: float, n_boot: int, **extra: Any) -> dict[str, Any]:
    lo, hi = _interval(samples, level)
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "ci_level": level, "n_boot": n_boot, **extra}


# ---------------------------------------------------------------------- vectorised bootstrap replicates
# The point estimates use scikit-learn. Bootstrap replicates (thousands of them) use the same statistics
# in closed form over a whole block of resamples at once -- the Mann-Whitney form of the AUC and order
# statistics for the operating points -- because one scikit-learn call per replicate is ~100x slower.
# tests/test_learn_metrics_*.py checks that both forms agree exactly on data with ties.
_CHUNK = 256


def _chunks(idx: np.ndarray) -> list[np.ndarray]:
    return [idx[i : i + _CHUNK] for i in range(0, idx.shape[0], _CHUNK)]


def _boot_auc_binary(scores: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` vs ``y == 1`` for every resample row of ``idx`` (ties count one half)."""
    out = []
    for block in _chunks(idx):
        ranks = stats.rankdata(scores[block], method="average", axis=1)
        pos = y[block] == 1
        m = pos.sum(axis=1)
        n = pos.shape[1] - m
        out.append(((ranks * pos).sum(axis=1) - m * (m + 1) / 2.0) / (m * n))
    return np.concatenate(out)


def _boot_auc(p: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    if p.shape[1] == 2:
        return _boot_auc_binary(p[:, 1], y, idx)
    per_class = [_boot_auc_binary(p[:, k], (y == k).astype(np.int64), idx) for k in range(p.shape[1])]
    return np.mean(per_class, axis=0)


def _boot_sens_at_spec(scores: np.ndarray, y: np.ndarray, idx: np.ndarray, specificity: float) -> np.ndarray:
    """Highest sensitivity with specificity >= target, per resample (stratified: class counts fixed)."""
    out = []
    for block in _chunks(idx):
        yb, sb = y[block], scores[block]
        pos = sb[yb == 1].reshape(len(block), -1)
        neg = -np.sort(-sb[yb == 0].reshape(len(block), -1), axis=1)  # descending
        n = neg.shape[1]
        k = int(math.floor((1.0 - specificity) * n + 1e-9))  # false positives allowed
        if k >= n:
            out.append(np.ones(len(block)))
            continue
        out.append((pos > neg[:, k : k + 1]).mean(axis=1))
    return np.concatenate(out)


def _boot_spec_at_sens(scores: np.ndarray, y: np.ndarray, idx: np.ndarray, sensitivity: float) -> np.ndarray:
    """Highest specificity with sensitivity >= target, per resample (stratified: class counts fixed)."""
    out = []
    for block in _chunks(idx):
        yb, sb = y[block], scores[block]
        pos = -np.sort(-sb[yb == 1].reshape(len(block), -1), axis=1)  # descending
        neg = sb[yb == 0].reshape(len(block), -1)
        r = max(1, int(math.ceil(sensitivity * pos.shape[1] - 1e-9)))  # true positives needed
        out.append((neg < pos[:, r - 1 : r]).mean(axis=1))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ ROC AUC
def _auc(p: np.ndarray, y: np.ndarray) -> float:
    """Binary AUC for ``(N, 2)`` probs, one-vs-rest macro AUC for more classes (scikit-learn)."""
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y, p[:, 1]))
    # one-vs-rest macro, class by class (same as roc_auc_score(multi_class="ovr", average="macro"),
    # without its requirement that rows sum to exactly 1)
    return float(np.mean([skm.roc_auc_score(y == k, p[:, k]) for k in range(p.shape[1])]))


def _check_auc_defined(p: np.ndarray, y: np.ndarray) -> None:
    present = np.unique(y)
    if p.shape[1] == 2:
        _require_both_classes(y, "ROC AUC")
    elif present.size != p.shape[1]:
        missing = sorted(set(range(p.shape[1])) - set(present.tolist()))
        raise ValueError(f"one-vs-rest ROC AUC needs every class present; class(es) {missing} have no items")


def roc_auc(y_true: Any, y_score: Any) -> float:
    """ROC AUC: binary on the positive class, one-vs-rest macro average for more than two classes."""
    p, y = _as_probs_targets(y_score, y_true)
    _check_auc_defined(p, y)
    return _auc(p, y)


def roc_auc_ci(
    y_true: Any, y_score: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """ROC AUC with a percentile bootstrap CI from stratified resamples (class counts kept fixed)."""
    p, y = _as_probs_targets(y_score, y_true)
    _check_auc_defined(p, y)
    level = _check_level(level, "level")
    idx = _stratified_indices(y, n_boot, np.random.default_rng(seed))
    boots = _boot_auc(p, y, idx)
    return _with_ci(_auc(p, y), boots, level, n_boot)


# ---------------------------------------------------------------------------------- operating points
def accuracy(y_true: Any, y_score: Any) -> float:
    """Share of items whose arg-max class is the target (binary ``(N,)`` scores: ``score >= 0.5``)."""
    p, y = _as_probs_targets(y_score, y_true)
    return float((p.argmax(axis=1) == y).mean())


def balanced_accuracy(y_true: Any, y_score: Any, *, threshold: float | None = None) -> float:
    """Balanced accuracy (mean per-class recall) of the predicted classes.

    Binary: positive when ``p1 >= threshold`` (0.5 when None); multi-class: arg-max.
    """
    p, y = _as_probs_targets(y_score, y_true)
    return float(skm.balanced_accuracy_score(y, _predict(p, threshold)))


def _predict(p: np.ndarray, threshold: float | None) -> np.ndarray:
    if p.shape[1] == 2:
        return (p[:, 1] >= (0.5 if threshold is None else float(threshold))).astype(np.int64)
    if threshold is not None:
        raise ValueError("a threshold applies to binary problems only; multi-class predictions use arg-max")
    return p.argmax(axis=1)


def _sens_at_spec(scores: np.ndarray, y: np.ndarray, specificity: float) -> tuple[float, float]:
    """Highest sensitivity with specificity >= target, and the threshold that reaches it."""
    fpr, tpr, thr = skm.roc_curve(y, scores, drop_intermediate=False)
    ok = fpr <= 1.0 - specificity + 1e-12
    i = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    return float(tpr[i]), float(thr[i])


def _spec_at_sens(scores: np.ndarray, y: np.ndarray, sensitivity: float) -> tuple[float, float]:
    """Highest specificity with sensitivity >= target, and the threshold that reaches it."""
    fpr, tpr, thr = skm.roc_curve(y, scores, drop_intermediate=False)
    ok = tpr >= sensitivity - 1e-12
    i = np.flatnonzero(ok)[np.argmin(fpr[ok])]
    return float(1.0 - fpr[i]), float(thr[i])


def sensitivity_at_specificity(
    y_true: Any,
    y_score: Any,
    *,
    specificity: float = 0.9,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Sensitivity at a fixed specificity, read off the ROC curve, with a stratified bootstrap CI.

    ``threshold`` in the result is the score cut-off (predict positive when ``p1 >= threshold``) that
    reaches it on these data; ``inf`` means no threshold keeps the specificity (sensitivity 0).
    """
    scores, y = _binary(y_score, y_true, "sensitivity at specificity")
    specificity = _check_level(specificity, "specificity")
    level = _check_level(level, "level")
    value, thr = _sens_at_spec(scores, y, specificity)
    idx = _stratified_indices(y, n_boot, np.random.default_rng(seed))
    boots = _boot_sens_at_spec(scores, y, idx, specificity)
    return _with_ci(value, boots, level, n_boot, specificity=specificity, threshold=thr)


def specificity_at_sensitivity(
    y_true: Any,
    y_score: Any,
    *,
    sensitivity: float = 0.9,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Specificity at a fixed sensitivity, read off the ROC curve, with a stratified bootstrap CI."""
    scores, y = _binary(y_score, y_true, "specificity at sensitivity")
    sensitivity = _check_level(sensitivity, "sensitivity")
    level = _check_level(level, "level")
    value, thr = _spec_at_sens(scores, y, sensitivity)
    idx = _stratified_indices(y, n_boot, np.random.default_rng(seed))
    boots = _boot_spec_at_sens(scores, y, idx, sensitivity)
    return _with_ci(value, boots, level, n_boot, sensitivity=sensitivity, threshold=thr)


def youden_threshold(y_true: Any, y_score: Any) -> float:
    """The score cut-off maximising Youden's J = sensitivity + specificity - 1 (choose it on validation)."""
    scores, y = _binary(y_score, y_true, "Youden's threshold")
    fpr, tpr, thr = skm.roc_curve(y, scores, drop_intermediate=False)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def confusion_at_threshold(y_true: Any, y_score: Any, *, threshold: float | None = None) -> dict[str, Any]:
    """Confusion matrix (rows = truth, columns = prediction) at ``threshold`` (binary) or arg-max.

    Binary results add tp/fp/tn/fn, sensitivity, specificity, PPV and NPV (None when undefined).
    """
    p, y = _as_probs_targets(y_score, y_true)
    pred = _predict(p, threshold)
    cm = skm.confusion_matrix(y, pred, labels=list(range(p.shape[1])))
    out: dict[str, Any] = {"matrix": cm.tolist()}
    if p.shape[1] == 2:
        tn, fp, fn, tp = (int(v) for v in cm.ravel())
        out.update(
            threshold=0.5 if threshold is None else float(threshold),
            tp=tp,
            fp=fp,
            tn=tn,
            fn=fn,
            sensitivity=_ratio(tp, tp + fn),
            specificity=_ratio(tn, tn + fp),
            ppv=_ratio(tp, tp + fp),
            npv=_ratio(tn, tn + fn),
        )
    return out


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


# ------------------------------------------------------------------------------------- calibration
def _require_probabilities(p: np.ndarray, what: str) -> None:
    """Calibration and Brier need probabilities; ranking metrics accept any scores."""
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise ValueError(
            f"{what} needs probabilities in [0, 1], got values in [{p.min():.3g}, {p.max():.3g}]"
        )


def _confidence_and_hits(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: P(positive) vs positive; multi-class: top-label confidence vs correct (Guo et al. 2017)."""
    _require_probabilities(p, "calibration")
    if p.shape[1] == 2:
        return p[:, 1], (y == 1).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _bin_edges(conf: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        return np.percentile(conf, np.linspace(0, 100, n_bins + 1))
    raise ValueError(f"strategy must be 'uniform' (equal width) or 'quantile' (equal mass), got {strategy!r}")


def calibration_bins(
    y_true: Any, y_score: Any, *, n_bins: int = 10, strategy: BinStrategy = "uniform"
) -> dict[str, Any]:
    """Reliability-diagram bins: edges, and per non-empty bin mean confidence, observed rate and count.

    Binary problems bin P(positive) against the positive rate (as ``sklearn.calibration.calibration_curve``
    with the same binning); multi-class problems bin the top-label confidence against accuracy.
    """
    p, y = _as_probs_targets(y_score, y_true)
    conf, hits = _confidence_and_hits(p, y)
    edges = _bin_edges(conf, n_bins, strategy)
    # same assignment rule as scikit-learn's calibration_curve: inner edges, right-open bins
    ids = np.searchsorted(edges[1:-1], conf, side="right")
    count = np.bincount(ids, minlength=len(edges) - 1)
    conf_sum = np.bincount(ids, weights=conf, minlength=len(edges) - 1)
    hit_sum = np.bincount(ids, weights=hits, minlength=len(edges) - 1)
    keep = count > 0
    return {
        "strategy": strategy,
        "edges": edges.tolist(),
        "mean_confidence": (conf_sum[keep] / count[keep]).tolist(),
        "observed": (hit_sum[keep] / count[keep]).tolist(),
        "count": count[keep].astype(int).tolist(),
    }


def expected_calibration_error(
    y_true: Any, y_score: Any, *, n_bins: int = 10, strategy: BinStrategy = "uniform"
) -> float:
    """ECE: count-weighted mean |observed rate - mean confidence| over the bins of `calibration_bins`."""
    b = calibration_bins(y_true, y_score, n_bins=n_bins, strategy=strategy)
    count = np.asarray(b["count"], dtype=np.float64)
    gap = np.abs(np.asarray(b["observed"]) - np.asarray(b["mean_confidence"]))
    return float((count * gap).sum() / count.sum())


def reliability_diagram(
    y_true: Any,
    y_score: Any,
    *,
    n_bins: int = 10,
    strategy: BinStrategy = "uniform",
    ax: Axes | None = None,
    title: str | None = None,
    label: str = "model",
) -> Figure:
    """Reliability diagram (observed rate vs mean confidence per bin, the diagonal, ECE in the legend).

    Pass the ``ax`` of an earlier call and another ``label`` to draw a second curve on it (e.g. before and
    after calibration); the diagonal is drawn once.
    """
    from matplotlib.figure import Figure

    b = calibration_bins(y_true, y_score, n_bins=n_bins, strategy=strategy)
    ece = expected_calibration_error(y_true, y_score, n_bins=n_bins, strategy=strategy)
    fresh = ax is None
    if ax is None:
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    binary = np.asarray(y_score).ndim == 1 or np.asarray(y_score).shape[1] == 2
    if fresh:
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfect calibration")
    ax.plot(b["mean_confidence"], b["observed"], marker="o", label=f"{label} (ECE {ece:.3f}, {strategy} bins)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (positive class)" if binary else "confidence (top label)")
    ax.set_ylabel("observed positive rate" if binary else "accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def brier_score(y_true: Any, y_score: Any) -> float:
    """Brier score: mean squared error of the probabilities (binary: positive class; multi-class: summed)."""
    p, y = _as_probs_targets(y_score, y_true)
    _require_probabilities(p, "the Brier score")
    if p.shape[1] == 2:
        return float(skm.brier_score_loss(y, p[:, 1]))
    return float(skm.brier_score_loss(y, p, labels=list(range(p.shape[1]))))


# ------------------------------------------------------------------------- DeLong (Sun & Xu 2014)
def _midranks(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (ties share their average rank) along the last axis, 1-based."""
    return stats.rankdata(x, method="average", axis=-1)


def delong_roc_variance(y: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance for ``K`` score vectors on the same items (fast DeLong).

    ``scores`` is ``(N,)`` or ``(K, N)``. Returns ``aucs (K,)`` and ``cov (K, K)``. Implements Sun & Xu,
    "Fast implementation of DeLong's algorithm for comparing the areas under correlated receiver operating
    characteristic curves", IEEE Signal Processing Letters 21(11), 2014: the structural components come
    from mid-ranks within positives, within negatives and overall, so the cost is O(K N log N).
    """
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"scores have {s.shape[1]} items but y has {y.size}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError("DeLong's test needs binary 0/1 labels")
    _require_both_classes(y, "DeLong's test")
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = _midranks(pos)  # ranks among positives
    ty = _midranks(neg)  # ranks among negatives
    tz = _midranks(np.concatenate([pos, neg], axis=1))  # ranks among all
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v01 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives it beats (V10 in DeLong et al.)
    v10 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives that beat it
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((s.shape[0], s.shape[0]))
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((s.shape[0], s.shape[0]))
    return aucs, sx / m + sy / n


def paired_auc_difference(
    y: Any,
    p_a: Any,
    p_b: Any,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare two models' AUCs on the same items: DeLong's test and a paired stratified bootstrap.

    ``p_a``/``p_b`` are positive-class scores ``(N,)`` or ``(N, 2)`` probabilities. The difference is
    AUC(a) - AUC(b). DeLong gives a z-test and a normal CI; the bootstrap resamples the same items for
    both models and gives a percentile CI and a two-sided p-value (twice the smaller tail mass at 0,
    with the +1 correction so it is never exactly 0).
    """
    yv = np.asarray(y)
    sa, ya = _binary(p_a, yv, "paired AUC comparison (model a)")
    sb, _ = _binary(p_b, yv, "paired AUC comparison (model b)")
    level = _check_level(level, "level")
    aucs, cov = delong_roc_variance(ya, np.stack([sa, sb]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    z_crit = float(stats.norm.ppf((1 + level) / 2))
    if var > 0:
        se = math.sqrt(var)
        z = diff / se
        p_delong = float(2 * stats.norm.sf(abs(z)))
    else:  # identical rankings: no variance in the difference
        se, z, p_delong = 0.0, 0.0, 1.0
    idx = _stratified_indices(ya, n_boot, np.random.default_rng(seed))
    boots = _boot_auc_binary(sa, ya, idx) - _boot_auc_binary(sb, ya, idx)
    lo, hi = _interval(boots, level)
    tail = min((boots <= 0).sum(), (boots >= 0).sum())
    p_boot = float(min(1.0, 2 * (tail + 1) / (n_boot + 1)))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "ci_level": level,
        "delong": {
            "se": se,
            "z": float(z),
            "p_value": p_delong,
            "ci_low": diff - z_crit * se,
            "ci_high": diff + z_crit * se,
            "auc_a_se": float(math.sqrt(max(cov[0, 0], 0.0))),
            "auc_b_se": float(math.sqrt(max(cov[1, 1], 0.0))),
        },
        "bootstrap": {
            "se": float(boots.std(ddof=1)) if n_boot > 1 else 0.0,
            "ci_low": lo,
            "ci_high": hi,
            "p_value": p_boot,
            "n_boot": n_boot,
            "seed": seed,
        },
    }


# --------------------------------------------------------------------------------------- the report
def classification_report(
    y: Any,
    probs: Any,
    labels: Sequence[str] | None = None,
    threshold: float | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    n_bins: int = 10,
    fixed_specificity: float = 0.9,
    fixed_sensitivity: float = 0.9,
    positive_index: int = 1,
) -> dict[str, Any]:
    """Everything above in one JSON-able dict (what a bundle stores under ``metrics``).

    ``threshold`` is the binary operating point on P(positive) (choose it on validation, e.g. with
    `medsuite.learn.predict.choose_threshold`); None means 0.5. ``positive_index`` is the positive class's
    column of a binary problem; the report lists binary classes as (negative, positive). The Youden
    threshold of *these* data is reported too, for information only.
    """
    p, yy = _as_probs_targets(probs, y)
    n_classes = p.shape[1]
    if labels is None:
        labels = [str(k) for k in range(n_classes)]
    labels = [str(label) for label in labels]
    if len(labels) != n_classes:
        raise ValueError(f"labels has {len(labels)} names but probs have {n_classes} classes: {labels}")
    if n_classes == 2 and positive_index not in (0, 1):
        raise ValueError(f"positive_index must be 0 or 1 for a binary problem, got {positive_index}")
    if n_classes == 2 and positive_index == 0:  # report as (negative, positive)
        p, yy, labels = p[:, ::-1].copy(), 1 - yy, labels[::-1]
    binary = n_classes == 2
    if binary and threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    counts = np.bincount(yy, minlength=n_classes)
    report: dict[str, Any] = {
        "n": int(yy.size),
        "labels": labels,
        "class_counts": {label: int(c) for label, c in zip(labels, counts, strict=True)},
        "roc_auc": roc_auc_ci(yy, p, n_boot=n_boot, level=level, seed=seed),
        "balanced_accuracy": balanced_accuracy(yy, p, threshold=threshold if binary else None),
        "brier": brier_score(yy, p),
        "ece": {
            s: expected_calibration_error(yy, p, n_bins=n_bins, strategy=s) for s in ("uniform", "quantile")
        },
        "calibration": calibration_bins(yy, p, n_bins=n_bins, strategy="uniform"),
        "confusion": confusion_at_threshold(yy, p, threshold=threshold if binary else None),
        "settings": {"n_boot": n_boot, "ci_level": level, "seed": seed, "n_bins": n_bins},
    }
    if binary:
        report["threshold"] = 0.5 if threshold is None else float(threshold)
        report["youden_threshold_on_these_data"] = youden_threshold(yy, p)
        report["sensitivity_at_specificity"] = sensitivity_at_specificity(
            yy, p, specificity=fixed_specificity, n_boot=n_boot, level=level, seed=seed
        )
        report["specificity_at_sensitivity"] = specificity_at_sensitivity(
            yy, p, sensitivity=fixed_sensitivity, n_boot=n_boot, level=level, seed=seed
        )
    else:
        report["roc_auc_per_class"] = {
            label: float(skm.roc_auc_score(yy == k, p[:, k])) for k, label in enumerate(labels)
        }
    return _jsonable(report)


def _jsonable(obj: Any) -> Any:
    """Plain Python types; non-finite floats become None (strict JSON has no NaN/inf)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------ names for configs
METRICS: Mapping[str, Callable[..., Any]] = MappingProxyType(
    {
        "accuracy": accuracy,
        "roc_auc": roc_auc,
        "roc_auc_ci": roc_auc_ci,
        "balanced_accuracy": balanced_accuracy,
        "brier": brier_score,
        "ece": expected_calibration_error,
        "sensitivity_at_specificity": sensitivity_at_specificity,
        "specificity_at_sensitivity": specificity_at_sensitivity,
    }
)


def get_metric(name: str) -> Callable[..., Any]:
    """The Learner metric called ``name`` in a config (see `METRICS`)."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None
