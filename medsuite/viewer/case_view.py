"""The case view: axial, coronal and sagittal slices with linked crosshairs at the nodule, a slice slider and
keyboard scrolling (Up/Down), window presets on keys 1-5 as in OHIF plus a custom window, the nodule circle,
a 1×/2×/4× zoom around the crosshair, and the slice number and world position. Runs inside ``st.fragment`` so
scrolling re-renders only the views."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from medsuite.data.windows import WINDOWS
from medsuite.viewer import images

# keys 1-5 as in OHIF: lung, mediastinum, bone, brain, then the DICOM file's own window
PRESETS: tuple[tuple[str, str], ...] = (("1", "lung"), ("2", "mediastinum"), ("3", "bone"), ("4", "brain"))
WINDOW_KEY = "viewer_window"
ZOOM_KEY = "viewer_zoom"
ZOOMS = (1.0, 2.0, 4.0)


def dicom_window(meta: dict[str, Any]) -> tuple[float, float] | None:
    """(width, level) from the series' own WindowWidth/WindowCenter (first value when several), or None."""
    w, c = meta.get("window_width"), meta.get("window_center")
    w = w[0] if isinstance(w, (list, tuple)) and w else w
    c = c[0] if isinstance(c, (list, tuple)) and c else c
    try:
        w, c = float(w), float(c)
    except (TypeError, ValueError):
        return None
    return (w, c) if w > 0 else None


def preset_windows(meta: dict[str, Any]) -> list[tuple[str, str, tuple[float, float] | None]]:
    """(key, name, (width, level)) for keys 1-5; the 5th is the file's window (None when it has none)."""
    out = [(key, name, (WINDOWS[name].width, WINDOWS[name].level)) for key, name in PRESETS]
    out.append(("5", "DICOM", dicom_window(meta)))
    return out


@st.cache_data(max_entries=512, show_spinner=False)
def view_image(cache_key: str, plane: str, cursor: tuple[int, int, int], window: tuple[float, float],
               nodule: tuple[float, float, float] | None, radius_mm: float | None, overlay_key: str | None,
               opacity: float, zoom: float, _array: np.ndarray, _geometry: images.Geometry,
               _overlay: np.ndarray | None) -> np.ndarray:
    """One rendered view, cached by the series, plane, position, window, zoom and overlay (arrays are not
    hashed: their identity is ``cache_key``/``overlay_key``)."""
    return images.render(_array, _geometry, plane, cursor, window, nodule_zyx=nodule, nodule_radius_mm=radius_mm,
                         overlay=_overlay, opacity=opacity, zoom=zoom)


def geometry_of(volume: Any) -> images.Geometry:
    return images.Geometry(tuple(float(s) for s in volume.spacing), bool(volume.direction[2, 0] >= 0))


def _set(key: str, value: Any) -> None:
    st.session_state[key] = value


def _step(key: str, delta: int, n: int) -> None:
    st.session_state[key] = int(np.clip(st.session_state.get(key, 0) + delta, 0, n - 1))


def window_controls(meta: dict[str, Any]) -> tuple[float, float]:
    """Preset buttons (keys 1-5) and a custom width/level; returns the current window."""
    presets = preset_windows(meta)
    current = st.session_state.setdefault(WINDOW_KEY, presets[0][2])
    cols = st.columns(len(presets) + 1)
    for col, (key, name, win) in zip(cols, presets, strict=False):
        label = f"{key} {name}" + (f" W{win[0]:g}/L{win[1]:g}" if win else " (none)")
        col.button(label, key=f"win_{key}", shortcut=key, disabled=win is None, on_click=_set, args=(WINDOW_KEY, win),
                   type="primary" if win == tuple(current) else "secondary")
    with cols[-1].popover("Custom"):
        w = st.number_input("Width", min_value=1.0, value=float(current[0]), step=10.0, key="win_w")
        lv = st.number_input("Level", value=float(current[1]), step=10.0, key="win_l")
        st.button("Apply", key="win_apply", on_click=_set, args=(WINDOW_KEY, (float(w), float(lv))))
    return tuple(st.session_state[WINDOW_KEY])


@st.fragment
def viewer(ctx: dict[str, Any]) -> None:
    """The three linked views and their controls; reruns alone when the slice or window changes."""
    from medsuite.viewer import auth

    auth.touch()
    vol, pid = ctx["volume"], ctx["prediction_id"]
    arr, geo = vol.array, geometry_of(vol)
    nz, ny, nx = arr.shape
    nod = ctx["nodule_zyx"]
    centre = np.clip(np.rint(nod if nod is not None else np.array(arr.shape) / 2 - 0.5), 0, np.array(arr.shape) - 1).astype(int)
    zkey = f"slice_{pid}"
    st.session_state.setdefault(zkey, int(centre[0]))
    window = window_controls(vol.meta)
    c1, c2, c3, c4 = st.columns([1, 1, 6, 2])
    c1.button("▲", key="slice_up", shortcut="up", help="previous slice (Up)", on_click=_step, args=(zkey, -1, nz))
    c2.button("▼", key="slice_down", shortcut="down", help="next slice (Down)", on_click=_step, args=(zkey, 1, nz))
    z = c3.slider("Axial slice", 0, nz - 1, key=zkey, label_visibility="collapsed")
    zoom = c4.segmented_control("Zoom", ZOOMS, default=ZOOMS[0], key=ZOOM_KEY, label_visibility="collapsed",
                                format_func=lambda f: f"{f:g}×", help="magnify around the crosshair") or ZOOMS[0]
    cursor = (int(z), int(centre[1]), int(centre[2]))
    world = vol.index_to_world(np.array(cursor, dtype=float))
    st.caption(f"Slice {z} of 0–{nz - 1} · world (x, y, z) = ({world[0]:.1f}, {world[1]:.1f}, {world[2]:.1f}) mm · "
               f"window W{window[0]:g}/L{window[1]:g}")
    overlay = ctx.get("overlay")
    nodule = None if nod is None else tuple(float(v) for v in nod)
    cols = st.columns([1.2, 1, 1])
    for col, plane in zip(cols, images.PLANES, strict=True):
        ov, okey = None, None
        if overlay is not None:
            axis = images.PLANES.index(plane)
            ov = images.overlay_plane(overlay["array"], overlay["offset"], arr.shape, plane, cursor[axis], overlay["scale"])
            okey = f"{overlay['key']}:{plane}:{cursor[axis]}" if ov is not None else None
        img = view_image(ctx["cache_key"], plane, cursor, window, nodule, ctx["radius_mm"], okey,
                         float(overlay["opacity"]) if overlay else 0.0, float(zoom), arr, geo, ov)
        col.image(img, caption=plane, width="stretch")
