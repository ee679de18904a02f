"""explain(): overlays, attribution volumes and a JSON summary for nodule and series models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from interpret_fixtures import MaskedNet, add_blob, make_block, make_volume, region_world

from medsuite.data.blocks import SeriesSlices
from medsuite.interpret.attributions import SALIENCY_CAVEAT
from medsuite.interpret.explain import explain, run_sanity
from medsuite.io.sitk_io import read_image
from medsuite.learn.models import build_model


def _nodule_case():
    vol = make_volume()
    vol = vol.with_array(vol.array, meta={"patient_id": "PAT-SECRET-42"})
    block = make_block()
    center = vol.center_world
    where = region_world(block, vol, center)
    bundle = SimpleNamespace(model=MaskedNet(), block=block, labels=["benign", "malignant"], task="nodule",
                             name="masked-net", sha256="abc")
    return bundle, add_blob(vol, where), center, where


def test_nodule_explanation_files_and_summary(tmp_path):
    bundle, vol, center, where = _nodule_case()
    res = explain(bundle, vol, ["ig", "gradcam"], center_xyz=center, out_dir=tmp_path, n_steps=16)
    names = {p.name for p in res.files.values()}
    assert names == {"attribution_ig.nii.gz", "attribution_gradcam.nii.gz", "overlay_ig.png", "overlay_gradcam.png",
                     "summary.json"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["caveat"] == SALIENCY_CAVEAT and summary["target"]["label"] == "malignant"
    assert np.linalg.norm(np.asarray(summary["methods"]["ig"]["peak_world_mm"]) - where) < 5
    assert "native resolution" in summary["methods"]["gradcam"]["notes"][0]
    assert "PAT-SECRET-42" not in (tmp_path / "summary.json").read_text()
    # the attribution volume, read back, has its peak at the same world point
    back = read_image(tmp_path / "attribution_ig.nii.gz")
    peak = back.index_to_world(np.unravel_index(np.argmax(np.abs(back.array)), back.shape))
    assert np.linalg.norm(peak - where) < 5
    assert (tmp_path / "overlay_ig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*"))


def test_blurred_baseline_and_argument_errors():
    bundle, vol, center, _ = _nodule_case()
    res = explain(bundle, vol, ["ig"], center_xyz=center, baseline="blurred", n_steps=8)
    assert res.summary["baseline"] == "blurred" and not res.files
    with pytest.raises(ValueError, match="nodule model"):
        explain(bundle, vol, ["ig"])
    with pytest.raises(ValueError, match="unknown attribution"):
        explain(bundle, vol, ["lime"], center_xyz=center)
    with pytest.raises(ValueError, match="unknown baseline"):
        explain(bundle, vol, ["ig"], center_xyz=center, baseline="noise")


def test_series_explanation_gives_slices_and_attention(tmp_path):
    vol = make_volume()
    model = build_model("series_encoder", in_channels=1, width=4, depth=2)
    bundle = SimpleNamespace(model=model, block=SeriesSlices(n=6, size=32, window="lung"), labels=["a", "b"],
                             task="series")
    res = explain(bundle, vol, ["ig", "gradcam"], out_dir=tmp_path, n_steps=8)
    slices = res.summary["methods"]["ig"]["slices"]
    assert len(slices) == 6 and sum(s["mass"] for s in slices) == pytest.approx(1.0)
    assert len(res.summary["attention"]) == 6 and sum(res.summary["attention"]) == pytest.approx(1.0, abs=1e-3)
    assert (tmp_path / "slices_ig.png").exists() and (tmp_path / "overlay_gradcam.png").exists()


def test_run_sanity_writes_a_report(tmp_path):
    bundle, vol, center, _ = _nodule_case()
    paths = run_sanity(bundle, [("n1", vol, center)], tmp_path, ["gradcam"], max_layers=2, curve_steps=4)
    data = json.loads(paths["json"].read_text())
    assert data["context"]["cases"] == 1 and len(data["randomization"][0]["layers"]) == 2
    assert paths["html"].exists() and paths["faithfulness_png"].exists()
