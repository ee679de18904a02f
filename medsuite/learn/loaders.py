"""Training/validation loaders rebuilt for reproducible, resumable and distributed runs.

The learner does not iterate the user's train loader directly: it rebuilds it around an `EpochSampler`
whose order is a pure function of ``(seed, epoch)`` and which can skip the items already seen, so a
run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen. When the dataset
takes seeded keys (``dataset.item_seeds`` is true: ``ds[(index, seed)]``) every item also gets its own
augmentation seed, a pure function of ``(seed, epoch, index, position)`` (`item_seed`), so random
augmentation drawn in DataLoader *worker processes* replays exactly on resume too. Under DDP the
`EpochSampler` deals the single-process order out round-robin (rank r of W takes positions r, r + W, ...,
padded to a multiple of W), so W ranks with batch B see, step by step, the single process's batches of
W x B, and every item keeps its single-process augmentation seed; the validation sampler is a pad-free
`ShardSampler`.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, Sampler

from medsuite.learn.distributed import ShardSampler

__all__ = ["EpochSampler", "item_seed", "loader_generators", "rebuild_loader", "train_loader", "valid_loader"]


def item_seed(seed: int, epoch: int, index: int, position: int) -> int:
    """The augmentation seed of the item drawn at ``position`` of epoch ``epoch`` (dataset ``index``):
    a 62-bit hash of the four numbers, so it depends on nothing else (not on workers, generators or
    what ran before), and two draws of one item in an epoch get different seeds."""
    data = struct.pack("<4Q", *(int(v) % 2**64 for v in (seed, epoch, index, position)))
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 2


def shuffles(sampler: Any) -> bool | None:
    """True for a sampler that draws a fresh permutation each epoch (`RandomSampler` without
    replacement, or any sampler with a ``shuffle = True`` attribute such as the data layer's), False
    for a sequential one, None for other samplers."""
    if isinstance(sampler, RandomSampler):
        return None if sampler.replacement else True
    flag = getattr(sampler, "shuffle", None)
    return flag if isinstance(flag, bool) and not hasattr(sampler, "set_epoch") else None


def _index(key: Any) -> int:
    """A sampler key's dataset index (keys may be ``(index, seed)`` pairs)."""
    return int(key[0]) if isinstance(key, tuple) else int(key)


class EpochSampler(Sampler[Any]):
    """Wraps a sampler: a `RandomSampler` (or a sampler with ``shuffle = True``) is replaced by a
    permutation seeded with ``(seed, epoch)``, a sequential one (``shuffle = False``) by ``range(n)``; a
    sampler with ``set_epoch`` (DistributedSampler, `ClassBalancedSampler`) gets the epoch; any other
    sampler is iterated as is. `set_skip` drops the first items (already trained on). With
    ``item_seeds`` it yields ``(index, item_seed(seed, epoch, index, position))`` pairs.

    With ``world_size > 1`` this is rank ``rank``'s share of that order: positions ``rank, rank + W, ...``
    of it (padded by repeating its start to a multiple of W, so every rank has as many items), item
    seeds from the positions in the whole order."""

    def __init__(self, base: Sampler, seed: int, item_seeds: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} outside [0, {world_size})")
        self.base, self.seed, self.epoch, self.skip = base, int(seed), 0, 0
        self.item_seeds = bool(item_seeds)
        self.rank, self.world_size = int(rank), int(world_size)

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
        mode = shuffles(base)
        if mode is not None and not isinstance(base, RandomSampler):
            n = len(base)
            return iter(torch.randperm(n, generator=self._generator()).tolist() if mode else range(n))
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
        return (_index(k) for k in base)

    def _positions(self) -> Iterator[tuple[int, int]]:
        """(position in the whole order, dataset index) of this rank's items."""
        if self.world_size == 1:
            return enumerate(self._order())
        order = list(self._order())
        if order:
            order += order[: (-len(order)) % self.world_size]
        return ((pos, order[pos]) for pos in range(self.rank, len(order), self.world_size))

    def __iter__(self) -> Iterator[Any]:
        positions = self._positions()
        if self.item_seeds:
            epoch = self.epoch
            order: Iterator[Any] = ((i, item_seed(self.seed, epoch, i, pos)) for pos, i in positions)
        else:
            order = (i for _, i in positions)
        return itertools.islice(order, self.skip, None)

    def __len__(self) -> int:
        return max(0, -(-len(self.base) // self.world_size) - self.skip)


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
    """A plain DataLoader over a map-style dataset with a batch size can be rebuilt around our sampler;
    a subclass (e.g. one that moves batches or applies batch transforms) only if it offers
    ``with_sampler(sampler) -> DataLoader`` (a copy of itself drawing from ``sampler``)."""
    if callable(getattr(dl, "with_sampler", None)):
        return True
    return (type(dl) is DataLoader and dl.batch_size is not None
            and not isinstance(dl.dataset, IterableDataset))


def _rebuild(dl: Any, sampler: Sampler, generator: torch.Generator | None = None) -> Any:
    if callable(getattr(dl, "with_sampler", None)):
        return dl.with_sampler(sampler)
    return rebuild_loader(dl, sampler, generator)


def loader_generators(dl: Any) -> list[torch.Generator]:
    """The torch Generators a loader draws its order (and worker seeds) from, for loaders the learner
    uses as they are: their states at the start of an epoch are checkpointed so a resume replays it."""
    found: list[torch.Generator] = []
    for owner in (dl, getattr(dl, "sampler", None), getattr(getattr(dl, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def train_loader(dl: DataLoader, seed: int, sampler: Sampler | None = None, rank: int = 0,
                 world_size: int = 1) -> tuple[DataLoader, EpochSampler | None]:
    """The loader the learner trains on and its `EpochSampler` (None when ``dl`` is used as it is: a
    DataLoader subclass without ``with_sampler`` in a single-process fit without a sampler callback, an
    IterableDataset, a custom batch_sampler; then the order is the loader's own and resuming replays its
    generators' epoch-start states). A subclass must offer ``with_sampler`` for DDP or a sampler callback;
    one that offers it is always rebuilt, so its order and (``dataset.item_seeds``) its items'
    augmentation seeds are pure functions of ``(seed, epoch, ...)``: exact resume with worker processes.
    ``sampler`` replaces ``dl``'s sampler (e.g. class-balanced). Under DDP each rank takes its round-robin
    share of the single-process order (`EpochSampler`), except from a sampler that has ``set_epoch`` (a
    `DistributedSampler`, `ClassBalancedSampler`), which shards by itself."""
    own_order = not callable(getattr(dl, "with_sampler", None)) and type(dl) is not DataLoader
    own_order = own_order and world_size == 1 and sampler is None
    if own_order or not _rebuildable(dl):  # a subclass keeps its own order unless DDP or a sampler needs another
        if world_size > 1 or sampler is not None:
            raise ValueError(
                f"the train loader ({type(dl).__name__}) cannot take another sampler: "
                f"{'distributed training' if world_size > 1 else 'a sampler callback'} needs a plain torch "
                "DataLoader over a map-style dataset, or a loader with a with_sampler(sampler) method")
        return dl, None
    base = sampler if sampler is not None else dl.sampler
    shards_itself = isinstance(base, DistributedSampler) or hasattr(base, "set_epoch")
    epoch_sampler = EpochSampler(base, seed, item_seeds=bool(getattr(dl.dataset, "item_seeds", False)),
                                 rank=0 if shards_itself else rank, world_size=1 if shards_itself else world_size)
    g = torch.Generator()
    g.manual_seed(seed)  # worker seeds come from here, not from the global RNG
    return _rebuild(dl, epoch_sampler, generator=g), epoch_sampler


def valid_loader(dl: DataLoader, rank: int = 0, world_size: int = 1) -> DataLoader:
    """``dl`` itself, or under DDP a copy whose sampler gives this rank a disjoint, pad-free shard."""
    if world_size <= 1:
        return dl
    if not _rebuildable(dl):
        raise ValueError(f"distributed validation needs a plain torch DataLoader over a map-style dataset "
                         f"or a loader with with_sampler(sampler); got {type(dl).__name__} (it cannot be "
                         "sharded without duplicates)")
    base: Sized = dl.sampler
    return _rebuild(dl, ShardSampler(base, rank, world_size))
