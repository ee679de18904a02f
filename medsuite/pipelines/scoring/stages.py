"""The two stages every engine runs: ``prepare`` (read one series, sample it, drop the volume) and
``score_prepared`` (batched inference with the bundle's `medsuite.learn.predict.Predictor`, the one chain
evaluation and reports use too). Both engines share them, so their outputs match.

An engine holds one predictor (``Predictor.load(bundle_path, device=...)`` in a Ray actor, or
``Predictor.from_bundle(bundle)``) and calls ``score_prepared(pending, predictor, batch_size)``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the worker processes that only prepare never import torch for it
    from medsuite.learn.predict import Predictor


@dataclass(frozen=True)
class Point:
    """One nodule to score: its id, world LPS position (mm), diameter, and the nodule table's values of the
    columns the bundle's predictor fuses with the image (``covariates``: (column, value) pairs)."""

    nodule_id: str
    x_mm: float
    y_mm: float
    z_mm: float
    diameter_mm: float | None = None
    covariates: tuple[tuple[str, float], ...] = ()

    def covariate(self, name: str) -> float:
        values = dict(self.covariates)
        if name in values:
            return float(values[name])
        if name == "diameter_mm" and self.diameter_mm is not None:
            return float(self.diameter_mm)
        return float("nan")


def covariates_of(points: list[Point | None], predictor: Predictor) -> dict[str, np.ndarray] | None:
    """The fusing predictor's covariates of the scored points (None when it fuses nothing)."""
    fusion = predictor.settings.fusion
    if fusion is None:
        return None
    return {name: np.array([np.nan if p is None else p.covariate(name) for p in points]) for name in fusion.covariates}


@dataclass(frozen=True)
class WorkItem:
    """One series to score: its files, for nodule bundles its points (None for a series bundle), and the
    stack of the files to read (several stacks may share files, e.g. an enhanced object's frame types)."""

    series_uid: str
    files: tuple[str, ...]
    points: tuple[Point, ...] | None = None
    stack: str | None = None


@dataclass
class Prepared:
    """What a worker hands to inference: small samples, never the volume."""

    series_uid: str
    samples: np.ndarray | None = None          # (n, *sample_shape) float32, n = len(keys)
    keys: list[Point | None] = field(default_factory=list)   # per sample: the point, or None (series task)
    point_errors: list[tuple[str, str]] = field(default_factory=list)  # (nodule_id, reason)
    error: tuple[str, str] | None = None      # (stage, reason) when the whole series failed
    n_slices: int | None = None
    spacing: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)  # warnings raised while reading (may name files)


@dataclass
class SeriesResult:
    """A finished series: its predictions, or the error(s) that stopped it."""

    series_uid: str
    predictions: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)   # (stage, reason)
    n_slices: int | None = None
    spacing: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "scored" if self.predictions else "error"


@lru_cache(maxsize=4)
def block_for(spec_json: str) -> Any:
    """The input block rebuilt from its spec, once per process (keyed by the canonical JSON)."""
    from medsuite.data.blocks import block_from_spec

    return block_from_spec(json.loads(spec_json))


def spec_json(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "no message"
    return text if isinstance(exc, ValueError | OSError) else f"{type(exc).__name__}: {text}"


def _outside(volume: Any, point: Point) -> str | None:
    index = volume.world_to_index((point.x_mm, point.y_mm, point.z_mm))
    shape = np.asarray(volume.shape, dtype=np.float64)
    if np.all(index >= -0.5) and np.all(index <= shape - 0.5):
        return None
    return (
        f"nodule {point.nodule_id}: point ({point.x_mm:g}, {point.y_mm:g}, {point.z_mm:g}) mm lies outside the scan "
        f"(voxel index z,y,x = {', '.join(f'{v:.1f}' for v in index)}; shape {tuple(volume.shape)})"
    )


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"{record.name}: {record.getMessage()}")


NOTE_LOGGERS = ("medsuite", "pydicom")  # whose WARNING records name files while reading: collected, not printed


