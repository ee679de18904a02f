"""`medsuite train CONFIG`: data → lr_find → one-cycle → bundle → held-out evaluation, baselines, report."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.data.blocks import block_from_spec
from medsuite.data.source import VolumeSource
from medsuite.interpret.index import CaseIndex
from medsuite.learn import distributed as D
from medsuite.learn.bundle import load_bundle
from medsuite.learn.predict import Predictor
from medsuite.pipelines import classify, nodule
from medsuite.pipelines.baselines import BaselineResult, diameter_baseline, radiomics_baseline
from medsuite.pipelines.config import PipelineConfig
from medsuite.pipelines.evaluation import Evaluation, compare_with_baselines, evaluate, write_report
from medsuite.pipelines.radiomics import feature_table
from medsuite.pipelines.tasks import TaskLearner

log = logging.getLogger("medsuite.train")
LR_BOUNDS = (1e-4, 3e-2)  # lr_find suggestions outside this range are clipped, and said so


@dataclass
class TrainResult:
    """What a run produced; on ranks other than 0 of a distributed run, only the run folder."""

    run_dir: Path
    bundle: Path | None
    report: Path | None
    metrics: dict[str, Any]


def _atomic_json(path: Path, payload: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    os.replace(tmp, path)


def build_dataloaders(cfg: PipelineConfig, source: VolumeSource) -> Any:
    block = block_from_spec(cfg.block.model_dump())
    module = nodule if cfg.task == "nodule" else classify
    table = _table(cfg)
    return module.dataloaders(
        table, block=block, positive=cfg.data.positive, source=source, bs=cfg.data.bs,
        num_workers=cfg.data.num_workers, seed=cfg.data.split.seed,
        splitter=nodule.splitter_for(table, column=cfg.data.split.column, valid_pct=cfg.data.split.valid_pct,
                                     test_pct=cfg.data.split.test_pct, seed=cfg.data.split.seed,
                                     positive=cfg.data.positive),
    )


def _table(cfg: PipelineConfig) -> Any:
    from medsuite.data.tables import read_table

    table = read_table(cfg.data.table)
    if cfg.data.label_column != "label":
        table = table.rename(columns={cfg.data.label_column: "label"})
    return table


def build_learner(cfg: PipelineConfig, dls: Any) -> TaskLearner:
    from medsuite.learn.callbacks.mixup import MixUp
    from medsuite.learn.callbacks.regularize import LabelSmoothingCrossEntropy
    from medsuite.learn.callbacks.sampling import ClassBalancedSampling

    cbs = ([MixUp(cfg.train.mixup)] if cfg.train.mixup > 0 else []) + ([ClassBalancedSampling()] if cfg.train.balanced else [])
    loss = LabelSmoothingCrossEntropy(cfg.train.label_smoothing) if cfg.train.label_smoothing > 0 else None
    module = nodule if cfg.task == "nodule" else classify
    return module.learner(
        dls, cfg.model.arch, positive=cfg.data.positive, path=cfg.out, arch_kwargs=cfg.model.kwargs,
        init_from=cfg.model.init_from, wd=cfg.train.wd, cbs=cbs, loss_func=loss, seed=cfg.train.seed,
        device=cfg.train.device, amp="auto" if cfg.train.amp else False,
    )


def choose_lr(learn: TaskLearner, cfg: PipelineConfig, run_dir: Path, resume: bool) -> tuple[float, Any]:
    """The configured lr, or lr_find's suggestion (remembered in the run folder so a resume uses the same)."""
    remembered = run_dir / "lr.json"
    if resume and remembered.is_file():
        return float(json.loads(remembered.read_text())["lr"]), None
    result = None
    if cfg.train.lr == "auto":
        result = learn.lr_find()
        suggested = float(getattr(result, cfg.train.lr_suggestion))
        lr = float(np.clip(suggested, *LR_BOUNDS))
        if lr != suggested:
            log.warning("lr_find suggested %.2e; using %.2e (clipped to %s)", suggested, lr, LR_BOUNDS)
    else:
        lr = float(cfg.train.lr)
    lr = float(D.gather_objects(lr)[0])  # every rank of a distributed run uses rank 0's choice
    if D.is_main_process():
        _atomic_json(remembered, {"lr": lr, "suggestion": cfg.train.lr_suggestion if result is not None else None,
                                  "valley": None if result is None else float(result.valley),
                                  "steep": None if result is None else float(result.steep),
                                  "minimum": None if result is None else float(result.minimum)})
    return lr, result


def run_baselines(cfg: PipelineConfig, dls: Any, source: VolumeSource, split: str) -> list[BaselineResult]:
    """Diameter-only and radiomics + random forest, fitted on train, scored on the held-out split."""
    train, test = dls.items("train"), dls.items(split)
    results = []
    if "diameter" in cfg.report.baselines:
        results.append(diameter_baseline(train, test, cfg.data.positive))
    if "radiomics" in cfg.report.baselines:
        f_train, f_test = feature_table(train, source.get), feature_table(test, source.get)
        results.append(radiomics_baseline(f_train, train["label"], f_test, test["label"], cfg.data.positive, seed=cfg.train.seed))
    return results


def run_training(cfg: PipelineConfig, *, resume: bool = False, bundle_path: Path | None = None) -> TrainResult:
    """Train, export and evaluate one pipeline configuration; every artefact lands in ``cfg.out``.

    Under torchrun, call it inside `medsuite.learn.distributed.distrib_ctx` (as `medsuite train` does)."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if D.is_main_process():
        _atomic_json(run_dir / "config.json", cfg.model_dump(mode="json"))
    source = VolumeSource(cfg.data.dicom_root, cache_dir=cfg.data.cache_dir or run_dir / "cache")
    dls = build_dataloaders(cfg, source)
    learn = build_learner(cfg, dls)
    lr, lr_result = choose_lr(learn, cfg, run_dir, resume)
    learn.fit_one_cycle(cfg.train.epochs, lr, resume=resume)
    if not D.is_main_process():  # rank 0 alone exports, evaluates and reports
        return TrainResult(run_dir, None, None, {})

    bundle = Path(bundle_path or run_dir / f"{cfg.name}.bundle")
    p = cfg.predictor
    learn.export(bundle, train_config={"config": cfg.model_dump(mode="json"), **learn.train_config()},
                 tta=p.tta, calibration=None if p.calibration == "none" else p.calibration, threshold_rule=p.threshold)
    exported = load_bundle(bundle, device=str(learn.device))
    predictor = Predictor.from_bundle(exported)  # the report measures exactly what scoring will run
    threshold = predictor.threshold

    split = "test" if dls.test is not None else "valid"
    evaluation: Evaluation = evaluate(learn, split, predictor=predictor, n_boot=cfg.report.n_boot,
                                      index=CaseIndex.from_bundle(exported))
    if cfg.task == "nodule" and cfg.report.baselines:
        baselines = run_baselines(cfg, dls, source, split)
        compare_with_baselines(evaluation, baselines, n_boot=max(cfg.report.n_boot, 1000))
    report = write_report(run_dir, title=f"medsuite — {cfg.name} ({cfg.task})", learn=learn, evaluation=evaluation,
                          lr_result=lr_result, lr=lr, top_losses=cfg.report.top_losses)
    metrics = {"split": split, "lr": lr, "threshold": threshold, "report": evaluation.report,
               "knn_agreement": evaluation.knn_agreement, "comparisons": evaluation.comparisons}
    _atomic_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir, bundle, report, metrics)
