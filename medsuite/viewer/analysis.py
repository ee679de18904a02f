"""Prediction panel, attributions ("why") and similar cases for one prediction; attributions and neighbours
are computed on demand and cached per (prediction, method)."""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from medsuite.interpret.attributions import METHODS, SALIENCY_CAVEAT
from medsuite.viewer import images

METHOD_NAMES = {"ig": "Integrated gradients", "occlusion": "Occlusion", "gradcam": "Grad-CAM"}
WHY_KEY = "why_method"


def prediction_panel(pred: dict[str, Any], info: dict[str, str] | None, positive: str | None) -> None:
    """Probability, label against the bundle threshold, and the model's name, version and date."""
    st.metric(f"P({positive or 'positive'})", f"{pred['probability']:.3f}",
              delta=f"{pred['probability'] - pred['threshold']:+.3f} vs threshold {pred['threshold']:.3f}",
              delta_color="off")
    st.write(f"**Model says:** {pred['label']}")
    if pred.get("diameter_mm") is not None:
        st.write(f"Nodule {pred['nodule_id'] or ''}: {pred['diameter_mm']:.1f} mm at "
                 f"({pred['x_mm']:.1f}, {pred['y_mm']:.1f}, {pred['z_mm']:.1f}) mm")
    if info:
        st.caption(f"Model {info['name']} · version {info['version']} · trained {info['date']}")
        if info["sha256"] != pred["bundle_sha256"]:
            st.warning("The loaded bundle is not the one that made this prediction (different sha256).")
    else:
        st.caption(f"Model bundle not available (run bundle sha256 {pred['bundle_sha256'][:12]}); "
                   "start the viewer with --bundle to see explanations and similar cases.")


@st.cache_data(max_entries=64, show_spinner="Computing the attribution ...")
def attribution(bundle_path: str, prediction_id: int, method: str, _bundle: Any, _volume: Any,
                center: tuple[float, float, float] | None) -> dict[str, Any]:
    """The attribution volume (cropped, scan geometry) for one prediction and method, its display scale (99th
    percentile of |attribution|) and what its native resolution is; cached per (bundle, prediction, method)."""
    from medsuite.interpret.explain import explain

    res = explain(_bundle, _volume, methods=[method], center_xyz=center)
    vol, attr = res.volumes[method], res.attributions[method]
    arr = np.asarray(vol.array, dtype=np.float32)
    spec = _bundle.block.spec() if hasattr(_bundle.block, "spec") else {}
    return {"array": arr, "offset": tuple(int(v) for v in vol.meta["offset_zyx"]),
            "scale": images.attribution_scale(arr), "max": float(np.abs(arr).max()) if arr.size else 0.0,
            "key": f"{prediction_id}:{method}", "method": method,
            "resolution": native_resolution(method, attr.params, spec), "notes": list(attr.notes)}


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


def overlay_legend(overlay: dict[str, Any], opacity: float) -> None:
    """Colour bar, scale and native resolution of the attribution on the views."""
    st.image(images.colorbar(opacity=opacity), width="stretch")
    st.caption(f"{METHOD_NAMES.get(overlay['method'], overlay['method'])} |attribution|: 0 (transparent) → "
               f"{overlay['scale']:.3g} and above (opaque {images.HEAT_NAME}; clipped at the "
               f"{images.CLIP_PERCENTILE:g}th percentile, max {overlay['max']:.3g}). "
               "Drawn on the slices the model's input covered.")
    st.caption(overlay["resolution"])
    for note in overlay["notes"]:
        st.caption(note)


def why_controls(pid: int, enabled: bool) -> tuple[str | None, float]:
    """Method selector, opacity and the on-demand compute button; returns (method shown or None, opacity)."""
    st.caption(SALIENCY_CAVEAT)
    if not enabled:
        st.info("No model bundle loaded: attributions need the bundle.")
        return None, 0.0
    method = st.selectbox("Method", list(METHODS), format_func=lambda m: METHOD_NAMES.get(m, m), key="why_sel")
    opacity = st.slider("Overlay opacity (at the clip value)", 0.0, 1.0, 0.85, 0.05, key="why_opacity")
    shown = st.session_state.get(WHY_KEY)
    c1, c2 = st.columns(2)
    if c1.button("Show attribution", key="why_show"):
        st.session_state[WHY_KEY] = (pid, method)
        shown = (pid, method)
    if c2.button("Hide", key="why_hide"):
        st.session_state.pop(WHY_KEY, None)
        shown = None
    if shown and shown[0] == pid:
        return shown[1], opacity
    return None, opacity


@st.cache_data(max_entries=256, show_spinner="Finding similar cases ...")
def similar(bundle_path: str, prediction_id: int, k: int, _bundle: Any, _index: Any, _volume: Any,
            center: tuple[float, float, float] | None) -> list[dict[str, Any]]:
    """Top-``k`` reference cases by cosine similarity of the model's embedding of this case."""
    import torch

    x = np.asarray(_bundle.block.sample(_volume, None if center is None else np.asarray(center)), dtype=np.float32)
    with torch.no_grad():
        emb = _bundle.model.embed(torch.as_tensor(x)[None]).float().numpy()
    rows, sims = _index.query_rows(emb, k)
    out = []
    for r, s in zip(rows[0], sims[0], strict=True):
        label = _index.labels[int(r)]
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < len(_bundle.labels):
            label = _bundle.labels[int(label)]
        thumb = None if _index.thumbnails is None else np.asarray(_index.thumbnails[int(r)])
        out.append({"case_id": _index.case_ids[int(r)], "label": str(label), "similarity": float(s), "thumbnail": thumb})
    return out


def similar_summary(cases: list[dict[str, Any]], positive: str) -> str:
    """E.g. '7 of 10 similar cases were malignant'."""
    n_pos = sum(c["label"] == positive for c in cases)
    return f"{n_pos} of {len(cases)} similar cases were {positive}"


def similar_panel(cases: list[dict[str, Any]], positive: str) -> None:
    st.write(f"**{similar_summary(cases, positive)}**")
    per_row = 5
    for start in range(0, len(cases), per_row):
        cols = st.columns(per_row)
        for col, case in zip(cols, cases[start:start + per_row], strict=False):
            if case["thumbnail"] is not None:
                col.image(case["thumbnail"], width="stretch")
            col.caption(f"{case['label']} · sim {case['similarity']:.2f}")