@contextmanager
def worker_notes(sink: list[str]) -> Iterator[None]:
    """Collect warnings and the WARNING records of `NOTE_LOGGERS` into ``sink`` instead of printing them
    (they often name files, and file paths may hold patient ids; the caller logs them after scrubbing).

    Only for a scoring worker process (a local engine's pool process, a Ray task, `run_in_worker`): the
    warnings filter it swaps is process-wide and not thread-safe, which is harmless there because such a
    process runs one task at a time and its reader threads finish inside the block. The process that
    starts a run never enters it: it keeps its own logging handlers and warnings filter untouched.
    """
    handler = _Collect(sink)
    loggers = [logging.getLogger(name) for name in NOTE_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        sink.extend(f"{w.category.__name__}: {w.message}" for w in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def _noted(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[Any, list[str]]:
    notes: list[str] = []
    with worker_notes(notes):
        result = fn(*args, **kwargs)
    return result, notes


def run_in_worker(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """``(fn(*args, **kwargs), notes)`` computed in a fresh worker process (which dies with this one), its
    warnings and log records collected by `worker_notes` there: this process's logging and warnings
    configuration is never touched. ``fn`` must be importable (module level); its exceptions propagate."""
    from medsuite.io.workers import worker_pool

    with worker_pool(1, context="spawn") as pool:
        return pool.submit(_noted, fn, args, kwargs).result()


def prepare(item: WorkItem, block_spec_json: str, read_options: dict[str, Any] | None = None) -> Prepared:
    """Read one series and sample it (one sample per point, or one for the series); errors become data."""
    out = Prepared(series_uid=item.series_uid)
    with worker_notes(out.notes):  # prepare runs in the engines' worker processes only
        _prepare(item, block_spec_json, read_options, out)
    return out


def _prepare(item: WorkItem, block_spec_json: str, read_options: dict[str, Any] | None, out: Prepared) -> None:
    from medsuite.data.source import read_files  # DICOM instances, or one MetaImage/NRRD/NIfTI file

    try:
        options = {**(read_options or {}), **({"stack": item.stack} if item.stack else {})}
        volume = read_files(item.files, item.series_uid, **options)
    except Exception as exc:  # a corrupt series must not stop the run: it becomes an error row
        out.error = ("read", _describe(exc))
        return
    out.n_slices = int(volume.shape[0])
    out.spacing = tuple(float(s) for s in volume.spacing)  # type: ignore[assignment]
    try:
        block = block_for(block_spec_json)
        samples: list[np.ndarray] = []
        if item.points is None:
            center = None if json.loads(block_spec_json).get("type") == "SeriesSlices" else volume.center_world
            samples.append(np.asarray(block.sample(volume, center_xyz=center), dtype=np.float32))
            out.keys.append(None)
        else:
            for point in item.points:
                reason = _outside(volume, point)
                if reason is None:
                    try:
                        sample = block.sample(volume, center_xyz=np.array([point.x_mm, point.y_mm, point.z_mm]))
                    except Exception as exc:  # one bad point is that nodule's error, not the series'
                        out.point_errors.append((point.nodule_id, f"nodule {point.nodule_id}: {_describe(exc)}"))
                        continue
                    samples.append(np.asarray(sample, dtype=np.float32))
                    out.keys.append(point)
                else:
                    out.point_errors.append((point.nodule_id, reason))
        if samples:
            out.samples = np.stack(samples)
    except Exception as exc:
        out.error = ("preprocess", _describe(exc))
        out.samples, out.keys = None, []
    finally:
        del volume  # only the small samples leave this function


def finish(prepared: Prepared, probs: np.ndarray | None, predictor: Predictor) -> SeriesResult:
    """Turn a prepared series and its samples' probabilities into a `SeriesResult`."""
    result = SeriesResult(series_uid=prepared.series_uid, n_slices=prepared.n_slices, spacing=prepared.spacing,
                          notes=list(prepared.notes))
    if prepared.error is not None:
        result.errors.append(prepared.error)
        return result
    for _nodule_id, reason in prepared.point_errors:
        result.errors.append(("preprocess", reason))
    if probs is not None:
        scores, labels = predictor.score_of(probs), predictor.decide(probs)
        for key, probability, label in zip(prepared.keys, scores, labels, strict=True):
            result.predictions.append(
                {
                    "nodule_id": "" if key is None else key.nodule_id,
                    "x_mm": None if key is None else key.x_mm,
                    "y_mm": None if key is None else key.y_mm,
                    "z_mm": None if key is None else key.z_mm,
                    "diameter_mm": None if key is None else key.diameter_mm,
                    "probability": float(probability),
                    "label": label,
                }
            )
    if not result.predictions and not result.errors:
        result.errors.append(("preprocess", "no sample could be made from this series"))
    return result


def score_prepared(pending: list[Prepared], predictor: Predictor, batch_size: int) -> list[SeriesResult]:
    """Score the samples of several series together, in batches of ``batch_size``; one result per series.

    If a batch fails (e.g. out of GPU memory, or one series' samples the model rejects), its series are
    retried one by one and those that still fail get an ``infer`` error; the others are unaffected.
    """
    ready = [p for p in pending if p.samples is not None and p.error is None]
    probs: dict[int, np.ndarray] = {}

    def run(samples: np.ndarray, keys: list[Point | None]) -> np.ndarray:
        cov = covariates_of(keys, predictor)
        return np.concatenate([predictor.predict_proba(samples[i:i + batch_size],
                                                       None if cov is None else {k: v[i:i + batch_size] for k, v in cov.items()})
                               for i in range(0, len(samples), batch_size)])

    if ready:
        try:
            all_probs = run(np.concatenate([p.samples for p in ready]), [k for p in ready for k in p.keys])
            offset = 0
            for p in ready:
                probs[id(p)] = all_probs[offset:offset + len(p.samples)]
                offset += len(p.samples)
        except Exception:  # find the series that fails instead of failing all of them
            for p in ready:
                try:
                    probs[id(p)] = run(p.samples, list(p.keys))
                except Exception as exc:
                    p.error = ("infer", _describe(exc))
    results = [finish(p, probs.get(id(p)), predictor) for p in pending]
    for p in pending:
        p.samples = None  # free the samples as soon as they are scored
    return results
