"""The `Volume`: a 3D image with its world geometry, the contract every layer above I/O shares.

Conventions (see DESIGN.md):
- ``array`` is numpy ``(z, y, x)``; for DICOM CT it holds Hounsfield units.
- world coordinates are DICOM patient coordinates (LPS), in millimetres, ordered ``(x, y, z)``.
- ``spacing`` is in array order ``(z, y, x)``.
- ``origin`` is the world ``(x, y, z)`` position of the centre of voxel ``[0, 0, 0]``.
- ``direction[:, a]`` is the world unit vector of array axis ``a`` (0 = z, 1 = y, 2 = x), so
  ``world = origin + direction @ (spacing * index_zyx)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # heavy optional imports stay lazy
    import SimpleITK as sitk
    from monai.data import MetaTensor

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image in world coordinates; ``meta`` holds provenance (window, resampling notes, tags)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3)[:, ::-1].copy())
    series_uid: str = ""
    study_uid: str = ""
    modality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        spacing = tuple(float(s) for s in self.spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"Volume spacing must be three positive mm values (z, y, x), got {self.spacing}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError(f"Volume direction must be orthonormal, got {direction.tolist()}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", direction)

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix taking a homogeneous ``(z, y, x, 1)`` index to world LPS ``(x, y, z, 1)``."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    def index_to_world(self, index_zyx: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """World LPS ``(..., 3)`` positions of (possibly fractional) ``(z, y, x)`` indices."""
        idx = np.asarray(index_zyx, dtype=np.float64)
        return idx @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def world_to_index(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Fractional ``(z, y, x)`` indices ``(..., 3)`` of world LPS positions."""
        pts = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)
        return (pts @ self.direction) / np.asarray(self.spacing)

    @property
    def center_world(self) -> np.ndarray:
        return self.index_to_world((np.asarray(self.shape, dtype=np.float64) - 1) / 2)

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy with another array (same geometry unless ``changes`` say otherwise)."""
        return replace(self, array=array, **changes)

    # ------------------------------------------------------------- SimpleITK
    def to_sitk(self) -> sitk.Image:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(tuple(reversed(self.spacing)))
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction[:, ::-1].flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, **fields: Any) -> Volume:
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image, got a multi-component (vector/RGB) image")
        direction_xyz = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(reversed(image.GetSpacing())),
            origin=tuple(image.GetOrigin()),
            direction=direction_xyz[:, ::-1].copy(),
            **fields,
        )

    # ------------------------------------------------------------------ MONAI
    def to_metatensor(self) -> MetaTensor:
        """A channel-first MONAI MetaTensor ``(1, z, y, x)`` whose affine is in RAS, as MONAI expects."""
        import torch
        from monai.data import MetaTensor
        from monai.utils import SpaceKeys

        ras = np.eye(4)
        ras[:3, :] = LPS_TO_RAS @ self.affine[:3, :]
        return MetaTensor(
            torch.as_tensor(np.ascontiguousarray(self.array))[None],
            affine=torch.as_tensor(ras, dtype=torch.float64),
            meta={"space": SpaceKeys.RAS, "series_uid": self.series_uid, "modality": self.modality},
        )

    @classmethod
    def from_metatensor(cls, tensor: MetaTensor, **fields: Any) -> Volume:
        """Inverse of `to_metatensor`; accepts ``(1, z, y, x)`` or ``(z, y, x)`` with a RAS or LPS affine."""
        from monai.utils import SpaceKeys

        data = tensor.detach().cpu().numpy()
        if data.ndim == 4:
            if data.shape[0] != 1:
                raise ValueError(f"expected one channel, got {data.shape[0]}")
            data = data[0]
        affine = np.asarray(tensor.affine, dtype=np.float64)
        if str(tensor.meta.get("space", SpaceKeys.RAS)) == str(SpaceKeys.RAS):
            affine = affine.copy()
            affine[:3, :] = LPS_TO_RAS @ affine[:3, :]
        linear = affine[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        return cls(
            array=data,
            spacing=tuple(spacing),
            origin=tuple(affine[:3, 3]),
            direction=linear / spacing[None, :],
            **fields,
        )
