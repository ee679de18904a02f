"""Model-parameter randomization passes for IG and fails for a weight-blind method; faithfulness curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from interpret_fixtures import MaskedNet, SmallCNN, add_blob, make_block, make_volume, region_world
from scipy.ndimage import sobel

from medsuite.interpret.explain import prepare_case
from medsuite.interpret.sanity import (
    SanityCase,
    deletion_insertion,
    parametrised_layers,
    randomization_test,
    randomized_models,
    spearman,
    write_sanity_report,
)
from medsuite.learn.predict import Predictor


def edge_detector(model, case, target):
    """A 'method' that ignores the model entirely: it can only show image structure."""
    return np.hypot(sobel(case.x, axis=-1), sobel(case.x, axis=-2))


@pytest.fixture(scope="module")
def cases():
    vol, block = make_volume(), make_block()
    out = []
    for i, off in enumerate([(0, 0, 0), (5, -4, 2.5), (-6, 3, 0)]):
        center = vol.center_world + np.array(off)
        p = prepare_case(block, add_blob(vol, region_world(block, vol, center)), center)
        out.append(SanityCase(f"c{i}", p.x, p.baseline, p.layout, p.pixel_spacing_mm))
    return out


def test_randomization_passes_for_ig_and_fails_for_a_weight_blind_method(cases):
    model = SmallCNN()
    predictor = Predictor.plain(model, ["benign", "malignant"])
    ig = randomization_test(predictor, cases, "ig", options={"ig": {"n_steps": 8}})
    assert ig.passed and ig.layers[0] == "head" and len(ig.layers) == len(parametrised_layers(model))
    assert ig.spearman_abs[-1] < 0.5
    blind = randomization_test(predictor, cases, edge_detector)
    assert not blind.passed and "FAILS" in blind.verdict
    assert blind.spearman_abs == pytest.approx([1.0] * len(blind.layers))


def test_randomization_never_touches_the_trained_model():
    model = SmallCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = list(randomized_models(model, "independent"))
    assert [n for n, _ in steps] == parametrised_layers(model)[::-1]
    for k, v in model.state_dict().items():
        assert (v == before[k]).all()
    assert len(list(randomized_models(model, "cascading", max_layers=2))) == 2
    with pytest.raises(ValueError, match="cascading"):
        next(randomized_models(model, "sideways"))


def test_deletion_beats_random_order_for_a_faithful_method(cases):
    res = deletion_insertion(Predictor.plain(MaskedNet(), ["benign", "malignant"]), cases, "ig", n_steps=10,
                             options={"ig": {"n_steps": 8}})
    assert len(res.deletion) == 11 and res.deletion[0] == pytest.approx(res.insertion[-1])
    assert res.deletion_auc < res.random_deletion_auc
    assert res.insertion_auc > res.random_insertion_auc
    assert len(res.per_case) == 3


def test_report_files(cases, tmp_path):
    model = Predictor.plain(SmallCNN(), ["benign", "malignant"])
    r = [randomization_test(model, cases[:1], "gradcam"), randomization_test(model, cases[:1], edge_detector)]
    f = [deletion_insertion(model, cases[:1], "gradcam", n_steps=5)]
    with pytest.raises(TypeError, match="sanity checks run on a medsuite.learn.predict.Predictor"):
        randomization_test(SmallCNN(), cases[:1], "gradcam")
    paths = write_sanity_report(tmp_path / "rep", r, f, context={"model": "small"})
    assert {p.name for p in paths.values()} == {"sanity.json", "sanity.html", "randomization.png", "faithfulness.png"}
    data = json.loads(paths["json"].read_text())
    assert data["randomization"][1]["passed"] is False
    assert "FAILS" in paths["html"].read_text()
    assert not list((tmp_path / "rep").glob(".*tmp*"))


def test_spearman_of_constant_maps_is_zero():
    assert spearman(np.ones(5), np.arange(5)) == 0.0
    assert spearman(np.arange(5), np.arange(5) * 2) == pytest.approx(1.0)
