"""Held-out evaluation and the training report: ROC with CIs, calibration (before/after), confusion,
subgroups, top losses, similar-case agreement, and the paired comparison with the baselines (DeLong and
paired bootstrap).

Every number comes from the bundle's `Predictor` (TTA, calibration, threshold), and a binary problem's
report is computed by `report_from_scores` from the very table scoring writes (``series_uid, nodule_id,
probability, label``): `medsuite score` on the same scans reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medsuite.interpret.index import knn_agreement
from medsuite.interpret.losses import LossTable, loss_table
from medsuite.learn.metrics import classification_report, paired_auc_difference, reliability_diagram
from medsuite.learn.predict import Predictor, PredictorSettings
from medsuite.pipelines.baselines import BaselineResult
from medsuite.pipelines.reader_study import add_reader_study_section, reader_study
from medsuite.pipelines.report import Report
from medsuite.pipelines.tasks import TaskLearner, plain_loader

IMAGE_ONLY = "image only (no covariates)"  # the comparison row of a fusing predictor's image model alone
SIZE_BUCKETS_MM = (0.0, 6.0, 10.0, 20.0, 100.0)
SALIENCY_CAVEAT = "Saliency and similar cases show where the model looked and what it found alike, not a lesion segmentation."
SCORE_COLUMNS = ("series_uid", "nodule_id", "probability", "label")


@dataclass
class Evaluation:
    """Per-item results on one split (no tensors kept), the scores as scoring writes them, and the report."""

    split: str
    items: pd.DataFrame
    probs: np.ndarray           # the predictor's probabilities (TTA, calibrated)
    raw_probs: np.ndarray       # the same before calibration (the reliability diagram's "before")
    targets: np.ndarray
    losses: LossTable
    report: dict[str, Any]
    scores: pd.DataFrame        # series_uid, nodule_id, probability, label: what `medsuite score` writes
    settings: PredictorSettings
    knn_agreement: float | None = None
    image_probs: np.ndarray | None = None  # a fusing predictor's image model alone (TTA, before fusion)
    baselines: list[BaselineResult] = field(default_factory=list)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def baseline_costs(self) -> dict[str, dict[str, Any]]:
        """The training cost of each baseline that records one (the deep ones), by name."""
        return {b.name: b.cost for b in self.baselines if b.cost}

    @property
    def positive_index(self) -> int:
        if self.settings.positive_index is None:
            raise ValueError(f"a {len(self.settings.labels)}-class evaluation has no positive class")
        return self.settings.positive_index

    @property
    def positive_scores(self) -> np.ndarray:
        """P(positive) of each item (binary problems)."""
        return self.probs[:, self.positive_index]

    @property
    def y_positive(self) -> np.ndarray:
        """1 where the item's true class is the positive class (binary problems)."""
        return (self.targets == self.positive_index).astype(int)


def _ids(items: pd.DataFrame, task: str) -> tuple[list[str], list[str]]:
    uids = items["series_uid"].astype(str).tolist()
    nodules = items["nodule_id"].astype(str).tolist() if task == "nodule" else [""] * len(items)
    return uids, nodules


def scores_frame(predictor: Predictor, probs: np.ndarray, items: pd.DataFrame, task: str,
                 image_probs: np.ndarray | None = None) -> pd.DataFrame:
    """The rows `medsuite score` writes for these items: ``series_uid, nodule_id, probability, label``
    (``probability`` = `Predictor.score_of`, ``label`` = `Predictor.decide`; ``nodule_id`` '' for series).
    With ``image_probs`` (a fusing predictor's image model alone) also ``image_probability``, so that the
    report's image-only row is reproduced from this table too."""
    uids, nodules = _ids(items, task)
    frame = pd.DataFrame({"series_uid": uids, "nodule_id": nodules,
                          "probability": predictor.score_of(probs).astype(np.float64), "label": predictor.decide(probs)})
    if image_probs is not None:
        frame["image_probability"] = np.asarray(image_probs, dtype=np.float64)[:, predictor.positive_index]
    return frame


