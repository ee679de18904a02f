"""Training augmentation: geometric (on the sampling grid) and intensity (on the sample).

Geometry is applied to the *sampling grid* before anything is cut: a random 3D rotation, isotropic scale,
flips and a small shift about the sample's centre move the world points that are read, so the planes of a
2.5D block are cut from the rotated scan exactly (one interpolation, no resampled volume). Intensity
jitter and Gaussian noise follow MONAI's ``RandScaleIntensity`` / ``RandGaussianNoise`` on the windowed
sample. `BatchIntensity` does the same per batch on the batch's device (the GPU when there is one).
Validation and test items are never augmented.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AugmentDraw:
    """One random draw: world matrix (rotation @ scale @ flips), world shift (mm) and an intensity seed."""

    matrix: np.ndarray
    shift: np.ndarray
    seed: int


@dataclass(frozen=True)
class Augment:
    """Random augmentation of one item (training only).

    rotate_deg: maximum rotation angle about a uniformly random 3D axis (180 = any orientation).
    scale: ``(low, high)`` isotropic zoom of the grid (>1 samples a larger region, so content looks smaller).
    flip: flip each world axis with probability 0.5 (mirror images, e.g. left/right).
    shift_mm: maximum shift of the centre along each world axis.
    intensity: ``RandScaleIntensity`` factor range ``±intensity`` (applied with probability ``p_intensity``).
    noise_std: ``RandGaussianNoise`` standard deviation (applied with probability ``p_noise``).
    """

    rotate_deg: float = 180.0
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True
    shift_mm: float = 1.0
    intensity: float = 0.1
    p_intensity: float = 0.5
    noise_std: float = 0.02
    p_noise: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = (float(s) for s in self.scale)
        if not 0 < lo <= hi:
            raise ValueError(f"Augment.scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for name in ("rotate_deg", "shift_mm", "intensity", "noise_std"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"Augment.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("p_intensity", "p_noise"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise ValueError(f"Augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        object.__setattr__(self, "scale", (lo, hi))

    def spec(self) -> dict[str, Any]:
        """JSON-able parameters (recorded with a trained model's config)."""
        d = asdict(self)
        d["scale"] = list(self.scale)
        return d

    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        """Draw one random geometric transform and an intensity seed."""
        from scipy.spatial.transform import Rotation

        axis = rng.normal(size=3)
        axis /= max(float(np.linalg.norm(axis)), 1e-12)
        angle = np.deg2rad(rng.uniform(-self.rotate_deg, self.rotate_deg))
        rotation = Rotation.from_rotvec(axis * angle).as_matrix()
        zoom = rng.uniform(*self.scale)
        flips = np.where(rng.random(3) < 0.5, -1.0, 1.0) if self.flip else np.ones(3)
        matrix = rotation @ np.diag(zoom * flips)
        shift = rng.uniform(-self.shift_mm, self.shift_mm, size=3)
        return AugmentDraw(matrix=matrix, shift=shift, seed=int(rng.integers(0, 2**31 - 1)))

    def intensity_tfms(self, sample: np.ndarray, seed: int) -> np.ndarray:
        """Random intensity scaling and Gaussian noise on a windowed sample, seeded by ``seed``.

        Same semantics as MONAI's ``RandScaleIntensity(factors=intensity, prob=p_intensity)`` (``v * (1 + f)``,
        ``f ~ U(-intensity, intensity)``) and ``RandGaussianNoise(prob=p_noise, std=noise_std)``, in numpy:
        MONAI's per-call overhead (about 2 ms a sample, measured) would dominate the sampling time.
        """
        rng = np.random.default_rng(seed)
        out = np.asarray(sample, dtype=np.float32)
        if self.intensity > 0 and rng.random() < self.p_intensity:
            out = out * np.float32(1.0 + rng.uniform(-self.intensity, self.intensity))
        if self.noise_std > 0 and rng.random() < self.p_noise:
            noise = rng.standard_normal(size=out.shape, dtype=np.float32)
            noise *= np.float32(self.noise_std)
            out = out + noise
        return out


def augment_from_spec(spec: dict[str, Any] | None) -> Augment | None:
    """Rebuild an `Augment` from `Augment.spec()` (None stays None)."""
    if spec is None:
        return None
    d = dict(spec)
    if "scale" in d:
        d["scale"] = tuple(d["scale"])
    try:
        return Augment(**d)
    except TypeError as exc:
        raise ValueError(f"augment spec: {exc}") from exc


class BatchIntensity:
    """Batch-level random intensity scaling and Gaussian noise, run on the batch's device (GPU if there).

    Use as ``DataBlock(batch_tfms=[BatchIntensity()])``; applied to training batches only.
    """

    def __init__(self, scale: float = 0.1, noise_std: float = 0.02, p: float = 0.5) -> None:
        if scale < 0 or noise_std < 0 or not 0 <= p <= 1:
            raise ValueError(f"BatchIntensity: need scale >= 0, noise_std >= 0, 0 <= p <= 1; got {scale}, {noise_std}, {p}")
        self.scale, self.noise_std, self.p = float(scale), float(noise_std), float(p)

    def __call__(self, x: Any, y: Any) -> tuple[Any, Any]:
        import torch

        b = x.shape[0]
        view = (b,) + (1,) * (x.ndim - 1)
        hit = (torch.rand(view, device=x.device) < self.p).to(x.dtype)
        factor = 1.0 + hit * torch.empty(view, device=x.device, dtype=x.dtype).uniform_(-self.scale, self.scale)
        noise = hit * self.noise_std * torch.randn_like(x)
        return x * factor + noise, y

    def __repr__(self) -> str:
        return f"BatchIntensity(scale={self.scale}, noise_std={self.noise_std}, p={self.p})"
