"""The plain whole-validation-set metrics, re-exported from `medsuite.learn.metrics` (one implementation).

Each takes ``(y_true, y_score)`` like scikit-learn: class ids ``(N,)`` and softmax probabilities ``(N, C)``.
Kept so that ``from medsuite.learn.basic_metrics import accuracy, roc_auc`` goes on working; new code
imports from `medsuite.learn.metrics`.
"""

from __future__ import annotations

from medsuite.learn.metrics import accuracy, balanced_accuracy, roc_auc

__all__ = ["accuracy", "balanced_accuracy", "roc_auc"]
