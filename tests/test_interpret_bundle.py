"""A bundle carries its case index; `medsuite explain` runs end to end on an exported bundle."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from interpret_fixtures import add_blob, make_block, make_volume
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.interpret.index import CaseIndex
from medsuite.io.sitk_io import write_nifti
from medsuite.learn.bundle import export_bundle, load_bundle
from medsuite.learn.models import build_model


def _export(path, index=None):
    kwargs = {"in_channels": 3, "width": 4, "depth": 2}
    model = build_model("slice_cnn", **kwargs)
    return export_bundle(path, model, arch="slice_cnn", arch_kwargs=kwargs, block_spec=make_block().spec(),
                         labels=["benign", "malignant"], threshold=0.5, task="nodule",
                         extra_files=index.to_extra_files() if index is not None else None)


def test_bundle_round_trip_keeps_the_index(tmp_path):
    rng = np.random.default_rng(0)
    index = CaseIndex(rng.standard_normal((300, 32)), [f"n{i}" for i in range(300)], [int(v) for v in rng.integers(0, 2, 300)],
                      rng.integers(0, 255, (300, 64, 64), dtype=np.uint8), {"embed_dim": 32}).build_ann()
    for target in (tmp_path / "b", tmp_path / "b.zip"):
        bundle = load_bundle(_export(target, index))
        back = CaseIndex.from_bundle(bundle)
        assert back is not None and back.has_ann and back.case_ids == index.case_ids
        np.testing.assert_array_equal(back.embeddings, index.embeddings)
        q = rng.standard_normal((3, 32))
        assert back.query(q, 5, exact=True)[0] == index.query(q, 5, exact=True)[0]
    assert CaseIndex.from_bundle(load_bundle(_export(tmp_path / "plain"))) is None


def test_cli_explain_and_sanity(tmp_path):
    bundle = _export(tmp_path / "bundle")
    vol = make_volume()
    center = vol.center_world
    scan = write_nifti(add_blob(vol, center), tmp_path / "scan.nii.gz")
    runner = CliRunner()
    point = ",".join(f"{v:.2f}" for v in center)
    out = tmp_path / "expl"
    res = runner.invoke(app, ["explain", str(bundle), "--series", str(scan), "--nodule", point, "--out", str(out),
                              "--methods", "ig,gradcam", "--steps", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"ig", "gradcam"} and (out / "overlay_ig.png").exists()
    bad = runner.invoke(app, ["explain", str(bundle), "--series", str(scan), "--nodule", "1,2", "--out", str(out)])
    assert bad.exit_code == 2 and "--nodule must be three" in bad.output
    missing = runner.invoke(app, ["explain", str(bundle), "--series", "1.2.3", "--nodule", point, "--out", str(out)])
    assert missing.exit_code == 2 and "give --data" in missing.output
    table = tmp_path / "nodules.csv"
    pd.DataFrame([{"series_uid": "1.2.3.4", "patient_id": "p", "x_mm": center[0], "y_mm": center[1], "z_mm": center[2],
                   "diameter_mm": 6.0, "label": 1, "path": str(scan)}]).to_csv(table, index=False)
    rep = tmp_path / "sanity"
    res = runner.invoke(app, ["explain", "--sanity", str(bundle), str(table), "--out", str(rep), "--methods", "gradcam",
                              "--max-layers", "2", "--curve-steps", "4"])
    assert res.exit_code == 0, res.output
    assert (rep / "sanity.html").exists() and json.loads((rep / "sanity.json").read_text())["context"]["cases"] == 1
