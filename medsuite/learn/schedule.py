"""One-cycle schedule (cosine warm-up then cosine annealing) on learning rate and momentum.

The schedule is a pure function of the training position ``pct`` in [0, 1], so resuming a run only
needs the step counter (saved in checkpoints) to continue on the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from medsuite.learn.callbacks.core import Callback

__all__ = ["OneCycleSchedule", "ParamScheduler", "combined_cos", "sched_cos", "set_hyper"]


def sched_cos(start: float, end: float, pct: float) -> float:
    """Cosine interpolation from ``start`` (pct=0) to ``end`` (pct=1)."""
    return start + (1 + math.cos(math.pi * (1 - pct))) * (end - start) / 2


def combined_cos(pct: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """Cosine from ``start`` to ``middle`` over the first ``pct_start``, then cosine to ``end``."""
    if pct_start > 0 and pct < pct_start:
        return sched_cos(start, middle, pct / pct_start)
    rest = 1 - pct_start
    return sched_cos(middle, end, 0.0 if rest <= 0 else min(1.0, (pct - pct_start) / rest))


@dataclass(frozen=True)
class OneCycleSchedule:
    """fastai's one-cycle: lr from lr_max/div up to lr_max then down to lr_max/(div*final_div)...

    ...exactly: start ``lr_max / div``, peak ``lr_max`` at ``pct_start``, end ``lr_max / final_div``;
    momentum goes the opposite way (``moms`` = start, middle, end).
    """

    lr_max: float
    pct_start: float = 0.25
    div: float = 25.0
    final_div: float = 1e4
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95)

    def __post_init__(self) -> None:
        if not self.lr_max > 0:
            raise ValueError(f"one-cycle: lr_max must be > 0, got {self.lr_max}")
        if not 0 <= self.pct_start <= 1:
            raise ValueError(f"one-cycle: pct_start must be in [0, 1], got {self.pct_start}")
        if self.div <= 0 or self.final_div <= 0:
            raise ValueError(f"one-cycle: div and final_div must be > 0, got {self.div}, {self.final_div}")

    def lr(self, pct: float) -> float:
        return combined_cos(pct, self.pct_start, self.lr_max / self.div, self.lr_max, self.lr_max / self.final_div)

    def mom(self, pct: float) -> float | None:
        if self.moms is None:
            return None
        return combined_cos(pct, self.pct_start, *self.moms)


def set_hyper(opt, lr: float | None = None, mom: float | None = None) -> None:
    """Set lr and momentum on every parameter group (momentum = ``betas[0]`` for Adam-type optimisers)."""
    for group in opt.param_groups:
        if lr is not None:
            group["lr"] = lr
        if mom is not None:
            if "betas" in group:
                group["betas"] = (mom, *tuple(group["betas"])[1:])
            elif "momentum" in group:
                group["momentum"] = mom


class ParamScheduler(Callback):
    """Sets lr (and momentum) before each training batch from a schedule of ``learn.pct_train``."""

    order = -20  # before anything reads the lr of this batch
    run_valid = False

    def __init__(self, schedule: OneCycleSchedule) -> None:
        self.schedule = schedule

    def before_batch(self) -> None:
        pct = self.learn.pct_train
        set_hyper(self.learn.opt, self.schedule.lr(pct), self.schedule.mom(pct))
