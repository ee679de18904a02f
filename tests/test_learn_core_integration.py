"""The Learner on the data layer's real DataLoaders (DataBlock + VolumeSource) and a registered model."""

from __future__ import annotations

import pytest
import torch
from data_helpers import nodule_table, sphere_volume

from medsuite.learn.basic_metrics import accuracy
from medsuite.learn.callbacks.core import Callback, CancelFitException
from medsuite.learn.learner import Learner, set_seed


@pytest.fixture(scope="module")
def dls_factory():
    from medsuite.data.block import DataBlock
    from medsuite.data.blocks import Category, SliceStack
    from medsuite.data.source import VolumeSource
    from medsuite.data.splitters import PatientSplitter

    volumes, centers = {}, {}
    for p in range(6):
        geometry = ("isotropic", "anisotropic", "oblique", "feet_first")[p % 4]
        vol, c = sphere_volume(geometry, shape=(24, 40, 40), radius_mm=5.0, series_uid=f"1.2.{p}")
        volumes[vol.series_uid], centers[vol.series_uid] = vol, c
    table = nodule_table(6, per_patient=2, centers=centers)
    source = VolumeSource(volumes=volumes)
    block = DataBlock(blocks=(SliceStack(k=3, size=16, window="lung"), Category()),
                      splitter=PatientSplitter(valid_pct=0.34, seed=0))
    return lambda: block.dataloaders(table, source=source, bs=2, seed=0)


def _learner(dls, path, **kw) -> Learner:
    from medsuite.learn.models import build_model

    set_seed(0)
    model = build_model("slice_cnn", in_channels=3, n_classes=2, width=4, depth=2)
    return Learner(dls, model, path=path, seed=0, progress=False, metrics=[accuracy], **kw)


def test_fit_resume_and_export_on_datablock_loaders(dls_factory, tmp_path):
    full = _learner(dls_factory(), tmp_path / "full")
    full.fit_one_cycle(2, 1e-2)
    assert len(full.recorder.df) == 2 and "accuracy" in full.recorder.df

    class Crash(Callback):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter == full.n_iter + 1:
                raise CancelFitException()

    _learner(dls_factory(), tmp_path / "part", checkpoint_every=2, cbs=[Crash()]).fit_one_cycle(2, 1e-2)
    resumed = _learner(dls_factory(), tmp_path / "part", checkpoint_every=2)
    resumed.fit_one_cycle(2, 1e-2, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k

    from medsuite.learn.bundle import load_bundle

    out = full.export(tmp_path / "bundle.zip", arch="slice_cnn",
                      arch_kwargs={"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2},
                      threshold=0.5, task="nodule")
    b = load_bundle(out)
    assert list(b.labels) == [str(v) for v in full.dls.vocab]
    assert b.block.spec() == full.dls.block.spec()
