"""Tiny volumes, a small axial slice-stack sampler and models with a known receptive region, for the
interpretation tests (kept independent of the data and learn layers so these tests run on their own)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medsuite.data.blocks import SliceStack
from medsuite.io.volume import Volume

SIZE = 32
REGION = (slice(6, 12), slice(20, 26))  # rows, cols of the input the masked model looks at


def make_volume(seed: int = 0) -> Volume:
    """A 30x64x64 CT-like volume (HU), anisotropic spacing and a non-zero origin."""
    rng = np.random.default_rng(seed)
    arr = (-800 + 30 * rng.standard_normal((30, 64, 64))).astype(np.float32)
    return Volume(arr, spacing=(2.5, 0.8, 0.8), origin=(-20.0, 15.0, -100.0), series_uid="1.2.3.4", modality="CT")


def add_blob(volume: Volume, xyz: np.ndarray, radius_mm: float = 3.0, hu: float = 60.0) -> Volume:
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    world = volume.index_to_world(np.stack([zz, yy, xx], -1).astype(float))
    mask = np.linalg.norm(world - np.asarray(xyz), axis=-1) <= radius_mm
    arr = volume.array.copy()
    arr[mask] = hu
    return volume.with_array(arr)


def make_block(k: int = 3, size: int = SIZE) -> SliceStack:
    """The real SliceStack: k axial planes 2.5 mm apart, size x size pixels of 1 mm, lung window."""
    return SliceStack(window="lung", k=k, size=size, spacing_mm=2.5, pixel_mm=1.0)


class MaskedNet(nn.Module):
    """A conv net gated by a fixed spatial mask: only input pixels near ``REGION`` can change its output."""

    def __init__(self, in_ch: int = 3, size: int = SIZE, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.conv2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 2)
        mask = torch.zeros(1, 1, size, size)
        mask[..., REGION[0], REGION[1]] = 1.0
        self.register_buffer("mask", mask)
        with torch.no_grad():  # positive weights: a bright blob raises class 1
            self.conv1.weight.abs_()
            self.conv2[0].weight.abs_()
            self.head.weight.copy_(torch.tensor([[-1.0] * 8, [1.0] * 8]))
        self.gradcam_layer = self.conv2

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x)) * self.mask
        return self.conv2(h).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class SmallCNN(nn.Module):
    """An ordinary small CNN (any input size), optionally with an in-place ReLU to test the guard."""

    def __init__(self, in_ch: int = 3, inplace: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 2)
        self.gradcam_layer = self.block

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.features(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class TinySeriesNet(nn.Module):
    """``(B, N, C, H, W)`` → logits with a shared slice encoder and attention pooling over slices."""

    def __init__(self, in_ch: int = 1, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(nn.Conv2d(in_ch, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.gradcam_layer = self.encoder
        self.attn = nn.Linear(8, 1)
        self.head = nn.Linear(8, 2)

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        return self.encoder(x.flatten(0, 1)).mean(dim=(2, 3)).view(b, n, -1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.attn(self.slice_features(x)).squeeze(-1), dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.slice_features(x)
        w = torch.softmax(self.attn(f).squeeze(-1), dim=1)
        return (w.unsqueeze(-1) * f).sum(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def region_world(block: SliceStack, volume: Volume, center_xyz) -> np.ndarray:
    """World point at the centre of ``REGION`` on the stack's middle slice."""
    grid = block.grid_world(volume, center_xyz)
    r = (REGION[0].start + REGION[0].stop - 1) / 2
    c = (REGION[1].start + REGION[1].stop - 1) / 2
    return (grid[block.k // 2, int(np.floor(r)), int(np.floor(c))] + grid[block.k // 2, int(np.ceil(r)), int(np.ceil(c))]) / 2
