"""The score panel: the calibrated probability as scored, its stability interval, the decision, and the threshold
in plain words (what it was chosen for and what it gives), from the bundle's predictor and stored metrics.

The interval is not a confidence interval of a population quantity: it is the range of the bundle's own
calibrated probability over small, clinically meaningless changes of the input — each test-time flip alone, and
the sampling centre moved 1 mm along each axis. A wide range says the score hinges on details a reader cannot
see; a narrow one says it does not (it says nothing about whether the model is right).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import streamlit as st

SHIFT_MM = 1.0


def _pct(v: Any) -> str:
    return "?" if v is None else f"{float(v):.2f}"


def rule_words(rule: str | None, positive: str) -> str:
    """What a threshold rule aims at, in words a clinician reads."""
    rule = (rule or "").strip()
    if rule.startswith("youden"):
        return "to balance sensitivity and specificity (largest sensitivity + specificity, Youden's J)"
    for name, what in (("sensitivity>=", f"to find at least {{x:.0%}} of {positive} cases (sensitivity ≥ {{x:g}}) "
                                       "with the best specificity"),
                       ("specificity>=", "to keep specificity at {x:.0%} or more (specificity ≥ {x:g}) "
                                         "with the best sensitivity")):
        if rule.startswith(name):
            try:
                return what.format(x=float(rule[len(name):]))
            except ValueError:
                break
    if rule.startswith("fixed"):
        return "as a fixed value set when the model was exported"
    return f"by the rule “{rule}”" if rule else "by an unrecorded rule"


def operating_point(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Threshold, rule and the figures it gave, from bundle.json: the predictor section (where it was chosen)
    and the stored metrics of the test split when the bundle has them."""
    pred = meta.get("predictor") or {}
    thr = pred.get("threshold") or {}
    out: dict[str, Any] = {
        "threshold": thr.get("value", meta.get("threshold")),
        "rule": thr.get("rule"),
        "chosen_on": thr.get("split"),
        "chosen_n": thr.get("n"),
        "chosen_sensitivity": thr.get("sensitivity"),
        "chosen_specificity": thr.get("specificity"),
        "positive": pred.get("positive") or (list(meta.get("labels") or [None])[-1]),
    }
    metrics = meta.get("metrics") or {}
    if out["chosen_sensitivity"] is None and isinstance(metrics.get("valid"), Mapping):
        conf = metrics["valid"].get("confusion") or {}
        out.update(chosen_on=out["chosen_on"] or "valid", chosen_n=out["chosen_n"] or metrics["valid"].get("n"),
                   chosen_sensitivity=conf.get("sensitivity"), chosen_specificity=conf.get("specificity"))
    test = metrics.get("test")
    if isinstance(test, Mapping):
        conf = test.get("confusion") or {}
        out.update(test_n=test.get("n"), test_sensitivity=conf.get("sensitivity"), test_specificity=conf.get("specificity"))
    cal = pred.get("calibration")
    if isinstance(cal, Mapping):
        out["calibration"] = cal
    return out


def threshold_sentences(op: Mapping[str, Any]) -> list[str]:
    """The threshold in plain words, one sentence per fact (nothing is invented when a figure is missing)."""
    positive = str(op.get("positive") or "positive")
    thr = op.get("threshold")
    if thr is None:
        return ["This bundle records no operating threshold."]
    where = {"valid": "the validation split", "test": "the test split", "train": "the training split"}.get(
        str(op.get("chosen_on")), f"the {op['chosen_on']} split" if op.get("chosen_on") else "data not recorded in the bundle")
    n = f" ({op['chosen_n']} cases)" if op.get("chosen_n") else ""
    out = [f"Scores ≥ **{float(thr):.3f}** are called {positive}. The threshold was chosen on {where}{n} "
           f"{rule_words(op.get('rule'), positive)}."]
    if op.get("chosen_sensitivity") is not None:
        out.append(f"There it gave sensitivity {_pct(op['chosen_sensitivity'])} and specificity "
                   f"{_pct(op['chosen_specificity'])}.")
    if op.get("test_sensitivity") is not None:
        tn = f" ({op['test_n']} cases)" if op.get("test_n") else ""
        out.append(f"On the held-out test split{tn}: sensitivity **{_pct(op['test_sensitivity'])}**, specificity "
                   f"**{_pct(op['test_specificity'])}**.")
    else:
        out.append("Test-split figures are not stored in this bundle (see the evaluation report).")
    cal = op.get("calibration")
    if cal:
        fit = cal.get("fitted_on") or {}
        how = (f"temperature scaling (T = {cal['temperature']:.2f})" if cal.get("method") == "temperature"
               else f"{cal.get('method')} calibration")
        ece = (f"; calibration error {fit['ece_before']:.3f} → {fit['ece_after']:.3f}"
               if fit.get("ece_before") is not None and fit.get("ece_after") is not None else "")
        out.append(f"Probabilities are calibrated by {how}, fitted on {fit.get('split', '?')} "
                   f"({fit.get('n', '?')} cases){ece}.")
    return out


