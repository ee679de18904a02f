"""Callbacks that watch a monitored value at each epoch end: `EarlyStopping` and `SaveBest`."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from medsuite.learn.callbacks.core import Callback, CancelFitException

__all__ = ["EarlyStopping", "SaveBest", "TrackerCallback"]


class TrackerCallback(Callback):
    """Reads ``monitor`` (a column of ``learn.recorder`` epoch rows: 'valid_loss', a metric name...)
    after each epoch; ``comp`` defaults to "lower is better" for names containing 'loss', else higher."""

    order = 70  # after the recorder has logged the epoch
    during_lr_find = False

    def __init__(self, monitor: str = "valid_loss", comp: Callable[[float, float], bool] | None = None,
                 min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.comp = comp or (operator.lt if "loss" in monitor else operator.gt)
        lower_is_better = bool(self.comp(0.0, 1.0))
        self.min_delta = -abs(min_delta) if lower_is_better else abs(min_delta)
        self.best: float | None = None

    def before_fit(self) -> None:
        self.best = None
        self.new_best = False

    def _value(self) -> float:
        row = self.learn.recorder.last
        if self.monitor not in row:
            raise KeyError(f"{self.name}: monitored value {self.monitor!r} not in the epoch results "
                           f"{sorted(k for k in row if k not in ('epoch', 'lr', 'mom', 'time_s'))}")
        return float(row[self.monitor])

    def after_epoch(self) -> None:
        value = self._value()
        self.new_best = not math.isnan(value) and (self.best is None or self.comp(value - self.min_delta, self.best))
        if self.new_best:
            self.best = value

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")


class EarlyStopping(TrackerCallback):
    """Stop the fit when ``monitor`` has not improved (by more than ``min_delta``) for ``patience`` epochs."""

    def __init__(self, monitor: str = "valid_loss", comp: Callable[[float, float], bool] | None = None,
                 min_delta: float = 0.0, patience: int = 1) -> None:
        super().__init__(monitor, comp, min_delta)
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.patience = int(patience)
        self.wait = 0
        self.stopped_epoch: int | None = None

    def before_fit(self) -> None:
        super().before_fit()
        self.wait, self.stopped_epoch = 0, None

    def after_epoch(self) -> None:
        super().after_epoch()
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.learn.epoch
            raise CancelFitException()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait = int(state.get("wait", 0))


class SaveBest(TrackerCallback):
    """Save the model weights (atomically, rank 0) to ``path/models/<fname>.safetensors`` whenever
    ``monitor`` improves; ``load_at_end`` puts the best weights back into the model after the fit."""

    def __init__(self, monitor: str = "valid_loss", comp: Callable[[float, float], bool] | None = None,
                 min_delta: float = 0.0, fname: str = "best", load_at_end: bool = False) -> None:
        super().__init__(monitor, comp, min_delta)
        self.fname, self.load_at_end = fname, load_at_end
        self.best_epoch: int | None = None

    def after_epoch(self) -> None:
        super().after_epoch()
        if self.new_best:
            self.best_epoch = self.learn.epochs_done
            self.learn.save(self.fname)

    def after_fit(self) -> None:
        if self.load_at_end and self.best is not None:
            self.learn.load(self.fname)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best_epoch = state.get("best_epoch")
