"""Series-level classification in a few lines (one shared 2D slice encoder, attention pooling)::

    from medsuite.pipelines import classify
    dls = classify.dataloaders("series.csv", dicom_root="scans/")
    learn = classify.learner(dls)
    learn.fit_one_cycle(15, learn.lr_find().valley)
    learn.export("series.bundle")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from medsuite.data.augment import Augment
from medsuite.data.block import DataBlock, DataLoaders
from medsuite.data.blocks import Category, SeriesSlices
from medsuite.data.cache_dir import default_cache_dir
from medsuite.data.source import VolumeSource
from medsuite.data.tables import read_table, validate_series_table
from medsuite.pipelines.nodule import label_vocab, splitter_for
from medsuite.pipelines.tasks import TaskLearner, make_learner

DEFAULT_BLOCK = SeriesSlices(n=16, size=128, window=("lung", "mediastinum"))
SERIES_AUGMENT = Augment(rotate_deg=10.0, scale=(0.95, 1.05), flip=True, shift_mm=5.0)


def dataloaders(
    table: str | os.PathLike[str] | pd.DataFrame,
    dicom_root: str | os.PathLike[str] | None = None,
    *,
    block: SeriesSlices | None = None,
    positive: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    source: VolumeSource | None = None,
    augment: Augment | None = SERIES_AUGMENT,
    splitter: Any = None,
    bs: int = 8,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoaders:
    """DataLoaders of N slices across each series of a series-label table (``path`` column or dicom_root)."""
    frame = validate_series_table(read_table(table) if not isinstance(table, pd.DataFrame) else table)
    if source is None:
        paths = dict(zip(frame["series_uid"], frame["path"], strict=True)) if "path" in frame.columns else None
        if dicom_root is None and paths is None:
            raise ValueError("give dicom_root, a 'path' column in the table, or a VolumeSource")
        source = VolumeSource(dicom_root, paths=paths, cache_dir=Path(cache_dir) if cache_dir else default_cache_dir())
    labels = sorted({str(v) for v in frame["label"]})
    vocab = label_vocab(frame["label"], positive) if positive is not None else labels
    datablock = DataBlock(blocks=(block or DEFAULT_BLOCK, Category(vocab)),
                          splitter=splitter or splitter_for(frame, seed=seed, positive=positive),
                          item_tfms=augment, positive=positive)
    return datablock.dataloaders(frame, source=source, bs=bs, num_workers=num_workers, seed=seed)


def learner(dls: DataLoaders, arch: str | None = None, *, positive: str | None = None,
            path: str | os.PathLike[str] | None = None, **kwargs: Any) -> TaskLearner:
    """A Learner with a shared 2D slice encoder and attention pooling over the series' slices (a binary
    problem takes its positive class from ``dls``; without ``path`` nothing is written during training)."""
    return make_learner(dls, task="series", arch=arch, positive=positive, path=path, **kwargs)
