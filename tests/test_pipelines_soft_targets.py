"""Soft targets from readers' ratings: what the training split yields, and that validation keeps the labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from nodule_shapes import make_shape_cohort

from medsuite.data.blocks import SliceStack
from medsuite.pipelines import nodule
from medsuite.pipelines.nodule import ReaderSoftTargets

BLOCK = SliceStack(k=3, size=16, spacing_mm=2.0, pixel_mm=1.0)


def _items(ratings: list[list[float]], labels: list[str]) -> pd.DataFrame:
    r = np.array([row + [np.nan] * (4 - len(row)) for row in ratings], dtype=float)
    return pd.DataFrame({"label": labels, **{f"malignancy_r{k + 1}": r[:, k] for k in range(4)}})


def test_targets_follow_the_mean_rating_and_keep_the_label_side():
    items = _items([[1, 1, 2], [2, 2, 2], [4, 5, 5, 5], [3, 4, 4], [np.nan]], ["benign", "benign", "malignant", "malignant", "benign"])
    y = (items["label"] == "malignant").to_numpy(int)
    soft = ReaderSoftTargets()(items, y)
    p = soft[:, 1]
    assert np.allclose(soft.sum(1), 1.0)
    assert p[0] == pytest.approx(0.5 * (4 / 3 - 1) / 4) and p[1] == pytest.approx(0.5 * 0.25)
    assert p[2] == pytest.approx(0.5 + 0.5 * (4.75 - 1) / 4)
    assert p[4] == 0.0  # no rating: the hard label
    assert ((p > 0.5) == (y == 1)).all()
    fallback = ReaderSoftTargets()(pd.DataFrame({"label": ["benign", "malignant"], "malignancy_mean": [2.0, 4.5]}), np.array([0, 1]))
    assert fallback[:, 1] == pytest.approx([0.125, 0.9375])
    assert ReaderSoftTargets()(pd.DataFrame({"label": ["benign"]}), np.array([0])) is None
    with pytest.raises(ValueError, match="1-5"):
        ReaderSoftTargets()(_items([[0, 2, 2]], ["benign"]), np.array([0]))


def test_training_split_yields_probabilities_and_trains(tmp_path):
    table = make_shape_cohort(tmp_path, patients=8, seed=2)
    rng = np.random.default_rng(0)
    base = np.where(table["label"] == "malignant", 4.5, 1.5)
    for k in range(1, 4):
        table[f"malignancy_r{k}"] = np.clip(np.round(base + rng.normal(0, 0.6, len(table))), 1, 5)
    dls = nodule.dataloaders(table, tmp_path, block=BLOCK, bs=8, cache_dir=tmp_path / "cache")
    x, y = dls.one_batch("train")
    assert y.dtype.is_floating_point and tuple(y.shape) == (8, 2)
    assert dls.train.dataset.soft_targets is not None and dls.valid.dataset.soft_targets is None
    xv, yv = next(iter(dls.valid))
    assert not yv.dtype.is_floating_point  # validation metrics see the labels
    learn = nodule.learner(dls, arch_kwargs={"width": 4, "depth": 1, "subunits": 1}, seed=0, progress=False)
    learn.fit_one_cycle(1, 1e-3)
    assert np.isfinite(learn.recorder.df["train_loss"]).all()
    hard = nodule.dataloaders(table, tmp_path, block=BLOCK, bs=8, cache_dir=tmp_path / "cache", soft_targets=None)
    assert hard.train.dataset.soft_targets is None
