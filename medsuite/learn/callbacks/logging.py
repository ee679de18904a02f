"""Run logs: `CSVLogger` (the epoch table as CSV) and `TensorBoardLogger` (optional dependency).

Only rank 0 writes; only numbers are logged (never item names or patient identifiers).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medsuite.io.atomic import atomic_write_text
from medsuite.learn.callbacks.core import Callback

__all__ = ["CSVLogger", "TensorBoardLogger"]


class CSVLogger(Callback):
    """Writes ``learn.recorder`` epoch rows to ``path/<fname>`` after every epoch, atomically (the whole
    file is rewritten under a temporary name and renamed, so a resumed run's log stays consistent)."""

    order = 80
    during_lr_find = False

    def __init__(self, fname: str = "history.csv") -> None:
        self.fname = fname

    @property
    def file(self) -> Path:
        return self.learn.run_dir("CSVLogger") / self.fname

    def after_epoch(self) -> None:
        if not self.learn.is_main:
            return
        rows = self.learn.recorder.epochs
        cols: list[str] = []
        for r in rows:
            cols.extend(c for c in r if c not in cols)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.file, buf.getvalue())


class TensorBoardLogger(Callback):
    """Training loss and lr per batch, epoch results per epoch, to TensorBoard event files in
    ``log_dir`` (default ``path/tensorboard``). Needs the ``tensorboard`` package
    (``pip install medsuite[tensorboard]``)."""

    order = 80
    during_lr_find = False

    def __init__(self, log_dir: str | Path | None = None, every: int = 1) -> None:
        self.log_dir, self.every = log_dir, max(1, int(every))
        self.writer: Any = None

    def before_fit(self) -> None:
        if not self.learn.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("TensorBoardLogger needs the 'tensorboard' package: "
                              "pip install 'medsuite[tensorboard]'") from e
        self.writer = SummaryWriter(log_dir=str(self.log_dir or self.learn.run_dir("TensorBoardLogger") / "tensorboard"))

    def after_batch(self) -> None:
        learn = self.learn
        if self.writer is None or not learn.training or learn.train_iter % self.every:
            return
        step = learn.epochs_done * max(1, learn.n_iter) + learn.iter
        self.writer.add_scalar("train/loss", float(learn.loss), step)
        self.writer.add_scalar("train/lr", float(learn.opt.param_groups[0]["lr"]), step)

    def after_epoch(self) -> None:
        if self.writer is None:
            return
        row = self.learn.recorder.last
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(f"epoch/{k}", float(v), int(row.get("epoch", self.learn.epoch)))
        self.writer.flush()

    def after_fit(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