def report_from_scores(scores: pd.DataFrame, truth: pd.DataFrame, settings: PredictorSettings, *, task: str,
                       n_boot: int = 1000) -> dict[str, Any]:
    """The classification report of a binary bundle's ``scores`` (``scores.parquet`` of `medsuite score`, or
    an evaluation's `scores_frame`) against a labelled table ``truth`` (``label`` column), matched on
    ``series_uid`` (and ``nodule_id`` for nodule bundles), at the bundle's threshold.

    AUC and every operating-point figure depend only on these columns, so the report of `medsuite evaluate`
    is reproduced exactly from what scoring writes. Every truth row must have a score. When the scores hold
    keyed pseudonyms (ids containing a patient id, written without ``--include-phi``), the truth table's ids
    are pseudonymised with the same key (`medsuite.io.phi`) before matching.
    """
    if not settings.binary:
        raise ValueError(f"report_from_scores: the scores table holds one probability per item, which suffices for "
                         f"a binary bundle only (this one has {len(settings.labels)} classes)")
    if task == "nodule" and "nodule_id" in scores.columns and scores["nodule_id"].astype(str).str.match(
            r"id-[0-9a-f]{12}$").any():
        from medsuite.io.phi import Pseudonymizer

        truth = Pseudonymizer.pseudonymize_table(truth)
    keys = ["series_uid", "nodule_id"]
    t_uids, t_nodules = _ids(truth, task)
    left = pd.DataFrame({"series_uid": t_uids, "nodule_id": t_nodules, "truth": truth["label"].astype(str).to_numpy()})
    right = scores[list(keys) + ["probability", "label"]].astype({"series_uid": str, "nodule_id": str})
    if right.duplicated(keys).any():
        raise ValueError("report_from_scores: the scores list an item twice (filter one run or bundle first)")
    merged = left.merge(right, on=keys, how="left", validate="one_to_one")
    missing = merged["probability"].isna()
    if missing.any():
        ex = merged.loc[missing, keys].head(3).to_dict("records")
        raise ValueError(f"report_from_scores: {int(missing.sum())} item(s) of the table have no score, e.g. {ex}")
    unknown = sorted(set(merged["truth"]) - set(settings.labels))
    if unknown:
        raise ValueError(f"report_from_scores: labels {unknown} are not among the bundle's labels {list(settings.labels)}")
    y = (merged["truth"] == settings.positive).to_numpy().astype(int)
    negative = next(label for label in settings.labels if label != settings.positive)
    return classification_report(y, merged["probability"].to_numpy(dtype=np.float64), [negative, settings.positive],
                                 settings.threshold, n_boot=n_boot)


def evaluate_predictor(predictor: Predictor, batches: Iterable[Any], items: pd.DataFrame, *, split: str, task: str,
                       n_boot: int = 1000, k: int = 5, index: Any = None) -> Evaluation:
    """Score ``items`` (``batches`` yields their ``(x, y)`` in table order, unaugmented) with the predictor, once;
    compute the metrics with bootstrap CIs from the scores table and, with the training cases' ``index``,
    the k-NN agreement of the held-out embeddings."""
    images, target_parts, embeddings = [], [], []
    for x, y in batches:  # one pass over the data: probabilities and, for the k-NN agreement, embeddings
        x = np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float32)
        images.append(predictor.image_proba(x))
        target_parts.append(np.asarray(y.cpu() if hasattr(y, "cpu") else y).astype(np.int64).reshape(-1))
        if index is not None:
            embeddings.append(predictor.embed(x))
    if not images:
        raise ValueError("evaluate: no items to score")
    image, targets = np.concatenate(images), np.concatenate(target_parts)
    if len(image) != len(items):
        raise ValueError(f"evaluate: {len(image)} items scored but the table has {len(items)} rows")
    # a fusing predictor joins each item's table columns (its covariates) to the image's probability
    raw = predictor.fuse(image, items.reset_index(drop=True) if predictor.settings.fusion is not None else None)
    probs = predictor.calibrate(raw)
    ids_col = "nodule_id" if task == "nodule" and "nodule_id" in items.columns else "series_uid"
    ids = items[ids_col].astype(str).tolist()
    vocab = predictor.labels
    losses = loss_table(probs, targets, ids, vocab, decisions=predictor.decide_index(probs),
                        positive_index=predictor.positive_index)
    settings = predictor.settings
    image_alone = image if settings.fusion is not None else None
    scores = scores_frame(predictor, probs, items, task, image_alone)
    if settings.binary:
        report = report_from_scores(scores, items, settings, task=task, n_boot=n_boot)
    else:
        report = classification_report(targets, probs, vocab, None, n_boot=n_boot)
    evaluation = Evaluation(split, items.reset_index(drop=True), probs, raw, targets, losses, report, scores, settings,
                            image_probs=image_alone)
    if index is not None:
        evaluation.knn_agreement = float(knn_agreement(index, np.concatenate(embeddings), [vocab[t] for t in targets], k=k))
    return evaluation


