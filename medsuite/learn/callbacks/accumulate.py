"""Gradient accumulation and gradient clipping."""

from __future__ import annotations

import torch

from medsuite.learn.callbacks.core import Callback, CancelStepException

__all__ = ["GradientAccumulation", "GradientClip"]


class GradientAccumulation(Callback):
    """Step the optimiser every ``n_batches`` batches, with the loss scaled by ``1/n_batches``.

    With a mean-reduced loss and equal batch sizes, ``n_batches`` batches of size b give the same
    gradient as one batch of size ``n_batches·b``. A partial group at the end of an epoch is stepped.
    """

    order = 10  # before GradientClip, which must only see complete gradients

    def __init__(self, n_batches: int = 4) -> None:
        if n_batches < 1:
            raise ValueError(f"GradientAccumulation: n_batches must be >= 1, got {n_batches}")
        self.n_batches = int(n_batches)

    def before_train(self) -> None:
        self.count = self.learn.start_iter % self.n_batches

    def after_loss(self) -> None:
        if self.learn.training:
            self.learn.loss_grad = self.learn.loss_grad / self.n_batches

    def before_step(self) -> None:
        self.count += 1
        last_of_epoch = self.learn.iter + 1 >= self.learn.n_iter
        if self.count % self.n_batches != 0 and not last_of_epoch:
            raise CancelStepException()
        self.count = 0


class GradientClip(Callback):
    """Clip the global gradient norm to ``max_norm`` before each optimiser step (after unscaling fp16
    gradients). ``learn.grad_norm`` holds the norm before clipping."""

    order = 20

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if max_norm <= 0:
            raise ValueError(f"GradientClip: max_norm must be > 0, got {max_norm}")
        self.max_norm, self.norm_type = float(max_norm), float(norm_type)

    def before_step(self) -> None:
        learn = self.learn
        if learn.scaler is not None:
            learn.scaler.unscale_(learn.opt)
        params = [p for g in learn.opt.param_groups for p in g["params"] if p.grad is not None]
        learn.grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm, norm_type=self.norm_type)
