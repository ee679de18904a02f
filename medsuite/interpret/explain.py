"""`explain(bundle, case)`: attributions for one case, mapped onto the scan, as PNG overlays and a JSON summary.

For a nodule model the input is sampled around the nodule's world point; for a series model the whole
series is the input and the summary says which slices mattered (attribution mass per slice, and the
model's attention weights when it has them) and where within them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.interpret.attributions import (
    METHODS,
    SALIENCY_CAVEAT,
    Attribution,
    SampleLayout,
    attribute,
    block_layout,
    blurred_baseline,
    grid_pixel_spacing,
)
from medsuite.interpret.mapping import (
    grid_peak,
    peak_world,
    planes_through,
    slice_importance,
    splat_to_volume,
)
from medsuite.io.atomic import atomic_path, atomic_write_text
from medsuite.io.volume import Volume
from medsuite.learn.predict import Predictor

AIR_HU = -1024.0
DISPLAY_WINDOW = (-1000.0, 400.0)  # lung window for the grey background of overlays
SIGNED = {"ig", "occlusion"}


@dataclass
class Prepared:
    """A case turned into model input: the sample, its world grid, layout, pixel spacing and baseline."""

    volume: Volume
    center_xyz: np.ndarray | None
    x: np.ndarray
    grid: np.ndarray
    layout: SampleLayout
    pixel_spacing_mm: tuple[float, ...]
    baseline: np.ndarray


@dataclass
class Explanation:
    """Result of `explain`: probabilities, per-method attributions and attribution volumes, the summary, files."""

    probabilities: list[float]
    target: int
    attributions: dict[str, Attribution]
    volumes: dict[str, Volume]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def make_baseline(kind: str, block: Any, volume: Volume, center_xyz: Any, x: np.ndarray, layout: SampleLayout,
                  pixel_spacing_mm: tuple[float, ...], *, blur_mm: float = 6.0) -> np.ndarray:
    """IG baseline / occlusion fill: ``'air'`` (-1024 HU through the block's windowing), ``'blurred'``
    (the input blurred with a Gaussian of ``blur_mm``) or ``'zero'``."""
    if kind == "air":
        air = volume.with_array(np.full(volume.shape, AIR_HU, dtype=np.float32))
        return np.asarray(block.sample(air, center_xyz), dtype=np.float32)
    if kind == "blurred":
        sigma = tuple(blur_mm / s for s in pixel_spacing_mm[-layout.n_spatial:])
        return blurred_baseline(x, layout, sigma)
    if kind == "zero":
        return np.zeros_like(x)
    raise ValueError(f"unknown baseline {kind!r}; choose 'air', 'blurred' or 'zero'")


def prepare_case(block: Any, volume: Volume, center_xyz: Any = None, *, baseline: str = "air") -> Prepared:
    """Sample ``volume`` with ``block`` (around ``center_xyz`` when given) and build the baseline."""
    center = None if center_xyz is None else np.asarray(center_xyz, dtype=np.float64).reshape(3)
    x = np.asarray(block.sample(volume, center), dtype=np.float32)
    grid = np.asarray(block.grid_world(volume, center), dtype=np.float64)
    layout = block_layout(block, x.shape, grid.shape[:-1])
    spacing = grid_pixel_spacing(grid, layout.n_spatial)
    base = make_baseline(baseline, block, volume, center, x, layout, spacing)
    return Prepared(volume, center, x, grid, layout, spacing, base)


def explain(
    bundle: Any,
    case: Volume | str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    *,
    center_xyz: Sequence[float] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    target: int | None = None,
    baseline: str = "air",
    n_steps: int = 50,
    noise_tunnel: bool = False,
    occlusion_mm: float = 8.0,
    focus_radius_mm: float = 10.0,
    series_uid: str | None = None,
    predictor: Predictor | None = None,
    covariates: dict[str, float] | None = None,
) -> Explanation:
    """Explain one case with a loaded bundle (``.model``, ``.block``, ``.labels``, ``.task``).

    The case is scored by the bundle's predictor (``predictor``, default ``Predictor.from_bundle(bundle)``:
    the TTA, calibration and threshold scoring uses) and the attributions explain that chain's output for
    ``target`` (default: the predictor's decision, i.e. the label scoring reports).

    ``case`` is a `Volume` or a path for `medsuite.io.load.read_volume`. A nodule model needs
    ``center_xyz`` (world LPS mm). With ``out_dir`` it writes ``summary.json``, ``overlay_<method>.png``
    (axial/coronal/sagittal through the nodule or the attribution peak), ``attribution_<method>.nii.gz``
    (cropped attribution volume in the scan's geometry) and, for series models, ``slices_<method>.png``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown attribution method(s) {unknown or methods}; choose from {list(METHODS)}")
    volume = case if isinstance(case, Volume) else _read(case, series_uid)
    task = getattr(bundle, "task", "nodule")
    if task == "nodule" and center_xyz is None:
        raise ValueError("this is a nodule model: give the nodule's world position (x, y, z mm), e.g. --nodule x,y,z")
    center = None if task == "series" else center_xyz
    predictor = predictor if predictor is not None else Predictor.from_bundle(bundle)
    fused_note = None
    if predictor.settings.fusion is not None and covariates is None:
        names = list(predictor.settings.fusion.covariates)
        fused_note = (f"the bundle fuses the image with the nodule table's {names}, not given here: the probabilities are "
                      "the image model's alone, and the maps explain its log-odds (the fused log-odds differ by a "
                      "constant per nodule, so the maps are the same up to scale)")
        predictor = predictor.image_only()
    single = None if covariates is None else {k: [float(v)] for k, v in covariates.items()}
    block = bundle.block
    prep = prepare_case(block, volume, center, baseline=baseline)
    probs = predictor.predict_proba(prep.x[None], single if predictor.settings.fusion is not None else None)[0]
    decided = int(predictor.decide_index(probs[None])[0])
    target = decided if target is None else int(target)
    labels = predictor.labels
    if not 0 <= target < len(probs):
        raise ValueError(f"target class {target} out of range for a model with {len(probs)} outputs")
    model = predictor.module_for(covariates)
    options = {"ig": {"n_steps": n_steps, "noise_tunnel": noise_tunnel}, "occlusion": {"window_mm": occlusion_mm}}
    attrs: dict[str, Attribution] = {}
    vols: dict[str, Volume] = {}
    per_method: dict[str, Any] = {}
    for method in methods:
        a = attribute(method, model, prep.x, prep.layout, prep.pixel_spacing_mm, baseline=prep.baseline,
                      target=target, **options.get(method, {}))
        values = prep.layout.to_grid(a.values)
        vol = splat_to_volume(values, prep.grid, volume)
        attrs[method], vols[method] = a, vol
        per_method[method] = _method_summary(a, values, prep, vol, focus_radius_mm)
        if task == "series":
            per_method[method]["slices"] = slice_importance(values, prep.grid)
    summary: dict[str, Any] = {
        "series_uid": volume.series_uid,
        "task": task,
        "model": getattr(bundle, "name", type(model).__name__),
        "bundle_sha256": getattr(bundle, "sha256", None),
        "input_block": block.spec() if hasattr(block, "spec") else None,
        "center_xyz_mm": None if prep.center_xyz is None else [round(float(v), 2) for v in prep.center_xyz],
        "probabilities": {str(lab): round(float(p), 5) for lab, p in zip(labels, probs, strict=False)},
        "prediction": {"label": predictor.labels[decided], "probability": round(float(predictor.score_of(probs[None])[0]), 5),
                       "threshold": predictor.threshold, "positive": predictor.positive},
        "predictor": {**_predictor_summary(predictor), **({"note": fused_note} if fused_note else {}),
                      **({"covariates": dict(covariates)} if covariates else {})},
        "target": {"index": target, "label": str(labels[target])},
        "explained_output": f"log-odds of the predictor's probability of class '{labels[target]}' (the chain scoring runs)",
        "baseline": baseline,
        "methods": per_method,
        "caveat": SALIENCY_CAVEAT,
        "planes_note": "Overlays show the scan's array planes (axial/coronal/sagittal for an axially acquired scan).",
    }
    if task == "series":
        summary["attention"] = _attention(predictor.model, prep.x)
    result = Explanation([float(p) for p in probs], target, attrs, vols, summary)
    if out_dir is not None:
        result.files = write_outputs(Path(out_dir), result, volume, prep)
    return result


def _predictor_summary(predictor: Predictor) -> dict[str, Any]:
    s = predictor.settings
    return {"tta_flips": [list(f) for f in s.tta], "calibration": None if s.calibration is None else s.calibration.method,
            "threshold_rule": None if s.operating_point is None else s.operating_point.rule}


def _read(path: str | os.PathLike[str], series_uid: str | None) -> Volume:
    from medsuite.io.load import read_volume

    return read_volume(path, series_uid)


def _method_summary(a: Attribution, values: np.ndarray, prep: Prepared, vol: Volume, radius_mm: float) -> dict[str, Any]:
    mags = np.abs(values)
    peak = grid_peak(values, prep.grid)
    out: dict[str, Any] = {
        "params": a.params,
        "notes": a.notes,
        "peak_world_mm": [round(float(v), 2) for v in peak],
        "volume_peak_world_mm": [round(float(v), 2) for v in peak_world(vol)],
        "attribution_volume": {"shape_zyx": list(vol.shape), "origin_xyz": [round(v, 3) for v in vol.origin],
                               "coverage": round(vol.meta["coverage"], 3)},
        "total_abs": float(mags.sum()),
    }
    if prep.center_xyz is not None:
        dist = np.linalg.norm(prep.grid - prep.center_xyz, axis=-1)
        out["peak_distance_to_center_mm"] = round(float(np.linalg.norm(peak - prep.center_xyz)), 2)
        out[f"abs_mass_within_{radius_mm:g}mm"] = round(float(mags[dist <= radius_mm].sum() / max(mags.sum(), 1e-12)), 4)
        out[f"area_fraction_within_{radius_mm:g}mm"] = round(float((dist <= radius_mm).mean()), 4)
    return out


def _attention(model: Any, x: np.ndarray) -> list[float] | None:
    """Per-slice attention weights of a series model: ``forward(x, return_attention=True)`` (the learn layer's
    series_encoder) or ``attention_weights(x)``; None when the model has neither."""
    import inspect

    import torch

    batch = torch.as_tensor(x)[None]
    with torch.no_grad():
        if "return_attention" in inspect.signature(model.forward).parameters:
            w = model(batch, return_attention=True)[1]
        elif callable(getattr(model, "attention_weights", None)):
            w = model.attention_weights(batch)
        else:
            return None
    return [round(float(v), 5) for v in np.asarray(w).reshape(-1)]


# ----------------------------------------------------------------------------- outputs
def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def write_outputs(out: Path, result: Explanation, volume: Volume, prep: Prepared) -> dict[str, Path]:
    """Write overlays, attribution volumes and ``summary.json`` (atomically) into ``out``."""
    from medsuite.io.sitk_io import write_nifti

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for method, vol in result.volumes.items():
        files[f"attribution_{method}"] = write_nifti(vol, out / f"attribution_{method}.nii.gz")
        center = prep.center_xyz if prep.center_xyz is not None else peak_world(vol)
        files[f"overlay_{method}"] = render_overlay(out / f"overlay_{method}.png", volume, vol, center, method,
                                                    result.summary, result.attributions[method].notes)
        if result.summary["task"] == "series":
            files[f"slices_{method}"] = render_slices(out / f"slices_{method}.png", method, result.summary)
    summary = dict(result.summary, files={k: p.name for k, p in files.items()})
    files["summary"] = atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    return files


def render_overlay(path: Path, volume: Volume, attribution: Volume, center_xyz: np.ndarray, method: str,
                   summary: dict[str, Any], notes: Sequence[str]) -> Path:
    """Three planes of the original scan through ``center_xyz`` with the attribution on top, and a caption."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    views = planes_through(volume, attribution, center_xyz)
    peak = max(float(np.abs(v.attribution).max()) for v in views) or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    for ax, v in zip(axes, views, strict=True):
        origin = "upper" if v.plane == "axial" else "lower"  # coronal/sagittal: head at the top
        ax.imshow(v.image, cmap="gray", vmin=DISPLAY_WINDOW[0], vmax=DISPLAY_WINDOW[1], extent=v.extent_mm
                  if origin == "upper" else (v.extent_mm[0], v.extent_mm[1], v.extent_mm[3], v.extent_mm[2]), origin=origin)
        shown = np.ma.masked_where(np.abs(v.attribution) < 0.05 * peak, v.attribution)
        kw = {"cmap": "bwr", "vmin": -peak, "vmax": peak} if method in SIGNED else {"cmap": "inferno", "vmin": 0, "vmax": peak}
        im = ax.imshow(shown, alpha=0.55, extent=v.extent_mm if origin == "upper" else
                       (v.extent_mm[0], v.extent_mm[1], v.extent_mm[3], v.extent_mm[2]), origin=origin, **kw)
        ax.set_title(f"{v.plane} (slice {v.index})", fontsize=9)
        ax.set_xlabel("mm")
    fig.colorbar(im, ax=axes, shrink=0.7, label=f"{method} attribution")
    t = summary["target"]
    prob = summary["probabilities"].get(t["label"], "")
    caption = [f"{method} for class '{t['label']}' (p={prob}), baseline {summary['baseline']}.", SALIENCY_CAVEAT, *notes]
    fig.text(0.02, -0.02, "\n".join(caption), fontsize=8, va="top", wrap=True)
    _save(fig, path)
    plt.close(fig)
    return path


def render_slices(path: Path, method: str, summary: dict[str, Any]) -> Path:
    """Bar chart of attribution mass per input slice (and attention weights when the model has them)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    slices = summary["methods"][method]["slices"]
    mass = [s["mass"] for s in slices]
    idx = np.arange(len(mass))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(idx - 0.2, mass, width=0.4, label=f"{method} |attribution| share")
    if summary.get("attention"):
        ax.bar(idx + 0.2, summary["attention"], width=0.4, label="attention weight")
    ax.set_xlabel("input slice (inferior → superior, world z)")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    fig.text(0.02, -0.04, SALIENCY_CAVEAT, fontsize=8, va="top")
    _save(fig, path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- sanity run
def run_sanity(
    bundle: Any,
    cases: Sequence[tuple[str, Volume, Sequence[float] | None]],
    out_dir: str | os.PathLike[str],
    methods: Sequence[str] = METHODS,
    *,
    baseline: str = "air",
    n_steps: int = 16,
    occlusion_mm: float = 8.0,
    mode: str = "cascading",
    max_layers: int | None = 8,
    curve_steps: int = 20,
) -> dict[str, Path]:
    """Randomization test and deletion/insertion curves of ``methods`` on ``cases`` ``(case_id, volume,
    center or None)``; writes ``sanity.json``, ``sanity.html`` and PNG plots into ``out_dir``."""
    from medsuite.interpret.sanity import (
        SanityCase,
        deletion_insertion,
        randomization_test,
        write_sanity_report,
    )

    if not cases:
        raise ValueError("run_sanity: no cases")
    prepared = []
    for case_id, volume, center in cases:
        p = prepare_case(bundle.block, volume, center if getattr(bundle, "task", "nodule") != "series" else None,
                         baseline=baseline)
        prepared.append(SanityCase(str(case_id), p.x, p.baseline, p.layout, p.pixel_spacing_mm))
    options = {"ig": {"n_steps": n_steps}, "occlusion": {"window_mm": occlusion_mm}}
    predictor = Predictor.from_bundle(bundle)
    note = None
    if predictor.settings.fusion is not None:  # the covariates are a constant per case: check the image part
        note = (f"the bundle fuses the image with {list(predictor.settings.fusion.covariates)}; the checks run on its "
                "image part (the fused log-odds differ by a constant per case)")
        predictor = predictor.image_only()
    rand = [randomization_test(predictor, prepared, m, mode=mode, max_layers=max_layers, options=options) for m in methods]
    faith = [deletion_insertion(predictor, prepared, m, n_steps=curve_steps, options=options) for m in methods]
    context = {"model": getattr(bundle, "name", type(bundle.model).__name__), "cases": len(prepared),
               "baseline": baseline, "ig_steps": n_steps, "randomization": mode,
               "predictor": {**_predictor_summary(predictor), **({"note": note} if note else {})}}
    return write_sanity_report(out_dir, rand, faith, context=context)
