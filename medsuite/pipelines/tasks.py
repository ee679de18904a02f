"""What both pipelines share: the default model for an input block, and a Learner that knows its task.

`TaskLearner.export` needs no arguments beyond the path: it fits the bundle's `Predictor` on the
validation split (optional TTA and calibration, then the operating threshold by a rule, Youden's J by
default, on the predictor's own outputs), stores validation metrics with CIs computed from those same
outputs, and builds the similar-case index with the predictor's embeddings, so that the bundle carries
everything the scorer, the report and the viewer need, and they all score alike.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medsuite.data.blocks import InputBlock, MultiView, Patch3D, SeriesSlices, SliceStack
from medsuite.data.luna16 import assumed_diameters
from medsuite.learn.learner import Learner
from medsuite.learn.metrics import classification_report, roc_auc
from medsuite.learn.models import build_model
from medsuite.learn.predict import (
    FLIPS,
    NO_TTA,
    Predictor,
    PredictorSettings,
    choose_threshold,
    fit_calibration,
    fit_fusion,
)

log = logging.getLogger("medsuite.pipelines")

Task = str  # 'nodule' | 'series'


def default_arch(block: InputBlock, n_classes: int) -> tuple[str, dict[str, Any]]:
    """The architecture (and its JSON-able arguments) that fits an input block's sample shape."""
    shape = block.output_shape
    if isinstance(block, SliceStack):
        return "slice_cnn", {"in_channels": shape[0], "n_classes": n_classes}
    if isinstance(block, MultiView):
        if len(shape) == 3:  # views stacked as channels
            return "slice_cnn", {"in_channels": shape[0], "n_classes": n_classes}
        return "multiview_cnn", {"in_channels": shape[1], "n_views": shape[0], "n_classes": n_classes}
    if isinstance(block, SeriesSlices):
        return "series_encoder", {"in_channels": shape[1], "n_classes": n_classes, "pooling": "attention"}
    if isinstance(block, Patch3D):
        return "cnn3d", {"in_channels": shape[0], "n_classes": n_classes}
    raise ValueError(f"no default architecture for block {type(block).__name__}")


# A task's own defaults for an architecture, chosen by cross-validation (docs/nodule-malignancy.md): the nodule
# slice CNN is narrower and shallower than the library's general default.
TASK_ARCH_DEFAULTS: dict[Task, dict[str, dict[str, Any]]] = {"nodule": {"slice_cnn": {"width": 16, "depth": 3, "subunits": 1}}}


def model_choice(block: InputBlock, n_classes: int, arch: str | None = None,
                 arch_kwargs: dict[str, Any] | None = None, *, task: Task | None = None) -> tuple[str, dict[str, Any]]:
    """The architecture to build and its arguments: ``arch`` (default: the block's own) with ``arch_kwargs``
    over the task's defaults for it (`TASK_ARCH_DEFAULTS`) over the arguments that fit the block. One choice
    for training and for checking a config before it."""
    default_name, default_kwargs = default_arch(block, n_classes)
    name = arch or default_name
    base = default_kwargs if name == default_name else {"in_channels": default_kwargs["in_channels"], "n_classes": n_classes}
    task_defaults = TASK_ARCH_DEFAULTS.get(task or "", {}).get(name, {})
    return name, {**base, **task_defaults, **(arch_kwargs or {})}


def plain_loader(dls: Any, split: str, bs: int | None = None) -> torch.utils.data.DataLoader:
    """The items of `split` in table order, without augmentation (for indexing and evaluation)."""
    source = {"train": dls.train, "valid": dls.valid, "test": dls.test}[split]
    if source is None:
        raise ValueError(f"no {split!r} split")
    dataset = copy.copy(source.dataset)
    dataset.augment = None
    return torch.utils.data.DataLoader(dataset, batch_size=bs or source.batch_size or 64, shuffle=False, num_workers=0)


def resolve_positive(dls: Any, positive: str | None) -> str | None:
    """The positive class, given once: the data's (``dls.positive``), which ``positive`` may repeat but
    never contradict; a binary problem must have one, and it must be one of the labels."""
    vocab = [str(v) for v in dls.vocab]
    data_positive = getattr(dls, "positive", None)
    if positive is not None:
        positive = str(positive)
        if positive not in vocab:
            raise ValueError(f"positive={positive!r} is not one of the labels {vocab}")
        if data_positive is not None and positive != data_positive:
            raise ValueError(f"positive={positive!r} contradicts the DataLoaders' positive class {data_positive!r}; "
                             "give it once, to the dataloaders")
    positive = positive or data_positive
    if len(vocab) == 2 and positive is None:
        raise ValueError(f"a binary problem needs its positive class: give positive= (one of {vocab}) to the dataloaders")
    if len(vocab) != 2 and positive is not None:
        raise ValueError(f"a {len(vocab)}-class problem has no positive class (got {positive!r}); decisions are the arg-max")
    return positive


