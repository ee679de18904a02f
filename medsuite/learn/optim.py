"""Optimiser construction: AdamW with parameter groups that exempt norm layers and biases from weight decay.

Decaying the scale/shift of normalisation layers and biases only shrinks them toward zero without any
regularising benefit; the usual practice (fastai, timm) keeps them out of weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["NORM_TYPES", "OptFunc", "adamw", "make_optimizer", "param_groups"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)

OptFunc = Callable[..., torch.optim.Optimizer]


def param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    """Two groups: ``decay`` (weights of conv/linear layers) with ``wd``; ``no_decay`` (biases,
    norm-layer parameters, any 1-D parameter) with weight decay 0. Frozen parameters are left out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if isinstance(module, NORM_TYPES) or name.endswith("bias") or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": wd, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def adamw(groups: list[dict[str, Any]], lr: float, wd: float) -> torch.optim.Optimizer:
    """AdamW with fastai's defaults (betas 0.9/0.99, eps 1e-5); ``wd`` applies where a group sets none."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=wd)


def make_optimizer(opt_func: OptFunc | type[torch.optim.Optimizer], model: nn.Module, lr: float,
                   wd: float) -> torch.optim.Optimizer:
    """Build the optimiser: ``opt_func`` is an Optimizer class (called ``cls(groups, lr=, weight_decay=)``)
    or a function ``f(groups, lr, wd)``; both receive the no-decay parameter groups."""
    groups = param_groups(model, wd)
    if not any(g["params"] for g in groups):
        raise ValueError("model has no trainable parameters (all requires_grad=False?)")
    groups = [g for g in groups if g["params"]]
    if isinstance(opt_func, type) and issubclass(opt_func, torch.optim.Optimizer):
        return opt_func(groups, lr=lr, weight_decay=wd)
    return opt_func(groups, lr, wd)
