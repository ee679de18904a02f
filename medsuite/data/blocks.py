"""Input blocks (what a model sees of a scan) and the `Category` target block.

Every input block cuts world-mm grids out of a `Volume` (see `medsuite.data.sampling`): the output does not
depend on the scan's voxel spacing, orientation or slice order. Output shapes (contracts.md):

- `SliceStack`   ``(k * n_windows, size, size)``: k axial planes along world z (the patient axis) around a
  point; channels are window-major (``channel = w * k + slice``).
- `MultiView`    ``(views, n_windows, size, size)`` or ``(views * n_windows, size, size)`` with
  ``as_channels=True``: 3 orthogonal planes (axial, coronal, sagittal) or 9 (plus the six diagonal planes
  of Setio et al. 2016) through a point. `TriPlanar` is ``MultiView(views=3)``.
- `SeriesSlices` ``(n, n_windows, size, size)``: n slices (or slabs) evenly spread over the series' extent
  along world z, the whole in-plane extent resampled to size x size.
- `Patch3D`      ``(n_windows, d, h, w)``: a world-aligned box (z, y, x) at mm spacing.

Display orientation: rows run along +y (anterior to posterior) in axial planes and along -z (head to feet)
in coronal/sagittal planes; columns along +x (patient right to left) or +y (sagittal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from medsuite.data.augment import Augment, AugmentDraw
from medsuite.data.sampling import Grid, sample_grid
from medsuite.data.windows import Window, apply_windows, resolve_windows, windows_spec
from medsuite.io.volume import Volume

EX, EY, EZ = np.eye(3)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# (name, row direction, column direction): world unit vectors of a view's rows and columns.
VIEW_PLANES: tuple[tuple[str, np.ndarray, np.ndarray], ...] = (
    ("axial", EY, EX),
    ("coronal", -EZ, EX),
    ("sagittal", -EZ, EY),
    ("diag_x_a", _unit(-EZ + EY), EX),
    ("diag_x_b", _unit(-EZ - EY), EX),
    ("diag_y_a", _unit(-EZ + EX), EY),
    ("diag_y_b", _unit(-EZ - EX), EY),
    ("diag_z_a", _unit(EY + EX), _unit(EX - EY)),
    ("diag_z_b", _unit(EY - EX), _unit(EX + EY)),
)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number (mm), got {value!r}") from None
    if not v > 0 or not np.isfinite(v):
        raise ValueError(f"{name} must be a positive number (mm), got {value!r}")
    return v


def _triple(name: str, value: Any, cast: Any) -> tuple:
    vals = [value] * 3 if np.isscalar(value) else list(value)
    if len(vals) != 3:
        raise ValueError(f"{name} must be one value or three (d, h, w), got {value!r}")
    return tuple(cast(name, v) for v in vals)


def _center(center_xyz: Any, block: str) -> np.ndarray:
    if center_xyz is None:
        raise ValueError(f"{block}.sample needs center_xyz, the world (x, y, z) mm point to sample around")
    c = np.asarray(center_xyz, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise ValueError(f"{block}: center_xyz must be three finite world mm values (x, y, z), got {center_xyz!r}")
    return c


def _check_inside(volume: Volume, center: np.ndarray) -> None:
    """A centre outside the scan is almost always a coordinate mix-up (voxel vs world, RAS vs LPS)."""
    idx = volume.world_to_index(center)
    n = np.asarray(volume.shape)
    if np.any(idx < -0.5) or np.any(idx > n - 0.5):
        lo = volume.index_to_world(np.zeros(3))
        hi = volume.index_to_world(n - 1.0)
        box = np.round(np.stack([np.minimum(lo, hi), np.maximum(lo, hi)]), 1).tolist()
        raise ValueError(
            f"centre {np.round(center, 2).tolist()} (world LPS mm) lies outside series {volume.series_uid or '?'} "
            f"(voxel index {np.round(idx, 1).tolist()} of shape {tuple(int(v) for v in n)}; corner voxels at "
            f"{box[0]} and {box[1]}); are the coordinates voxel indices, or RAS instead of LPS?"
        )


@dataclass(frozen=True)
class InputBlock(ABC):
    """Base of the input blocks: grids -> trilinear samples -> windows -> (training) augmentation."""

    window: Any = "lung"
    windows: tuple[Window, ...] = field(init=False, repr=False)
    arch: ClassVar[str] = ""

    def __post_init__(self) -> None:
        windows = resolve_windows(self.window)
        object.__setattr__(self, "windows", windows)
        # Normalised form, so that a block rebuilt from its spec compares equal to the original.
        object.__setattr__(self, "window", tuple(w if isinstance(w, str) else tuple(w) for w in windows_spec(windows)))

    @property
    def n_windows(self) -> int:
        return len(self.windows)

    # Each block defines where its pixels lie, how the sampled planes form its output, and its arguments.
    @abstractmethod
    def grids(self, volume: Volume, center_xyz: Any = None) -> list[Grid]: ...

    @abstractmethod
    def _assemble(self, values: list[np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    def about(self, volume: Volume, center_xyz: Any) -> np.ndarray:
        """The point that augmentation rotates and scales about (the sample's centre)."""
        return _center(center_xyz, type(self).__name__)

    def sample(
        self,
        volume: Volume,
        center_xyz: Any = None,
        aug: Augment | AugmentDraw | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """The block's float32 array for ``volume`` around world point ``center_xyz`` (optionally augmented)."""
        grids = self.grids(volume, center_xyz)
        if center_xyz is not None:
            _check_inside(volume, grids[0].center)
        draw = aug.draw(rng if rng is not None else np.random.default_rng()) if isinstance(aug, Augment) else aug
        if draw is not None:
            about = self.about(volume, center_xyz)
            grids = [g.transformed(draw.matrix, draw.shift, about) for g in grids]
        out = self._assemble([apply_windows(sample_grid(volume, g), self.windows) for g in grids])
        if isinstance(aug, Augment) and draw is not None:
            out = aug.intensity_tfms(out, draw.seed)
        return np.ascontiguousarray(out, dtype=np.float32)

    def grid_world(self, volume: Volume, center_xyz: Any = None) -> np.ndarray:
        """World (x, y, z) mm of every pixel of the un-augmented sample, ``(*spatial shape, 3)``."""
        return np.concatenate([g.world() for g in self.grids(volume, center_xyz)], axis=0)

    @abstractmethod
    def preview(self, sample: np.ndarray) -> np.ndarray:
        """A 2D image of one sample for display (`show_batch`): its centre plane, first window."""

    def spec(self) -> dict[str, Any]:
        """JSON-able description (``type`` plus parameters); `block_from_spec` rebuilds the block."""
        return {"type": type(self).__name__, **self._params(), "window": windows_spec(self.windows)}


@dataclass(frozen=True)
class SliceStack(InputBlock):
    """k axial planes, ``spacing_mm`` apart along world z, each ``size`` x ``size`` at ``pixel_mm``."""

    k: int = 5
    size: int = 64
    spacing_mm: float = 1.0
    pixel_mm: float = 1.0
    arch: ClassVar[str] = "slice_cnn"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "k", _positive_int("SliceStack.k", self.k))
        object.__setattr__(self, "size", _positive_int("SliceStack.size", self.size))
        object.__setattr__(self, "spacing_mm", _positive_float("SliceStack.spacing_mm", self.spacing_mm))
        object.__setattr__(self, "pixel_mm", _positive_float("SliceStack.pixel_mm", self.pixel_mm))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.k * self.n_windows, self.size, self.size)

    def grids(self, volume: Volume, center_xyz: Any = None) -> list[Grid]:
        c = _center(center_xyz, "SliceStack")
        axes = np.stack([EZ * self.spacing_mm, EY * self.pixel_mm, EX * self.pixel_mm], axis=1)
        return [Grid(c, axes, (self.k, self.size, self.size))]

    def _assemble(self, values: list[np.ndarray]) -> np.ndarray:
        return values[0].reshape(self.output_shape)  # (n_windows, k, s, s) -> window-major channels

    def preview(self, sample: np.ndarray) -> np.ndarray:
        return np.asarray(sample)[self.k // 2]

    def _params(self) -> dict[str, Any]:
        return {"k": self.k, "size": self.size, "spacing_mm": self.spacing_mm, "pixel_mm": self.pixel_mm}


@dataclass(frozen=True)
class MultiView(InputBlock):
    """Planes through a point: 3 (axial, coronal, sagittal) or 9 (plus six diagonal planes)."""

    views: int = 3
    size: int = 64
    pixel_mm: float = 1.0
    as_channels: bool = False
    arch: ClassVar[str] = "multiview_cnn"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.views not in (3, 9):
            raise ValueError(f"MultiView.views must be 3 (orthogonal planes) or 9 (plus diagonals), got {self.views!r}")
        object.__setattr__(self, "size", _positive_int("MultiView.size", self.size))
        object.__setattr__(self, "pixel_mm", _positive_float("MultiView.pixel_mm", self.pixel_mm))
        object.__setattr__(self, "as_channels", bool(self.as_channels))

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in VIEW_PLANES[: self.views])

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.as_channels:
            return (self.views * self.n_windows, self.size, self.size)
        return (self.views, self.n_windows, self.size, self.size)

    def grids(self, volume: Volume, center_xyz: Any = None) -> list[Grid]:
        c = _center(center_xyz, "MultiView")
        return [Grid(c, axes, (1, self.size, self.size)) for axes in self._view_axes]

    @property
    def _view_axes(self) -> list[np.ndarray]:
        """Per view: columns (normal, row step, column step) in world mm; computed once per block."""
        cached = self.__dict__.get("_axes_cache")
        if cached is None:
            cached = [np.stack([np.cross(r, c), r * self.pixel_mm, c * self.pixel_mm], axis=1) for _, r, c in VIEW_PLANES[: self.views]]
            object.__setattr__(self, "_axes_cache", cached)
        return cached

    def _assemble(self, values: list[np.ndarray]) -> np.ndarray:
        stacked = np.stack([v[:, 0] for v in values], axis=0)  # (views, n_windows, s, s)
        return stacked.reshape(self.output_shape)

    def preview(self, sample: np.ndarray) -> np.ndarray:
        views = np.asarray(sample).reshape(self.views, self.n_windows, self.size, self.size)[:, 0]
        return _montage(views, ncols=3)

    def _params(self) -> dict[str, Any]:
        return {"views": self.views, "size": self.size, "pixel_mm": self.pixel_mm, "as_channels": self.as_channels}


