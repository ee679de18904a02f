"""Baselines that keep the deep model honest: diameter alone, and radiomics features + a random forest
(nodules); the largest nodule's diameter (series).

Both are fitted on the training split only and scored on the held-out split, so their probabilities can be
compared with the deep model's on the very same items (paired tests in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class BaselineResult:
    """Held-out probabilities of the positive class, in the order of the test items, plus explanations and
    (deep baselines) what training it cost (``cost``: e.g. ``{"train_min": 4.2, "epochs": 30}``)."""

    name: str
    probs: np.ndarray
    importance: pd.DataFrame | None = None
    figures: dict[str, Figure] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)


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


PATCH3D_SPEC: dict[str, Any] = {"type": "Patch3D", "size": [24, 24, 24], "spacing_mm": [1.25, 1.25, 1.25],
                                "window": ["lung", "mediastinum"]}  # a 30 mm cube: the 2.5D stack's field, in 3D
PATCH3D_ARCH: dict[str, Any] = {"width": 8, "depth": 3, "subunits": 1}
PATCH3D_EPOCHS = 30


def patch3d_baseline(splits: dict[str, pd.DataFrame], split: str, source: Any, positive: str, *, epochs: int = PATCH3D_EPOCHS,
                     bs: int = 32, num_workers: int = 0, seed: int = 0) -> BaselineResult:
    """The 3D CNN baseline: `Patch3D` cubes (24³ voxels of 1.25 mm, lung and mediastinum windows) and a small
    3D CNN (``cnn3d``), trained on the same training items (lr_find's 'edge', one-cycle, the same rotations and
    flips), scored on ``split`` by its own predictor (in-plane flip TTA), so the report shows what the 2.5D
    model buys over a plain 3D one, and at what training cost (``cost``)."""
    import time

    from medsuite.data.blocks import block_from_spec
    from medsuite.data.splitters import ColumnSplitter
    from medsuite.learn.predict import FLIPS
    from medsuite.pipelines import nodule
    from medsuite.pipelines.tasks import plain_loader

    start = time.perf_counter()
    parts = [frame.assign(_split=name) for name, frame in splits.items()]
    table = pd.concat(parts, ignore_index=True)
    dls = nodule.dataloaders(table, block=block_from_spec(PATCH3D_SPEC), positive=positive, source=source, bs=bs,
                             num_workers=num_workers, seed=seed, splitter=ColumnSplitter("_split"))
    learn = nodule.learner(dls, arch_kwargs=dict(PATCH3D_ARCH), seed=seed, progress=False)
    lr = float(np.clip(learn.lr_find().edge, 1e-4, 3e-2))
    learn.fit_one_cycle(epochs, lr)
    predictor = learn.fit_predictor(tta=FLIPS).predictor
    probs = predictor.predict_loader(plain_loader(dls, split))[0][:, predictor.positive_index]
    minutes = (time.perf_counter() - start) / 60
    n_params = sum(p.numel() for p in learn.model.parameters())
    return BaselineResult("patch3d_cnn", probs, cost={"train_min": round(minutes, 2), "epochs": epochs, "lr": lr,
                                                      "parameters": int(n_params), "block": PATCH3D_SPEC})
