"""The local pipelined engine: batching across series, error rows, bounded queues, a dying worker."""

from __future__ import annotations

import numpy as np
import scoring_support as S
import torch

from medsuite.learn.predict import Predictor
from medsuite.pipelines.scoring.local import run_local
from medsuite.pipelines.scoring.stages import WorkItem


class MeanModel(torch.nn.Module):
    """logit(class 1) = mean of the sample; records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        m = x.flatten(1).mean(1)
        return torch.stack([torch.zeros_like(m), m], dim=1)


def _run(uids, **kw):
    model = MeanModel()
    predictor = Predictor.plain(model, ["neg", "pos"], "pos")
    items = [WorkItem(u, (f"/data/{u}/1.dcm",)) for u in uids]
    results = {r.series_uid: r for r in run_local(items, predictor=predictor, block_spec_json="{}",
                                                  prepare_fn=S.fake_prepare, **kw)}
    return results, model


def test_scores_errors_and_batches():
    uids = [f"ok-{v}" for v in (-2, -1, 0, 1, 2, 3)] + ["bad-1"]
    results, model = _run(uids, workers=2, batch_size=4)
    assert set(results) == set(uids)
    for v in (-2, -1, 0, 1, 2, 3):
        (pred,) = results[f"ok-{v}"].predictions
        assert np.isclose(pred["probability"], 1 / (1 + np.exp(-v)))
        assert pred["label"] == ("pos" if v >= 0 else "neg") and pred["nodule_id"] == ""
    assert results["bad-1"].status == "error" and results["bad-1"].errors == [("read", "/data/bad-1/1.dcm: truncated")]
    assert max(model.batches) <= 4 and sum(model.batches) == 6


def test_a_dying_worker_costs_only_its_series():
    uids = [f"ok-{v}" for v in range(3)] + ["crash-1"] + [f"ok-{v}" for v in range(3, 6)] + ["crash-2"]
    results, _ = _run(uids, workers=2, batch_size=2)
    assert set(results) == set(uids)
    assert all(results[f"ok-{v}"].status == "scored" for v in range(6))
    for uid in ("crash-1", "crash-2"):
        (stage, reason), = results[uid].errors
        assert stage == "read" and "worker process" in reason and "died" in reason


def test_empty_run_starts_nothing():
    results, model = _run([], workers=2)
    assert results == {} and model.batches == []


class PickyModel(MeanModel):
    """Fails on any batch holding a sample whose mean is 7 (a series the model cannot take)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.flatten(1).mean(1) == 7).any():
            raise RuntimeError("the model rejects this input")
        return super().forward(x)


def test_an_inference_failure_costs_only_its_series():
    predictor = Predictor.plain(PickyModel(), ["neg", "pos"], "pos")
    items = [WorkItem(u, ("/x",)) for u in ("ok-1", "ok-7", "ok-2", "ok-3")]
    results = {r.series_uid: r for r in run_local(items, predictor=predictor, block_spec_json="{}", workers=1,
                                                  batch_size=8, prepare_fn=S.fake_prepare)}
    assert results["ok-7"].errors == [("infer", "RuntimeError: the model rejects this input")]
    assert all(results[u].status == "scored" for u in ("ok-1", "ok-2", "ok-3"))
    assert predictor.threshold == 0.5  # a binary bundle without an operating point
