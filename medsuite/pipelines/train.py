"""`medsuite train CONFIG`: data → lr_find → one-cycle → bundle → held-out evaluation, baselines, report.

Before anything is written the whole configuration is checked against the table and the scans (every
series found, the model fits the input block); then the run folder is locked (a second run into the same
folder stops at once), and an earlier run in it is never overwritten unless asked (``force``) or resumed
(``resume``, which must continue the same configuration from a checkpoint).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.data.blocks import block_from_spec
from medsuite.data.luna16 import assumed_diameters
from medsuite.data.source import SourceError, VolumeSource
from medsuite.interpret.index import CaseIndex
from medsuite.io.atomic import atomic_write_text
from medsuite.learn import distributed as D
from medsuite.learn.bundle import load_bundle
from medsuite.learn.callbacks.core import Callback
from medsuite.learn.predict import Predictor
from medsuite.pipelines import classify, nodule
from medsuite.pipelines.baselines import (
    BaselineResult,
    diameter_baseline,
    largest_diameter_baseline,
    patch3d_baseline,
    radiomics_baseline,
)
from medsuite.pipelines.config import (
    DRAWN_SPLIT_COLUMN,
    ConfigError,
    PipelineConfig,
    labelled_table,
    splitter,
)
from medsuite.pipelines.evaluation import Evaluation, compare_with_baselines, evaluate, write_report
from medsuite.pipelines.radiomics import feature_table
from medsuite.pipelines.tasks import TaskLearner

log = logging.getLogger("medsuite.train")
LR_BOUNDS = (1e-4, 3e-2)  # lr_find suggestions outside this range are clipped, and said so
LOCK_NAME = ".medsuite-train.lock"
LOG_NAME = "train.log"
# keys that may differ when a run is resumed (they do not change what is trained)
RESUMABLE_CHANGES = ("name", "report.", "predictor.", "data.num_workers", "data.cache_dir", "train.device")


class RunFolderError(ValueError):
    """The run folder cannot be used: another run holds it, it holds an earlier run, or nothing to resume."""


@dataclass
class TrainResult:
    """What a run produced; on ranks other than 0 of a distributed run, only the run folder."""

    run_dir: Path
    bundle: Path | None
    report: Path | None
    metrics: dict[str, Any]


def _atomic_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def build_dataloaders(cfg: PipelineConfig, source: VolumeSource, table: Any = None) -> Any:
    block = block_from_spec(cfg.block.model_dump())
    module = nodule if cfg.task == "nodule" else classify
    table = _table(cfg) if table is None else table
    extra = {"soft_targets": cfg.data.soft_targets} if cfg.task == "nodule" else {}
    return module.dataloaders(
        table, block=block, positive=cfg.data.positive, source=source, bs=cfg.data.bs,
        num_workers=cfg.data.num_workers, seed=cfg.data.split.seed, **extra, splitter=splitter(cfg, table),
    )


def _table(cfg: PipelineConfig) -> Any:
    from medsuite.data.tables import read_table

    table = labelled_table(read_table(cfg.data.table), cfg.data.label_column)
    if not cfg.data.include_phi:  # ids holding patient ids would reach the report, scores and the case index
        from medsuite.io.phi import Pseudonymizer

        # Draw the sets on the real patient ids first, as the check before the run did: a seeded random split
        # of keyed pseudonyms would depend on the key (another machine, another split, unchecked).
        sets = splitter(cfg, table)(table)
        drawn = np.empty(len(table), dtype=object)
        for name, rows in sets.items():
            drawn[rows] = name
        table = Pseudonymizer.pseudonymize_table(table.assign(**{DRAWN_SPLIT_COLUMN: drawn}))
    return table


def build_learner(cfg: PipelineConfig, dls: Any, *, progress: bool = True) -> TaskLearner:
    from medsuite.learn.callbacks.mixup import MixUp
    from medsuite.learn.callbacks.regularize import LabelSmoothingCrossEntropy
    from medsuite.learn.callbacks.sampling import ClassBalancedSampling

    cbs = ([MixUp(cfg.train.mixup)] if cfg.train.mixup > 0 else []) + ([ClassBalancedSampling()] if cfg.train.balanced else [])
    loss = LabelSmoothingCrossEntropy(cfg.train.label_smoothing) if cfg.train.label_smoothing > 0 else None
    module = nodule if cfg.task == "nodule" else classify
    return module.learner(
        dls, cfg.model.arch, positive=cfg.data.positive, path=cfg.out, arch_kwargs=cfg.model.kwargs,
        init_from=cfg.model.init_from, wd=cfg.train.wd, cbs=[*cbs, _LogEpochs()], loss_func=loss,
        seed=cfg.train.seed, device=cfg.train.device, amp="auto" if cfg.train.amp else False, progress=progress,
    )


class _LogEpochs(Callback):
    """One log line per epoch (the run's train.log gets the table that the terminal shows)."""

    order = 65
    during_lr_find = False

    def after_epoch(self) -> None:
        if self.learn.is_main and self.learn.recorder.epochs:
            row = self.learn.recorder.epochs[-1]
            text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                             if k not in ("lr", "mom"))
            log.info("epoch %s/%s: %s", self.learn.epoch + 1, self.learn.n_epoch, text)


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
                                  "minimum": None if result is None else float(result.minimum),
                                  "edge": None if result is None else float(result.edge)})
    return lr, result


