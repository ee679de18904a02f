"""How well can any image model do on a generated cohort? The AUC of models that are *given* what the images hold.

    python bench/nodule_ceiling.py COHORT [--metrics RUN/metrics.json]

A generated cohort (`medsuite demo-data`, `bench/cohort_b.py`) draws each nodule from a few LIDC-IDRI facts: its
size and outline, and a texture and a calcification rating. The label is the readers' consensus malignancy, which
they gave looking at the real scan. Whatever else moved the readers is not in the generated image. So a model
that is handed the facts the image was drawn from bounds what an image model can reach on that cohort's labels.

Each row below is a classifier trained on the train and valid splits and scored on the test split. It is a
gradient-boosting or logistic model, whichever has the higher 5-fold AUC on the training patients.

- ``diameter``: the table's diameter (the ruler);
- ``drawn from``: the table's diameter, the drawn nodule's caliper, and the texture and calcification ratings
  it was drawn with. This is the ceiling when the outline adds nothing beyond size;
- ``+ shape ratings``: plus the median sphericity, margin, lobulation and spiculation ratings. This is generous:
  how much of them one outline shows depends on the generator;
- ``every rating``: all eight median characteristic ratings. Some of these are not drawn at all (subtlety,
  internal structure, other readers' texture). No image model on this cohort can be expected to reach it.

``--metrics`` adds a finished run's test AUCs (model, and the baselines in its report) so they can be read
against the ceilings, and the smallest AUC gain over radiomics whose paired 95 % CI would clear 0 at this test
size (1.96 x the DeLong SE of the run's difference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medsuite.learn import roc_auc_ci

SHAPE = ["sphericity", "margin", "lobulation", "spiculation"]
DRAWN = ["log_diameter", "rendered_diameter_mm", "rendered_texture", "rendered_calcification"]
FEATURE_SETS = {
    "diameter": ["log_diameter"],
    "drawn from": DRAWN,
    "+ shape ratings": DRAWN + SHAPE,
    "every rating": ["log_diameter", "texture", "calcification", "subtlety", "internal_structure", *SHAPE],
}


def candidates() -> dict[str, object]:
    """The classifiers tried for each feature set (picked by grouped 5-fold AUC on the training patients)."""
    out: dict[str, object] = {"logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))}
    for depth in (2, 3):
        for iters in (100, 300):
            out[f"gbm d{depth} n{iters}"] = HistGradientBoostingClassifier(max_depth=depth, learning_rate=0.05,
                                                                        max_iter=iters, random_state=0)
    return out


def ceiling_row(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]) -> dict[str, object]:
    """Test AUC (bootstrap CI) of the classifier with the best grouped 5-fold CV AUC on ``train``."""
    x, y, groups = train[columns].to_numpy(float), train["y"].to_numpy(), train["patient_id"].astype(str).to_numpy()
    cv = GroupKFold(n_splits=5)
    models = candidates()
    scores = {name: float(np.mean(cross_val_score(model, x, y, groups=groups, cv=cv, scoring="roc_auc")))
              for name, model in models.items()}  # cross_val_score fits clones: the models stay unfitted
    best = max(scores, key=scores.get)
    model = models[best].fit(x, y)
    p = model.predict_proba(test[columns].to_numpy(float))[:, 1]
    auc = roc_auc_ci(test["y"].to_numpy(), p, n_boot=1000, seed=0)
    return {"model": best, "cv_auc": scores[best], "auc": auc["value"], "ci_low": auc["ci_low"], "ci_high": auc["ci_high"]}


def load(cohort: Path) -> pd.DataFrame:
    table = pd.read_csv(cohort / "nodules.csv")
    need = {"split", "label", "diameter_mm", "patient_id", *SHAPE, "rendered_texture", "rendered_calcification",
            "rendered_diameter_mm", "texture", "calcification", "subtlety", "internal_structure"}
    missing = sorted(need - set(table.columns))
    if missing:
        raise SystemExit(f"{cohort / 'nodules.csv'}: missing columns {missing} (a cohort made by `medsuite demo-data` "
                         "or bench/cohort_b.py records what each nodule was drawn from)")
    table = table[table["label"].isin(["benign", "malignant"])].copy()
    table["y"] = (table["label"] == "malignant").astype(int)
    table["log_diameter"] = np.log(table["diameter_mm"].clip(lower=0.5))
    return table.fillna(-1)


def run_figures(metrics_path: Path) -> list[tuple[str, float]]:
    """The model's and the report's baselines' test AUCs, and the SE of model minus radiomics."""
    metrics = json.loads(metrics_path.read_text())
    rows = [("run: model", float(metrics["report"]["roc_auc"]["value"]))]
    for name, c in metrics.get("comparisons", {}).items():
        rows.append((f"run: {name}", float(c["auc_b"])))
        if name.startswith("radiomics"):
            rows.append(("gain over radiomics needed for CI > 0", 1.96 * float(c["delong"]["se"])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--metrics", type=Path, help="a finished run's metrics.json, printed beside the ceilings")
    args = ap.parse_args()
    table = load(args.cohort)
    train, test = table[table["split"] != "test"], table[table["split"] == "test"]
    print(f"{args.cohort}: {len(train)} training nodules, {len(test)} test nodules "
          f"({int(test['y'].sum())} malignant)")
    print(f"{'given':<18} {'test AUC':>9}  {'95% CI':<16} {'chosen by CV':<14} {'CV AUC':>6}")
    for name, columns in FEATURE_SETS.items():
        r = ceiling_row(train, test, columns)
        print(f"{name:<18} {r['auc']:>9.3f}  [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  {r['model']:<14} {r['cv_auc']:>6.3f}")
    if args.metrics:
        for name, value in run_figures(args.metrics):
            print(f"{name:<40} {value:>6.3f}")


if __name__ == "__main__":
    main()