def tta_flips(tta: bool | Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
    """``True`` -> the in-plane flips (`medsuite.learn.predict.FLIPS`), ``False``/None -> none, or explicit flips."""
    if tta is True:
        return FLIPS
    if not tta:
        return NO_TTA
    return tuple(tuple(int(a) for a in f) for f in tta)


@dataclass
class FittedPredictor:
    """A predictor fitted on the validation split, and that split's outputs it was fitted on."""

    predictor: Predictor
    probs: np.ndarray          # calibrated, what the predictor returns
    raw_probs: np.ndarray      # before calibration
    targets: np.ndarray


class TaskLearner(Learner):
    """A `Learner` for one medsuite task; remembers the architecture so `export(path)` is enough."""

    def __init__(self, dls: Any, model: torch.nn.Module, *, arch: str, arch_kwargs: dict[str, Any], task: Task,
                 positive: str | None = None, **kwargs: Any) -> None:
        positive = resolve_positive(dls, positive)
        super().__init__(dls, model, **kwargs)
        self.arch, self.arch_kwargs, self.task = arch, dict(arch_kwargs), task
        self.positive = positive

    @property
    def positive_index(self) -> int | None:
        return None if self.positive is None else [str(v) for v in self.dls.vocab].index(self.positive)

    def fit_predictor(self, *, tta: bool | Sequence[Sequence[int]] | None = False, calibration: str | None = None,
                      threshold_rule: str = "youden", threshold: float | None = None,
                      fuse: Sequence[str] | None = None) -> FittedPredictor:
        """The predictor of the current model, fitted on the validation split (no augmentation).

        TTA flips are applied first; ``fuse`` (table columns, e.g. ``["diameter_mm"]``; binary problems) fuses
        the image's P(positive) late with the log of those columns by a logistic regression fitted on the
        validation split (`medsuite.learn.predict.fit_fusion`); ``calibration`` ('temperature' / 'isotonic' /
        None) is fitted on those probabilities; the binary threshold is chosen by ``threshold_rule`` (or fixed
        at ``threshold``) on the calibrated P(positive): the very numbers scoring will produce.
        """
        labels = tuple(str(v) for v in self.dls.vocab)
        base = Predictor(self.model, PredictorSettings(labels, self.positive, tta_flips(tta)))
        image, targets = base.predict_loader(plain_loader(self.dls, "valid"), fused=False)
        items = None
        if fuse:
            if len(labels) != 2:
                raise ValueError(f"fuse={list(fuse)}: late fusion with table columns is for binary problems")
            items = self.dls.items("valid")
            missing = [c for c in fuse if c not in items.columns]
            if missing:
                raise ValueError(f"fuse: the table has no column(s) {missing} to fuse with the image")
            leaky = [s for s in ("train", "valid", "test") if getattr(self.dls, s) is not None
                     and assumed_diameters(self.dls.items(s))]
            if "diameter_mm" in fuse and leaky:
                log.warning("not fused with diameter_mm: the %s split(s) hold default diameters (column "
                            "diameter_source), which give the label away", "/".join(leaky))
                fuse = [c for c in fuse if c != "diameter_mm"]
            if not fuse:
                items = None
            elif len(np.unique(targets)) < 2:
                log.warning("the validation split has a single class: no fusion with %s fitted", list(fuse))
                items = None
            else:
                base = base.with_settings(fusion=fit_fusion(image, targets, items, list(fuse), positive_index=self.positive_index))
        raw = base.fuse(image, items)
        cal = fit_calibration(raw, targets, calibration, positive_index=self.positive_index) if calibration else None
        predictor = base.with_settings(calibration=cal)
        probs = predictor.calibrate(raw)
        if len(labels) == 2:
            pos = self.positive_index
            rule = f"fixed:{float(threshold):g}" if threshold is not None else threshold_rule
            y = targets == pos
            if rule.startswith("fixed:") or 0 < y.sum() < len(y):
                op = choose_threshold(probs[:, pos], y, rule, split="valid")
            else:
                log.warning("the validation split has a single class: threshold fixed at 0.5 instead of %r", rule)
                op = choose_threshold(probs[:, pos], y, "fixed:0.5", split="valid")
            predictor = predictor.with_settings(operating_point=op)
        return FittedPredictor(predictor, probs, raw, targets)

    def predictor(self, **settings: Any) -> Predictor:
        """`fit_predictor(...)`'s predictor."""
        return self.fit_predictor(**settings).predictor

    def case_index(self, predictor: Predictor | None = None) -> Any:
        """The similar-case index of the training items (the predictor's embeddings, labels, thumbnails)."""
        from medsuite.interpret.index import build_case_index

        items = self.dls.items("train")
        ids_col = "nodule_id" if "nodule_id" in items.columns else "series_uid"
        vocab = [str(v) for v in self.dls.vocab]
        predictor = predictor or Predictor.plain(self.model, vocab, self.positive)
        block = self.dls.block
        windowed = all(w.width is not None for w in block.windows)  # CT windows: every sample in [0, 1]
        facts = [c for c in ("diameter_mm",) if c in items.columns]
        info = [{c: (None if pd.isna(v) else float(v)) for c, v in zip(facts, row, strict=True)}
                for row in items[facts].itertuples(index=False)] if facts else None
        return build_case_index(
            predictor, plain_loader(self.dls, "train"), items[ids_col].astype(str).tolist(),
            labels=[vocab[int(t)] for t in self.dls.train.dataset.targets],
            meta={"id_column": ids_col, "task": self.task, "window": block.spec().get("window")},
            preview=block.preview, value_range=(0.0, 1.0) if windowed else None, info=info, block_spec=block.spec(),
        )

    def export(self, path: str | Path, *, index: bool = True, tta: bool | Sequence[Sequence[int]] | None = False,
               calibration: str | None = None, threshold_rule: str = "youden", threshold: float | None = None,
               fuse: Sequence[str] | None = None, **fields: Any) -> Path | None:
        """Write the bundle: weights, spec, the predictor (TTA, calibration, threshold and its rule, positive
        class) fitted on the validation split, validation metrics with CIs from that predictor's outputs,
        and the case index."""
        fitted = self.fit_predictor(tta=tta, calibration=calibration, threshold_rule=threshold_rule, threshold=threshold,
                                    fuse=fuse)
        predictor = fitted.predictor
        if "metrics" not in fields:
            fields["metrics"] = {"valid": validation_metrics(fitted.probs, fitted.targets, self.dls.vocab,
                                                             predictor.threshold, predictor.positive_index)}
        if index and "extra_files" not in fields:
            fields["extra_files"] = self.case_index(predictor).to_extra_files()
        fields.setdefault("data_fingerprint", self.dls.fingerprint())
        return super().export(path, arch=self.arch, arch_kwargs=self.arch_kwargs, task=self.task,
                              threshold=predictor.threshold, predictor=predictor.settings.to_json(), **fields)


def validation_metrics(probs: np.ndarray, targets: np.ndarray, vocab: list[Any], threshold: float | None,
                       positive_index: int | None = None) -> dict[str, Any]:
    """The bundle's stored metrics: the full classification report when every class is present."""
    labels = [str(v) for v in vocab]
    if len(np.unique(targets)) < len(labels):
        return {"n": int(len(targets)), "note": f"validation split lacks a class ({np.unique(targets).tolist()} of "
                                                f"{len(labels)}); no AUC"}
    return classification_report(targets, probs, labels, threshold if probs.shape[1] == 2 else None, n_boot=500,
                                 positive_index=1 if positive_index is None else positive_index)


def make_learner(dls: Any, *, task: Task, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                 positive: str | None = None, metrics: list[Any] | None = None, init_from: str | Path | None = None,
                 learner_cls: type[TaskLearner] = TaskLearner, **kwargs: Any) -> TaskLearner:
    """A TaskLearner with the default architecture for the block (or the one named) and an AUC metric.

    With ``seed`` the initial weights are drawn from that seed inside a forked RNG: the caller's global
    random state is left exactly as it was.
    """
    name, args = model_choice(dls.block, len(dls.vocab), arch, arch_kwargs, task=task)
    positive = resolve_positive(dls, positive)
    seed = kwargs.get("seed")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))  # only inside the fork: the initial weights repeat, global state is untouched
        model = build_model(name, **args)
    if init_from is not None:
        from medsuite.learn.bundle import init_from_bundle

        init_from_bundle(model, init_from)
    return learner_cls(dls, model, arch=name, arch_kwargs=args, task=task, positive=positive,
                       metrics=metrics if metrics is not None else [roc_auc], **kwargs)
