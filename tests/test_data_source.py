"""VolumeSource: DICOM folder -> scan -> cached, memory-mapped volumes; paths; pickling for workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from data_helpers import nodule_table, sphere_volume

from medsuite.data.block import DataBlock
from medsuite.data.blocks import Category, Patch3D, SliceStack
from medsuite.data.cache_dir import default_cache_dir
from medsuite.data.source import SourceError, VolumeSource
from medsuite.data.splitters import PatientSplitter
from medsuite.io.dicom_write import write_series


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    volumes, centers = {}, {}
    for p, geometry in enumerate(("anisotropic", "feet_first", "oblique", "isotropic")):
        vol, c = sphere_volume(geometry, shape=(16, 32, 32), radius_mm=5.0, at_index=(0.5, 0.5, 0.5))
        uid = f"1.2.826.0.1.3680043.9.{p}"
        write_series(vol, root / f"patient{p}", patient_id=f"PAT{p}", series_uid=uid, shuffle_names=True, seed=p)
        volumes[uid], centers[uid] = vol, c
    return root, volumes, centers


def test_dicom_folder_through_the_cache_gives_memory_maps(dicom_cohort, tmp_path):
    root, volumes, centers = dicom_cohort
    source = VolumeSource(root, cache_dir=tmp_path / "cache")
    assert source.series_uids == sorted(volumes)
    for uid, original in volumes.items():
        vol = source.get(uid)
        assert isinstance(vol.array, np.memmap) and not vol.array.flags.writeable
        # the same world content (the reader may store the slices in another order, e.g. feet-first)
        patch = Patch3D(size=(8, 12, 12), spacing_mm=1.0, window=None)
        np.testing.assert_allclose(patch.sample(vol, centers[uid]), patch.sample(original, centers[uid]), atol=1e-2)
        x = SliceStack(k=3, size=16, window=None).sample(vol, centers[uid])
        assert np.all(x[1, 7:9, 7:9] > 0)
    assert len(list((tmp_path / "cache").rglob("array.npy"))) == len(volumes)
    # a fresh source (another process, another run) reads the cache, not the DICOM files
    again = VolumeSource(root, cache_dir=tmp_path / "cache")
    assert isinstance(again.get(next(iter(volumes))).array, np.memmap)


def test_pickled_source_carries_no_volumes(dicom_cohort, tmp_path):
    root, volumes, _ = dicom_cohort
    source = VolumeSource(root, cache_dir=tmp_path / "cache", max_open=2)
    for uid in volumes:
        source.get(uid)
    assert len(source._open) == 2  # small LRU
    blob = pickle.dumps(source)
    assert len(blob) < 20_000
    clone = pickle.loads(blob)
    assert not clone._open and clone.get(next(iter(volumes))).shape == (16, 32, 32)


def test_missing_series_and_folders_are_clear_errors(dicom_cohort, tmp_path):
    root, _, _ = dicom_cohort
    source = VolumeSource(root)
    with pytest.raises(SourceError, match="series 9.9 not found"):
        source.get("9.9")
    with pytest.raises(SourceError, match=r"2 series of the table not found: 9.8, 9.9 \(0 of 2 found\)"):
        source.check(["9.9", "9.8"])
    with pytest.raises(FileNotFoundError, match="scan folder not found"):
        VolumeSource(tmp_path / "nope")
    with pytest.raises(ValueError, match="needs a dicom_root"):
        VolumeSource()


def test_paths_to_image_files(tmp_path):
    import SimpleITK as sitk

    vol, c = sphere_volume("oblique", shape=(16, 32, 32), radius_mm=5.0, at_index=(0.5, 0.5, 0.5))
    sitk.WriteImage(vol.to_sitk(), str(tmp_path / "scan.nii.gz"))
    source = VolumeSource(paths={"7.7": tmp_path / "scan.nii.gz"}, cache_dir=tmp_path / "cache")
    got = source.get("7.7")
    assert got.series_uid == "7.7"
    x = SliceStack(k=3, size=16, window=None).sample(got, c)
    assert np.all(x[1, 7:9, 7:9] > 0)


def test_dataloader_workers_open_cached_volumes_lazily(dicom_cohort, tmp_path):
    root, _, centers = dicom_cohort
    table = nodule_table(4, per_patient=2, series_uid_of=lambda p: f"1.2.826.0.1.3680043.9.{p}", centers=centers)
    source = VolumeSource(root, cache_dir=tmp_path / "cache")
    block = DataBlock(blocks=(SliceStack(k=3, size=16), Category()), splitter=PatientSplitter(0.25, seed=0), item_tfms=None)
    dls = block.dataloaders(table, source=source, bs=2, num_workers=2, seed=0)
    xs = torch.cat([x for x, _ in dls.valid])
    assert xs.shape == (2, 3, 16, 16) and torch.all(xs[:, 1, 7:9, 7:9] > 0.6)
    assert not source._open  # the main process opened nothing: workers did


def test_a_dicom_folder_is_enough(dicom_cohort):
    root, _, centers = dicom_cohort
    table = nodule_table(4, per_patient=1, series_uid_of=lambda p: f"1.2.826.0.1.3680043.9.{p}", centers=centers)
    dls = DataBlock(splitter=PatientSplitter(0.25, seed=0)).dataloaders(table, source=str(root), bs=2, seed=0)
    x, y = next(iter(dls.valid))
    assert x.shape == (1, 5, 64, 64) and torch.all(x[:, 2, 31:33, 31:33] > 0.6)
    # the DICOM folder is never written to: the volumes are cached in the user cache folder
    assert not any(p.name.startswith(".medsuite") for p in root.rglob("*"))
    assert any(default_cache_dir().rglob("array.npy"))
