"""Architectures for 2.5D and 3D CT classification, trained from scratch (nothing is downloaded).

All are built from MONAI blocks (a `Convolution` stem and strided `ResidualUnit`s) and share one
contract (docs/contracts.md): ``forward(x)`` returns logits ``(B, n_classes)``; ``embed(x)`` returns the
penultimate features ``(B, embed_dim)``; ``gradcam_layer`` is the last convolutional block, whose output
is a spatial feature map. Every activation is created with ``inplace=False`` because in-place ops break
the backward hooks that attribution methods rely on. Small and CPU-friendly by default; ``width``
(channels of the first block, doubled at every block) and ``depth`` (number of blocks, each halving the
resolution) scale them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "CNN3D",
    "ConvEncoder",
    "MultiViewCNN",
    "SeriesEncoder",
    "SliceCNN",
    "build_model",
    "inplace_modules",
]

_ACT = ("relu", {"inplace": False})


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class ConvEncoder(nn.Module):
    """Convolution stem then ``depth`` strided residual blocks (MONAI); returns the last feature map.

    Channels are ``width * 2**i`` for block ``i``; each block halves the spatial size.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        *,
        width: int = 16,
        depth: int = 4,
        subunits: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        width = _positive("width", width)
        depth = _positive("depth", depth)
        self.spatial_dims = spatial_dims
        self.in_channels = _positive("in_channels", in_channels)
        self.stem = Convolution(spatial_dims, in_channels, width, kernel_size=3, act=_ACT, norm=norm)
        blocks = []
        c_in = width
        for i in range(depth):
            c_out = width * 2**i
            blocks.append(
                ResidualUnit(
                    spatial_dims,
                    c_in,
                    c_out,
                    strides=2,
                    kernel_size=3,
                    subunits=_positive("subunits", subunits),
                    act=_ACT,
                    norm=norm,
                    dropout=dropout or None,
                )
            )
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = c_in

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last residual block: its output ``(B, out_channels, *spatial)`` is the Grad-CAM map."""
        return self.blocks[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def _pool(features: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Global average (or maximum) over the spatial axes: ``(B, C, *spatial) -> (B, C)``."""
    flat = features.flatten(2)
    return flat.amax(dim=2) if how == "max" else flat.mean(dim=2)


def _check_input(
    model: str, x: torch.Tensor, ndim: int, layout: str, channel_axis: int, channels: int
) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{model} expects input {layout}, got a tensor of shape {tuple(x.shape)}")
    if x.shape[channel_axis] != channels:
        raise ValueError(
            f"{model} was built for C={channels} channels in {layout}, got shape {tuple(x.shape)}"
        )


def _head(embed_dim: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, _positive("n_classes", n_classes, 2)))


