"""`Recorder`: the per-batch and per-epoch history of a run (always installed by the `Learner`)."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from medsuite.learn.callbacks.core import Callback

__all__ = ["Recorder"]


class Recorder(Callback):
    """Per batch: training loss, lr, momentum. Per epoch: train loss, valid loss, metrics, last lr and
    momentum, time. ``learn.recorder.df`` (epochs) and ``.batch_df`` (batches) give pandas DataFrames.

    Batch losses are kept as device tensors during an epoch and moved to the CPU once at its end, so
    recording does not force a GPU synchronisation every batch.
    """

    order = -50  # sees the batch before other callbacks change the history's inputs
    during_lr_find = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self.losses: list[float] = []
        self.lrs: list[float] = []
        self.moms: list[float | None] = []
        self._pending: list[torch.Tensor] = []
        self._pending_n: list[int] = []
        self._epoch_sum = 0.0
        self._epoch_n = 0
        self._t0 = time.perf_counter()

    # ---- events -------------------------------------------------------------------------------
    def before_fit(self) -> None:
        self.reset()

    def before_train(self) -> None:
        self._t0 = time.perf_counter()

    def after_batch(self) -> None:
        learn = self.learn
        if not learn.training or learn.loss is None:
            return
        self._pending.append(learn.loss.detach().float().reshape(()))
        self._pending_n.append(int(learn.yb.shape[0]) if hasattr(learn.yb, "shape") else 1)
        group = learn.opt.param_groups[0]
        self.lrs.append(float(group["lr"]))
        mom = group["betas"][0] if "betas" in group else group.get("momentum")
        self.moms.append(None if mom is None else float(mom))

    def flush(self) -> None:
        """Move pending batch losses to the CPU (called at epoch end and before checkpoints)."""
        if not self._pending:
            return
        values = torch.stack(self._pending).cpu().tolist()
        for v, n in zip(values, self._pending_n, strict=True):
            self.losses.append(v)
            self._epoch_sum += v * n
            self._epoch_n += n
        self._pending, self._pending_n = [], []

    def after_train(self) -> None:
        self.flush()

    def epoch_totals(self) -> tuple[float, int]:
        """(sum of sample losses, number of samples) of this epoch's training so far, on this rank."""
        self.flush()
        return self._epoch_sum, self._epoch_n

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Called by the learner after validation with the epoch's numbers."""
        row = {**row, "lr": self.lrs[-1] if self.lrs else math.nan,
               "mom": self.moms[-1] if self.moms else None, "time_s": time.perf_counter() - self._t0}
        self.epochs.append(row)
        self._epoch_sum, self._epoch_n = 0.0, 0

    # ---- views --------------------------------------------------------------------------------
    @property
    def df(self):
        """One row per epoch: epoch, train_loss, valid_loss, metrics..., lr, mom, time_s."""
        import pandas as pd

        return pd.DataFrame(self.epochs)

    @property
    def batch_df(self):
        """One row per training batch: step, loss, lr, mom."""
        import pandas as pd

        self.flush()
        return pd.DataFrame({"step": range(len(self.losses)), "loss": self.losses,
                             "lr": self.lrs[: len(self.losses)], "mom": self.moms[: len(self.losses)]})

    @property
    def last(self) -> dict[str, Any]:
        """The last epoch's row ({} before the first epoch ends)."""
        return self.epochs[-1] if self.epochs else {}

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {"epochs": self.epochs, "losses": self.losses, "lrs": self.lrs, "moms": self.moms,
                "epoch_sum": self._epoch_sum, "epoch_n": self._epoch_n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        self.epochs = [dict(r) for r in state.get("epochs", [])]
        self.losses = list(state.get("losses", []))
        self.lrs = list(state.get("lrs", []))
        self.moms = list(state.get("moms", []))
        self._epoch_sum = float(state.get("epoch_sum", 0.0))
        self._epoch_n = int(state.get("epoch_n", 0))