def evaluate(learn: TaskLearner, split: str = "test", *, predictor: Predictor, n_boot: int = 1000, k: int = 5,
             index: Any = None) -> Evaluation:
    """`evaluate_predictor` on a learner's split (its items in table order, without augmentation); ``index``
    is the training cases' `CaseIndex` (built with ``predictor`` when not given)."""
    items = learn.dls.items(split)
    if index is None:
        index = learn.case_index(predictor)
    return evaluate_predictor(predictor, plain_loader(learn.dls, split), items, split=split, task=learn.task,
                              n_boot=n_boot, k=k, index=index)


def write_scores(folder: Any, evaluation: Evaluation) -> tuple[Any, Any]:
    """``scores.parquet`` and ``scores.csv`` (the columns `medsuite score` writes) of an evaluation, atomically:
    the report's figures can be recomputed from them with `report_from_scores`."""
    from pathlib import Path

    from medsuite.io.atomic import atomic_path

    folder = Path(folder)
    out = []
    for name in ("scores.parquet", "scores.csv"):
        with atomic_path(folder / name) as tmp:
            if name.endswith(".parquet"):
                evaluation.scores.to_parquet(tmp, index=False)
            else:
                evaluation.scores.to_csv(tmp, index=False)
        out.append(folder / name)
    return out[0], out[1]


def compare_with_baselines(evaluation: Evaluation, baselines: list[BaselineResult], *, n_boot: int = 2000) -> None:
    """Paired AUC differences (deep minus baseline) on the very same held-out items."""
    if evaluation.image_probs is not None:  # what the table's covariates add: the image model alone beside it
        baselines = [BaselineResult(IMAGE_ONLY, evaluation.image_probs[:, evaluation.positive_index]), *baselines]
    evaluation.baselines = baselines
    for base in baselines:
        evaluation.comparisons[base.name] = paired_auc_difference(evaluation.y_positive, evaluation.positive_scores,
                                                                  base.probs, n_boot=n_boot)


def _fmt_ci(d: dict[str, Any]) -> str:
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _roc_figure(evaluation: Evaluation) -> Any:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(5.2, 5))
    ax = fig.add_subplot(1, 1, 1)
    y = evaluation.y_positive
    curves = [("2.5D model", evaluation.positive_scores)] + [(b.name, b.probs) for b in evaluation.baselines]
    for name, scores in curves:
        fpr, tpr, _ = roc_curve(y, scores)
        auc = evaluation.report["roc_auc"] if name == "2.5D model" else None
        label = f"{name}: AUC {_fmt_ci(auc)}" if auc else f"{name}: AUC {evaluation.comparisons[name]['auc_b']:.3f}"
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC on the {evaluation.split} split (n={len(y)})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _curves_figure(recorder_df: pd.DataFrame) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for col in ("train_loss", "valid_loss"):
        if col in recorder_df:
            ax1.plot(recorder_df["epoch"] + 1, recorder_df[col], marker="o", label=col)
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend()
    metric_cols = [c for c in recorder_df.columns if c not in ("epoch", "train_loss", "valid_loss", "lr", "mom", "time_s")]
    for col in metric_cols:
        if pd.api.types.is_numeric_dtype(recorder_df[col]):
            ax2.plot(recorder_df["epoch"] + 1, recorder_df[col], marker="o", label=col)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation metrics")
    if metric_cols:
        ax2.legend()
    fig.tight_layout()
    return fig


def _data_summary(dls: Any) -> pd.DataFrame:
    rows = []
    for split in ("train", "valid", "test"):
        try:
            items = dls.items(split)
        except KeyError:
            continue
        row = {"split": split, "patients": items["patient_id"].nunique(), "series": items["series_uid"].nunique(), "items": len(items)}
        row.update({f"label={k}": int(v) for k, v in items["label"].astype(str).value_counts().sort_index().items()})
        rows.append(row)
    return pd.DataFrame(rows).fillna(0)


def _subgroups(evaluation: Evaluation) -> list[tuple[str, pd.DataFrame]]:
    items = evaluation.items
    id_col = "nodule_id" if "nodule_id" in items.columns else "series_uid"
    out = []
    specs = [("diameter_mm", SIZE_BUCKETS_MM), ("slice_thickness", None), ("manufacturer", None)]
    for column, bins in specs:
        if column in items.columns and items[column].notna().any():
            frame = evaluation.losses.subgroups(items, column, id_column=id_col, bins=bins)
            out.append((column, frame))
    return out


def _top_losses_figure(block: Any, dataset: Any, evaluation: Evaluation, vocab: list[str], k: int) -> Any:
    from medsuite.data.block import show_samples

    top = evaluation.losses.top_losses(k)
    position = {str(v): i for i, v in enumerate(evaluation.losses.frame["item_id"])}
    samples = np.stack([dataset.sample(position[str(i)]) for i in top["item_id"]])
    titles = [f"{vocab[int(r.target)]} / p={r.p_target:.2f} / loss {r.loss:.2f}" for r in top.itertuples()]
    return show_samples(block, samples, titles, ncols=4, title="Top losses (truth / P(truth) / loss)")


