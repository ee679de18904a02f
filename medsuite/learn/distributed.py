"""Helpers for DistributedDataParallel training: the explicit distributed context (`distrib_ctx`),
process-group state, batch norm over the global batch (`SyncBatchNorm`), pad-free validation shards,
gathering predictions, and `launch` to run a function on N local processes.

Convention ("DDP = one process"): W ranks with a per-rank batch B train like one process with batch
W x B. Every epoch's order is the single-process permutation dealt out round-robin (rank r takes items
r, r + W, ...), so the union of the ranks' batch t is the single process's batch t; gradients are
averaged over ranks (DDP) and batch-norm statistics are those of the whole global batch (`SyncBatchNorm`),
so the weights match a single process within float rounding. Validation gives each rank a disjoint
contiguous shard (no padding, so no duplicated items) and concatenates the gathered results in rank
order, which restores the original loader order; metrics then equal the single-process ones. Only rank
0 writes files. Nothing here runs when a module is imported or a `Learner` is built: a process joins a
group only inside `distrib_ctx` (or `launch`).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

__all__ = [
    "ShardSampler",
    "SyncBatchNorm",
    "all_reduce_mean",
    "broadcast_object",
    "check_launch",
    "convert_sync_batchnorm",
    "distrib_ctx",
    "gather_objects",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "launch",
    "local_rank",
    "rank",
    "revert_sync_batchnorm",
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
    """Join the process group that torchrun's environment describes (WORLD_SIZE > 1); returns whether this
    call created it. Does nothing when a group exists already or WORLD_SIZE is absent or 1. Prefer
    `distrib_ctx`, which also leaves the group afterwards."""
    if dist.is_available() and dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


@contextlib.contextmanager
def distrib_ctx(backend: str | None = None) -> Iterator[bool]:
    """The explicit distributed context (fastai's ``distrib_ctx`` idea): under torchrun, join the process
    group for the block (NCCL on this rank's GPU, gloo on CPU) and leave it afterwards; elsewhere do
    nothing. Yields whether the block runs distributed.

        with distrib_ctx():
            learn = Learner(dls, model, path="runs/x")
            learn.fit_one_cycle(10, learn.lr_find().valley)
    """
    created = init_from_env(backend)
    try:
        yield is_distributed()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def check_launch() -> None:
    """Refuse to train when torchrun started several processes but none joined a process group: each
    would train alone on all the data and write the same files."""
    n = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if n > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"this process is one of {n} started by torchrun (WORLD_SIZE={n}) but has not joined "
                           "their process group: train inside `with medsuite.learn.distributed.distrib_ctx():`")


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


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over ranks (``value`` itself when not distributed)."""
    return all_reduce_sum([float(value)], device)[0] / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------------------ batch norm over ranks
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: d(sum of the ranks' losses)/d(input)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (every rank's items), on any
    device and backend (`torch.nn.SyncBatchNorm` needs a GPU). Outside a multi-process group, or in eval
    mode, it is plain batch norm; its parameters and buffers are those of the layer it replaced."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()  # statistics in fp32 under autocast too
        totals = _SumOverRanks.apply(torch.cat([xf.sum(dims), xf.new_full((1,), x.numel() // max(c, 1))]))
        count = totals[-1]
        mean = totals[:-1] / count
        centred = xf - mean.view(shape)
        sq = _SumOverRanks.apply((centred * centred).sum(dims))  # two passes: no cancellation
        var = sq / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = sq.detach() / (count - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _swap_norm(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        swapped = _swap_norm(child, make)
        if swapped is not child:
            module.add_module(name, swapped)
    return module


def _moved(old: nn.modules.batchnorm._BatchNorm, new: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """``new`` sharing ``old``'s parameters and buffers (the optimiser keeps working on the same tensors)."""
    if old.affine:
        new.weight, new.bias = old.weight, old.bias
    if old.track_running_stats:
        new.running_mean, new.running_var = old.running_mean, old.running_var
        new.num_batches_tracked = old.num_batches_tracked
    new.train(old.training)
    return new


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Replace every BatchNorm1d/2d/3d of ``model`` (in place; the top module is returned) by a batch norm
    over the global batch: `torch.nn.SyncBatchNorm` on CUDA, `SyncBatchNorm` elsewhere. Parameters and
    buffers are shared, not copied. `revert_sync_batchnorm` undoes it."""
    cuda = torch.device(device).type == "cuda"

    def make(m: nn.Module) -> nn.Module | None:
        if type(m) not in _BN_TYPES:
            return None
        cls = nn.SyncBatchNorm if cuda else SyncBatchNorm
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        new.reverts_to = type(m)
        return _moved(m, new)

    return _swap_norm(model, make)


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Undo `convert_sync_batchnorm`: the original batch-norm classes, same parameters and buffers."""
    def make(m: nn.Module) -> nn.Module | None:
        cls = getattr(m, "reverts_to", None)
        if cls is None or not isinstance(m, nn.modules.batchnorm._BatchNorm):
            return None
        return _moved(m, cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats))

    return _swap_norm(model, make)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local: int, fn: Callable[..., Any], nprocs: int, port: int, backend: str,
            args: tuple, queue: Any, received: Any, owner: int | None = None) -> None:
    from medsuite.io.workers import die_with_parent

    die_with_parent(owner)  # a SIGKILLed launcher takes its ranks with it (no orphans holding devices)
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
        # Leave the group together: a rank that tears its gloo threads down while another still holds the
        # group (rank 0 above) died now and then with "terminate called without an active exception".
        dist.barrier()
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
    context = mp.start_processes(_worker, args=(fn, nprocs, _free_port(), backend, args, queue, received, os.getpid()),
                                 nprocs=nprocs, join=False, start_method="spawn")
    result = None
    # Read the result while the processes run: a large result must not block rank 0 on a full pipe.
    while not context.join(timeout=0.05):
        if not received.is_set() and not queue.empty():
            result = queue.get()
            received.set()
    return result
