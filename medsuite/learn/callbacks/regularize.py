"""Label smoothing: cross-entropy against ``(1-eps)·one_hot + eps/n_classes`` targets.

Built on `torch.nn.CrossEntropyLoss(label_smoothing=eps)`; works with integer targets and with the
soft targets of MixUp/CutMix, and supports ``reduction='none'`` (per-item losses for `get_preds`).
"""

from __future__ import annotations

from torch import nn

__all__ = ["LabelSmoothingCrossEntropy"]


class LabelSmoothingCrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy with label smoothing ``eps`` (Szegedy et al. 2016); pass it as ``Learner(loss_func=...)``."""

    def __init__(self, eps: float = 0.1, weight=None, reduction: str = "mean") -> None:
        if not 0 <= eps < 1:
            raise ValueError(f"LabelSmoothingCrossEntropy: eps must be in [0, 1), got {eps}")
        super().__init__(weight=weight, reduction=reduction, label_smoothing=eps)
        self.eps = eps

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