def predictor_sentence(settings: PredictorSettings) -> str:
    """One sentence saying how the predictor scores: TTA, calibration, threshold rule and what it gave."""
    tta = "no test-time augmentation" if len(settings.tta) == 1 else f"the mean over {len(settings.tta)} flips (test-time augmentation)"
    cal = settings.calibration
    cal_text = "no calibration" if cal is None else (
        f"temperature scaling (T = {cal.temperature:.3f})" if cal.method == "temperature" else "isotonic calibration")
    if cal is not None and cal.fitted_on:
        cal_text += f" fitted on the {cal.fitted_on.get('split', 'validation')} split (n={cal.fitted_on.get('n')})"
    text = f"Probabilities are {tta}, with {cal_text}."
    fusion = settings.fusion
    if fusion is not None:
        fit = fusion.fitted_on
        text += (f" Inputs: the image and the table's {', '.join(fusion.covariates)}, fused late ({fusion.describe()}; "
                 f"fitted on the {fit.get('split', 'validation')} split, n={fit.get('n')}, where the image alone gave AUC "
                 f"{fit.get('auc_image', float('nan')):.3f} and fused {fit.get('auc_fused', float('nan')):.3f}).")
    else:
        text += " Inputs: the image only."
    op = settings.operating_point
    if settings.binary and op is not None:
        got = "" if op.sensitivity is None else (f", where it gave sensitivity {op.sensitivity:.3f} and specificity "
                                                 f"{op.specificity:.3f}" if op.specificity is not None else "")
        where = f" on the {op.split} split (n={op.n})" if op.split else ""
        text += (f" The operating threshold {op.threshold:.4g} on P({settings.positive}) was chosen by the rule "
                 f"'{op.rule}'{where}{got}.")
    elif settings.binary:
        text += f" The threshold on P({settings.positive}) is 0.5 (none was chosen)."
    return text


def _calibration_figure(evaluation: Evaluation) -> tuple[Any, str]:
    """The reliability diagram of the scored probabilities, with the uncalibrated ones beside when the
    predictor calibrates."""
    binary = evaluation.settings.binary
    y = evaluation.y_positive if binary else evaluation.targets
    after = evaluation.positive_scores if binary else evaluation.probs
    cal = evaluation.settings.calibration
    if cal is None:
        return (reliability_diagram(y, after, title="Reliability diagram"),
                "Calibration: observed rate of the positive class against predicted probability")
    before = evaluation.raw_probs[:, evaluation.positive_index] if binary else evaluation.raw_probs
    fig = reliability_diagram(y, before, title="Reliability diagram, before and after calibration", label="before")
    reliability_diagram(y, after, ax=fig.axes[0], label=f"after ({cal.method})")
    return fig, (f"Calibration on the {evaluation.split} split before and after the bundle's {cal.method} calibration "
                 "(fitted on the validation split)")