def TriPlanar(size: int = 64, pixel_mm: float = 1.0, window: Any = "lung", as_channels: bool = False) -> MultiView:  # noqa: N802
    """Axial, coronal and sagittal planes through a point: ``MultiView(views=3)``."""
    return MultiView(window=window, views=3, size=size, pixel_mm=pixel_mm, as_channels=as_channels)


@dataclass(frozen=True)
class SeriesSlices(InputBlock):
    """n axial slices (``mode='slice'``) or slabs (``'mean'``/``'max'`` over each n-th of the series' world-z
    extent) spread evenly over the whole series, the in-plane extent resampled to ``size`` x ``size``."""

    n: int = 16
    size: int = 128
    mode: str = "slice"
    window: Any = "soft_tissue"
    arch: ClassVar[str] = "series_encoder"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "n", _positive_int("SeriesSlices.n", self.n))
        object.__setattr__(self, "size", _positive_int("SeriesSlices.size", self.size))
        if self.mode not in ("slice", "mean", "max"):
            raise ValueError(f"SeriesSlices.mode must be 'slice', 'mean' or 'max', got {self.mode!r}")

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n, self.n_windows, self.size, self.size)

    def _extent(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """World bounding box (min, max) of the volume's voxel centres."""
        corners = np.array(np.meshgrid(*[[0, s - 1] for s in volume.shape], indexing="ij")).reshape(3, -1).T
        world = volume.index_to_world(corners.astype(np.float64))
        return world.min(axis=0), world.max(axis=0)

    def _substeps(self, volume: Volume, length: float) -> int:
        if self.mode == "slice":
            return 1
        step_z = float(np.min(np.asarray(volume.spacing) / np.maximum(np.abs(volume.direction[2]), 1e-6)))
        return max(1, int(np.ceil(length / self.n / step_z)))

    def _grid(self, volume: Volume, m: int) -> Grid:
        lo, hi = self._extent(volume)
        length = max(float(hi[2] - lo[2]), float(min(volume.spacing)))
        fov = max(float(hi[0] - lo[0]), float(hi[1] - lo[1])) + float(min(volume.spacing))
        pixel = fov / self.size
        center = (lo + hi) / 2.0
        axes = np.stack([EZ * (length / (self.n * m)), EY * pixel, EX * pixel], axis=1)
        return Grid(center, axes, (self.n * m, self.size, self.size))

    def about(self, volume: Volume, center_xyz: Any) -> np.ndarray:
        lo, hi = self._extent(volume)
        return (lo + hi) / 2.0

    def grids(self, volume: Volume, center_xyz: Any = None) -> list[Grid]:
        lo, hi = self._extent(volume)
        return [self._grid(volume, self._substeps(volume, float(hi[2] - lo[2])))]

    def grid_world(self, volume: Volume, center_xyz: Any = None) -> np.ndarray:
        return self._grid(volume, 1).world()  # slab centres

    def _assemble(self, values: list[np.ndarray]) -> np.ndarray:
        v = values[0]  # (n_windows, n * m, s, s)
        w, nm, s, _ = v.shape
        m = nm // self.n
        v = v.reshape(w, self.n, m, s, s)
        v = v.max(axis=2) if self.mode == "max" else v.mean(axis=2)
        return v.transpose(1, 0, 2, 3)

    def preview(self, sample: np.ndarray) -> np.ndarray:
        return _montage(np.asarray(sample)[:, 0], ncols=int(np.ceil(np.sqrt(self.n))))

    def _params(self) -> dict[str, Any]:
        return {"n": self.n, "size": self.size, "mode": self.mode}


@dataclass(frozen=True)
class Patch3D(InputBlock):
    """A world-aligned box ``size`` = (d, h, w) voxels at ``spacing_mm`` = (z, y, x) mm around a point."""

    size: Any = (32, 32, 32)
    spacing_mm: Any = (1.0, 1.0, 1.0)
    arch: ClassVar[str] = "cnn3d"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "size", _triple("Patch3D.size", self.size, _positive_int))
        object.__setattr__(self, "spacing_mm", _triple("Patch3D.spacing_mm", self.spacing_mm, _positive_float))

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n_windows, *self.size)

    def grids(self, volume: Volume, center_xyz: Any = None) -> list[Grid]:
        c = _center(center_xyz, "Patch3D")
        sz, sy, sx = self.spacing_mm
        return [Grid(c, np.stack([EZ * sz, EY * sy, EX * sx], axis=1), self.size)]

    def _assemble(self, values: list[np.ndarray]) -> np.ndarray:
        return values[0]

    def preview(self, sample: np.ndarray) -> np.ndarray:
        return np.asarray(sample)[0, self.size[0] // 2]

    def _params(self) -> dict[str, Any]:
        return {"size": list(self.size), "spacing_mm": list(self.spacing_mm)}


BLOCK_TYPES: Mapping[str, type[InputBlock]] = MappingProxyType(
    {cls.__name__: cls for cls in (SliceStack, MultiView, SeriesSlices, Patch3D)}
)


def block_from_spec(spec: Mapping[str, Any]) -> InputBlock:
    """Rebuild an input block from its `spec()` (e.g. read from a model bundle's ``bundle.json``)."""
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"block spec must be a mapping with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in BLOCK_TYPES:
        raise ValueError(f"block spec: unknown type {kind!r}; known types are {sorted(BLOCK_TYPES)}")
    params = {k: v for k, v in spec.items() if k != "type"}
    if "window" in params and isinstance(params["window"], list):
        params["window"] = tuple(tuple(w) if isinstance(w, list) else w for w in params["window"])
    try:
        return BLOCK_TYPES[kind](**params)
    except TypeError as exc:
        raise ValueError(f"block spec for {kind}: {exc}") from exc


class Category:
    """Target block for class labels: a vocabulary (sorted unique labels unless given) and encode/decode."""

    def __init__(self, vocab: Sequence[Any] | None = None) -> None:
        self.vocab: tuple[Any, ...] | None = tuple(vocab) if vocab is not None else None
        if self.vocab is not None and len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"Category: vocab has duplicates: {list(self.vocab)}")

    def setup(self, labels: Iterable[Any]) -> Category:
        """A Category whose vocab is this one's, or the sorted unique ``labels`` (at least two classes)."""
        if self.vocab is not None:
            return self
        values = sorted({_plain(v) for v in labels}, key=lambda v: (str(type(v)), v))
        if len(values) < 2:
            raise ValueError(f"Category: need at least two classes in the labels, found {values}")
        return Category(values)

    def encode(self, label: Any) -> int:
        if self.vocab is None:
            raise ValueError("Category: vocab not set up; call setup(labels) first")
        value = _plain(label)
        try:
            return self.vocab.index(value)
        except ValueError:
            raise ValueError(f"label {label!r} is not in the vocabulary {list(self.vocab)}") from None

    def decode(self, index: int) -> Any:
        if self.vocab is None:
            raise ValueError("Category: vocab not set up; call setup(labels) first")
        return self.vocab[int(index)]

    def spec(self) -> dict[str, Any]:
        return {"type": "Category", "vocab": list(self.vocab) if self.vocab is not None else None}

    def __repr__(self) -> str:
        return f"Category(vocab={list(self.vocab) if self.vocab is not None else None})"


def _montage(images: np.ndarray, ncols: int) -> np.ndarray:
    """Tile ``(n, h, w)`` images into one 2D image, ``ncols`` a row, with a 1-pixel gap."""
    n, h, w = images.shape
    rows = int(np.ceil(n / ncols))
    fill = float(np.nanmin(images)) if images.size else 0.0
    out = np.full((rows * (h + 1) - 1, ncols * (w + 1) - 1), fill, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return out


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so that vocabularies are JSON-able and compare equal."""
    return value.item() if isinstance(value, np.generic) else value
