"""Captum attributions for one model input: Integrated Gradients, Occlusion (windows in mm), LayerGradCam.

``model`` is the module Captum wraps: in medsuite the bundle predictor's differentiable chain
(`medsuite.learn.predict.Predictor.module`: the same TTA and calibration scoring runs, returning the log of
the scored probabilities), so an explanation explains what is scored; any ``nn.Module`` returning class
scores works too. Every method returns an `Attribution` whose ``values`` have the shape of the block's
sample (no batch axis), so `medsuite.interpret.mapping` can carry them back to world coordinates through
``block.grid_world``. The module is run in eval mode (restored afterwards) and refused when it holds an
in-place activation, which silently corrupts Captum's hooks (Captum issue #156).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

SALIENCY_CAVEAT = (
    "Saliency shows where the model looked, not a lesion segmentation "
    "(Arun et al., Radiology: Artificial Intelligence 2021)."
)
METHODS = ("ig", "occlusion", "gradcam")


@dataclass
class Attribution:
    """One method's attribution for one input; ``values`` has the sample's shape (float32)."""

    method: str
    values: np.ndarray
    target: int
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SampleLayout:
    """How a block's sample axes relate to its ``grid_world`` spatial axes.

    ``kind`` is ``'stacked'`` (channels = grid axis 0 × windows, e.g. a SliceStack), ``'grouped'``
    (sample ``(G, C, H, W)``, grid ``(G, H, W)``: views or series slices) or ``'channels'`` (sample
    ``(C, *grid)``, e.g. a Patch3D). ``n_windows`` channels belong to each grid position along axis 0
    (stacked) or to each pixel (grouped / channels).
    """

    kind: str
    sample_shape: tuple[int, ...]
    grid_shape: tuple[int, ...]
    n_windows: int
    window_major: bool = False

    @property
    def n_spatial(self) -> int:
        """Number of trailing sample axes that are image axes in mm (2, or 3 for volumetric patches)."""
        return len(self.grid_shape) if self.kind == "channels" else 2

    def expand(self, grid_values: np.ndarray) -> np.ndarray:
        """Grid-shaped values → sample-shaped (each grid pixel's value on all of its window channels)."""
        g = np.asarray(grid_values)
        if g.shape != self.grid_shape:
            raise ValueError(f"grid values shape {g.shape} does not match the grid shape {self.grid_shape}")
        if self.kind == "channels":
            return np.broadcast_to(g[None], self.sample_shape)
        if self.kind == "grouped":
            return np.broadcast_to(g[:, None], self.sample_shape)
        if self.window_major:
            return np.broadcast_to(g[None], (self.n_windows, *g.shape)).reshape(self.sample_shape)
        return np.broadcast_to(g[:, None], (g.shape[0], self.n_windows, *g.shape[1:])).reshape(self.sample_shape)

    def to_grid(self, values: np.ndarray) -> np.ndarray:
        """Sum the window channels away: sample-shaped values → grid-shaped values."""
        values = np.asarray(values)
        if values.shape != self.sample_shape:
            raise ValueError(f"attribution shape {values.shape} does not match the sample shape {self.sample_shape}")
        if self.kind == "channels":
            return values.sum(axis=0)
        if self.kind == "grouped":
            return values.sum(axis=1)
        k, rest = self.grid_shape[0], self.sample_shape[1:]
        if self.window_major:
            return values.reshape(self.n_windows, k, *rest).sum(axis=0)
        return values.reshape(k, self.n_windows, *rest).sum(axis=1)


def sample_layout(sample_shape: tuple[int, ...], grid_shape: tuple[int, ...], *, window_major: bool = True) -> SampleLayout:
    """Infer the `SampleLayout` from a sample shape and its grid's spatial shape (``grid.shape[:-1]``).

    ``window_major``: stacked channels are ``w * k + slice`` (SliceStack) rather than ``slice * n_windows + w``
    (MultiView with ``as_channels``); `block_layout` picks it from the block's spec.
    """
    s, g = tuple(int(v) for v in sample_shape), tuple(int(v) for v in grid_shape)
    if len(s) == len(g) and s[1:] == g[1:] and g[0] > 0 and s[0] % g[0] == 0:
        return SampleLayout("stacked", s, g, s[0] // g[0], window_major)
    if len(s) == len(g) + 1 and s[1:] == g:
        return SampleLayout("channels", s, g, s[0])
    if len(s) == len(g) + 1 and s[0] == g[0] and s[2:] == g[1:]:
        return SampleLayout("grouped", s, g, s[1])
    raise ValueError(f"cannot relate sample shape {s} to grid shape {g}: expected (k*w,H,W)/(k,H,W), "
                     "(C,*grid) or (G,C,H,W)/(G,H,W)")


def block_layout(block: Any, sample_shape: tuple[int, ...], grid_shape: tuple[int, ...]) -> SampleLayout:
    """The `SampleLayout` of an input block's samples (channel order from the block type, see data.blocks)."""
    kind = block.spec().get("type") if hasattr(block, "spec") else None
    return sample_layout(sample_shape, grid_shape, window_major=kind != "MultiView")


def grid_pixel_spacing(grid: np.ndarray, n_spatial: int) -> tuple[float, ...]:
    """Pixel spacing in mm along the last ``n_spatial`` grid axes, measured at the grid's centre."""
    grid = np.asarray(grid, dtype=np.float64)
    spatial = grid.shape[:-1]
    centre = [s // 2 for s in spatial]
    out = []
    for axis in range(len(spatial) - n_spatial, len(spatial)):
        if spatial[axis] < 2:
            out.append(1.0)
            continue
        a, b = list(centre), list(centre)
        a[axis], b[axis] = 0, 1
        step = float(np.linalg.norm(grid[tuple(b)] - grid[tuple(a)]))
        out.append(step if step > 0 else 1.0)
    return tuple(out)


def check_no_inplace(model: nn.Module) -> None:
    """Raise when any module computes in place (e.g. ``nn.ReLU(inplace=True)``): hooks would see wrong values."""
    for name, module in model.named_modules():
        if getattr(module, "inplace", False) is True:
            raise ValueError(
                f"module {name or '<root>'!r} ({type(module).__name__}) has inplace=True; in-place activations "
                "corrupt hook-based attributions (Captum #156). Rebuild the model with inplace=False."
            )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (dropout off, batch-norm frozen) and restore its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _as_batch(x: np.ndarray | torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """A batch of one, on ``model``'s device (attributions run where the model is: CPU or GPU)."""
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float32) if not isinstance(x, torch.Tensor) else x)
    param = None if model is None else next(model.parameters(), None)
    return t.float().unsqueeze(0).to(param.device if param is not None else "cpu")


def _resolve_target(model: nn.Module, x: np.ndarray | torch.Tensor, target: int | None) -> int:
    """``target``, or the class with the highest output when None (callers that score, such as `explain`,
    pass the predictor's decision)."""
    import torch

    if target is not None:
        return int(target)
    with eval_mode(model), torch.no_grad():
        return int(model(_as_batch(x, model)).argmax(dim=1)[0])


def blurred_baseline(x: np.ndarray, layout: SampleLayout, sigma_px: float | tuple[float, ...] = 4.0) -> np.ndarray:
    """The input Gaussian-blurred along its image axes only (windows/views/slices kept apart)."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, dtype=np.float32)
    sig = np.broadcast_to(np.asarray(sigma_px, dtype=float), (layout.n_spatial,))
    sigma = [0.0] * (x.ndim - layout.n_spatial) + list(sig)
    return gaussian_filter(x, sigma=sigma, mode="nearest").astype(np.float32)


def integrated_gradients(
    model: nn.Module,
    x: np.ndarray,
    baseline: np.ndarray,
    *,
    target: int | None = None,
    n_steps: int = 50,
    internal_batch_size: int | None = None,
    noise_tunnel: bool = False,
    nt_samples: int = 8,
    nt_stdev: float = 0.1,
) -> Attribution:
    """Integrated Gradients from ``baseline`` to ``x``; the ``n_steps`` points run as batches.

    ``internal_batch_size`` defaults to ``n_steps`` (one batched forward/backward). With ``noise_tunnel``
    the attribution is averaged over ``nt_samples`` noisy copies (SmoothGrad, ``nt_stdev`` in input units).
    """
    from captum.attr import IntegratedGradients, NoiseTunnel

    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    x = np.asarray(x, dtype=np.float32)
    baseline = np.asarray(baseline, dtype=np.float32)
    if baseline.shape != x.shape:
        raise ValueError(f"IG baseline shape {baseline.shape} differs from the input shape {x.shape}")
    check_no_inplace(model)
    target = _resolve_target(model, x, target)
    ibs = int(internal_batch_size or n_steps)
    with eval_mode(model):
        ig = IntegratedGradients(model)
        inputs, base = _as_batch(x, model), _as_batch(baseline, model)
        if noise_tunnel:
            attr, delta = NoiseTunnel(ig).attribute(
                inputs, nt_type="smoothgrad", nt_samples=nt_samples, stdevs=nt_stdev, baselines=base,
                target=target, n_steps=n_steps, internal_batch_size=ibs, return_convergence_delta=True)
        else:
            attr, delta = ig.attribute(inputs, baselines=base, target=target, n_steps=n_steps,
                                       internal_batch_size=ibs, return_convergence_delta=True)
    delta = float(delta.abs().max())
    notes = [] if delta < 0.05 else [f"IG completeness gap {delta:.3g}: consider more steps"]
    return Attribution("ig", attr[0].detach().cpu().numpy().astype(np.float32), target,
                       {"n_steps": n_steps, "internal_batch_size": ibs, "noise_tunnel": noise_tunnel,
                        "convergence_delta": delta}, notes)


def occlusion(
    model: nn.Module,
    x: np.ndarray,
    layout: SampleLayout,
    pixel_spacing_mm: tuple[float, ...],
    *,
    target: int | None = None,
    window_mm: float = 8.0,
    stride_mm: float | None = None,
    fill: float | np.ndarray = 0.0,
    batch_size: int = 32,
) -> Attribution:
    """Occlusion with cube/square patches of ``window_mm`` along the image axes (converted with the pixel spacing).

    Windows cover all window channels (and all slices of a stack) at once and one view / series slice at a
    time. ``fill`` is the value put in the hole (a scalar, or a baseline array of the input's shape).
    """
    from captum.attr import Occlusion

    x = np.asarray(x, dtype=np.float32)
    stride_mm = stride_mm if stride_mm is not None else window_mm / 2
    if window_mm <= 0 or stride_mm <= 0:
        raise ValueError(f"occlusion window_mm and stride_mm must be positive, got {window_mm}, {stride_mm}")
    spacing = tuple(float(s) for s in pixel_spacing_mm)[-layout.n_spatial:]
    spatial = x.shape[-layout.n_spatial:]
    win = [max(1, min(n, round(window_mm / s))) for n, s in zip(spatial, spacing, strict=True)]
    stride = [max(1, min(n, round(stride_mm / s))) for n, s in zip(spatial, spacing, strict=True)]
    lead = x.shape[: x.ndim - layout.n_spatial]
    if layout.kind == "grouped":
        lead_win, lead_stride = [1, lead[1]], [1, lead[1]]
    else:
        lead_win, lead_stride = list(lead), list(lead)
    check_no_inplace(model)
    target = _resolve_target(model, x, target)
    base = _as_batch(np.broadcast_to(np.asarray(fill, dtype=np.float32), x.shape).copy(), model)
    with eval_mode(model):
        attr = Occlusion(model).attribute(
            _as_batch(x, model), sliding_window_shapes=tuple(lead_win + win), strides=tuple(lead_stride + stride),
            baselines=base, target=target, perturbations_per_eval=batch_size)
    return Attribution("occlusion", attr[0].detach().cpu().numpy().astype(np.float32), target,
                       {"window_mm": window_mm, "stride_mm": stride_mm, "window_px": win, "stride_px": stride})


def grad_cam(model: nn.Module, x: np.ndarray, *, target: int | None = None, layer: nn.Module | None = None) -> Attribution:
    """LayerGradCam on ``model.gradcam_layer``, upsampled (bi/trilinear) to the input; native grid reported.

    The class-activation map lives on the layer's coarse grid; the upsampled map is smooth but carries no
    more detail than ``params['native_shape']``, which the overlays state. For a predictor chain with
    test-time flips (``model.tta``) the map of each flipped copy is flipped back and the copies averaged.
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    layer = layer if layer is not None else getattr(model, "gradcam_layer", None)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no 'gradcam_layer' attribute; GradCAM needs its last conv block")
    x = np.asarray(x, dtype=np.float32)
    check_no_inplace(model)
    target = _resolve_target(model, x, target)
    with eval_mode(model):
        cam = LayerGradCam(model, layer).attribute(_as_batch(x, model), target=target, relu_attributions=True)
    if cam.ndim not in (4, 5):
        raise ValueError(f"GradCAM layer output must be 2D or 3D feature maps, got shape {tuple(cam.shape)}")
    n_sp = cam.ndim - 2
    native = tuple(int(s) for s in cam.shape[2:])
    mode = "bilinear" if n_sp == 2 else "trilinear"
    up = LayerAttribution.interpolate(cam.detach().cpu(), tuple(x.shape[-n_sp:]), interpolate_mode=mode)
    lead = x.shape[: x.ndim - n_sp - 1]
    flips = tuple(getattr(model, "tta", None) or ((),))  # a predictor chain stacks its flipped copies flip-major
    if up.shape[0] != len(flips) * math.prod(lead):
        raise ValueError(f"GradCAM produced {up.shape[0]} maps for an input with leading axes {lead}"
                         + (f" and {len(flips)} test-time flips" if len(flips) > 1 else ""))
    maps = up.reshape(len(flips), *lead, 1, *x.shape[-n_sp:])
    # each flipped copy's map is flipped back onto the input's grid, then the copies are averaged
    values = torch.stack([torch.flip(maps[i], f) if f else maps[i] for i, f in enumerate(flips)]).mean(0).numpy()
    values = np.broadcast_to(values, x.shape).astype(np.float32)
    factor = [round(i / n, 2) for i, n in zip(x.shape[-n_sp:], native, strict=True)]
    return Attribution("gradcam", values, target,
                       {"native_shape": list(native), "upsampling": mode, "upsampling_factor": factor},
                       [f"GradCAM native resolution {'x'.join(map(str, native))} cells "
                        f"(each ~{'x'.join(map(str, factor))} input pixels), upsampled {mode}ly"])


def attribute(
    method: str,
    model: nn.Module,
    x: np.ndarray,
    layout: SampleLayout,
    pixel_spacing_mm: tuple[float, ...],
    *,
    baseline: np.ndarray | None = None,
    target: int | None = None,
    **options: Any,
) -> Attribution:
    """Dispatch by name (``'ig'``, ``'occlusion'``, ``'gradcam'``); ``baseline`` feeds IG and the occlusion fill."""
    if method == "ig":
        if baseline is None:
            raise ValueError("IG needs a baseline array (see medsuite.interpret.explain for 'air'/'blurred')")
        return integrated_gradients(model, x, baseline, target=target, **options)
    if method == "occlusion":
        fill = baseline if baseline is not None else 0.0
        return occlusion(model, x, layout, pixel_spacing_mm, target=target, fill=fill, **options)
    if method == "gradcam":
        return grad_cam(model, x, target=target, **options)
    raise ValueError(f"unknown attribution method {method!r}; choose from {METHODS}")
