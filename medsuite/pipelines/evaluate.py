"""`medsuite evaluate BUNDLE TABLE`: a bundle's performance on any labelled table, with CIs and plots.

The items are scored by the bundle's `Predictor` (the chain `medsuite score` runs), the scores are written
as ``scores.parquet`` / ``scores.csv`` (the columns scoring writes) and the report is computed from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.data.block import BlockDataset
from medsuite.data.source import VolumeSource
from medsuite.data.tables import read_table, validate_nodule_table, validate_series_table
from medsuite.interpret.index import CaseIndex
from medsuite.io.atomic import atomic_write_json
from medsuite.learn.bundle import load_bundle
from medsuite.learn.predict import Predictor
from medsuite.pipelines.config import labelled_table
from medsuite.pipelines.evaluation import (
    evaluate_predictor,
    performance_sections,
    predictor_sentence,
    write_scores,
)
from medsuite.pipelines.report import Report


def _dataset(bundle: Any, table: pd.DataFrame, source: VolumeSource) -> BlockDataset:
    vocab = [str(v) for v in bundle.labels]
    unknown = sorted(set(table["label"].astype(str)) - set(vocab))
    if unknown:
        raise ValueError(f"{table.attrs.get('source', 'table')}: labels {unknown} are not among the bundle's labels {vocab}")
    targets = np.array([vocab.index(str(v)) for v in table["label"]], dtype=np.int64)
    centers = table[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float) if bundle.task == "nodule" else None
    ids = table["nodule_id" if bundle.task == "nodule" else "series_uid"].astype(str).tolist()
    return BlockDataset(table["series_uid"].tolist(), centers, targets, ids, bundle.block, source)


def evaluate_bundle(bundle_path: str | os.PathLike[str], table_path: str | os.PathLike[str], *,
                    dicom_root: str | os.PathLike[str] | None = None, out: str | os.PathLike[str],
                    cache_dir: str | os.PathLike[str] | None = None, n_boot: int = 1000, device: str = "cpu",
                    precision: str = "fp32", batch_size: int = 32, include_phi: bool = False) -> tuple[Path, dict[str, Any]]:
    """Score every row of a labelled table with the bundle's predictor; write report.html, metrics.json and
    scores.parquet / scores.csv in ``out`` (volumes are cached in ``out/cache`` unless ``cache_dir``).
    The scans come from the table's ``path`` column where it has one, else from ``dicom_root`` (DICOM or
    image files named ``<series_uid>.mhd``/``.nrrd``/``.nii.gz``); a series found in neither is an error."""
    import torch

    bundle = load_bundle(bundle_path, device=device)
    predictor = Predictor.from_bundle(bundle, precision=precision, batch_size=batch_size)
    raw = read_table(table_path)
    pipeline_config = (bundle.meta.get("train_config") or {}).get("config") or {}  # absent for a Python-API bundle
    trained_on = (pipeline_config.get("data") or {}).get("label_column", "label")
    label_column = trained_on if trained_on in raw.columns else "label"  # else a table made for this evaluation
    if label_column in raw.columns:
        raw = labelled_table(raw, label_column)
    if not include_phi:  # as `medsuite score` does: ids holding patient ids become keyed pseudonyms
        from medsuite.io.phi import Pseudonymizer

        raw = Pseudonymizer.pseudonymize_table(raw)
    table = validate_nodule_table(raw) if bundle.task == "nodule" else validate_series_table(raw)
    out = Path(out)
    source = VolumeSource.for_table(table, dicom_root, cache_dir=cache_dir or out / "cache")
    source.check(table["series_uid"], files=True)
    dataset = _dataset(bundle, table, source)
    out.mkdir(parents=True, exist_ok=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    evaluation = evaluate_predictor(predictor, loader, table, split="evaluation", task=bundle.task, n_boot=n_boot,
                                    index=CaseIndex.from_bundle(bundle))
    vocab = predictor.labels
    rep = Report(f"medsuite — {bundle.name} on {Path(table_path).name}")
    s = rep.section("Model and data")
    threshold = "arg-max" if predictor.threshold is None else f"{predictor.threshold:.4g}"
    rep.text(s, f"Bundle {bundle.name} (sha256 {bundle.sha256[:12]}), task {bundle.task}, threshold {threshold}, "
                f"labels {vocab} (column {label_column!r})"
                + (f", positive class {predictor.positive!r}" if predictor.positive else "")
                + f"; {len(table)} items from {table['patient_id'].nunique()} patients.")
    rep.text(s, predictor_sentence(predictor.settings))
    performance_sections(rep, evaluation, block=bundle.block, dataset=dataset, vocab=vocab)
    write_scores(out, evaluation)
    path = rep.write(out)
    atomic_write_json(out / "metrics.json", evaluation.report)
    return path, evaluation.report
