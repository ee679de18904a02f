"""Architectures: shapes, embeddings, Grad-CAM layer, no in-place activations, they learn a toy task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medsuite.learn.models import ARCHITECTURES, build_model, inplace_modules

TINY = {"width": 4, "depth": 2}


# arch, kwargs, input shape, expected embed dim, gradcam output spatial rank
CASES = [
    ("slice_cnn", {"in_channels": 3}, (2, 3, 16, 16), 8, 2),
    ("multiview_cnn", {"in_channels": 2, "n_views": 3}, (2, 3, 2, 16, 16), 24, 2),
    ("multiview_cnn", {"in_channels": 2, "fusion": "meanmax"}, (2, 3, 2, 16, 16), 16, 2),
    ("series_encoder", {"in_channels": 1}, (2, 5, 1, 16, 16), 8, 2),
    ("series_encoder", {"in_channels": 1, "pooling": "mean"}, (2, 5, 1, 16, 16), 8, 2),
    ("series_encoder", {"in_channels": 1, "spatial_pool": "max"}, (2, 5, 1, 16, 16), 8, 2),
    ("cnn3d", {"in_channels": 1}, (2, 1, 8, 16, 16), 8, 3),
]


@pytest.mark.parametrize(("arch", "kwargs", "shape", "dim", "rank"), CASES)
def test_shapes_embed_and_gradcam_layer(arch, kwargs, shape, dim, rank):
    torch.manual_seed(0)
    model = build_model(arch, n_classes=3, **kwargs, **TINY).eval()
    x = torch.randn(*shape)
    seen = []
    handle = model.gradcam_layer.register_forward_hook(lambda m, i, o: seen.append(o))
    logits = model(x)
    handle.remove()
    assert logits.shape == (2, 3)
    assert model.embed(x).shape == (2, dim) == (2, model.embed_dim)
    assert any(isinstance(m, nn.Conv2d | nn.Conv3d) for m in model.gradcam_layer.modules())
    out = seen[0]
    assert out.ndim == 2 + rank and min(out.shape[2:]) > 1  # a spatial map
    assert out.shape[0] == shape[0] * (shape[1] if arch in ("multiview_cnn", "series_encoder") else 1)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_no_inplace_modules_anywhere(arch):
    model = build_model(arch, **TINY)
    assert inplace_modules(model) == []
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


def _toy(arch: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 1 has a bright centre; shapes as each architecture expects."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    spatial = (8, 8, 8) if arch == "cnn3d" else (16, 16)
    x = torch.randn(n, *spatial, generator=g) * 0.3
    centre = tuple(slice(s // 4, 3 * s // 4) for s in spatial)
    x[(y == 1, *centre)] += 2.0
    if arch in ("slice_cnn", "cnn3d"):
        return x.unsqueeze(1), y
    return x.unsqueeze(1).unsqueeze(1).expand(n, 3, 1, *spatial).contiguous(), y


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_few_steps_reduce_the_loss(arch):
    torch.manual_seed(0)
    model = build_model(arch, **TINY)
    x, y = _toy(arch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_series_attention_weights_mask_and_chunking():
    torch.manual_seed(0)
    model = build_model("series_encoder", **TINY, slice_chunk=2).eval()
    x = torch.randn(2, 5, 1, 16, 16)
    logits, w = model(x, return_attention=True)
    assert w.shape == (2, 5) and torch.allclose(w.sum(1), torch.ones(2))
    assert torch.equal(model.last_attention, w.detach())
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    _, wm = model(x, mask=mask, return_attention=True)
    assert torch.all(wm[1, 3:] == 0) and torch.allclose(wm.sum(1), torch.ones(2))
    # padding slices do not change the result
    alone = model(x[1:2, :3])
    assert torch.allclose(model(x, mask=mask)[1], alone[0], atol=1e-5)
    # chunked encoding (eval only) equals encoding everything at once
    model.slice_chunk = None
    assert torch.allclose(model(x), logits, atol=1e-5)
    with pytest.raises(ValueError, match="no slices"):
        model(x, mask=torch.zeros(2, 5, dtype=torch.bool))
    mean_model = build_model("series_encoder", pooling="mean", **TINY)
    _, wmean = mean_model(x, return_attention=True)
    assert torch.allclose(wmean, torch.full((2, 5), 0.2))


def test_series_spatial_max_pool_keeps_a_small_finding_whatever_the_field_of_view():
    """A 3x3 spot in one slice moves a max-pooled slice embedding as much in a 64x64 slice as in a 32x32 one;
    averaged over the slice, its effect shrinks with the area (4x here) — a small nodule is averaged away."""
    torch.manual_seed(0)

    def effect(model: nn.Module, size: int) -> torch.Tensor:
        x = torch.zeros(1, 3, 1, size, size)
        spot = x.clone()
        c = size // 2
        spot[0, 1, 0, c - 1:c + 2, c - 1:c + 2] = 3.0
        with torch.no_grad():
            return (model.slice_features(spot) - model.slice_features(x))[0, 1].abs().sum()

    for pool, ratio in (("max", 1.0), ("mean", 4.0)):
        model = build_model("series_encoder", spatial_pool=pool, **TINY).eval()
        small, large = effect(model, 32), effect(model, 64)
        assert small > 0
        assert float(small / large) == pytest.approx(ratio, rel=0.05)
    with pytest.raises(ValueError, match="spatial_pool must be one of"):
        build_model("series_encoder", spatial_pool="sum")


def test_multiview_fusion_rules():
    torch.manual_seed(0)
    meanmax = build_model("multiview_cnn", fusion="meanmax", **TINY).eval()
    x = torch.randn(2, 3, 1, 16, 16)
    assert torch.allclose(meanmax(x), meanmax(x[:, [2, 0, 1]]), atol=1e-5)  # view order does not matter
    assert meanmax(torch.randn(2, 5, 1, 16, 16)).shape == (2, 2)
    concat = build_model("multiview_cnn", n_views=3, **TINY)
    with pytest.raises(ValueError, match="V=3 views"):
        concat(torch.randn(2, 4, 1, 16, 16))


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="bad arguments for architecture 'slice_cnn'.*accepted"):
        build_model("slice_cnn", n_view=3)
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_model("series_encoder", pooling="max")
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
        build_model("cnn3d", n_classes=1)
    with pytest.raises(ValueError, match=r"C=3 channels in \(B, C, H, W\)"):
        build_model("slice_cnn", in_channels=3, **TINY)(torch.randn(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"expects input \(B, N, C, H, W\)"):
        build_model("series_encoder", **TINY)(torch.randn(1, 1, 16, 16))


def test_same_kwargs_same_parameter_layout_and_width_scales():
    a = build_model("slice_cnn", in_channels=2, **TINY).state_dict()
    b = build_model("slice_cnn", in_channels=2, **TINY).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    small = sum(p.numel() for p in build_model("slice_cnn", width=4).parameters())
    large = sum(p.numel() for p in build_model("slice_cnn", width=8).parameters())
    assert large > 3 * small
