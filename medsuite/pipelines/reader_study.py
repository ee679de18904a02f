"""The model against a panel of radiologists, on the held-out nodules that carry per-reader ratings.

The first commercial nodule-malignancy model claimed fewer false positives *and* fewer false negatives than a
panel of radiologists; this module lets a researcher check such a claim on their own data. It needs a nodule
table with per-reader malignancy ratings (columns ``malignancy_r1`` ... ``malignancy_r4``, 1-5, empty where
that reader did not rate the nodule: the LIDC-IDRI adapter and the demo cohort write them).

For every nodule rated by at least ``min_readers`` readers and for every reader of it, the *reference* is the
median rating of the **other** readers (> 3 malignant, < 3 benign; exactly 3 is indeterminate and that pair is
dropped), and the reader calls "malignant" at a rating >= 4. Each (nodule, reader) pair is one item; each reader
slot gives one operating point (its sensitivity and specificity against the other readers), and the model is
scored on exactly the same pairs at its own operating threshold. LIDC-IDRI readers are anonymous: slot k is
the k-th outline of each nodule, not one person, so a slot's point is that of a mixture of radiologists.
Confidence intervals come from a bootstrap over patients (all pairs of a patient together), because a nodule
appears in several pairs and a patient's nodules are not independent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medsuite.pipelines.report import Report

__all__ = ["READER_COLUMN", "ReaderStudy", "add_reader_study_section", "reader_columns", "reader_pairs", "reader_study"]

READER_COLUMN = re.compile(r"^malignancy_r(\d+)$")
CALL_MALIGNANT_AT = 4.0  # a reader's rating >= 4 ("moderately" or "highly suspicious") calls the nodule malignant
INDETERMINATE = 3.0


def reader_columns(table: pd.DataFrame) -> list[str]:
    """The per-reader rating columns of a nodule table, in slot order (empty when it has none)."""
    found = [(int(m.group(1)), c) for c in table.columns if (m := READER_COLUMN.match(str(c)))]
    return [c for _, c in sorted(found)]


def reader_pairs(items: pd.DataFrame, scores: np.ndarray, *, min_readers: int = 3) -> pd.DataFrame:
    """One row per (nodule, reader) pair with a decided reference: ``reader`` (slot, 1-based), ``rating``,
    ``reference`` (1 malignant / 0 benign: median of the other readers), ``reader_call`` (rating >= 4),
    ``score`` (the model's), ``diameter_mm`` and the nodule's ``cluster`` (patient) for the bootstrap."""
    columns = reader_columns(items)
    if not columns:
        raise ValueError("reader study: the table has no per-reader rating columns (malignancy_r1 ... malignancy_r4)")
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if len(scores) != len(items):
        raise ValueError(f"reader study: {len(scores)} scores for {len(items)} nodules")
    ratings = items[columns].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = np.isfinite(ratings) & ((ratings < 1) | (ratings > 5))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"reader study: {columns[col]} = {ratings[row, col]:g} in row {row}; ratings must be 1-5")
    cluster_col = "patient_id" if "patient_id" in items.columns else ("nodule_id" if "nodule_id" in items.columns else None)
    clusters = items[cluster_col].astype(str).to_numpy() if cluster_col else np.arange(len(items)).astype(str)
    ids = items["nodule_id"].astype(str).to_numpy() if "nodule_id" in items.columns else np.arange(len(items)).astype(str)
    diameter = items["diameter_mm"].to_numpy(float) if "diameter_mm" in items.columns else np.full(len(items), np.nan)
    rows = []
    for i in range(len(items)):
        rated = np.flatnonzero(np.isfinite(ratings[i]))
        if len(rated) < min_readers:
            continue
        for k in rated:
            others = ratings[i, [j for j in rated if j != k]]
            ref = float(np.median(others))
            if ref == INDETERMINATE:
                continue
            rows.append((ids[i], clusters[i], int(k) + 1, ratings[i, k], int(ref > INDETERMINATE),
                         int(ratings[i, k] >= CALL_MALIGNANT_AT), scores[i], diameter[i]))
    return pd.DataFrame(rows, columns=["nodule_id", "cluster", "reader", "rating", "reference", "reader_call", "score",
                                       "diameter_mm"])


@dataclass
class ReaderStudy:
    """Per-reader operating points, the model's on the same pairs, and AUCs of the model and the diameter."""

    pairs: pd.DataFrame
    points: pd.DataFrame      # one row per reader slot, plus 'average of readers' and 'model' rows
    aucs: pd.DataFrame        # model and diameter AUC on the pairs, and their paired difference, with CIs
    threshold: float
    n_nodules: int
    n_boot: int

    def figure(self) -> Figure:
        return _figure(self)


def _sens_spec(calls: np.ndarray, ref: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sensitivity and specificity; ``weights`` (n_boot, n) gives one value per bootstrap row."""
    pos, neg = ref == 1, ref == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (weights[:, pos] * calls[pos]).sum(1) / weights[:, pos].sum(1)
        spec = (weights[:, neg] * (1 - calls[neg])).sum(1) / weights[:, neg].sum(1)
    return sens, spec


def _ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    s = samples[np.isfinite(samples)]
    if s.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(s, a)), float(np.quantile(s, 1 - a))


def _weighted_auc(score: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC = P(score_pos > score_neg) + P(tie) / 2 with item weights (rows of ``weights`` (n_boot, n): bootstrap
    multiplicities), one value per row; NaN where a row leaves a class empty."""
    order = np.argsort(score, kind="mergesort")
    s, yy = score[order], y[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = np.atleast_2d(weights)[:, order]
    pos = np.add.reduceat(w * (yy == 1), starts, axis=1)
    neg = np.add.reduceat(w * (yy == 0), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(1) / (pos.sum(1) * neg.sum(1))


def reader_study(items: pd.DataFrame, scores: np.ndarray, threshold: float, *, min_readers: int = 3,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> ReaderStudy | None:
    """The reader study of held-out ``items`` (nodule rows with per-reader columns) scored ``scores`` (P(malignant))
    by a model whose operating threshold is ``threshold``; None when the table carries no per-reader ratings
    or no pair has a decided reference with both classes present."""
    if not reader_columns(items):
        return None
    pairs = reader_pairs(items, scores, min_readers=min_readers)
    if pairs.empty or pairs["reference"].nunique() < 2:
        return None
    pairs["model_call"] = (pairs["score"] >= threshold).astype(int)
    clusters, cluster_idx = np.unique(pairs["cluster"], return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), size=n_boot).astype(float)
    weights = counts[:, cluster_idx]                      # (n_boot, n_pairs): a pair counts as often as its patient
    ones = np.ones((1, len(pairs)))
    ref = pairs["reference"].to_numpy()
    rows = []

    def point(name: str, mask: np.ndarray, calls: np.ndarray) -> dict[str, Any]:
        s, p = _sens_spec(calls[mask], ref[mask], ones[:, mask])
        bs, bp = _sens_spec(calls[mask], ref[mask], weights[:, mask])
        lo_s, hi_s = _ci(bs, level)
        lo_p, hi_p = _ci(bp, level)
        return {"who": name, "pairs": int(mask.sum()), "malignant": int(ref[mask].sum()), "sensitivity": float(s[0]),
                "sensitivity_ci": (lo_s, hi_s), "specificity": float(p[0]), "specificity_ci": (lo_p, hi_p),
                "_boot": (bs, bp)}

    reader_calls = pairs["reader_call"].to_numpy()
    model_calls = pairs["model_call"].to_numpy()
    slots = sorted(pairs["reader"].unique())
    per_reader = []
    for r in slots:
        mask = (pairs["reader"] == r).to_numpy()
        if len(np.unique(ref[mask])) < 2:
            continue
        reader = point(f"reader {r}", mask, reader_calls)
        model = point(f"model on reader {r}'s pairs", mask, model_calls)
        per_reader.append(reader)
        rows += [reader, model]
    if per_reader:  # the average reader: mean of the slots' sensitivities and specificities
        avg_s = np.mean([p["sensitivity"] for p in per_reader])
        avg_p = np.mean([p["specificity"] for p in per_reader])
        boot_s = np.mean([p["_boot"][0] for p in per_reader], axis=0)
        boot_p = np.mean([p["_boot"][1] for p in per_reader], axis=0)
        everything = np.ones(len(pairs), dtype=bool)
        rows.append({"who": "average of readers", "pairs": int(sum(p["pairs"] for p in per_reader)),
                     "malignant": int(sum(p["malignant"] for p in per_reader)), "sensitivity": float(avg_s),
                     "sensitivity_ci": _ci(boot_s, level), "specificity": float(avg_p),
                     "specificity_ci": _ci(boot_p, level), "_boot": (boot_s, boot_p)})
        rows.append(point("model on all pairs", everything, model_calls))
    points = pd.DataFrame([{k: v for k, v in r.items() if k != "_boot"} for r in rows])

    score = pairs["score"].to_numpy(float)
    diam = pairs["diameter_mm"].to_numpy(float)
    auc_rows = []
    boot_model = _weighted_auc(score, ref, weights)
    auc_model = float(_weighted_auc(score, ref, ones)[0])
    auc_rows.append({"score": "model", "auc": auc_model, "ci": _ci(boot_model, level)})
    if np.isfinite(diam).all():
        boot_diam = _weighted_auc(diam, ref, weights)
        auc_diam = float(_weighted_auc(diam, ref, ones)[0])
        auc_rows.append({"score": "diameter alone", "auc": auc_diam, "ci": _ci(boot_diam, level)})
        diff = boot_model - boot_diam
        auc_rows.append({"score": "model - diameter", "auc": auc_model - auc_diam, "ci": _ci(diff, level),
                         "p_value": float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))})
    return ReaderStudy(pairs=pairs, points=points, aucs=pd.DataFrame(auc_rows), threshold=float(threshold),
                       n_nodules=int(pairs["nodule_id"].nunique()), n_boot=n_boot)


def _roc(score: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    return fpr, tpr


def _figure(study: ReaderStudy) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    p = study.pairs
    y = p["reference"].to_numpy()
    aucs = study.aucs.set_index("score")["auc"]
    fpr, tpr = _roc(p["score"].to_numpy(float), y)
    ax.plot(fpr, tpr, color="C0", label=f"model (AUC {aucs['model']:.3f})")
    if "diameter alone" in aucs:
        fpr_d, tpr_d = _roc(p["diameter_mm"].to_numpy(float), y)
        ax.plot(fpr_d, tpr_d, color="grey", lw=1, ls="--", label=f"diameter alone (AUC {aucs['diameter alone']:.3f})")
    pts = study.points
    readers = pts[pts["who"].str.match(r"^reader \d+$")]
    ax.scatter(1 - readers["specificity"], readers["sensitivity"], marker="o", s=36, color="C3", zorder=3,
               label="each reader vs the others' median")
    for r in readers.itertuples():
        ax.annotate(r.who.split()[-1], (1 - r.specificity, r.sensitivity), textcoords="offset points", xytext=(5, -3),
                    fontsize=8, color="C3")
    def operating_point(who: str, **style: Any) -> None:
        """One row of ``pts`` as a point on the ROC plane with its sensitivity and specificity CIs."""
        row = pts[pts["who"] == who]
        if not len(row):
            return
        r = row.iloc[0]
        ax.errorbar(1 - r["specificity"], r["sensitivity"],
                    xerr=[[r["specificity_ci"][1] - r["specificity"]], [r["specificity"] - r["specificity_ci"][0]]],
                    yerr=[[r["sensitivity"] - r["sensitivity_ci"][0]], [r["sensitivity_ci"][1] - r["sensitivity"]]],
                    **style)

    operating_point("average of readers", fmt="D", color="C3", mfc="white", ms=8, zorder=4,
                    label="average reader (95% CI)")
    operating_point("model on all pairs", fmt="*", color="C0", ms=13, zorder=5,
                    label=f"model at its threshold {study.threshold:.3f} (95% CI)")
    ax.plot([0, 1], [0, 1], ":", color="lightgrey")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Readers and model on {len(p)} reader pairs ({study.n_nodules} nodules)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7.5)
    fig.tight_layout()
    return fig


def _fmt(value: float, ci: tuple[float, float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def add_reader_study_section(rep: Report, study: ReaderStudy | None) -> None:
    """The report section 'Against the radiologists' (nothing when ``study`` is None)."""
    if study is None:
        return
    s = rep.section("Against the radiologists (reader study)")
    rep.text(s, f"{study.n_nodules} held-out nodules rated by at least 3 readers give {len(study.pairs)} (nodule, reader) "
                "pairs. For each pair the reference is the median rating of the other readers (3 = indeterminate: pair "
                "dropped); the reader calls a nodule malignant at a rating of 4 or 5; the model calls it malignant at "
                f"P(malignant) >= {study.threshold:.3f}, its operating threshold chosen on the validation split.")
    rep.figure(s, "reader study", study.figure(), "The model's ROC on the reader pairs, each reader slot's operating "
               "point, their average and the model's operating point (95% CIs: bootstrap over patients)")
    table = study.points.copy()
    table["sensitivity [95% CI]"] = [_fmt(v, c) for v, c in zip(table["sensitivity"], table["sensitivity_ci"], strict=True)]
    table["specificity [95% CI]"] = [_fmt(v, c) for v, c in zip(table["specificity"], table["specificity_ci"], strict=True)]
    rep.table(s, table[["who", "pairs", "malignant", "sensitivity [95% CI]", "specificity [95% CI]"]])
    aucs = study.aucs.copy()
    aucs["AUC on the pairs [95% CI]"] = [_fmt(v, c) for v, c in zip(aucs["auc"], aucs["ci"], strict=True)]
    rep.table(s, aucs[["score", "AUC on the pairs [95% CI]"] + (["p_value"] if "p_value" in aucs else [])])
    rep.text(s, "Read it honestly: a reader's point is measured against the other readers, who share that reader's "
                "view of the same images, while the model never saw the ratings of these nodules. The diameter's AUC "
                "on the same pairs shows how much of any agreement size alone explains. LIDC-IDRI readers are anonymous, "
                "so 'reader k' is the k-th outline of each nodule, a mixture of radiologists, not one person.", note=True)
