"""Simple whole-validation-set metrics with the learner's signature ``metric(probs, targets)``.

``probs`` is ``(N, n_classes)`` softmax output, ``targets`` ``(N,)`` class ids. The confidence-interval
metrics live in `medsuite.learn.metrics`; both plug into ``Learner(metrics=[...])`` the same way.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["accuracy", "balanced_accuracy", "roc_auc"]


def _check(probs: np.ndarray, targets: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    probs, targets = np.asarray(probs), np.asarray(targets)
    if probs.ndim != 2 or len(probs) != len(targets):
        raise ValueError(f"{name}: expected probs (N, C) and targets (N,), got {probs.shape} and {targets.shape}")
    return probs, targets.astype(np.int64).reshape(-1)


def accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Share of items whose arg-max class is the target."""
    probs, targets = _check(probs, targets, "accuracy")
    return float((probs.argmax(1) == targets).mean())


def balanced_accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean per-class recall (scikit-learn)."""
    from sklearn.metrics import balanced_accuracy_score  # lazy: keeps `import medsuite.learn` light

    probs, targets = _check(probs, targets, "balanced_accuracy")
    return float(balanced_accuracy_score(targets, probs.argmax(1)))


def roc_auc(probs: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC (scikit-learn): binary on the positive class (index 1), else one-vs-rest macro.
    NaN when the set holds a single class (AUC is undefined there)."""
    from sklearn.metrics import roc_auc_score

    probs, targets = _check(probs, targets, "roc_auc")
    present = np.unique(targets)
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(roc_auc_score(targets, probs[:, 1]))
    if len(present) < probs.shape[1]:
        return float(roc_auc_score(targets, probs[:, present] / probs[:, present].sum(1, keepdims=True),
                                   multi_class="ovr", labels=present))
    return float(roc_auc_score(targets, probs, multi_class="ovr"))
