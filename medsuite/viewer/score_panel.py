"""The score panel: the calibrated probability as scored, its interval, the decision, and the threshold in plain
words (what it was chosen for and what it gives), from the bundle's predictor settings and stored metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import streamlit as st


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


def render(pred: dict[str, Any], bundle: Any, info: dict[str, str] | None, volume: Any) -> None:
    """Probability (as scored) with its interval, the decision, the threshold in words, the nodule, the model."""
    meta = bundle.meta if bundle is not None else {}
    op = operating_point(meta)
    positive = str(op.get("positive") or "positive")
    p = float(pred["probability"])
    st.metric(f"P({positive})", f"{p:.3f}", delta=f"{p - float(pred['threshold']):+.3f} vs threshold",
              delta_color="off")
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
