"""`ActivationStats`: per-layer activation statistics during training and the "colorful dimension"
plot (histograms of activations over batches), to spot dead or exploding layers early."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medsuite.learn.callbacks.core import Callback

__all__ = ["ActivationStats"]


def _default_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules with parameters (conv, linear, norm layers), by qualified name."""
    return {name: m for name, m in model.named_modules()
            if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False))}


class ActivationStats(Callback):
    """Records for each watched layer and training batch: mean, std, the share of activations with
    ``|a| <= near_zero``, and a histogram over ``hist_range`` (``bins`` bins). Statistics are computed
    on the device and copied as a few numbers per layer, every ``every`` batches.

    ``modules``: names of modules to watch (default: every leaf module with parameters).
    ``stats`` (DataFrame: layer, step, mean, std, near_zero), `plot_layer_stats`, `color_dim`.
    """

    order = -5
    run_valid = False

    def __init__(self, modules: list[str] | None = None, every: int = 1, near_zero: float = 0.05,
                 hist_range: tuple[float, float] = (-10.0, 10.0), bins: int = 60) -> None:
        self.names, self.every, self.near_zero = modules, max(1, int(every)), float(near_zero)
        self.hist_range, self.bins = (float(hist_range[0]), float(hist_range[1])), int(bins)
        self.handles: list[Any] = []
        self.records: dict[str, list[dict[str, Any]]] = {}
        self._step = 0

    def _watch(self) -> dict[str, nn.Module]:
        named = dict(self.learn.model.named_modules())
        if self.names is None:
            return _default_modules(self.learn.model)
        missing = [n for n in self.names if n not in named]
        if missing:
            raise KeyError(f"ActivationStats: no module named {missing} (have e.g. {list(named)[1:6]})")
        return {n: named[n] for n in self.names}

    def _remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def before_fit(self) -> None:
        self._remove()
        self.records = {}
        self._step = 0
        for name, module in self._watch().items():
            self.records[name] = []
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            learn = self.learn
            if not (module.training and torch.is_grad_enabled()) or self._step % self.every:
                return
            if not isinstance(output, torch.Tensor) or learn is None:
                return
            a = output.detach().float()
            stats = torch.stack([a.mean(), a.std() if a.numel() > 1 else a.new_zeros(()),
                                 (a.abs() <= self.near_zero).float().mean()])
            hist = torch.histc(a, bins=self.bins, min=self.hist_range[0], max=self.hist_range[1])
            self.records[name].append({"step": self._step, "stats": stats, "hist": hist})

        return hook

    def after_batch(self) -> None:
        self._step += 1

    def after_train(self) -> None:
        # one device->host copy per epoch instead of one per layer and batch
        for recs in self.records.values():
            for r in recs:
                if isinstance(r["stats"], torch.Tensor):
                    r["stats"] = r["stats"].cpu().numpy()
                    r["hist"] = r["hist"].cpu().numpy()

    def after_fit(self) -> None:
        self.after_train()
        self._remove()

    @property
    def stats(self):
        """DataFrame: layer, step, mean, std, near_zero."""
        import pandas as pd

        self.after_train()
        rows = [{"layer": name, "step": r["step"], "mean": float(r["stats"][0]), "std": float(r["stats"][1]),
                 "near_zero": float(r["stats"][2])} for name, recs in self.records.items() for r in recs]
        return pd.DataFrame(rows, columns=["layer", "step", "mean", "std", "near_zero"])

    def histograms(self, layer: str) -> np.ndarray:
        """(n_batches, bins) activation histograms of ``layer``."""
        self.after_train()
        if layer not in self.records:
            raise KeyError(f"ActivationStats: layer {layer!r} not recorded (have {list(self.records)})")
        recs = self.records[layer]
        return np.stack([r["hist"] for r in recs]) if recs else np.zeros((0, self.bins))

    def plot_layer_stats(self, layer: str):
        """Mean, std and near-zero share of ``layer`` over the batches; returns a matplotlib Figure."""
        from matplotlib.figure import Figure

        df = self.stats
        df = df[df.layer == layer]
        fig = Figure(figsize=(10, 3))
        for i, col in enumerate(("mean", "std", "near_zero")):
            ax = fig.add_subplot(1, 3, i + 1)
            ax.plot(df["step"], df[col])
            ax.set_title(f"{layer}: {col}")
            ax.set_xlabel("batch")
        fig.tight_layout()
        return fig

    def color_dim(self, layers: list[str] | None = None):
        """The 'colorful dimension' plot: for each layer an image of log(1 + histogram) with batches
        on x and activation value on y (fastai's diagnostic of training dynamics). Returns a Figure."""
        from matplotlib.figure import Figure

        layers = list(self.records) if layers is None else layers
        fig = Figure(figsize=(4 * max(1, len(layers)), 3.5))
        for i, layer in enumerate(layers):
            ax = fig.add_subplot(1, max(1, len(layers)), i + 1)
            h = self.histograms(layer)
            if len(h):
                ax.imshow(np.log1p(h.T), origin="lower", aspect="auto", cmap="viridis",
                          extent=(0, len(h), self.hist_range[0], self.hist_range[1]))
            ax.set_title(layer)
            ax.set_xlabel("batch")
            ax.set_ylabel("activation")
        fig.tight_layout()
        return fig
