"""Progress bar over the batches (tqdm) and a table with one line per epoch."""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from medsuite.learn.callbacks.core import Callback

__all__ = ["ProgressCallback", "format_epoch_table"]

_SKIP = {"lr", "mom"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def format_epoch_table(rows: list[dict[str, Any]], header: bool = True) -> str:
    """Fixed-width table of epoch rows (what the progress callback prints)."""
    if not rows:
        return ""
    cols = [c for c in rows[0] if c not in _SKIP]
    width = {c: max(len(c), 10) for c in cols}
    lines = []
    if header:
        lines.append("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        lines.append("  ".join(_fmt(r.get(c, "")).ljust(width[c]) for c in cols))
    return "\n".join(lines)


class ProgressCallback(Callback):
    """tqdm bar per training/validation phase (rank 0 only), then the epoch's row of the table.

    ``bars``: None (default) draws the bars only when their stream is a terminal, so a log file or a pipe
    gets the epoch rows without a carriage-return update per batch; True/False forces them on or off."""

    order = 60  # after the other after_batch/after_epoch work
    during_lr_find = False  # the sweep is short and its epoch rows are meaningless

    def __init__(self, stream: TextIO | None = None, refresh_every: int = 10, bars: bool | None = None) -> None:
        self.stream, self.refresh_every = stream, max(1, int(refresh_every))
        self.bars = bars
        self.bar = None
        self._header_done = False

    def _bars_wanted(self) -> bool:
        if self.bars is not None:
            return self.bars
        stream = self.stream or sys.stderr
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            return False

    def before_fit(self) -> None:
        self._header_done = False

    def _open(self, total: int, desc: str, initial: int = 0) -> None:
        if not self.learn.is_main or not self._bars_wanted():
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, leave=False, file=self.stream or sys.stderr,
                        dynamic_ncols=True, initial=initial)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def before_train(self) -> None:
        learn = self.learn
        self._open(learn.n_iter, f"epoch {learn.epoch + 1}/{learn.n_epoch} train", learn.start_iter)

    def before_validate(self) -> None:
        dl = self.learn.dl_valid
        self._open(len(dl) if dl is not None else 0, f"epoch {self.learn.epoch + 1}/{self.learn.n_epoch} valid")

    def after_batch(self) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.learn.training and self.learn.iter % self.refresh_every == 0 and self.learn.loss is not None:
            self.bar.set_postfix(loss=f"{float(self.learn.loss):.4f}", refresh=False)

    def after_train(self) -> None:
        self._close()

    def after_validate(self) -> None:
        self._close()

    def after_cancel_fit(self) -> None:
        self._close()

    def after_epoch(self) -> None:
        self._close()
        if not self.learn.is_main or not self.learn.recorder.epochs:
            return
        from tqdm.auto import tqdm

        text = format_epoch_table([self.learn.recorder.epochs[-1]], header=not self._header_done)
        self._header_done = True
        tqdm.write(text, file=self.stream or sys.stdout)
