"""Named CT window presets and intensity normalisation of samples.

A window ``(width, level)`` maps Hounsfield units linearly onto ``[0, 1]``: ``level - width/2`` -> 0,
``level + width/2`` -> 1, clipped outside. Several windows give several channels of one sample.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np


@dataclass(frozen=True)
class Window:
    """One intensity mapping: a CT window ``(width, level)``, or ``raw`` (values unchanged) or ``zscore``."""

    name: str
    width: float | None = None
    level: float | None = None

    def __post_init__(self) -> None:
        if self.name in ("raw", "zscore"):
            return
        if self.width is None or self.level is None or not float(self.width) > 0:
            raise ValueError(f"window {self.name!r}: width must be > 0 and level given, got W={self.width} L={self.level}")

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map ``values`` (HU for CT) to float32: ``[0, 1]`` for a CT window."""
        v = np.asarray(values, dtype=np.float32)
        if self.name == "raw":
            return v
        if self.name == "zscore":
            std = float(v.std())
            return (v - float(v.mean())) / (std if std > 1e-6 else 1.0)
        low = float(self.level) - float(self.width) / 2.0
        out = v - np.float32(low)
        out *= np.float32(1.0 / float(self.width))
        np.maximum(out, 0.0, out=out)
        return np.minimum(out, 1.0, out=out)

    def spec(self) -> str | list:
        """JSON-able form: the preset name, or ``[width, level]`` for a custom window."""
        if self.name in WINDOWS and WINDOWS[self.name] == self:
            return self.name
        if self.name in ("raw", "zscore"):
            return self.name
        return [float(self.width), float(self.level)]


WINDOWS: Mapping[str, Window] = MappingProxyType(
    {
        "lung": Window("lung", 1500.0, -600.0),
        "mediastinum": Window("mediastinum", 350.0, 50.0),
        "bone": Window("bone", 2000.0, 500.0),
        "brain": Window("brain", 80.0, 40.0),
        "soft_tissue": Window("soft_tissue", 400.0, 40.0),
    }
)
"""Named CT window presets ``name -> Window(width, level)`` (read-only)."""

WindowLike = str | Window | tuple[float, float] | list | None


def resolve_window(window: str | Window | tuple[float, float] | list | None) -> Window:
    """One window from a preset name, ``(width, level)``, ``"raw"``/``None`` (unchanged) or ``"zscore"``."""
    if window is None:
        return Window("raw")
    if isinstance(window, Window):
        return window
    if isinstance(window, str):
        if window in ("raw", "zscore"):
            return Window(window)
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; presets are {sorted(WINDOWS)}, or give (width, level), 'raw', 'zscore'")
        return WINDOWS[window]
    if isinstance(window, (tuple, list)) and len(window) == 2 and all(isinstance(v, (int, float)) for v in window):
        return Window(f"W{float(window[0]):g}/L{float(window[1]):g}", float(window[0]), float(window[1]))
    raise ValueError(f"cannot read window {window!r}: give a preset name, (width, level), 'raw' or 'zscore'")


def resolve_windows(window: WindowLike | Iterable) -> tuple[Window, ...]:
    """Windows for the channels: one (name, pair, None) or several (``("lung", "mediastinum")``)."""
    if window is None or isinstance(window, (str, Window)):
        return (resolve_window(window),)
    items = list(window)
    if len(items) == 2 and all(isinstance(v, (int, float)) for v in items):
        return (resolve_window(tuple(items)),)
    if not items:
        raise ValueError("window: give at least one window")
    return tuple(resolve_window(w) for w in items)


def windows_spec(windows: tuple[Window, ...]) -> list:
    """JSON-able list of the windows (preset names or ``[width, level]``)."""
    return [w.spec() for w in windows]


def apply_windows(values: np.ndarray, windows: tuple[Window, ...]) -> np.ndarray:
    """Stack every window of ``values`` as a new leading axis: ``(n_windows, *values.shape)`` float32."""
    if len(windows) == 1:
        return windows[0].apply(values)[None]
    return np.stack([w.apply(values) for w in windows], axis=0)