SIZE_BASELINES = ("diameter", "radiomics")  # they read the table's diameter


def baseline_problem(table: Any) -> str | None:
    """Why the size and radiomics baselines cannot be fitted on this table, or None: where some diameters are a
    default rather than a measurement (LUNA16 candidates: column ``diameter_source``), the diameter tells the
    label apart (both baselines read it), so a comparison with them would be meaningless."""
    assumed = assumed_diameters(table)
    if not assumed:
        return None
    return (f"{assumed} of {len(table)} rows have a default diameter, not a measured one (column diameter_source): "
            "the diameter says nothing of their nodule, or gives their label away; no size or radiomics baseline")


def run_baselines(cfg: PipelineConfig, dls: Any, source: VolumeSource, split: str,
                  names: Sequence[str] | None = None) -> list[BaselineResult]:
    """The baselines ``names`` (default: the configured ones; diameter, radiomics + random forest, the Patch3D
    3D CNN; the series' largest nodule diameter), fitted on train, scored on the held-out split."""
    names = cfg.report.baselines if names is None else names
    train, test = dls.items("train"), dls.items(split)
    results = []
    if "diameter" in names:
        results.append(diameter_baseline(train, test, cfg.data.positive))
    if "largest_diameter" in names:
        results.append(largest_diameter_baseline(train, test, cfg.data.positive))
    if "radiomics" in names:
        f_train, f_test = feature_table(train, source.get), feature_table(test, source.get)
        results.append(radiomics_baseline(f_train, train["label"], f_test, test["label"], cfg.data.positive, seed=cfg.train.seed))
    if "patch3d" in names:
        splits = {"train": train, "valid": dls.items("valid"), split: test}
        results.append(patch3d_baseline(splits, split, source, cfg.data.positive, bs=cfg.data.bs,
                                        num_workers=cfg.data.num_workers, seed=cfg.train.seed))
    return results


def preflight(cfg: PipelineConfig) -> tuple[Any, VolumeSource]:
    """The table and its volume source, after checking what `load_config` cannot see without the scans:
    every series of the table is found, and the model fits the input block. Writes nothing; a problem is
    a `ConfigError` naming the key."""
    table = _table(cfg)
    where = cfg.data.dicom_root if cfg.data.dicom_root is not None else "the table's 'path' column"
    try:
        source = VolumeSource.for_table(table, cfg.data.dicom_root, cache_dir=cfg.data.cache_dir or Path(cfg.out) / "cache")
        source.check(table["series_uid"], files=True)
    except SourceError as exc:
        missing = str(exc).split(": ", 1)[-1]
        raise ConfigError(
            f"data.table: {missing} (looked in {where}). Train on the series you have: drop the other rows "
            "(datasets/lidc-idri/prepare.py --dicom and datasets/luna16/prepare.py --root keep only the scans "
            "found), or point data.dicom_root at the folder that holds them") from None
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data: {exc}") from None
    _check_model(cfg, table)
    return table, source


