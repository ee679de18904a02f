"""Why (attributions) on the case page: method choice, on-demand computation (cached per prediction and
method), and the legend. The map goes to the reading view as a volume on the scan's grid (`payload.heat_overlay`);
its opacity is set in the browser."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from medsuite.interpret.attributions import METHODS, SALIENCY_CAVEAT

METHOD_NAMES = {"ig": "Integrated gradients", "occlusion": "Occlusion", "gradcam": "Grad-CAM"}
WHY_KEY = "why_method"
CLIP_PERCENTILE = 99.0
DEFAULT_OPACITY = 0.8
# the heat colour map of the reading view (frontend/src/viewer.js HEAT): dark red -> red -> orange -> pale yellow,
# transparent at 0 and opaque at the clip value
HEAT_CSS = "linear-gradient(90deg, rgba(128,0,0,0) 0%, rgba(230,20,0,.45) 35%, rgba(255,160,0,.8) 70%, rgba(255,255,120,1) 100%)"


def attribution_scale(attr: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """The magnitude shown at full colour: the ``percentile`` of |attribution| over the voxels that received
    any (larger values are clipped, so one hot pixel does not wash out the rest); 0 for an all-zero map."""
    mags = np.abs(np.asarray(attr, dtype=np.float32))
    mags = mags[mags > 0]
    return float(np.percentile(mags, percentile)) if mags.size else 0.0


def native_resolution(method: str, params: dict[str, Any], spec: dict[str, Any]) -> str:
    """One sentence on how fine the method's map really is, in the model input's millimetres."""
    px, size = spec.get("pixel_mm"), spec.get("size")
    grid = (f"{spec['k']} slices {spec['spacing_mm']:g} mm apart, " if spec.get("k") and spec.get("spacing_mm") else "")
    field = f" ({size}×{size} px = {size * px:g} mm field)" if px and size else ""
    if method == "gradcam" and params.get("native_shape"):
        native = params["native_shape"]
        cell = f" of about {size * px / native[-1]:.0f} mm" if px and size else ""
        return (f"Grad-CAM is coarse: {'×'.join(map(str, native))} cells{cell}, upsampled to the input"
                f"{field}; read it as a region, not an outline.")
    if method == "occlusion" and params.get("window_mm"):
        return (f"Occlusion resolution: {params['window_mm']:g} mm windows moved in {params['stride_mm']:g} mm steps"
                f" over the input{field}.")
    if px:
        return f"Per input pixel: {px:g} mm in-plane, {grid}{field.strip(' ()')}; pixel-level, so expect speckle."
    return "Per input pixel of the model's input."


@st.cache_data(max_entries=64, show_spinner="Computing the attribution …")
def attribution(bundle_path: str, prediction_id: int, method: str, _bundle: Any, _volume: Any,
                center: tuple[float, float, float] | None) -> dict[str, Any]:
    """The attribution volume (cropped, scan geometry) for one prediction and method, its display scale and
    what its native resolution is; cached per (bundle, prediction, method)."""
    from medsuite.interpret.explain import explain

    res = explain(_bundle, _volume, methods=[method], center_xyz=center)
    vol, attr = res.volumes[method], res.attributions[method]
    arr = np.asarray(vol.array, dtype=np.float32)
    spec = _bundle.block.spec() if hasattr(_bundle.block, "spec") else {}
    return {"array": arr, "offset": tuple(int(v) for v in vol.meta["offset_zyx"]),
            "scale": attribution_scale(arr), "max": float(np.abs(arr).max()) if arr.size else 0.0,
            "key": f"{prediction_id}:{method}", "method": method,
            "resolution": native_resolution(method, attr.params, spec), "notes": list(attr.notes)}


def requested(pid: int) -> str | None:
    """The attribution method the reader asked to see on case ``pid`` (None: none)."""
    shown = st.session_state.get(WHY_KEY)
    return shown[1] if shown and shown[0] == pid else None


def _show(pid: int) -> None:
    st.session_state[WHY_KEY] = (pid, st.session_state.get("why_sel") or next(iter(METHODS)))


def _hide() -> None:
    st.session_state.pop(WHY_KEY, None)


def controls(pid: int, enabled: bool) -> None:
    """The "Why" expander: method and show/hide (the overlay itself is computed by `overlay` before the view)."""
    with st.expander("Why (attributions)", expanded=requested(pid) is not None):
        st.caption(SALIENCY_CAVEAT)
        if not enabled:
            st.info("No model bundle loaded: attributions need the bundle.")
            return
        st.selectbox("Method", list(METHODS), format_func=lambda m: METHOD_NAMES.get(m, m), key="why_sel")
        c1, c2 = st.columns(2)
        c1.button("Show attribution", key="why_show", on_click=_show, args=(pid,))
        c2.button("Hide", key="why_hide", on_click=_hide)


def overlay(bpath: str | None, bundle: Any, volume: Any, pred: dict[str, Any], method: str) -> dict[str, Any] | None:
    """The attribution of ``method`` for this prediction as an overlay description (computed once, cached)."""
    pid = int(pred["prediction_id"])
    if bundle is None:
        return None
    center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
    try:
        ov = attribution(str(bpath), pid, method, bundle, volume, center)
    except Exception as exc:  # noqa: BLE001 - a failed explanation must not take the case page down
        st.error(f"Attribution failed: {type(exc).__name__}: {exc}")
        return None
    if not ov["scale"] > 0:
        st.info("The attribution is zero everywhere in the model's input: nothing to draw.")
        return None
    return dict(ov, opacity=DEFAULT_OPACITY, title=f"{METHOD_NAMES.get(ov['method'], ov['method'])} |attribution|")


def legend(overlay: dict[str, Any]) -> None:
    """Colour bar, scale and native resolution of the attribution drawn on the views."""
    st.html(f'<div style="height:12px;border-radius:3px;background:{HEAT_CSS},#555;margin:2px 0 4px"></div>')
    st.caption(f"{overlay['title']}: 0 (transparent) → {overlay['scale']:.3g} and above (opaque pale yellow; "
               f"clipped at the {CLIP_PERCENTILE:g}th percentile, max {overlay['max']:.3g}). Drawn where the "
               "model's input was; opacity and on/off in the viewer's toolbar.")
    st.caption(overlay["resolution"])
    for note in overlay["notes"]:
        st.caption(note)
