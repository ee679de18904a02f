"""`medsuite evaluate BUNDLE TABLE`: a bundle's performance on any labelled table, with CIs and plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.data.block import BlockDataset
from medsuite.data.source import VolumeSource
from medsuite.data.tables import read_table, validate_nodule_table, validate_series_table
from medsuite.interpret.losses import collect_losses
from medsuite.learn.bundle import load_bundle
from medsuite.learn.metrics import classification_report
from medsuite.pipelines.evaluation import Evaluation, performance_sections
from medsuite.pipelines.report import Report, _atomic_write_text


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
                    dicom_root: str | os.PathLike[str], out: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
                    n_boot: int = 1000, device: str = "cpu") -> tuple[Path, dict[str, Any]]:
    """Score every row of a labelled table with the bundle; write report.html and metrics.json in `out`."""
    import json

    import torch

    bundle = load_bundle(bundle_path, device=device)
    raw = read_table(table_path)
    table = validate_nodule_table(raw) if bundle.task == "nodule" else validate_series_table(raw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    source = VolumeSource(dicom_root, cache_dir=cache_dir or out / "cache")
    dataset = _dataset(bundle, table, source)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False)
    vocab = [str(v) for v in bundle.labels]
    losses = collect_losses(bundle.model, loader, dataset.descriptions, vocab, device=device)
    probs = losses.frame[[f"p_{i}" for i in range(len(vocab))]].to_numpy()
    targets = losses.frame["target"].to_numpy().astype(np.int64)
    report = classification_report(targets, probs, vocab, bundle.threshold if len(vocab) == 2 else None, n_boot=n_boot)
    evaluation = Evaluation("evaluation", table, probs, targets, losses, report)
    rep = Report(f"medsuite — {bundle.name} on {Path(table_path).name}")
    s = rep.section("Model and data")
    rep.text(s, f"Bundle {bundle.name} (sha256 {bundle.sha256[:12]}), task {bundle.task}, threshold {bundle.threshold:.3f}, "
                f"labels {vocab}; {len(table)} items from {table['patient_id'].nunique()} patients.")
    performance_sections(rep, evaluation, block=bundle.block, dataset=dataset, vocab=vocab)
    path = rep.write(out)
    _atomic_write_text(out / "metrics.json", json.dumps(report, indent=2))
    return path, report
