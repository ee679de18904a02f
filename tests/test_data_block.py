"""DataBlock -> DataLoaders: batches, vocab, item order, seeding, batch_tfms, show_batch, summary errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from data_helpers import nodule_table, sphere_volume

from medsuite.data.block import DataBlock, DataBlockError
from medsuite.data.blocks import Category, MultiView, SeriesSlices, SliceStack
from medsuite.data.source import VolumeSource
from medsuite.data.splitters import PatientSplitter

N_PATIENTS = 6


@pytest.fixture(scope="module")
def cohort():
    volumes, centers = {}, {}
    for p in range(N_PATIENTS):
        geometry = ("isotropic", "anisotropic", "oblique", "feet_first")[p % 4]
        vol, c = sphere_volume(geometry, shape=(24, 40, 40), radius_mm=5.0, series_uid=f"1.2.{p}")
        volumes[vol.series_uid], centers[vol.series_uid] = vol, c
    table = nodule_table(N_PATIENTS, per_patient=2, centers=centers)
    return table, VolumeSource(volumes=volumes)


def _block(**kw):
    kw.setdefault("splitter", PatientSplitter(valid_pct=0.34, seed=0))
    return DataBlock(blocks=(SliceStack(k=3, size=16, window="lung"), Category()), **kw)


def test_dataloaders_give_float_batches_int_labels_and_items_in_order(cohort):
    table, source = cohort
    dls = _block(item_tfms=None).dataloaders(table, source=source, bs=4, seed=0)
    x, y = next(iter(dls.train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dls.vocab == [0, 1] and dls.block == SliceStack(k=3, size=16, window="lung")
    valid = dls.items("valid")
    ys = torch.cat([yb for _, yb in dls.valid])
    assert ys.tolist() == valid["label"].tolist()
    assert set(valid["patient_id"]).isdisjoint(dls.items("train")["patient_id"])
    assert dls.test is None and len(dls.items("train")) + len(valid) == len(table)
    # every sample is centred on its nodule: the middle slice's centre is bright
    xv = torch.cat([xb for xb, _ in dls.valid])
    assert torch.all(xv[:, 1, 7:9, 7:9] > 0.6)
    assert len(dls.fingerprint()) == 64


def test_split_column_is_used_and_test_set_built(cohort):
    table, source = cohort
    t = table.copy()
    t["split"] = np.select([t["patient_id"] == "P000", t["patient_id"] == "P001"], ["valid", "test"], "train")
    dls = DataBlock(blocks=(SliceStack(k=3, size=16), Category()), item_tfms=None).dataloaders(t, source=source, bs=2)
    assert set(dls.items("valid")["patient_id"]) == {"P000"} and set(dls.items("test")["patient_id"]) == {"P001"}
    assert sum(len(b[1]) for b in dls.test) == 2


def test_validation_is_deterministic_and_training_seeded(cohort):
    table, source = cohort
    block = _block()  # default Augment() on training items
    a = block.dataloaders(table, source=source, bs=4, seed=3)
    b = block.dataloaders(table, source=source, bs=4, seed=3)
    c = block.dataloaders(table, source=source, bs=4, seed=4)
    va, vb = [torch.cat([x for x, _ in d.valid]) for d in (a, b)]
    assert torch.equal(va, vb)
    assert torch.equal(va, torch.cat([x for x, _ in a.valid]))  # second pass, same values
    ta, tb, tc = (next(iter(d.train))[0] for d in (a, b, c))
    assert torch.equal(ta, tb) and not torch.equal(ta, tc)


def test_workers_give_the_same_seeded_batches(cohort):
    table, source = cohort
    block = _block()
    one = next(iter(block.dataloaders(table, source=source, bs=4, seed=1, num_workers=0).train))
    two = next(iter(block.dataloaders(table, source=source, bs=4, seed=1, num_workers=2).train))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_batch_tfms_run_on_training_batches_only(cohort):
    table, source = cohort
    calls = []

    def zero(x, y):
        calls.append(x.device.type)
        return x * 0, y

    dls = _block(item_tfms=None, batch_tfms=[zero]).dataloaders(table, source=source, bs=4, seed=0)
    assert float(next(iter(dls.train))[0].abs().sum()) == 0.0
    assert float(next(iter(dls.valid))[0].abs().sum()) > 0.0
    assert calls == ["cuda" if torch.cuda.is_available() else "cpu"]


def test_show_batch_returns_a_figure_and_writes_png(cohort, tmp_path):
    table, source = cohort
    dls = DataBlock(blocks=(MultiView(views=9, size=16), Category()), splitter=PatientSplitter(0.34, seed=0),
                    item_tfms=None).dataloaders(table, source=source, bs=4)
    out = tmp_path / "figs" / "batch.png"
    fig = dls.show_batch(split="valid", path=out)
    assert len([ax for ax in fig.axes if ax.images]) == 4
    assert {ax.get_title() for ax in fig.axes if ax.images} <= {"0", "1"}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["batch.png"]  # no temp file left


def test_series_slices_from_a_series_label_table(cohort):
    _, source = cohort
    series = pd.DataFrame({"series_uid": [f"1.2.{p}" for p in range(N_PATIENTS)],
                           "patient_id": [f"P{p}" for p in range(N_PATIENTS)],
                           "label": ["normal", "abnormal"] * (N_PATIENTS // 2)})
    dls = DataBlock(blocks=(SeriesSlices(n=4, size=16), Category()), splitter=PatientSplitter(0.34, seed=0)
                    ).dataloaders(series, source=source, bs=2, seed=0)
    x, y = next(iter(dls.train))
    assert x.shape == (2, 4, 1, 16, 16) and dls.vocab == ["abnormal", "normal"]


def test_summary_prints_every_step_without_patient_ids(cohort):
    table, source = cohort
    lines = []
    _block().summary(table, source=source, print_fn=lines.append)
    text = "\n".join(lines)
    for step in ("get_items: 12 items", "splitter: train", "get_x -> series_uid=", "source.get -> Volume (24, 40, 40)",
                 "block.sample + Augment (training only) -> (3, 16, 16) float32", "Category -> ",
                 "collate (2 items) -> x (2, 3, 16, 16) torch.float32, y (2,) torch.int64"):
        assert step in text, step
    assert "P00" not in text.replace("patients", "")


def test_summary_names_the_failing_step_and_item(cohort, tmp_path):
    table, source = cohort
    bad_source = VolumeSource(volumes=source.volumes, paths={"9.9.9": tmp_path / "missing.nii.gz"})
    bad = pd.concat([table, pd.DataFrame([{**table.iloc[0].to_dict(), "series_uid": "9.9.9", "nodule_id": "bad-1",
                                           "patient_id": "P999"}])], ignore_index=True)
    block = _block(splitter=lambda t: {"train": np.array([len(t) - 1]), "valid": np.arange(len(t) - 1)})
    lines = []
    with pytest.raises(DataBlockError, match=r"step 'source.get' failed for item row 12, nodule_id=bad-1, series_uid=9.9.9: FileNotFoundError"):
        block.summary(bad, source=bad_source, print_fn=lines.append)
    assert lines[-1].startswith("  FAILED: step 'source.get'")
    # the same item fails the same way inside a loader
    dls = block.dataloaders(bad, source=bad_source, bs=1)
    with pytest.raises(DataBlockError, match="nodule_id=bad-1"):
        next(iter(dls.train))


def test_table_problems_are_clear_errors(cohort):
    table, source = cohort
    with pytest.raises(DataBlockError, match=r"step 'source'.*1 series of the table not found: 7\.7\.7"):
        _block().dataloaders(table.assign(series_uid=lambda t: np.where(t.index == 0, "7.7.7", t.series_uid)), source=source)
    with pytest.raises(ValueError, match="missing column"):
        _block().dataloaders(table.drop(columns="x_mm"), source=source)
    with pytest.raises(DataBlockError, match="no volume source"):
        _block().dataloaders(table)
    with pytest.raises(DataBlockError, match=r"step 'get_y' failed for item row 0"):
        _block(get_y=lambda row: row["nope"]).dataloaders(table, source=source)


def test_custom_get_x_and_get_y(cohort):
    table, source = cohort
    block = _block(item_tfms=None, get_x=lambda r: (r.series_uid, (r.x_mm + 10.0, r.y_mm, r.z_mm)),
                   get_y=lambda r: "big" if r.label else "small")
    dls = block.dataloaders(table, source=source, bs=4, seed=0)
    assert dls.vocab == ["big", "small"]
    x = torch.cat([xb for xb, _ in dls.valid])
    assert torch.all(x[:, 1, 7:9, 7:9] < 0.3)  # 10 mm beside the 5 mm sphere: no nodule in the centre


def test_batch_intensity_scales_and_adds_noise_per_sample():
    from medsuite.data.augment import BatchIntensity

    x, y = torch.ones(64, 3, 8, 8), torch.zeros(64, dtype=torch.int64)
    same, _ = BatchIntensity(p=0.0)(x, y)
    assert torch.equal(same, x)
    torch.manual_seed(0)
    out, y2 = BatchIntensity(scale=0.2, noise_std=0.0, p=1.0)(x, y)
    per_sample = out.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1].expand_as(per_sample))  # one factor a sample
    assert 0.8 <= float(out.min()) and float(out.max()) <= 1.2 and float(per_sample[:, 0].std()) > 0.05
    assert y2 is y
    with pytest.raises(ValueError, match="BatchIntensity"):
        BatchIntensity(p=2.0)


def test_a_batch_transform_bug_is_not_hidden_by_a_one_argument_retry(cohort):
    table, source = cohort
    calls = []

    def buggy(x, y):
        calls.append(1)
        raise TypeError("a bug inside the transform")

    dls = _block(item_tfms=None, batch_tfms=[buggy]).dataloaders(table, source=source, bs=4, seed=0)
    with pytest.raises(TypeError, match="a bug inside the transform"):
        next(iter(dls.train))
    assert calls == [1]  # called once, with (x, y); never retried as buggy(x)
    with pytest.raises(TypeError, match="must take"):
        _block(batch_tfms=[lambda: None])
    one = _block(item_tfms=None, batch_tfms=[lambda x: x * 0]).dataloaders(table, source=source, bs=4, seed=0)
    x, _ = next(iter(one.train))
    assert float(x.abs().sum()) == 0.0


def test_summary_fails_where_loading_fails(cohort):
    table, source = cohort

    def crop(x):  # an item transform that breaks on the real samples
        return x[:, :, :, 0]

    block = _block(item_tfms=[crop])
    lines = []
    with pytest.raises(DataBlockError, match="step 'item_tfms crop' failed for item"):
        block.summary(table, source=source, print_fn=lines.append)
    with pytest.raises(DataBlockError, match="step 'item_tfms crop' failed for item"):
        next(iter(block.dataloaders(table, source=source, bs=2).train))


def test_positive_class_is_given_once_and_checked(cohort):
    table, source = cohort
    named = table.assign(label=np.where(table["label"] == 1, "malignant", "benign"))
    dls = _block(positive="malignant").dataloaders(named, source=source, bs=4, seed=0)
    assert dls.positive == "malignant" and dls.positive_index == dls.vocab.index("malignant")
    with pytest.raises(DataBlockError, match="positive class 'malignnant' is not among the labels"):
        _block(positive="malignnant").dataloaders(named, source=source, bs=4)