def _check_model(cfg: PipelineConfig, table: Any) -> None:
    """Build the configured model for the block and push a zero batch through it (catches an architecture
    that does not fit the block, or a wrong model.kwargs key, before anything is written)."""
    import torch

    from medsuite.learn.models import build_model
    from medsuite.pipelines.tasks import model_choice

    block = block_from_spec(cfg.block.model_dump())
    name, args = model_choice(block, int(table["label"].astype(str).nunique()), cfg.model.arch, cfg.model.kwargs,
                              task=cfg.task)
    try:
        model = build_model(name, **args)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model: cannot build {name!r} with kwargs {cfg.model.kwargs}: {exc}") from None
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((2, *block.output_shape)))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.arch: {name!r} does not fit block {cfg.block.type} (samples of shape "
                          f"{tuple(block.output_shape)}): {reason}; leave model.arch unset to use the block's own") from None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _resume_problems(run_dir: Path, cfg: PipelineConfig) -> list[str]:
    """Why ``run_dir`` cannot be resumed with ``cfg`` (empty: it can)."""
    checkpoint = run_dir / "checkpoints" / "last.safetensors"
    if not checkpoint.is_file():
        return [f"--resume: {run_dir} holds no checkpoint to resume (checkpoints/last.safetensors); "
                "run without --resume to start training"]
    saved_path = run_dir / "config.json"
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, ValueError):
        return []  # the learner still checks the checkpoint's own schedule
    before, now = _flat(saved), _flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k)
                     and not any(k == p or (p.endswith(".") and k.startswith(p)) for p in RESUMABLE_CHANGES))
    return [f"--resume: {k} is {now.get(k)!r} now but {before.get(k)!r} in the run being resumed ({saved_path}); "
            f"a resumed run continues the same schedule: use {k}={before.get(k)!r}, or start a new run "
            f"(another out, or --force to replace this one)" for k in changed]