def stability(predictor: Any, block: Any, volume: Any, center: tuple[float, float, float] | None,
              shift_mm: float = SHIFT_MM, covariates: tuple[tuple[str, float], ...] | None = None) -> dict[str, Any]:
    """P(positive) of every test-time view alone (each TTA flip) at the centre and at the centre moved
    ``shift_mm`` along x, y and z: their range, and the full (TTA, calibrated) probability at the centre.
    ``covariates``: the nodule's table values a fusing predictor needs (e.g. ``(("diameter_mm", 8.2),)``)."""
    centres: list[Any] = [None] if center is None else [np.asarray(center, dtype=float)]
    if center is not None:
        for axis in range(3):
            for sign in (-1.0, 1.0):
                c = np.asarray(center, dtype=float).copy()
                c[axis] += sign * shift_mm
                centres.append(c)
    samples = []
    for c in centres:
        try:
            samples.append(block.sample(volume, c))
        except ValueError:  # a shifted centre outside the scan: that position is left out
            continue
    x = np.stack(samples).astype(np.float32)

    def cov(n: int) -> dict[str, list[float]] | None:
        return None if covariates is None else {name: [value] * n for name, value in covariates}

    views = [predictor.with_settings(tta=(flip,)).positive_score(x, covariates=cov(len(x))) for flip in predictor.tta]
    values = np.concatenate(views)
    return {"low": float(values.min()), "high": float(values.max()), "n_views": int(values.size),
            "n_flips": len(views), "n_positions": len(samples), "shift_mm": shift_mm,
            "centre": float(predictor.positive_score(x[:1], covariates=cov(1))[0])}


@st.cache_data(max_entries=256, show_spinner=False)  # the page shows a spinner; the background warmer has no page
def cached_stability(bundle_path: str, prediction_id: int, _predictor: Any, _block: Any, _volume: Any,
                     center: tuple[float, float, float] | None,
                     covariates: tuple[tuple[str, float], ...] | None = None) -> dict[str, Any]:
    return stability(_predictor, _block, _volume, center, covariates=covariates)


def stability_for(pred: Mapping[str, Any], bundle_path: str, block: Any, volume: Any) -> dict[str, Any]:
    """`cached_stability` of a prediction row: its centre, and its nodule-table covariates when the bundle's
    predictor fuses them (the case page and the background warmer call this, so they share one cache entry)."""
    from medsuite.viewer import resources

    predictor = resources.predictor(bundle_path)
    fusion = predictor.settings.fusion
    fused = fusion.covariates if fusion is not None else ()
    covariates = tuple((name, float(pred[name])) for name in fused if pred.get(name) is not None) or None
    center = None if pred.get("x_mm") is None else (pred["x_mm"], pred["y_mm"], pred["z_mm"])
    return cached_stability(bundle_path, int(pred["prediction_id"]), predictor, block, volume, center, covariates)


def interval_text(st_: Mapping[str, Any]) -> str:
    where = (f"{st_['n_positions']} positions (the centre and ±{st_['shift_mm']:g} mm along x, y, z)"
             if st_["n_positions"] > 1 else "the scored position")
    flips = f"{st_['n_flips']} test-time flip{'s' if st_['n_flips'] != 1 else ''}"
    return (f"Stability range **{st_['low']:.3f} – {st_['high']:.3f}**: each of {flips} alone at {where}, "
            f"{st_['n_views']} views. Not a confidence interval: how much the score moves with the input.")


def render(pred: dict[str, Any], bundle: Any, info: dict[str, str] | None, volume: Any,
           bundle_path: str | None = None) -> None:
    """Probability (as scored) with its interval, the decision, the threshold in words, the nodule, the model."""
    meta = bundle.meta if bundle is not None else {}
    op = operating_point(meta)
    positive = str(op.get("positive") or "positive")
    p = float(pred["probability"])
    st.metric(f"P({positive})", f"{p:.3f}", delta=f"{p - float(pred['threshold']):+.3f} vs threshold",
              delta_color="off")
    if bundle is not None and bundle_path is not None:
        try:
            with st.spinner("Checking how stable the score is …"):
                res = stability_for(pred, bundle_path, bundle.block, volume)
        except Exception as exc:  # noqa: BLE001 - the panel still shows the recorded score
            st.caption(f"Stability range not available: {type(exc).__name__}: {exc}")
        else:
            st.markdown(interval_text(res))
            if abs(res["centre"] - p) > 5e-3:
                st.warning(f"Recomputed now, P = {res['centre']:.3f}, not the recorded {p:.3f}: the loaded model or "
                           "the image data differ from those of the scoring run.")
    st.write(f"**Model says:** {pred['label']}")
    with st.expander("What the threshold means", expanded=False):
        for sentence in threshold_sentences(op if bundle is not None else {**op, "threshold": pred["threshold"]}):
            st.markdown(sentence)
    if pred.get("diameter_mm") is not None:
        st.caption(f"Nodule {pred['nodule_id'] or ''}: {pred['diameter_mm']:.1f} mm at "
                   f"({pred['x_mm']:.1f}, {pred['y_mm']:.1f}, {pred['z_mm']:.1f}) mm")
    if info:
        st.caption(f"Model {info['name']} · version {info['version']} · trained {info['date']}")
        if info["sha256"] != pred["bundle_sha256"]:
            st.warning("The loaded bundle is not the one that made this prediction (different sha256).")
    else:
        st.caption(f"Model bundle not available (run bundle sha256 {pred['bundle_sha256'][:12]}); "
                   "start the viewer with --bundle to see the interval, explanations and similar cases.")