class _PooledCNN(nn.Module):
    """Encoder, global average pooling and a linear head: the body shared by the 2D and 3D single-input CNNs."""

    spatial_dims: int
    arch: str
    layout: str

    def _build(self, in_channels: int, n_classes: int, width: int, depth: int, subunits: int, norm: str,
               dropout: float) -> None:
        self.encoder = ConvEncoder(self.spatial_dims, in_channels, width=width, depth=depth, subunits=subunits, norm=norm)
        self.in_channels, self.n_classes = in_channels, n_classes
        self.embed_dim = self.encoder.out_channels
        self.head = _head(self.embed_dim, n_classes, dropout)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.encoder.gradcam_layer

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self.arch, x, self.spatial_dims + 2, self.layout, 1, self.in_channels)
        return _pool(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SliceCNN(_PooledCNN):
    """2D CNN on a stack of slices as channels ``(B, C, H, W)``, C = k slices x windows."""

    spatial_dims, arch, layout = 2, "slice_cnn", "(B, C, H, W)"

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        *,
        width: int = 16,
        depth: int = 4,
        subunits: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._build(in_channels, n_classes, width, depth, subunits, norm, dropout)


class MultiViewCNN(nn.Module):
    """One shared 2D encoder applied to each of V views ``(B, V, C, H, W)``, features fused, then a head.

    ``fusion='concat'`` concatenates the V view features (V fixed at ``n_views``); ``'meanmax'``
    concatenates their mean and max (any number of views). ``gradcam_layer``'s output has batch
    ``B * V`` ordered sample-major (sample 0 view 0, sample 0 view 1, ...).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        *,
        n_views: int = 3,
        fusion: str = "concat",
        width: int = 16,
        depth: int = 4,
        subunits: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(2, in_channels, width=width, depth=depth, subunits=subunits, norm=norm)
        self.in_channels, self.n_classes = in_channels, n_classes
        self.n_views = _positive("n_views", n_views)
        self.fusion = _choice("fusion", fusion, ("concat", "meanmax"))
        d = self.encoder.out_channels
        self.embed_dim = d * (self.n_views if fusion == "concat" else 2)
        self.head = _head(self.embed_dim, n_classes, dropout)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.encoder.gradcam_layer

    def view_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-view encoder features ``(B, V, D)``."""
        _check_input("multiview_cnn", x, 5, "(B, V, C, H, W)", 2, self.in_channels)
        if self.fusion == "concat" and x.shape[1] != self.n_views:
            raise ValueError(
                f"multiview_cnn (concat fusion) was built for V={self.n_views} views, got {x.shape[1]}"
            )
        b, v = x.shape[:2]
        return _pool(self.encoder(x.flatten(0, 1))).reshape(b, v, -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.view_features(x)
        if self.fusion == "concat":
            return f.flatten(1)
        return torch.cat([f.mean(dim=1), f.amax(dim=1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SeriesEncoder(nn.Module):
    """Whole-series classifier at 2D cost: a shared 2D slice encoder over N slices ``(B, N, C, H, W)``,
    then pooling over slices.

    ``pooling='attention'`` is gated attention-MIL (Ilse, Tomczak & Welling, ICML 2018): weights
    ``softmax_n(w^T (tanh(V h_n) * sigmoid(U h_n)))`` over the slice features ``h_n``; ``'mean'`` averages.
    The per-slice weights ``(B, N)`` of the latest forward pass are kept (detached) in ``last_attention``
    and returned by ``forward(x, return_attention=True)``. ``mask`` ``(B, N)`` bool marks real slices
    (padding excluded). ``slice_chunk`` encodes that many slices at a time in eval mode, bounding memory
    for long series at inference; training always encodes the whole batch at once.

    ``spatial_pool`` summarises each slice's feature map: ``'mean'`` suits findings that fill the slice;
    ``'max'`` keeps a small finding (a nodule of a few pixels in a whole-chest slice) from being averaged away,
    making the model multiple-instance over positions as well as slices.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        *,
        pooling: str = "attention",
        attention_dim: int = 64,
        width: int = 16,
        depth: int = 4,
        subunits: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
        slice_chunk: int | None = None,
        spatial_pool: str = "mean",
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(2, in_channels, width=width, depth=depth, subunits=subunits, norm=norm)
        self.in_channels, self.n_classes = in_channels, n_classes
        self.pooling = _choice("pooling", pooling, ("attention", "mean"))
        self.spatial_pool = _choice("spatial_pool", spatial_pool, ("mean", "max"))
        self.slice_chunk = None if slice_chunk is None else _positive("slice_chunk", slice_chunk)
        d = self.embed_dim = self.encoder.out_channels
        if pooling == "attention":
            a = _positive("attention_dim", attention_dim)
            self.attn_v = nn.Linear(d, a)
            self.attn_u = nn.Linear(d, a)
            self.attn_w = nn.Linear(a, 1)
        self.head = _head(d, n_classes, dropout)
        self.last_attention: torch.Tensor | None = None

    @property
    def gradcam_layer(self) -> nn.Module:
        """Last slice-encoder block; its output has batch ``B * N`` ordered series-major."""
        return self.encoder.gradcam_layer

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice encoder features ``(B, N, D)``."""
        _check_input("series_encoder", x, 5, "(B, N, C, H, W)", 2, self.in_channels)
        b, n = x.shape[:2]
        flat = x.flatten(0, 1)
        if self.slice_chunk and not self.training:
            pooled = torch.cat([_pool(self.encoder(c), self.spatial_pool) for c in flat.split(self.slice_chunk)])
        else:
            pooled = _pool(self.encoder(flat), self.spatial_pool)
        return pooled.reshape(b, n, -1)

    def _weights(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "attention":
            scores = self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)
        else:
            scores = torch.zeros(h.shape[:2], dtype=h.dtype, device=h.device)
        if mask is not None:
            mask = mask.to(device=h.device, dtype=torch.bool)
            if mask.shape != scores.shape:
                raise ValueError(
                    f"series_encoder mask must have shape {tuple(scores.shape)}, got {tuple(mask.shape)}"
                )
            if not bool(mask.any(dim=1).all()):
                raise ValueError("series_encoder mask leaves a series with no slices")
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    def _embed_and_weights(
        self, x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.slice_features(x)
        weights = self._weights(h, mask)
        self.last_attention = weights.detach()
        return (weights.unsqueeze(-1) * h).sum(dim=1), weights

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._embed_and_weights(x, mask)[0]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        z, weights = self._embed_and_weights(x, mask)
        logits = self.head(z)
        return (logits, weights) if return_attention else logits


class CNN3D(_PooledCNN):
    """Small 3D CNN baseline on ``(B, C, D, H, W)`` patches."""

    spatial_dims, arch, layout = 3, "cnn3d", "(B, C, D, H, W)"

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        *,
        width: int = 8,
        depth: int = 4,
        subunits: int = 2,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._build(in_channels, n_classes, width, depth, subunits, norm, dropout)


ARCHITECTURES: Mapping[str, type[nn.Module]] = MappingProxyType(
    {"slice_cnn": SliceCNN, "multiview_cnn": MultiViewCNN, "series_encoder": SeriesEncoder, "cnn3d": CNN3D}
)


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` (a key of `ARCHITECTURES`) with fresh random weights.

    ``kwargs`` are the architecture's arguments (``in_channels``, ``n_classes``, ``width``, ``depth``, ...);
    they must be JSON-able so that a bundle can rebuild the same model.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    try:
        model = cls(**kwargs)
    except TypeError as exc:
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(f"bad arguments for architecture {arch!r}: {exc}; accepted: {accepted}") from None
    bad = inplace_modules(model)
    if bad:  # guard against a MONAI default changing under us
        raise RuntimeError(
            f"architecture {arch!r} has in-place modules {bad}; attributions need inplace=False"
        )
    return model


def inplace_modules(model: nn.Module) -> list[str]:
    """Names of submodules that would modify their input in place (should be empty)."""
    return [name for name, m in model.named_modules() if getattr(m, "inplace", False)]
