"""Bundles: round trips (folder and zip), tamper detection, pickle and version refusal, transfer init."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medsuite.learn.bundle import (
    FORMAT_VERSION,
    BundleError,
    data_fingerprint,
    export_bundle,
    init_from_bundle,
    load_bundle,
)
from medsuite.learn.models import build_model

ARCH_KWARGS = {"in_channels": 3, "n_classes": 2, "width": 4, "depth": 2}
SPEC = {"type": "FakeBlock", "size": 16}


class FakeBlock:
    def __init__(self, spec):
        self._spec = dict(spec)

    def spec(self):
        return dict(self._spec)


def _load(path, **kw):
    return load_bundle(path, block_factory=FakeBlock, **kw)


def _export(path: Path, seed: int = 0, **overrides) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    model = build_model("slice_cnn", **ARCH_KWARGS)
    model(torch.randn(4, 3, 16, 16))  # move the BatchNorm running stats away from their defaults
    fields = dict(
        arch="slice_cnn",
        arch_kwargs=ARCH_KWARGS,
        block_spec=SPEC,
        labels=["benign", "malignant"],
        threshold=0.42,
        task="nodule",
        metrics={"roc_auc": {"value": np.float64(0.9), "ci_low": 0.8, "ci_high": float("nan")}},
        train_config={"epochs": 2, "lr": 1e-3},
        data_fingerprint="abc",
        extra_files={"index/cases.json": b'{"ids": ["c1"]}', "index/embeddings.safetensors": _tiny_st()},
        extra_meta={"modality": "CT"},
    )
    fields.update(overrides)
    return export_bundle(path, model, **fields), model.eval()


def _tiny_st() -> bytes:
    from safetensors.torch import save

    return save({"emb": torch.zeros(2, 3)})


@pytest.mark.parametrize("suffix", ["", ".zip"])
def test_round_trip(tmp_path, suffix):
    path, model = _export(tmp_path / f"nodule_model{suffix}")
    b = _load(path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(b.model(x), model(x))
    assert not b.model.training
    assert (b.name, b.task, b.labels, b.threshold) == (
        "nodule_model",
        "nodule",
        ["benign", "malignant"],
        0.42,
    )
    assert isinstance(b.block, FakeBlock) and b.block.spec() == SPEC
    assert b.read_extra("index/cases.json") == b'{"ids": ["c1"]}' and b.read_extra("index/none.json") is None
    m = b.meta
    assert m["format_version"] == FORMAT_VERSION and m["modality"] == "CT"
    assert m["metrics"]["roc_auc"] == {"value": 0.9, "ci_low": 0.8, "ci_high": None}
    assert set(m["versions"]) >= {"medsuite", "torch", "monai", "python"}
    assert set(m["files"]) == {"model.safetensors", "index/cases.json", "index/embeddings.safetensors"}
    assert all(len(h) == 64 for h in m["files"].values())
    assert m["created_at"].endswith("+00:00")
    assert len(b.sha256) == 64 and _load(path).sha256 == b.sha256
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_zip_and_its_extracted_folder_have_the_same_sha(tmp_path):
    path, _ = _export(tmp_path / "m.zip")
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp_path / "unzipped")
    assert _load(tmp_path / "unzipped").sha256 == _load(path).sha256
    other, _ = _export(tmp_path / "other.zip", seed=1)
    assert _load(other).sha256 != _load(path).sha256


def test_real_input_block_is_rebuilt(tmp_path):
    from medsuite.data import blocks
    block = blocks.SliceStack(k=3, size=16, spacing_mm=2.0, pixel_mm=1.0, window="lung")
    path, _ = _export(tmp_path / "b", block_spec=block.spec())
    assert load_bundle(path).block.spec() == block.spec()


def test_tampered_files_are_named(tmp_path):
    path, _ = _export(tmp_path / "b")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.safetensors has been modified"):
        _load(path)

    path, _ = _export(tmp_path / "z.zip")
    members = {}
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["index/cases.json"] = b'{"ids": ["c2"]}'
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in members.items():
            zf.writestr(n, d)
    with pytest.raises(BundleError, match=r"index/cases.json has been modified"):
        _load(path)


def test_added_and_missing_files_are_errors(tmp_path):
    path, _ = _export(tmp_path / "b")
    (path / "notes.txt").write_text("hi")
    with pytest.raises(BundleError, match=r"\['notes.txt'\] are not listed"):
        _load(path)
    (path / "notes.txt").unlink()
    (path / "index" / "cases.json").unlink()
    with pytest.raises(BundleError, match="index/cases.json is listed .* but missing"):
        _load(path)


def _rewrite_model(path: Path, data: bytes) -> None:
    """Replace the weights and fix up the recorded hash (what a careless or hostile edit would do)."""
    import hashlib

    (path / "model.safetensors").write_bytes(data)
    meta = json.loads((path / "bundle.json").read_text())
    meta["files"]["model.safetensors"] = hashlib.sha256(data).hexdigest()
    (path / "bundle.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("zip_format", [False, True])
def test_pickled_weights_are_refused(tmp_path, zip_format):
    path, model = _export(tmp_path / "b")
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf, _use_new_zipfile_serialization=zip_format)
    _rewrite_model(path, buf.getvalue())
    with pytest.raises(BundleError, match="pickle magic" if not zip_format else r"zip \(torch.save\)"):
        _load(path)


def test_pickle_files_are_refused_on_load_and_export(tmp_path):
    path, model = _export(tmp_path / "b")
    torch.save(model.state_dict(), path / "model.pt")
    with pytest.raises(BundleError, match=r"refusing to load: model.pt is a pickle.*never unpickle"):
        _load(path)
    with pytest.raises(BundleError, match="refusing to write index/knn.pkl"):
        _export(tmp_path / "c", extra_files={"index/knn.pkl": b"\x80\x04..."})


def test_newer_or_broken_format_version_is_refused(tmp_path):
    path, _ = _export(tmp_path / "b")
    meta = json.loads((path / "bundle.json").read_text())
    meta["format_version"] = 99
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(
        BundleError, match=rf"format_version 99 is newer .*\(format_version {FORMAT_VERSION}\)"
    ):
        _load(path)
    meta["format_version"] = "1"
    (path / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="no integer format_version"):
        _load(path)
    (path / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="bundle.json is not valid JSON"):
        _load(path)
    with pytest.raises(BundleError, match="bundle not found"):
        _load(tmp_path / "nothing")


def test_export_validates_before_writing(tmp_path):
    path, _ = _export(tmp_path / "b")
    before = (path / "bundle.json").read_bytes()
    model = build_model("slice_cnn", **ARCH_KWARGS)
    common = dict(arch="slice_cnn", block_spec=SPEC, labels=["a", "b"], threshold=0.5, task="nodule")
    with pytest.raises(BundleError, match="does not rebuild this model"):
        export_bundle(path, model, arch_kwargs={**ARCH_KWARGS, "width": 8}, **common)
    with pytest.raises(BundleError, match="2 outputs but 3 labels"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, **{**common, "labels": ["a", "b", "c"]})
    with pytest.raises(BundleError, match="task must be one of"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, **{**common, "task": "organ"})
    with pytest.raises(BundleError, match=r"b: metrics.fn: a builtin_function_or_method cannot be stored"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, metrics={"fn": print}, **common)
    with pytest.raises(BundleError, match="reserved key"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, extra_meta={"labels": []}, **common)
    with pytest.raises(BundleError, match="reserved key"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, extra_meta={"predictor": {}}, **common)
    with pytest.raises(BundleError, match=r"predictor.labels \['x', 'y'\] differ"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, predictor={"version": 1, "labels": ["x", "y"], "positive": "y"}, **common)
    point = {"value": 0.3, "rule": "fixed:0.3"}
    with pytest.raises(BundleError, match="threshold 0.5 differs from the predictor's 0.3"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, predictor={"version": 1, "positive": "b", "threshold": point}, **common)
    with pytest.raises(BundleError, match="not a plain relative path"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, extra_files={"../x.json": b"{}"}, **common)
    with pytest.raises(BundleError, match="already exists"):
        export_bundle(path, model, arch_kwargs=ARCH_KWARGS, overwrite=False, **common)
    assert (path / "bundle.json").read_bytes() == before  # the old bundle is untouched
    export_bundle(path, model, arch_kwargs=ARCH_KWARGS, **common)  # replaced atomically
    assert _load(path).labels == ["a", "b"] and _load(path).read_extra("index/cases.json") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_init_from_bundle_loads_matching_weights(tmp_path):
    path, src = _export(tmp_path / "b.zip")
    new = build_model("slice_cnn", **{**ARCH_KWARGS, "n_classes": 3})
    report = init_from_bundle(new, path)
    assert set(report.skipped) == {"head.1.weight", "head.1.bias"}
    assert "shape (2, 8) in bundle vs (3, 8) in model" in report.skipped["head.1.weight"]
    assert report.unused == [] and len(report.loaded) == len(new.state_dict()) - 2
    for key in report.loaded:
        assert torch.equal(new.state_dict()[key], src.state_dict()[key])
    with pytest.raises(BundleError, match="strict init failed: 2 model parameter"):
        init_from_bundle(build_model("slice_cnn", **{**ARCH_KWARGS, "n_classes": 3}), path, strict=True)
    same = build_model("slice_cnn", **ARCH_KWARGS)
    assert init_from_bundle(same, path, strict=True).skipped == {}


def test_data_fingerprint():
    t = pd.DataFrame({"series_uid": ["1.2", "1.3", "1.3"], "nodule_id": ["a", "b", "c"], "label": [0, 1, 0]})
    fp = data_fingerprint(t)
    assert len(fp) == 64 and fp == data_fingerprint(t.iloc[::-1])
    flipped = t.assign(label=[0, 0, 1])
    assert data_fingerprint(flipped) != fp
    assert data_fingerprint(t.assign(patient_id=["p1", "p2", "p2"])) == fp  # ids + labels only
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['grade'\]"):
        data_fingerprint(t, label_column="grade")
