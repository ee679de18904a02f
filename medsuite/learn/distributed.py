"""Helpers for DistributedDataParallel training: process-group state, pad-free validation shards,
gathering predictions, and `launch` to run a function on N local processes.

Convention: every rank trains on its own `DistributedSampler` shard; validation gives each rank a
disjoint contiguous shard (no padding, so no duplicated items) and concatenates the gathered results in
rank order, which restores the original loader order; metrics then equal the single-process ones.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "ShardSampler",
    "gather_objects",
    "is_distributed",
    "is_main_process",
    "launch",
    "local_rank",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the only process that writes checkpoints, logs and exports."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the process group from torchrun's environment (WORLD_SIZE > 1); returns whether
    distributed. Does nothing when already initialised or when WORLD_SIZE is absent or 1."""
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` gets the contiguous slice ``[r*n//w, (r+1)*n//w)`` of the base order.

    Shards are disjoint and cover every item exactly once (sizes differ by at most one), unlike
    `DistributedSampler`, which pads with duplicates and would bias validation metrics.
    """

    def __init__(self, base: Sized, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardSampler: rank {rank} outside [0, {world_size})")
        self.base, self.rank, self.world_size = base, rank, world_size

    def _bounds(self) -> tuple[int, int]:
        n = len(self.base)
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size

    def __iter__(self) -> Iterator[int]:
        start, stop = self._bounds()
        order = list(iter(self.base)) if not isinstance(self.base, range) else self.base
        return iter(order[start:stop])

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start


def gather_objects(obj: Any) -> list[Any]:
    """All ranks' ``obj`` in rank order (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum over ranks (identity when not distributed)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local: int, fn: Callable[..., Any], nprocs: int, port: int, backend: str,
            args: tuple, queue: Any, received: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local),
                      LOCAL_RANK=str(local), WORLD_SIZE=str(nprocs))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=local, world_size=nprocs)
    try:
        result = fn(*args)
        if local == 0:
            queue.put(result)
            # tensors travel through shared memory owned by this process: stay alive until read
            received.wait(timeout=600)
    finally:
        dist.destroy_process_group()


def launch(fn: Callable[..., Any], nprocs: int, *args: Any, backend: str | None = None) -> Any:
    """Run ``fn(*args)`` on ``nprocs`` local processes in one process group (loopback only) and return
    rank 0's result. ``fn`` must be importable (a module-level function). Backend: nccl when CUDA has
    enough devices, gloo otherwise."""
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ValueError(f"launch: nprocs must be >= 1, got {nprocs}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nprocs else "gloo"
    ctx = mp.get_context("spawn")
    queue, received = ctx.SimpleQueue(), ctx.Event()
    context = mp.start_processes(_worker, args=(fn, nprocs, _free_port(), backend, args, queue, received),
                                 nprocs=nprocs, join=False, start_method="spawn")
    result = None
    # Read the result while the processes run: a large result must not block rank 0 on a full pipe.
    while not context.join(timeout=0.05):
        if not received.is_set() and not queue.empty():
            result = queue.get()
            received.set()
    return result
