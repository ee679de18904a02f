"""Regression guard: the default nodule pipeline learns image content from DICOM, beyond a shuffled-label control.

On `nodule_shapes` the diameter carries no signal (both classes share one size distribution); the label is in the
nodule's shape and texture. A small model trained through the public API must separate the held-out nodules well,
and the same model trained on shuffled labels must not. Seeded; a few seconds of training.
"""

from __future__ import annotations

import numpy as np
import pytest
from nodule_shapes import make_shape_cohort
from sklearn.metrics import roc_auc_score

from medsuite.data.blocks import SliceStack
from medsuite.pipelines import nodule
from medsuite.pipelines.tasks import plain_loader

BLOCK = SliceStack(k=3, size=24, spacing_mm=2.0, pixel_mm=0.8, window=("lung", "mediastinum"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return root, make_shape_cohort(root, patients=24, seed=0)


def _held_out_auc(root, table, tmp_path, *, shuffle: bool) -> float:
    table = table.copy()
    if shuffle:  # the control: the same training, with the training labels permuted
        train = table["split"] == "train"
        table.loc[train, "label"] = np.random.default_rng(1).permutation(table.loc[train, "label"].to_numpy())
    dls = nodule.dataloaders(table, root, block=BLOCK, bs=16, cache_dir=tmp_path / "cache", seed=0)
    learn = nodule.learner(dls, arch_kwargs={"width": 8, "depth": 2, "subunits": 1}, seed=0, path=tmp_path / "run",
                           progress=False, checkpoint=False)
    learn.fit_one_cycle(20, 3e-3)
    preds = learn.get_preds(plain_loader(dls, "test"))
    y = (dls.items("test")["label"] == "malignant").to_numpy(int)
    return float(roc_auc_score(y, preds.probs[:, 1]))


def test_model_learns_shape_and_texture_not_size(cohort, tmp_path):
    root, table = cohort
    test = table[table["split"] == "test"]
    y = (test["label"] == "malignant").to_numpy(int)
    assert 0.2 < y.mean() < 0.8 and len(test) >= 20
    diameter_auc = roc_auc_score(y, test["diameter_mm"])
    assert abs(diameter_auc - 0.5) < 0.25  # size alone says little on this cohort
    learned = _held_out_auc(root, table, tmp_path / "real", shuffle=False)
    control = _held_out_auc(root, table, tmp_path / "control", shuffle=True)
    assert learned >= 0.9, f"held-out AUC {learned:.3f} (shuffled-label control {control:.3f})"
    assert learned >= control + 0.25, f"held-out AUC {learned:.3f} vs shuffled-label control {control:.3f}"
    assert learned >= diameter_auc + 0.2
