"""Training/validation loaders rebuilt for reproducible, resumable and distributed runs.

The learner does not iterate the user's train loader directly: it rebuilds it around an `EpochSampler`
whose order is a pure function of ``(seed, epoch)`` and which can skip the items already seen, so a
run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen. Under DDP the
train sampler becomes a `DistributedSampler` and the validation sampler a pad-free `ShardSampler`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from medsuite.learn.distributed import ShardSampler

__all__ = ["EpochSampler", "rebuild_loader", "train_loader", "valid_loader"]


class EpochSampler(Sampler[int]):
    """Wraps a sampler: a `RandomSampler` is replaced by a permutation seeded with ``(seed, epoch)``;
    a sampler with ``set_epoch`` (DistributedSampler, `ClassBalancedSampler`) gets the epoch; any
    other sampler is iterated as is. `set_skip` drops the first items (already trained on)."""

    def __init__(self, base: Sampler, seed: int) -> None:
        self.base, self.seed, self.epoch, self.skip = base, int(seed), 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_skip(self, n_items: int) -> None:
        self.skip = max(0, int(n_items))

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63 - 1))
        return g

    def _order(self) -> Iterator[int]:
        base = self.base
        if isinstance(base, RandomSampler):
            n = len(base.data_source)
            if base.replacement:
                return iter(torch.randint(n, (base.num_samples,), generator=self._generator()).tolist())
            g = self._generator()
            perm: list[int] = []
            for _ in range(-(-base.num_samples // n)):
                perm.extend(torch.randperm(n, generator=g).tolist())
            return iter(perm[: base.num_samples])
        if hasattr(base, "set_epoch"):
            base.set_epoch(self.epoch)
        return iter(base)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._order(), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def rebuild_loader(dl: DataLoader, sampler: Sampler, generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader like ``dl`` (batch size, collate, workers...) drawing from ``sampler``."""
    kwargs: dict[str, Any] = dict(
        batch_size=dl.batch_size, sampler=sampler, num_workers=dl.num_workers, collate_fn=dl.collate_fn,
        pin_memory=dl.pin_memory, drop_last=dl.drop_last, timeout=dl.timeout,
        worker_init_fn=dl.worker_init_fn, multiprocessing_context=dl.multiprocessing_context,
        generator=generator, persistent_workers=dl.persistent_workers,
    )
    if dl.num_workers > 0:
        kwargs["prefetch_factor"] = dl.prefetch_factor
    return DataLoader(dl.dataset, **kwargs)


def _rebuildable(dl: Any) -> bool:
    return isinstance(dl, DataLoader) and dl.batch_size is not None and not isinstance(dl.dataset, IterableDataset)


def train_loader(dl: DataLoader, seed: int, sampler: Sampler | None = None, rank: int = 0,
                 world_size: int = 1) -> tuple[DataLoader, EpochSampler | None]:
    """The loader the learner trains on and its `EpochSampler` (None when ``dl`` cannot be rebuilt:
    an IterableDataset or a custom batch_sampler; then order and mid-epoch resume are the loader's own).
    ``sampler`` replaces ``dl``'s sampler (e.g. class-balanced); under DDP a shuffling or sequential
    sampler becomes a `DistributedSampler` seeded with ``seed``."""
    if not _rebuildable(dl):
        return dl, None
    base = sampler if sampler is not None else dl.sampler
    if world_size > 1 and not isinstance(base, DistributedSampler) and not hasattr(base, "set_epoch"):
        base = DistributedSampler(dl.dataset, num_replicas=world_size, rank=rank,
                                  shuffle=isinstance(base, RandomSampler), seed=seed, drop_last=False)
    epoch_sampler = EpochSampler(base, seed)
    g = torch.Generator()
    g.manual_seed(seed)  # worker seeds come from here, not from the global RNG
    return rebuild_loader(dl, epoch_sampler, generator=g), epoch_sampler


def valid_loader(dl: DataLoader, rank: int = 0, world_size: int = 1) -> DataLoader:
    """``dl`` itself, or under DDP a copy whose sampler gives this rank a disjoint, pad-free shard."""
    if world_size <= 1:
        return dl
    if not _rebuildable(dl):
        raise ValueError("distributed validation needs a map-style valid DataLoader with a batch_size "
                         "(an IterableDataset or custom batch_sampler cannot be sharded without duplicates)")
    base: Sized = dl.sampler
    return rebuild_loader(dl, ShardSampler(base, rank, world_size))
