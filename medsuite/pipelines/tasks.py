"""What both pipelines share: the default model for an input block, and a Learner that knows its task.

`TaskLearner.export` needs no arguments beyond the path: it picks the operating threshold on the
validation split (Youden's J), stores validation metrics with CIs, and builds the similar-case index from
the training items, so that the bundle carries everything the scorer and the viewer need.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsuite.data.blocks import InputBlock, MultiView, Patch3D, SeriesSlices, SliceStack
from medsuite.learn.learner import Learner, set_seed
from medsuite.learn.metrics import classification_report, roc_auc, youden_threshold
from medsuite.learn.models import build_model

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


def plain_loader(dls: Any, split: str, bs: int | None = None) -> torch.utils.data.DataLoader:
    """The items of `split` in table order, without augmentation (for indexing and evaluation)."""
    source = {"train": dls.train, "valid": dls.valid, "test": dls.test}[split]
    if source is None:
        raise ValueError(f"no {split!r} split")
    dataset = copy.copy(source.dataset)
    dataset.augment = None
    return torch.utils.data.DataLoader(dataset, batch_size=bs or source.batch_size or 64, shuffle=False, num_workers=0)


class FlipTTA(torch.nn.Module):
    """Test-time augmentation: the mean softmax over in-plane flips of the input; returns log-probabilities
    (so ``softmax(output)`` is that mean and cross-entropy on it is the ensemble's loss)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flips = ((), (-1,), (-2,), (-2, -1))
        probs = torch.stack([torch.softmax(self.model(torch.flip(x, dims) if dims else x).float(), dim=1) for dims in flips])
        return torch.log(probs.mean(0).clamp_min(1e-12))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


class TaskLearner(Learner):
    """A `Learner` for one medsuite task; remembers the architecture so `export(path)` is enough."""

    def __init__(self, dls: Any, model: torch.nn.Module, *, arch: str, arch_kwargs: dict[str, Any], task: Task,
                 positive: str | None = None, **kwargs: Any) -> None:
        super().__init__(dls, model, **kwargs)
        self.arch, self.arch_kwargs, self.task = arch, dict(arch_kwargs), task
        vocab = [str(v) for v in dls.vocab]
        self.positive_index = vocab.index(str(positive)) if positive is not None and str(positive) in vocab else len(vocab) - 1

    def _binary_scores(self, probs: np.ndarray) -> np.ndarray:
        return probs[:, self.positive_index]

    def valid_preds(self) -> Any:
        """Probabilities and targets of the validation split, in table order, without augmentation."""
        return self.get_preds(plain_loader(self.dls, "valid"))

    def operating_threshold(self, preds: Any = None) -> float:
        """Youden's J on the validation split (0.5 when it is multi-class or one-class)."""
        preds = preds if preds is not None else self.valid_preds()
        probs, targets = np.asarray(preds.probs), np.asarray(preds.targets)
        if probs.shape[1] != 2 or len(np.unique(targets)) < 2:
            return 0.5
        return float(youden_threshold((targets == self.positive_index).astype(int), self._binary_scores(probs)))

    def case_index(self) -> Any:
        """The similar-case index of the training items (embeddings, labels, thumbnails)."""
        from medsuite.interpret.index import build_case_index

        items = self.dls.items("train")
        ids_col = "nodule_id" if "nodule_id" in items.columns else "series_uid"
        vocab = [str(v) for v in self.dls.vocab]
        return build_case_index(
            self.model, plain_loader(self.dls, "train"), items[ids_col].astype(str).tolist(),
            labels=[vocab[int(t)] for t in self.dls.train.dataset.targets],
            meta={"id_column": ids_col, "task": self.task}, device=self.device,
        )

    def export(self, path: str | Path, *, index: bool = True, threshold: float | None = None, **fields: Any) -> Path | None:
        """Write the bundle: weights, spec, threshold, validation metrics with CIs and the case index."""
        preds = self.valid_preds() if threshold is None or "metrics" not in fields else None
        if threshold is None:
            threshold = self.operating_threshold(preds)
        if "metrics" not in fields:
            fields["metrics"] = {"valid": validation_metrics(np.asarray(preds.probs), np.asarray(preds.targets), self.dls.vocab, threshold)}
        if index and "extra_files" not in fields:
            fields["extra_files"] = self.case_index().to_extra_files()
        fields.setdefault("data_fingerprint", self.dls.fingerprint())
        return super().export(path, arch=self.arch, arch_kwargs=self.arch_kwargs, task=self.task, threshold=float(threshold), **fields)


def validation_metrics(probs: np.ndarray, targets: np.ndarray, vocab: list[Any], threshold: float) -> dict[str, Any]:
    """The bundle's stored metrics: the full classification report when both classes are present."""
    labels = [str(v) for v in vocab]
    if len(np.unique(targets)) < 2:
        return {"n": int(len(targets)), "note": "validation split has a single class; no AUC"}
    return classification_report(targets, probs, labels, threshold if probs.shape[1] == 2 else None, n_boot=500)


def make_learner(dls: Any, *, task: Task, arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                 positive: str | None = None, metrics: list[Any] | None = None, init_from: str | Path | None = None,
                 **kwargs: Any) -> TaskLearner:
    """A TaskLearner with the default architecture for the block (or the one named) and an AUC metric."""
    default_name, default_kwargs = default_arch(dls.block, len(dls.vocab))
    name = arch or default_name
    args = {**(default_kwargs if name == default_name else {"in_channels": default_kwargs["in_channels"], "n_classes": len(dls.vocab)}), **(arch_kwargs or {})}
    if kwargs.get("seed") is not None:
        set_seed(int(kwargs["seed"]))  # the initial weights too, so that a seeded run repeats from lr_find on
    model = build_model(name, **args)
    if init_from is not None:
        from medsuite.learn.bundle import init_from_bundle

        init_from_bundle(model, init_from)
    return TaskLearner(dls, model, arch=name, arch_kwargs=args, task=task, positive=positive,
                       metrics=metrics if metrics is not None else [roc_auc], **kwargs)
