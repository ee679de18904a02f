"""Lung-nodule malignancy in a few lines::

    from medsuite.pipelines import nodule
    dls = nodule.dataloaders("nodules.csv", dicom_root="scans/")   # 2.5D: 7 planes 2 mm apart, 40x40 at 0.8 mm
    learn = nodule.learner(dls)                                      # residual slice CNN, AUC metric
    learn.fit_one_cycle(60, learn.lr_find().edge)
    learn.export("malignancy.bundle")                                # flip TTA, fused with the table's diameter

The defaults were chosen by 5-fold cross-validation on the demo cohort's training patients and checked on a
second, differently generated cohort (bench/nodule_cv.py, docs/nodule-malignancy.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.data.augment import Augment
from medsuite.data.block import DataBlock, DataLoaders
from medsuite.data.blocks import Category, InputBlock, SliceStack
from medsuite.data.cache_dir import default_cache_dir
from medsuite.data.source import VolumeSource
from medsuite.data.splitters import ColumnSplitter, PatientSplitter, StratifiedPatientSplitter
from medsuite.data.tables import read_table, validate_nodule_table
from medsuite.pipelines.tasks import TaskLearner, make_learner

# Seven axial planes 2 mm apart (12 mm deep), 40x40 pixels of 0.8 mm (a 32 mm field), lung and mediastinum windows.
DEFAULT_BLOCK = SliceStack(k=7, size=40, spacing_mm=2.0, pixel_mm=0.8, window=("lung", "mediastinum"))
# The residual slice CNN for it: 16 channels, three strided blocks of one unit (40 -> 5 pixels), 53k weights.
DEFAULT_EPOCHS = 60
# Size is what readers weigh most, and the table's diameter (readers' own measurement) is more than one outline
# shows: exported nodule predictors fuse it late with the image's score (`medsuite.learn.predict.Fusion`).
DEFAULT_FUSE: tuple[str, ...] = ("diameter_mm",)
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
                 seed: int = 0, positive: str | None = None, stratify: bool = True) -> Any:
    """The table's own split column when it has one, else a split by patient: label-stratified (a patient
    counts as ``positive`` when any of their rows is), or plain random with ``stratify=False``."""
    if column and column in table.columns:
        return ColumnSplitter(column)
    if not stratify:
        return PatientSplitter(valid_pct=valid_pct, test_pct=test_pct, seed=seed)
    return StratifiedPatientSplitter(valid_pct=valid_pct, test_pct=test_pct, seed=seed, positive=positive)


READER_COLUMN = re.compile(r"^malignancy_r\d+$")


class ReaderSoftTargets:
    """Training targets from the readers' malignancy ratings: P(positive) = (hard label + (mean rating - 1) / 4) / 2.

    The readers' mean rating ranks nodules more finely than the binary label (ratings 1,1,2 and 2,2,2 are both
    "benign"); half of the target stays the hard label, so the target is above 0.5 exactly for the positive
    class. ``column='auto'`` takes the per-reader columns ``malignancy_r1..`` (their mean over the readers who
    rated), else ``malignancy_mean``; a named column is used as is (a mean 1-5 rating). Rows without a rating
    keep their hard label. After the call, `description` says what was used (for the report)."""

    def __init__(self, column: str = "auto", positive_index: int = 1) -> None:
        self.column, self.positive_index = column, positive_index
        self.description = "hard labels"

    def ratings(self, items: pd.DataFrame) -> tuple[np.ndarray | None, str]:
        readers = sorted(c for c in items.columns if READER_COLUMN.match(str(c)))
        if self.column == "auto":
            if readers:
                values = items[readers].apply(pd.to_numeric, errors="coerce").to_numpy(float)
                rated = np.isfinite(values)
                if (values[rated] < 1).any() or (values[rated] > 5).any():
                    bad = values[rated][(values[rated] < 1) | (values[rated] > 5)][0]
                    raise ValueError(f"soft targets from {', '.join(readers)}: ratings must lie in 1-5, got {bad:g}")
                count = rated.sum(axis=1)
                total = np.where(rated, values, 0.0).sum(axis=1)
                mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
                return mean, f"mean of the readers' ratings ({', '.join(readers)})"
            if "malignancy_mean" in items.columns:
                return pd.to_numeric(items["malignancy_mean"], errors="coerce").to_numpy(float), "column malignancy_mean"
            return None, "hard labels (the table has no reader ratings)"
        if self.column not in items.columns:
            raise ValueError(f"soft-target column {self.column!r} is not in the table")
        return pd.to_numeric(items[self.column], errors="coerce").to_numpy(float), f"column {self.column}"

    def __call__(self, items: pd.DataFrame, targets: np.ndarray) -> np.ndarray | None:
        mean, source = self.ratings(items)
        if mean is None:
            self.description = source
            return None
        bad = np.isfinite(mean) & ((mean < 1) | (mean > 5))
        if bad.any():
            raise ValueError(f"soft targets from {source}: ratings must lie in 1-5, got {mean[bad][0]:g}")
        hard = (np.asarray(targets) == self.positive_index).astype(np.float64)
        q = np.where(np.isfinite(mean), (mean - 1.0) / 4.0, hard)
        p = 0.5 * hard + 0.5 * q
        n_rated = int(np.isfinite(mean).sum())
        self.description = f"soft targets from the {source} on {n_rated} of {len(mean)} training items"
        out = np.zeros((len(p), 2), dtype=np.float32)
        out[:, self.positive_index] = p
        out[:, 1 - self.positive_index] = 1.0 - p
        return out


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
    bs: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    soft_targets: str | None = "auto",
) -> DataLoaders:
    """DataLoaders of 2.5D samples around each nodule of a nodule table (train/valid[/test] by patient).

    ``soft_targets``: where the table carries readers' malignancy ratings, the training split learns from
    them (`ReaderSoftTargets`; 'auto', a column name, or None for the hard labels only)."""
    frame = read_table(table) if not isinstance(table, pd.DataFrame) else table
    frame = validate_nodule_table(frame)
    if source is None:
        if dicom_root is None:
            raise ValueError("give dicom_root (the folder with the scans) or a VolumeSource")
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()  # never inside the scans
        source = VolumeSource(dicom_root, cache_dir=cache)
    vocab = label_vocab(frame["label"], positive)
    soft = ReaderSoftTargets(soft_targets, vocab.index(positive)) if soft_targets and len(vocab) == 2 else None
    datablock = DataBlock(
        blocks=(block or DEFAULT_BLOCK, Category(vocab)),
        splitter=splitter or splitter_for(frame, seed=seed, positive=positive),
        item_tfms=augment,
        positive=positive,
        soft_targets=soft,
    )
    return datablock.dataloaders(frame, source=source, bs=bs, num_workers=num_workers, seed=seed)


class NoduleLearner(TaskLearner):
    """A `TaskLearner` whose bundle, by default, scores with flip TTA and fuses the nodule table's diameter
    with the image's score (fitted on the validation split); ``export(path, tta=False, fuse=())`` for neither."""

    def export(self, path: str | Path, *, tta: Any = True, fuse: Any = DEFAULT_FUSE, **kwargs: Any) -> Path | None:
        binary = len(self.dls.vocab) == 2
        return super().export(path, tta=tta, fuse=list(fuse) if binary else None, **kwargs)


def learner(dls: DataLoaders, arch: str | None = None, *, positive: str | None = None,
            path: str | os.PathLike[str] | None = None, arch_kwargs: dict[str, Any] | None = None,
            **kwargs: Any) -> NoduleLearner:
    """A Learner with the default 2.5D CNN for the block (`tasks.TASK_ARCH_DEFAULTS` for the slice CNN, which your
    ``arch_kwargs`` override), AdamW, one-cycle and an AUC metric; its `export` fuses the table's diameter.

    The positive class comes from ``dls`` (given once, to `dataloaders`); ``positive`` may repeat it but a
    different value is an error. Without ``path`` nothing is written during training (no checkpoints)."""
    return make_learner(dls, task="nodule", arch=arch, positive=positive, path=path, arch_kwargs=arch_kwargs,
                        learner_cls=NoduleLearner, **kwargs)
