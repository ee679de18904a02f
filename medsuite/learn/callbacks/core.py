"""Callback base class, the training-loop events and the cancel exceptions.

A callback is an object with methods named after events (``before_batch``, ``after_loss``...). The
`Learner` calls them in ``order`` (lower first) and hands each callback the learner as ``self.learn``,
so a callback can read and replace any training state (``learn.xb``, ``learn.yb``, ``learn.pred``,
``learn.loss_grad``, gradients...). Raising a cancel exception skips the rest of that stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from medsuite.learn.learner import Learner

__all__ = [
    "EVENTS",
    "Callback",
    "CallbackError",
    "CancelBackwardException",
    "CancelBatchException",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CancelTrainException",
    "CancelValidateException",
]

# In the order the loop fires them (the after_cancel_* hooks run only when that stage was cancelled).
EVENTS: tuple[str, ...] = (
    "before_fit",
    "before_epoch",
    "before_train",
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_cancel_backward",
    "after_backward",
    "before_step",
    "after_cancel_step",
    "after_step",
    "after_cancel_batch",
    "after_batch",
    "after_cancel_train",
    "after_train",
    "before_validate",
    "after_cancel_validate",
    "after_validate",
    "after_cancel_epoch",
    "after_epoch",
    "after_cancel_fit",
    "after_fit",
)


class CancelFitException(Exception):
    """Stop training now; ``after_cancel_fit`` then ``after_fit`` run."""


class CancelEpochException(Exception):
    """Skip the rest of this epoch (its validation too); ``after_epoch`` still runs."""


class CancelTrainException(Exception):
    """Skip the rest of this epoch's training phase; validation still runs."""


class CancelValidateException(Exception):
    """Skip this epoch's validation phase."""


class CancelBatchException(Exception):
    """Skip the rest of this batch (no backward/step when raised before them)."""


class CancelBackwardException(Exception):
    """Skip the backward pass of this batch."""


class CancelStepException(Exception):
    """Skip the optimiser step (and the zeroing of gradients) of this batch, e.g. to accumulate."""


CANCEL_EXCEPTIONS: tuple[type[Exception], ...] = (
    CancelFitException,
    CancelEpochException,
    CancelTrainException,
    CancelValidateException,
    CancelBatchException,
    CancelBackwardException,
    CancelStepException,
)


class CallbackError(RuntimeError):
    """An exception raised inside a callback, re-raised naming the callback and the event."""

    def __init__(self, callback: str, event: str, error: BaseException) -> None:
        super().__init__(f"callback {callback} failed in event {event}: {type(error).__name__}: {error}")
        self.callback = callback
        self.event = event


class Callback:
    """Base class: override the event methods you need.

    Class attributes: ``order`` (lower runs first), ``run_train`` / ``run_valid`` (whether the callback
    runs during the training / validation phase), ``during_lr_find`` (False for callbacks that must not
    act during `Learner.lr_find`, e.g. checkpoint or log writers).
    """

    order: int = 0
    run_train: bool = True
    run_valid: bool = True
    during_lr_find: bool = True
    learn: Learner | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state saved in checkpoints (e.g. the best value so far); empty by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume)."""

    def __repr__(self) -> str:
        return f"{self.name}(order={self.order})"
