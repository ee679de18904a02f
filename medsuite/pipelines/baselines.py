"""Baselines that keep the deep model honest: diameter alone, and radiomics features + a random forest
(nodules); the largest nodule's diameter (series).

Both are fitted on the training split only and scored on the held-out split, so their probabilities can be
compared with the deep model's on the very same items (paired tests in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class BaselineResult:
    """Held-out probabilities of the positive class, in the order of the test items, plus explanations."""

    name: str
    probs: np.ndarray
    importance: pd.DataFrame | None = None
    figures: dict[str, Figure] = field(default_factory=dict)


def _binary_targets(labels: pd.Series, positive: str) -> np.ndarray:
    return (labels.astype(str) == str(positive)).to_numpy(dtype=np.int64)


def _log_size(table: pd.DataFrame, column: str) -> np.ndarray:
    if column not in table.columns:
        raise ValueError(f"the {column!r} baseline needs a {column!r} column in the table")
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    # no nodule (NaN or 0) counts as the smallest size: log(0.5 mm)
    return np.log(np.where(np.isfinite(values), values, 0.0).clip(min=0.5))[:, None]


def diameter_baseline(train: pd.DataFrame, test: pd.DataFrame, positive: str, *, column: str = "diameter_mm",
                      name: str = "diameter") -> BaselineResult:
    """Logistic regression on log-diameter: on LIDC, size alone reaches an AUC near 0.90."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit(_log_size(train, column), _binary_targets(train["label"], positive))
    return BaselineResult(name, model.predict_proba(_log_size(test, column))[:, 1])


def largest_diameter_baseline(train: pd.DataFrame, test: pd.DataFrame, positive: str) -> BaselineResult:
    """Series task: logistic regression on the log of the series' largest nodule diameter (``max_diameter_mm``,
    e.g. from the radiologists' nodule table; a series without nodules counts as the smallest)."""
    return diameter_baseline(train, test, positive, column="max_diameter_mm", name="largest_diameter")


def radiomics_baseline(
    train_features: pd.DataFrame,
    train_labels: pd.Series,
    test_features: pd.DataFrame,
    test_labels: pd.Series,
    positive: str,
    *,
    seed: int = 0,
    n_estimators: int = 300,
) -> BaselineResult:
    """Random forest on handcrafted features, with permutation importance and partial dependence plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.inspection import PartialDependenceDisplay, permutation_importance
    from sklearn.pipeline import make_pipeline

    columns = list(train_features.columns)
    y_train = _binary_targets(train_labels, positive)
    y_test = _binary_targets(test_labels, positive)
    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=3, random_state=seed, n_jobs=-1),
    ).fit(train_features[columns], y_train)
    probs = model.predict_proba(test_features[columns])[:, 1]

    scoring = "roc_auc" if len(np.unique(y_test)) == 2 else "accuracy"
    perm = permutation_importance(model, test_features[columns], y_test, scoring=scoring, n_repeats=10, random_state=seed, n_jobs=1)
    importance = (
        pd.DataFrame({"feature": columns, "importance_mean": perm.importances_mean, "importance_std": perm.importances_std})
        .sort_values("importance_mean", ascending=False)
        .reset_index(drop=True)
    )
    fig_imp, ax = plt.subplots(figsize=(6, 0.3 * len(columns) + 1))
    ordered = importance.iloc[::-1]
    ax.barh(ordered["feature"], ordered["importance_mean"], xerr=ordered["importance_std"], color="#4477aa")
    ax.set_xlabel(f"drop in held-out {scoring} when the feature is permuted")
    ax.set_title("Radiomics random forest: permutation importance")
    fig_imp.tight_layout()

    top = importance["feature"].head(4).tolist()
    fig_pd, axes = plt.subplots(1, len(top), figsize=(3.2 * len(top), 3))
    PartialDependenceDisplay.from_estimator(model, train_features[columns], top, ax=np.atleast_1d(axes))
    fig_pd.suptitle("Partial dependence of P(malignant) on the top features")
    fig_pd.tight_layout()
    return BaselineResult("radiomics_rf", probs, importance, {"permutation_importance": fig_imp, "partial_dependence": fig_pd})
