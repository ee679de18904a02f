"""The Ray engine: the same two stages on a Ray cluster, with Ray Data.

series (a dataset, one row a series) --map--> read+sample as Ray tasks --map_batches--> an actor pool
holding the model (one GPU per actor where the cluster has GPUs) --> rows streamed back to the driver,
which writes them exactly as the local engine does. Samples travel as ``.npy`` bytes (no pickle).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from medsuite.pipelines.scoring.stages import (
    Point,
    Prepared,
    SeriesResult,
    WorkItem,
    prepare,
    score_prepared,
)

log = logging.getLogger("medsuite.scoring")


def _to_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def item_to_row(item: WorkItem) -> dict[str, Any]:
    points = None if item.points is None else [p.__dict__ for p in item.points]
    return {"series_uid": item.series_uid, "files": json.dumps(list(item.files)), "points": json.dumps(points)}


def prepare_row(row: dict[str, Any], *, block_spec_json: str, read_options: dict[str, Any]) -> dict[str, Any]:
    """Ray task: read and sample one series; the row carries samples as .npy bytes and keys as JSON."""
    raw_points = json.loads(row["points"])
    points = None if raw_points is None else tuple(Point(**p) for p in raw_points)
    item = WorkItem(str(row["series_uid"]), tuple(json.loads(row["files"])), points)
    p = prepare(item, block_spec_json, read_options)
    return {
        "series_uid": p.series_uid,
        "samples": b"" if p.samples is None else _to_npy(p.samples),
        "keys": json.dumps([None if k is None else k.__dict__ for k in p.keys]),
        "point_errors": json.dumps(p.point_errors),
        "error": json.dumps(p.error),
        "n_slices": -1 if p.n_slices is None else p.n_slices,
        "spacing": json.dumps(p.spacing),
        "notes": json.dumps(p.notes),
    }


def _prepared_from_row(row: dict[str, Any]) -> Prepared:
    keys = [None if k is None else Point(**k) for k in json.loads(row["keys"])]
    error = json.loads(row["error"])
    spacing = json.loads(row["spacing"])
    return Prepared(
        series_uid=str(row["series_uid"]),
        samples=_from_npy(row["samples"]) if len(row["samples"]) else None,
        keys=keys,
        point_errors=[tuple(e) for e in json.loads(row["point_errors"])],
        error=None if error is None else tuple(error),
        n_slices=None if int(row["n_slices"]) < 0 else int(row["n_slices"]),
        spacing=None if spacing is None else tuple(spacing),
        notes=list(json.loads(row["notes"])),
    )


def result_to_json(result: SeriesResult) -> str:
    return json.dumps({"series_uid": result.series_uid, "predictions": result.predictions, "errors": result.errors,
                       "n_slices": result.n_slices, "spacing": result.spacing, "notes": result.notes})


def result_from_json(text: str) -> SeriesResult:
    d = json.loads(text)
    return SeriesResult(series_uid=d["series_uid"], predictions=d["predictions"],
                        errors=[tuple(e) for e in d["errors"]], n_slices=d["n_slices"],
                        spacing=None if d["spacing"] is None else tuple(d["spacing"]), notes=d["notes"])


class InferenceActor:
    """Ray actor (a callable class for ``map_batches``): loads the bundle once, scores batches of series."""

    def __init__(self, bundle_path: str, device: str, batch_size: int) -> None:
        from medsuite.learn.predict import Predictor

        self.predictor = Predictor.load(bundle_path, device=device)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["series_uid"])
        prepared = [_prepared_from_row({k: batch[k][i] for k in batch}) for i in range(n)]
        out = [result_to_json(r) for r in score_prepared(prepared, self.predictor, self.batch_size)]
        return {"series_uid": np.array([p.series_uid for p in prepared], dtype=object),
                "result": np.array(out, dtype=object)}


def run_ray(items: list[WorkItem], *, bundle_path: str, block_spec_json: str, device: str, workers: int,
            batch_size: int, address: str | None = None, read_options: dict[str, Any] | None = None,
            ) -> Iterator[SeriesResult]:
    """Score ``items`` on Ray (``address`` of a running cluster, or a local one with ``workers`` CPUs)."""
    import ray

    if not items:
        return
    started_here = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            # one CPU slot per decoding worker plus one for the inference actor, as the local engine uses
            ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False)
        started_here = True
    try:
        ctx = ray.data.DataContext.get_current()
        bars, ctx.enable_progress_bars = ctx.enable_progress_bars, False  # the runner shows its own bar
        n_gpus = int(ray.cluster_resources().get("GPU", 0)) if device != "cpu" else 0
        if device == "cuda" and not n_gpus:
            log.warning("--device cuda: the Ray cluster has no GPU; inference runs on CPU actors")
        actor_device = "cuda" if n_gpus else "cpu"
        ds = ray.data.from_items([item_to_row(i) for i in items], override_num_blocks=min(len(items), 1000))
        ds = ds.map(prepare_row, fn_kwargs={"block_spec_json": block_spec_json,
                                            "read_options": dict(read_options or {})}, num_cpus=1)
        ds = ds.map_batches(
            InferenceActor,
            fn_constructor_kwargs={"bundle_path": bundle_path, "device": actor_device, "batch_size": batch_size},
            batch_size=max(1, batch_size),
            batch_format="numpy",
            concurrency=max(1, n_gpus),
            num_gpus=1 if n_gpus else 0,
            num_cpus=1,
        )
        try:
            for row in ds.iter_rows():
                yield result_from_json(row["result"])
        finally:
            ctx.enable_progress_bars = bars
    finally:
        if started_here:
            ray.shutdown()
