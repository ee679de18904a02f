"""MixUp and CutMix: train on blends of two items with correspondingly blended (soft) targets.

Both turn ``learn.yb`` into class-probability targets ``(B, n_classes)`` for the training batch, which
`torch.nn.CrossEntropyLoss` (and `LabelSmoothingCrossEntropy`) accept directly; a custom loss must
accept such soft targets too. Validation batches are left untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsuite.learn.callbacks.core import Callback

__all__ = ["CutMix", "MixUp"]


class _MixBase(Callback):
    run_valid = False
    order = 30  # after data-side callbacks, before the loss

    def __init__(self, alpha: float) -> None:
        if alpha <= 0:
            raise ValueError(f"{type(self).__name__}: alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.lam: torch.Tensor | None = None
        self.perm: torch.Tensor | None = None

    def _draw(self, batch_size: int, device: torch.device) -> None:
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample()
        self.lam = torch.maximum(lam, 1 - lam).to(device)  # the original item dominates
        self.perm = torch.randperm(batch_size).to(device)

    def after_pred(self) -> None:
        """Replace integer targets with the blended one-hot targets."""
        learn = self.learn
        n_classes = learn.pred.shape[-1]
        y = learn.yb
        y1 = y.float() if y.ndim == 2 else F.one_hot(y.long(), n_classes).float()
        learn.yb = self.lam * y1 + (1 - self.lam) * y1[self.perm]


class MixUp(_MixBase):
    """MixUp (Zhang et al. 2018): ``x = lam*x + (1-lam)*x[perm]``, ``lam ~ Beta(alpha, alpha)``, max'd with 1-lam."""

    def __init__(self, alpha: float = 0.4) -> None:
        super().__init__(alpha)

    def before_batch(self) -> None:
        x = self.learn.xb
        self._draw(x.shape[0], x.device)
        lam = self.lam.to(x.dtype)
        self.learn.xb = lam * x + (1 - lam) * x[self.perm]


class CutMix(_MixBase):
    """CutMix (Yun et al. 2019): paste a random box of ``x[perm]`` over each image; the target weight is
    the kept area. The box is cut on the last ``spatial_dims`` axes (2: (H, W) of 2D slices, stacks and
    views; 3: (D, H, W) of 3D patches)."""

    def __init__(self, alpha: float = 1.0, spatial_dims: int = 2) -> None:
        super().__init__(alpha)
        if spatial_dims not in (2, 3):
            raise ValueError(f"CutMix: spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def before_batch(self) -> None:
        x = self.learn.xb
        if x.ndim < self.spatial_dims + 2:
            raise ValueError(f"CutMix: input of shape {tuple(x.shape)} has fewer than {self.spatial_dims} "
                             "spatial axes after batch and channel")
        self._draw(x.shape[0], x.device)
        sizes = x.shape[-self.spatial_dims:]
        ratio = float((1 - self.lam) ** (1 / self.spatial_dims))
        slices = []
        for size in sizes:
            cut = int(round(size * ratio))
            centre = int(torch.randint(size, ()).item())
            lo, hi = max(0, centre - cut // 2), min(size, centre + cut - cut // 2)
            slices.append(slice(lo, hi))
        x = x.clone()
        index = (Ellipsis, *slices)
        x[index] = x[self.perm][index]
        kept = 1.0
        for s, size in zip(slices, sizes, strict=True):
            kept *= (s.stop - s.start) / size
        self.lam = torch.tensor(1.0 - kept, device=x.device)  # share of the original image left
        self.learn.xb = x
