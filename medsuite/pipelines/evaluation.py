"""Held-out evaluation and the training report: ROC with CIs, calibration, confusion, subgroups, top losses,
similar-case agreement, and the paired comparison with the baselines (DeLong and paired bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medsuite.interpret.index import build_case_index, knn_agreement
from medsuite.interpret.losses import LossTable, collect_losses
from medsuite.learn.metrics import classification_report, paired_auc_difference, reliability_diagram
from medsuite.pipelines.baselines import BaselineResult
from medsuite.pipelines.report import Report
from medsuite.pipelines.tasks import FlipTTA, TaskLearner, plain_loader

SIZE_BUCKETS_MM = (0.0, 6.0, 10.0, 20.0, 100.0)
SALIENCY_CAVEAT = "Saliency and similar cases show where the model looked and what it found alike, not a lesion segmentation."


@dataclass
class Evaluation:
    """Per-item results on one split (no tensors kept) and the classification report."""

    split: str
    items: pd.DataFrame
    probs: np.ndarray
    targets: np.ndarray
    losses: LossTable
    report: dict[str, Any]
    knn_agreement: float | None = None
    baselines: list[BaselineResult] = field(default_factory=list)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def positive_scores(self) -> np.ndarray:
        return self.probs[:, -1]


def evaluate(learn: TaskLearner, split: str = "test", *, threshold: float, n_boot: int = 1000, k: int = 5,
             tta: bool = False, index: Any = None) -> Evaluation:
    """Score `split` once (per-item scalars only) and compute the metrics with bootstrap CIs; with `tta`
    the probabilities are the mean over in-plane flips. `index` is the training cases' `CaseIndex` (built
    when not given) for the k-NN agreement."""
    dls = learn.dls
    items = dls.items(split)
    ids_col = "nodule_id" if "nodule_id" in items.columns else "series_uid"
    ids = items[ids_col].astype(str).tolist()
    vocab = [str(v) for v in dls.vocab]
    model = FlipTTA(learn.model) if tta else learn.model
    loss_table = collect_losses(model, plain_loader(dls, split), ids, vocab, device=str(learn.device))
    frame = loss_table.frame
    probs = frame[[f"p_{i}" for i in range(len(vocab))]].to_numpy()
    targets = frame["target"].to_numpy().astype(np.int64)
    report = classification_report(targets, probs, vocab, threshold if len(vocab) == 2 else None, n_boot=n_boot)
    evaluation = Evaluation(split, items, probs, targets, loss_table, report)
    index = index if index is not None else learn.case_index()
    held_out = build_case_index(learn.model, plain_loader(dls, split), ids, device=learn.device)
    evaluation.knn_agreement = float(knn_agreement(index, held_out.embeddings, [vocab[t] for t in targets], k=k))
    return evaluation


def compare_with_baselines(evaluation: Evaluation, baselines: list[BaselineResult], *, n_boot: int = 2000) -> None:
    """Paired AUC differences (deep minus baseline) on the very same held-out items."""
    y = (evaluation.targets == evaluation.probs.shape[1] - 1).astype(int)
    evaluation.baselines = baselines
    for base in baselines:
        evaluation.comparisons[base.name] = paired_auc_difference(y, evaluation.positive_scores, base.probs, n_boot=n_boot)


def _fmt_ci(d: dict[str, Any]) -> str:
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"


def _roc_figure(evaluation: Evaluation) -> Any:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(5.2, 5))
    ax = fig.add_subplot(1, 1, 1)
    y = (evaluation.targets == evaluation.probs.shape[1] - 1).astype(int)
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


def performance_sections(rep: Report, evaluation: Evaluation, *, block: Any, dataset: Any, vocab: list[str], top_losses: int = 12) -> None:
    """Held-out metrics, ROC, calibration, baselines, subgroups and top losses (shared by train and evaluate)."""
    r = evaluation.report
    s = rep.section(f"Held-out performance ({evaluation.split} split)")
    summary = {"n": r["n"], "ROC AUC [95% CI]": _fmt_ci(r["roc_auc"]), "balanced accuracy": r["balanced_accuracy"],
               "threshold": r.get("threshold", float("nan")), "ECE": r["ece"]["uniform"], "Brier": r["brier"]}
    if evaluation.knn_agreement is not None:
        summary["k-NN agreement"] = evaluation.knn_agreement
    rep.table(s, pd.DataFrame([summary]))
    if "sensitivity_at_specificity" in r:
        sens, spec = r["sensitivity_at_specificity"], r["specificity_at_sensitivity"]
        rep.text(s, f"Sensitivity at specificity {sens['specificity']:.2f}: {_fmt_ci(sens)}; "
                    f"specificity at sensitivity {spec['sensitivity']:.2f}: {_fmt_ci(spec)}.")
    rep.figure(s, "roc", _roc_figure(evaluation), "ROC curves of the model and the baselines on the same items")
    rep.figure(s, "calibration", reliability_diagram(evaluation.targets, evaluation.probs, title="Reliability diagram"),
               "Calibration: observed rate of the positive class against predicted probability")
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
        for name, c in evaluation.comparisons.items():
            rows.append({"baseline": name, "baseline AUC": c["auc_b"], "model AUC": c["auc_a"], "difference": c["difference"],
                         "DeLong 95% CI": f"[{c['delong']['ci_low']:.3f}, {c['delong']['ci_high']:.3f}]", "DeLong p": c["delong"]["p_value"],
                         "bootstrap 95% CI": f"[{c['bootstrap']['ci_low']:.3f}, {c['bootstrap']['ci_high']:.3f}]",
                         "bootstrap p": c["bootstrap"]["p_value"]})
        rep.table(s, pd.DataFrame(rows))
        rep.text(s, "The difference is the model's AUC minus the baseline's on the same held-out items; a CI that excludes 0 "
                    "means the model is better (or worse) than the baseline beyond sampling noise. Two overlapping CIs alone say nothing.")
    radiomics = next((b for b in evaluation.baselines if b.importance is not None), None)
    if radiomics is not None:
        s = rep.section("What drives the labels: radiomics random forest")
        rep.table(s, radiomics.importance)
        for name, fig in radiomics.figures.items():
            rep.figure(s, name, fig, name.replace("_", " "))
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
    """Write `folder/report.html` (data, training, held-out performance, baselines) and return its path."""
    rep = Report(title)
    s = rep.section("Data")
    rep.table(s, _data_summary(learn.dls))
    rep.text(s, f"Input: {learn.dls.block.spec()}; architecture {learn.arch} {learn.arch_kwargs}.")
    s = rep.section("Training")
    if lr_result is not None:
        rep.figure(s, "lr_find", lr_result.plot(), f"Learning-rate finder: suggestions valley {lr_result.valley:.2e}, "
                   f"steep {lr_result.steep:.2e}, minimum {lr_result.minimum:.2e}"
                   + (f"; trained with lr_max {lr:.2e}" if lr is not None else ""))
    df = learn.recorder.df
    if len(df):
        rep.figure(s, "training curves", _curves_figure(df), "Loss per epoch and validation metrics")
        rep.table(s, df)
    performance_sections(rep, evaluation, block=learn.dls.block, dataset=plain_loader(learn.dls, evaluation.split).dataset,
                         vocab=[str(v) for v in learn.dls.vocab], top_losses=top_losses)
    return rep.write(folder)