def performance_sections(rep: Report, evaluation: Evaluation, *, block: Any, dataset: Any, vocab: list[str], top_losses: int = 12) -> None:
    """Held-out metrics, ROC, calibration, baselines, subgroups and top losses (shared by train and evaluate)."""
    r = evaluation.report
    s = rep.section(f"Held-out performance ({evaluation.split} split)")
    summary = {"n": r["n"], "ROC AUC [95% CI]": _fmt_ci(r["roc_auc"]), "balanced accuracy": r["balanced_accuracy"],
               "threshold": r.get("threshold", float("nan")), "ECE": r["ece"]["uniform"], "Brier": r["brier"]}
    if evaluation.knn_agreement is not None:
        summary["k-NN agreement"] = evaluation.knn_agreement
    rep.table(s, pd.DataFrame([summary]))
    rep.text(s, predictor_sentence(evaluation.settings))
    if "sensitivity_at_specificity" in r:
        sens, spec = r["sensitivity_at_specificity"], r["specificity_at_sensitivity"]
        rep.text(s, f"Sensitivity at specificity {sens['specificity']:.2f}: {_fmt_ci(sens)}; "
                    f"specificity at sensitivity {spec['sensitivity']:.2f}: {_fmt_ci(spec)}.")
    rep.figure(s, "roc", _roc_figure(evaluation), "ROC curves of the model and the baselines on the same items")
    fig, caption = _calibration_figure(evaluation)
    rep.figure(s, "calibration", fig, caption)
    cm = r["confusion"]
    names = r["labels"]
    rep.text(s, "Confusion matrix at the operating threshold" + (f" {cm['threshold']:.3f}" if cm.get("threshold") is not None else "")
             + " (rows: truth, columns: prediction):")
    rep.table(s, pd.DataFrame(cm["matrix"], index=pd.Index(names, name="truth"), columns=names), index=True)
    details = {k: v for k, v in cm.items() if k not in ("matrix", "threshold") and isinstance(v, (int, float))}
    if details:
        rep.table(s, pd.DataFrame([details]))
    if evaluation.knn_agreement is not None:
        rep.text(s, f"k-NN agreement: the majority label of the 5 most similar training cases matches the truth for "
                    f"{100 * evaluation.knn_agreement:.0f}% of held-out items. {SALIENCY_CAVEAT}", note=True)
    if evaluation.comparisons:
        s = rep.section("Against the baselines (paired, same items)")
        rows = []
        costs = evaluation.baseline_costs
        for name, c in evaluation.comparisons.items():
            rows.append({"baseline": name, "baseline AUC": c["auc_b"], "model AUC": c["auc_a"], "difference": c["difference"],
                         "DeLong 95% CI": f"[{c['delong']['ci_low']:.3f}, {c['delong']['ci_high']:.3f}]", "DeLong p": c["delong"]["p_value"],
                         "bootstrap 95% CI": f"[{c['bootstrap']['ci_low']:.3f}, {c['bootstrap']['ci_high']:.3f}]",
                         "bootstrap p": c["bootstrap"]["p_value"],
                         **({"training (min)": costs.get(name, {}).get("train_min")} if costs else {})})
        rep.table(s, pd.DataFrame(rows))
        for name, cost in costs.items():
            rep.text(s, f"{name}: " + ", ".join(f"{k} {v}" for k, v in cost.items()) + ".")
        rep.text(s, "The difference is the model's AUC minus the baseline's on the same held-out items; a CI that excludes 0 "
                    "means the model is better (or worse) than the baseline beyond sampling noise. Two overlapping CIs alone say nothing.")
    radiomics = next((b for b in evaluation.baselines if b.importance is not None), None)
    if radiomics is not None:
        s = rep.section("What drives the labels: radiomics random forest")
        rep.table(s, radiomics.importance)
        for name, fig in radiomics.figures.items():
            rep.figure(s, name, fig, name.replace("_", " "))
    if evaluation.settings.binary:  # when the table carries per-reader ratings (malignancy_r1 ...)
        add_reader_study_section(rep, reader_study(evaluation.items, evaluation.positive_scores, evaluation.settings.threshold))
    groups = _subgroups(evaluation)
    if groups:
        s = rep.section("Performance by subgroup")
        for column, frame in groups:
            rep.text(s, f"By {column}:")
            rep.table(s, frame)
    if top_losses:
        s = rep.section("Top losses")
        rep.figure(s, "top losses", _top_losses_figure(block, dataset, evaluation, vocab, top_losses), "The held-out items the model got most wrong")
        rep.table(s, evaluation.losses.top_losses(top_losses)[["item_id", "loss", "target", "pred", "p_target"]])


def write_report(folder: Any, *, title: str, learn: TaskLearner, evaluation: Evaluation, lr_result: Any = None,
                 lr: float | None = None, top_losses: int = 12) -> Any:
    """Write `folder/report.html` (data, training, held-out performance, baselines) and the held-out
    ``scores.parquet`` / ``scores.csv`` it was computed from; return the report's path."""
    rep = Report(title)
    s = rep.section("Data")
    rep.table(s, _data_summary(learn.dls))
    rep.text(s, f"Input: {learn.dls.block.spec()}; architecture {learn.arch} {learn.arch_kwargs}.")
    s = rep.section("Training")
    if lr_result is not None:
        rep.figure(s, "lr_find", lr_result.plot(), f"Learning-rate finder: suggestions valley {lr_result.valley:.2e}, "
                   f"steep {lr_result.steep:.2e}, minimum {lr_result.minimum:.2e}, edge {lr_result.edge:.2e}"
                   + (f"; trained with lr_max {lr:.2e}" if lr is not None else ""))
    df = learn.recorder.df
    if len(df):
        rep.figure(s, "training curves", _curves_figure(df), "Loss per epoch and validation metrics")
        rep.table(s, df)
    performance_sections(rep, evaluation, block=learn.dls.block, dataset=plain_loader(learn.dls, evaluation.split).dataset,
                         vocab=[str(v) for v in learn.dls.vocab], top_losses=top_losses)
    write_scores(folder, evaluation)
    return rep.write(folder)
