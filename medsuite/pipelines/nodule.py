"""Lung-nodule malignancy in a few lines::

    from medsuite.pipelines import nodule
    dls = nodule.dataloaders("nodules.csv", dicom_root="scans/")   # 2.5D by default
    learn = nodule.learner(dls)                                      # slice CNN, AUC metric
    learn.fit_one_cycle(20, learn.lr_find().valley)
    learn.export("malignancy.bundle")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from medsuite.data.augment import Augment
from medsuite.data.block import DataBlock, DataLoaders
from medsuite.data.blocks import Category, InputBlock, SliceStack
from medsuite.data.cache_dir import default_cache_dir
from medsuite.data.source import VolumeSource
from medsuite.data.splitters import ColumnSplitter, StratifiedPatientSplitter
from medsuite.data.tables import read_table, validate_nodule_table
from medsuite.pipelines.tasks import TaskLearner, make_learner

DEFAULT_BLOCK = SliceStack(k=5, size=64, spacing_mm=1.0, pixel_mm=0.75, window="lung")
# Size is the strongest single predictor of malignancy: rotate, flip and shift, but never rescale.
NODULE_AUGMENT = Augment(scale=(1.0, 1.0))


def label_vocab(labels: pd.Series, positive: str) -> list[str]:
    """Label names with the positive class last (class id 1 of a binary problem)."""
    names = sorted({str(v) for v in labels})
    if len(names) < 2:
        raise ValueError(f"the table has a single label {names}; a classifier needs at least two")
    if positive not in names:
        raise ValueError(f"positive label {positive!r} not among the table's labels {names}")
    return [n for n in names if n != positive] + [positive]


def splitter_for(table: pd.DataFrame, *, column: str | None = "split", valid_pct: float = 0.2, test_pct: float = 0.2,
                 seed: int = 0, positive: str | None = None) -> Any:
    """The table's own split column when it has one, else a label-stratified split by patient (a patient
    counts as ``positive`` when any of their rows is)."""
    if column and column in table.columns:
        return ColumnSplitter(column)
    return StratifiedPatientSplitter(valid_pct=valid_pct, test_pct=test_pct, seed=seed, positive=positive)


def dataloaders(
    table: str | os.PathLike[str] | pd.DataFrame,
    dicom_root: str | os.PathLike[str] | None = None,
    *,
    block: InputBlock | None = None,
    positive: str = "malignant",
    cache_dir: str | os.PathLike[str] | None = None,
    source: VolumeSource | None = None,
    augment: Augment | None = NODULE_AUGMENT,
    splitter: Any = None,
    bs: int = 64,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoaders:
    """DataLoaders of 2.5D samples around each nodule of a nodule table (train/valid[/test] by patient)."""
    frame = read_table(table) if not isinstance(table, pd.DataFrame) else table
    frame = validate_nodule_table(frame)
    if source is None:
        if dicom_root is None:
            raise ValueError("give dicom_root (the folder with the scans) or a VolumeSource")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()  # never inside the scans
        source = VolumeSource(dicom_root, cache_dir=cache)
    datablock = DataBlock(
        blocks=(block or DEFAULT_BLOCK, Category(label_vocab(frame["label"], positive))),
        splitter=splitter or splitter_for(frame, seed=seed, positive=positive),
        item_tfms=augment,
        positive=positive,
    )
    return datablock.dataloaders(frame, source=source, bs=bs, num_workers=num_workers, seed=seed)


def learner(dls: DataLoaders, arch: str | None = None, *, positive: str | None = None,
            path: str | os.PathLike[str] | None = None, **kwargs: Any) -> TaskLearner:
    """A Learner with the default 2.5D CNN for the block, AdamW, one-cycle and an AUC metric.

    The positive class comes from ``dls`` (given once, to `dataloaders`); ``positive`` may repeat it but a
    different value is an error. Without ``path`` nothing is written during training (no checkpoints)."""
    return make_learner(dls, task="nodule", arch=arch, positive=positive, path=path, **kwargs)