@contextmanager
def run_folder(run_dir: Path, cfg: PipelineConfig, *, resume: bool, force: bool, bundle: Path) -> Iterator[Path]:
    """Lock ``run_dir`` for this run (a second run into it stops at once) and check what it holds: an
    earlier run is resumed (``resume``), replaced (``force``: its files go, the volume cache stays) or
    refused. The lock is released when the block ends, or by the system if the process dies."""
    if resume and not run_dir.is_dir():  # nothing to resume: refused before the folder is made
        raise RunFolderError("\n".join(_resume_problems(run_dir, cfg)))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunFolderError(f"{run_dir}: another 'medsuite train' run (pid {holder}) is using this folder; "
                             "wait for it to finish, or give this run another out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir / "cache"
        keep = {LOCK_NAME} | ({cache.name} if cache.parent.resolve() == run_dir.resolve() else set())
        earlier = sorted(p for p in run_dir.iterdir() if p.name not in keep)
        if resume:
            problems = _resume_problems(run_dir, cfg)
            if problems:
                raise RunFolderError("\n".join(problems))
        else:
            if bundle.exists() and bundle.parent.resolve() != run_dir.resolve() and not force:
                earlier.append(bundle)
            if earlier and not force:
                shown = ", ".join(p.name for p in earlier[:4]) + (" ..." if len(earlier) > 4 else "")
                raise RunFolderError(f"{run_dir}: holds an earlier run ({shown}); use --resume to continue it, "
                                     "--force to replace it, or give this run another out")
            for path in earlier:
                if path.parent.resolve() == run_dir.resolve():
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        yield run_dir
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Send medsuite's log records (INFO and up) to ``run_dir/train.log`` while the block runs."""
    path = run_dir / LOG_NAME
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("medsuite")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield path
    except BaseException as exc:  # into the log file only: the terminal gets the CLI's one-line message
        handler.handle(logger.makeRecord(log.name, logging.ERROR, __file__, 0, "training stopped: %r", (exc,),
                                         (type(exc), exc, exc.__traceback__)))
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run_training(cfg: PipelineConfig, *, resume: bool = False, bundle_path: Path | None = None, force: bool = False,
                 progress: bool = True) -> TrainResult:
    """Train, export and evaluate one pipeline configuration; every artefact lands in ``cfg.out``.

    Checks first (`preflight`, `run_folder`), writes after: a `ConfigError` or `RunFolderError` leaves
    no file behind. ``progress``: bars on a terminal and one row per epoch (False: neither). Under torchrun,
    call it inside `medsuite.learn.distributed.distrib_ctx` (as `medsuite train` does)."""
    table, source = preflight(cfg)
    run_dir = Path(cfg.out)
    bundle = Path(bundle_path or run_dir / f"{cfg.name}.bundle")
    main = D.is_main_process()
    with (run_folder(run_dir, cfg, resume=resume, force=force, bundle=bundle) if main else nullcontext()), \
            (run_log(run_dir) if main else nullcontext()):
        if main:
            log.info("training %s (%s) into %s%s", cfg.name, cfg.task, run_dir, " (resumed)" if resume else "")
            _atomic_json(run_dir / "config.json", cfg.model_dump(mode="json"))
        timings: dict[str, float] = {}  # seconds per stage, in metrics.json (bench/bench_train_nodule.py reads them)

        @contextmanager
        def stage(name: str) -> Iterator[None]:
            start = time.perf_counter()
            yield
            timings[name] = round(time.perf_counter() - start, 2)
            log.info("%s: %.1f s", name, timings[name])

        with stage("data"):
            dls = build_dataloaders(cfg, source, table)
            learn = build_learner(cfg, dls, progress=progress)
        with stage("lr_find"):
            lr, lr_result = choose_lr(learn, cfg, run_dir, resume)
        with stage("fit"):
            learn.fit_one_cycle(cfg.train.epochs, lr, resume=resume)
        if not main:  # rank 0 alone exports, evaluates and reports
            return TrainResult(run_dir, None, None, {})

        p = cfg.predictor
        with stage("export"):
            learn.export(bundle, train_config={"config": cfg.model_dump(mode="json"), **learn.train_config()},
                         tta=p.tta, calibration=None if p.calibration == "none" else p.calibration,
                         threshold_rule=p.threshold, fuse=p.fuse)
            exported = load_bundle(bundle, device=str(learn.device))
        predictor = Predictor.from_bundle(exported)  # the report measures exactly what scoring will run
        threshold = predictor.threshold

        split = "test" if dls.test is not None else "valid"
        with stage("evaluate"):
            evaluation: Evaluation = evaluate(learn, split, predictor=predictor, n_boot=cfg.report.n_boot,
                                              index=CaseIndex.from_bundle(exported))
        skipped = baseline_problem(table) if set(cfg.report.baselines) & set(SIZE_BASELINES) else None
        if skipped:
            log.warning("baselines skipped: %s", skipped)
        names = [b for b in cfg.report.baselines if not (skipped and b in SIZE_BASELINES)]
        if names:
            with stage("baselines"):
                baselines = run_baselines(cfg, dls, source, split, names)
                compare_with_baselines(evaluation, baselines, n_boot=max(cfg.report.n_boot, 1000))
        with stage("report"):
            report = write_report(run_dir, title=f"medsuite — {cfg.name} ({cfg.task})", learn=learn, evaluation=evaluation,
                                  lr_result=lr_result, lr=lr, top_losses=cfg.report.top_losses)
        costs = evaluation.baseline_costs
        metrics = {"split": split, "lr": lr, "threshold": threshold, "report": evaluation.report,
                   "knn_agreement": evaluation.knn_agreement, "comparisons": evaluation.comparisons, "timings": timings,
                   **({"baselines_skipped": skipped} if skipped else {}), **({"baseline_costs": costs} if costs else {})}
        _atomic_json(run_dir / "metrics.json", metrics)
        log.info("done: bundle %s, report %s", bundle, report)
        return TrainResult(run_dir, bundle, report, metrics)
