"""Class-balanced sampling: draw training items with probability inversely proportional to their
class frequency, so every class fills about the same share of each batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, TensorDataset

from medsuite.learn.callbacks.core import Callback

__all__ = ["ClassBalancedSampler", "ClassBalancedSampling", "dataset_labels"]


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Integer labels of a dataset: its ``targets`` or ``labels`` attribute, or the second tensor of
    a `TensorDataset`; otherwise a clear error (pass ``labels=`` explicitly)."""
    for attr in ("targets", "labels"):
        if hasattr(dataset, attr):
            return np.asarray(getattr(dataset, attr)).astype(np.int64).reshape(-1)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].cpu().numpy().astype(np.int64).reshape(-1)
    raise ValueError(f"class-balanced sampling: cannot find labels on {type(dataset).__name__} "
                     "(no .targets/.labels attribute); pass labels=[...] in dataset order")


class ClassBalancedSampler(Sampler[int]):
    """``num_samples`` indices drawn with replacement, weight 1/count(class) per item; the draw for an
    epoch is seeded by ``(seed, epoch, rank)`` (call `set_epoch`), so runs and resumes are reproducible.
    Under DDP each of ``world_size`` ranks draws its own ``ceil(num_samples / world_size)`` items."""

    def __init__(self, labels: Sequence[int] | np.ndarray, num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) == 0:
            raise ValueError("ClassBalancedSampler: no labels")
        classes, counts = np.unique(labels, return_counts=True)
        weight_of = dict(zip(classes.tolist(), (1.0 / counts).tolist(), strict=True))
        self.weights = torch.tensor([weight_of[c] for c in labels.tolist()], dtype=torch.double)
        total = len(labels) if num_samples is None else int(num_samples)
        self.num_samples = -(-total // world_size)
        self.seed, self.rank, self.world_size, self.epoch = int(seed), rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch * 1_009 + self.rank) % (2**63 - 1))
        return iter(torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ClassBalancedSampling(Callback):
    """Installs a `ClassBalancedSampler` on the training loader for the fit (labels from ``labels`` or
    the train dataset, see `dataset_labels`). Validation is not resampled."""

    order = -30

    def __init__(self, labels: Sequence[int] | np.ndarray | None = None, num_samples: int | None = None) -> None:
        self.labels, self.num_samples = labels, num_samples

    def before_fit(self) -> None:
        from medsuite.learn import distributed as D

        learn = self.learn
        labels = self.labels if self.labels is not None else dataset_labels(learn.dls.train.dataset)
        if len(labels) != len(learn.dls.train.dataset):
            raise ValueError(f"ClassBalancedSampling: {len(labels)} labels for a train dataset of "
                             f"{len(learn.dls.train.dataset)} items")
        learn.train_sampler = ClassBalancedSampler(labels, self.num_samples, learn.data_seed, D.rank(),
                                                   D.world_size())

    def after_fit(self) -> None:
        self.learn.train_sampler = None
