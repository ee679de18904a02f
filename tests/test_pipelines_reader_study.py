"""Reader study: references from the other readers, reader calls at >= 4, the model on the same pairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medsuite.pipelines.reader_study import add_reader_study_section, reader_pairs, reader_study
from medsuite.pipelines.report import Report


def _table(ratings: list[list[float]], diameters: list[float] | None = None) -> pd.DataFrame:
    r = np.array([row + [np.nan] * (4 - len(row)) for row in ratings], dtype=float)
    n = len(ratings)
    return pd.DataFrame({"nodule_id": [f"n{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                         "diameter_mm": diameters or list(np.linspace(4, 20, n)),
                         **{f"malignancy_r{k + 1}": r[:, k] for k in range(4)}})


def test_pairs_follow_the_rules():
    table = _table([
        [5, 4, 4],      # every reader: others' median 4 or 4.5 -> malignant; all call malignant
        [1, 2, 4],      # reader 3 (4) vs median(1, 2) = 1.5 benign -> a false positive of reader 3
        [3, 4, 4, 2],   # readers 2, 3: others (3, 4, 2) median 3 -> indeterminate, dropped
        [2, 5],         # only two readers: skipped
    ])
    pairs = reader_pairs(table, np.zeros(4))
    assert set(pairs["nodule_id"]) == {"n0", "n1", "n2"}
    assert len(pairs[pairs["nodule_id"] == "n0"]) == 3 and pairs.loc[pairs["nodule_id"] == "n0", "reference"].eq(1).all()
    n1 = pairs[pairs["nodule_id"] == "n1"].set_index("reader")
    assert n1.loc[3, "reference"] == 0 and n1.loc[3, "reader_call"] == 1   # calls malignant, the others say benign
    assert 1 not in n1.index  # reader 1's others (2, 4): median 3, indeterminate
    assert n1.loc[2, "reference"] == 0 and n1.loc[2, "reader_call"] == 0  # others (1, 4): median 2.5, benign
    n2 = pairs[pairs["nodule_id"] == "n2"]
    assert set(n2["reader"]) == {1, 4} and n2["reference"].eq(1).all()  # readers 2 and 3: others' median exactly 3
    assert (pairs["reader_call"] == (pairs["rating"] >= 4)).all()


def test_reader_and_model_operating_points_on_the_same_pairs():
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for i in range(120):
        malignant = i % 3 == 0
        base = 4.5 if malignant else 1.5
        rows.append(list(np.clip(np.round(base + rng.normal(0, 0.9, 4)), 1, 5)))
        truth.append(malignant)
    table = _table(rows, diameters=list(rng.uniform(4, 25, 120)))
    score = np.array([0.9 if m else 0.1 for m in truth]) + rng.normal(0, 0.01, 120)
    study = reader_study(table, score, threshold=0.5, n_boot=200)
    assert study is not None
    pts = study.points.set_index("who")
    pairs = study.pairs
    # reader 1's point is exactly its agreement with the others' median on its own pairs
    r1 = pairs[pairs["reader"] == 1]
    sens = (r1["reader_call"][r1["reference"] == 1]).mean()
    spec = 1 - (r1["reader_call"][r1["reference"] == 0]).mean()
    assert pts.loc["reader 1", "sensitivity"] == pytest.approx(sens)
    assert pts.loc["reader 1", "specificity"] == pytest.approx(spec)
    lo, hi = pts.loc["reader 1", "sensitivity_ci"]
    assert lo <= sens <= hi
    # the average reader is the mean of the slots; the model is scored on the very same pairs
    slots = pts.loc[[f"reader {k}" for k in range(1, 5)]]
    assert pts.loc["average of readers", "specificity"] == pytest.approx(slots["specificity"].mean())
    model = pts.loc["model on all pairs"]
    assert model["pairs"] == len(pairs)
    calls = (pairs["score"] >= 0.5).astype(int)
    assert model["sensitivity"] == pytest.approx(calls[pairs["reference"] == 1].mean())
    aucs = study.aucs.set_index("score")
    assert aucs.loc["model", "auc"] == pytest.approx(roc_auc_score(pairs["reference"], pairs["score"]))
    assert aucs.loc["diameter alone", "auc"] == pytest.approx(roc_auc_score(pairs["reference"], pairs["diameter_mm"]))
    assert aucs.loc["model", "auc"] > aucs.loc["diameter alone", "auc"] + 0.2  # random diameters carry nothing here
    assert aucs.loc["model - diameter", "ci"][0] > 0
    rep = Report("t")
    add_reader_study_section(rep, study)
    assert "reader study" in rep.sections[0][0].lower() and rep.figures
    (fig,) = rep.figures.values()  # the readers' average and the model drawn at their operating points
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "average reader (95% CI)" in labels and any(label.startswith("model at its threshold") for label in labels)


def test_tables_without_reader_ratings_and_bad_ratings():
    plain = pd.DataFrame({"nodule_id": ["a", "b"], "diameter_mm": [5.0, 9.0]})
    assert reader_study(plain, np.array([0.1, 0.9]), 0.5) is None
    bad = _table([[1, 2, 7], [4, 4, 5]])
    with pytest.raises(ValueError, match="malignancy_r3 = 7"):
        reader_study(bad, np.array([0.1, 0.9]), 0.5)
    with pytest.raises(ValueError, match="3 scores for 2 nodules"):
        reader_pairs(_table([[1, 2, 2], [4, 4, 5]]), np.zeros(3))
